"""Token-level brevity in all-correct groups: a correct answer's tokens past the group's
shortest correct answer get advantage -1 (the tokens a sibling showed were not needed);
every other token keeps GRPO's correctness advantage (0 in an all-correct group)."""
import torch

NAME = "tail-all-correct"
BETA = 1.0


def compute_advantages(batch, rewards):
    group, g = batch.group, int(batch.group.max()) + 1
    count = rewards.new_zeros(g).index_add_(0, group, torch.ones_like(rewards))
    mean = rewards.new_zeros(g).index_add_(0, group, rewards) / count
    var = rewards.new_zeros(g).index_add_(0, group, (rewards - mean[group]) ** 2)
    std = (var / (count - 1).clamp_min(1)).sqrt()
    adv = (rewards - mean[group]) / (std[group] + 1e-6)  # (N,)
    solved = (mean >= 1.0)[group]  # (N,) all-correct group
    big = batch.max_length + 1
    lmin = torch.full((g,), big, dtype=torch.long, device=group.device).scatter_reduce(
        0, group, batch.length, reduce="amin")  # (B,)
    t = torch.arange(batch.response_mask.shape[1], device=group.device).unsqueeze(0)  # (1, T)
    excess = (t >= lmin[group].unsqueeze(1)) & solved.unsqueeze(1)  # (N, T)
    out = adv.unsqueeze(1).expand_as(batch.response_mask).clone()
    out[excess] = -BETA
    return out * batch.response_mask
