"""nx8a8a-grpo: a GRPO variant rendered from a builtin POISE genome.

  Reward: reward 1 for a correct answer, 0 otherwise  [r = 1[correct]]
  Validity: invalid answers count like wrong ones everywhere
  Baseline: the group's mean reward (0 for a group of one)  [b_i = mean_(j in g(i)) r_j]
* Normalization: advantage divided by a composed group scale s_g = std + t, floored at
    0.05, built by the builtin scientist from primitives  [A_i = (r_i - b_i) / max(s_g,
    0.05),  s_g = std + t]
  Group filtering: every group is kept
  Clipping: PPO clip to [1 - 0.2, 1 + 0.2] with dual clip c = 3 on negative advantages
    [L_t = min(max(-A rho_t, -A clip(rho_t, 1 - 0.2, 1 + 0.2)), -c A) if A < 0]
  Loss aggregation: loss averaged over each response's tokens, then over responses  [L =
    mean_i (1/|y_i|) sum_t L_it]
  KL: k3 (low-variance) KL penalty to the reference policy, coefficient 0.001  [L +=
    0.001 * agg(exp(ref - logp) - (ref - logp) - 1)]
  Schedule: coefficients constant over training

Hooks left to GRPO's fallback: shape_reward, policy_loss.

Genome: reward=plain; validity=none; baseline=group_mean; normalization=expr(f=add std
    t); filtering=none; clipping=dual_clip(eps=0.2,c=3);
    aggregation=seq_mean_token_mean; kl=k3(beta=0.001); schedule=none
"""

import torch

NAME = "nx8a8a-grpo"
SCALE_FLOOR = 0.05


def compute_advantages(batch, rewards):
    group, g = batch.group, int(batch.group.max()) + 1
    w = torch.ones_like(rewards)  # (N,) every sample enters the statistics
    count = rewards.new_zeros(g).index_add_(0, group, w)            # (B,)
    total = rewards.new_zeros(g).index_add_(0, group, w * rewards)  # (B,)
    gmean = total / count.clamp_min(1)                              # (B,)
    # (N,) 0 for a lone sample
    base = torch.where(count > 1, gmean, torch.zeros_like(gmean))[group]
    s_n = rewards.new_zeros(g).index_add_(0, group, w)              # (B,)
    s_mu = rewards.new_zeros(g).index_add_(0, group, w * rewards) / s_n.clamp_min(1)
    s_sq = rewards.new_zeros(g).index_add_(0, group, w * (rewards - s_mu[group]) ** 2)
    s_std = torch.where(s_n > 1, (s_sq / (s_n - 1).clamp_min(1)).sqrt(),
                        torch.ones_like(s_sq))                      # (B,)
    s_t = torch.full_like(s_n, min(1.0, batch.step / max(1, batch.total_steps - 1)))
    scale = ((s_std + s_t)).clamp_min(SCALE_FLOOR)                  # (B,) s_g, floored
    adv = (rewards - base) / scale[group]                           # (N,)
    return adv

