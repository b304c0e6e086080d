"""GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv:2507.18071).

Departs from GRPO (trainers/baselines/grpo.py) only in the loss, and drops the KL term:
- The importance ratio is per sequence, the geometric mean of the token ratios,
  s_i = exp(mean_t log(pi / pi_old)). It enters the loss in the token-level
  stop-gradient form s_i,t = sg[s_i] * pi_t / sg[pi_t] (same value as s_i, gradient
  through each token's log-prob), with log s_i,t capped at 10, as verl's
  compute_policy_loss_gspo.
- PPO clipping on that ratio with the paper's tiny range, eps_low 3e-4 / eps_high 4e-4,
  and no dual-clip.
- Aggregation "seq-mean-token-mean" (as GRPO), excluding empty responses.
- No KL penalty to the reference policy.
Reward and advantage (group-normalized) are GRPO's.
"""
import torch

NAME = "gspo"
CLIP_LOW, CLIP_HIGH = 3e-4, 4e-4


def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):
    log_ratio = logp - old_logp                                        # (N, T)
    n_seq_tok = mask.sum(-1)                                           # (N,)
    seq_log_ratio = (log_ratio * mask).sum(-1) / n_seq_tok.clamp_min(1.0)      # (N,)
    log_s = logp - logp.detach() + seq_log_ratio.detach()[:, None]     # (N, T)
    ratio = log_s.clamp(max=10.0).exp()
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1 - CLIP_LOW, 1 + CLIP_HIGH)
    per_token = torch.maximum(pg1, pg2)                                # (N, T)
    seq_mean = (per_token * mask).sum(-1) / (n_seq_tok + 1e-8)         # (N,)
    has_tokens = (n_seq_tok > 0).float()
    loss = (seq_mean * has_tokens).sum() / has_tokens.sum().clamp_min(1.0)
    n_tok = mask.sum().clamp_min(1.0)
    metrics = {
        "actor/pg_loss": float(loss.detach()),
        "actor/pg_clipfrac": float(((pg2 > pg1).float() * mask).sum() / n_tok),
        "actor/ppo_kl": float((-log_ratio.detach() * mask).sum() / n_tok),
    }
    return loss, metrics
