"""The embedded GRPO trainer on a tiny warm start: hooks drive it, seeds pair runs,
contract violations surface as CandidateError."""
from dataclasses import replace

import pytest
import torch

from trainers.algorithm import Algorithm, CandidateError, load_algorithm
from trainers.local.trainer import train

VALIDITY_REWARD = '''
NAME = "validity-reward"
def shape_reward(batch):
    return batch.valid.float()
'''


def test_train_produces_curves_evals_and_final_metrics(tiny_warm, tiny_train_config):
    _, _, model = tiny_warm
    r = train(load_algorithm("grpo"), model, seed=0, cfg=tiny_train_config)
    assert r.steps_done == 6 and len(r.curve) == 6
    for key in ("reward", "accuracy", "entropy", "response_length", "validity",
                "clip_fraction", "kl_to_start", "grad_norm", "cpu_seconds"):
        assert key in r.curve[0], key
    assert [e["step"] for e in r.evals] == [3, 6]
    for key in ("overall", "add2/acc@1", "add5/pass@16", "add5/pass@1", "valid", "length"):
        assert key in r.final, key
    assert 0 <= r.final["overall"] <= 100
    assert r.auc["overall"] == pytest.approx(sum(e["overall"] for e in r.evals) / 2)
    assert r.cpu_seconds >= r.train_cpu_seconds > 0


SLOW_REWARD = '''
import torch
NAME = "slow-reward"
def shape_reward(batch):
    x = torch.ones(512, 512)
    for _ in range(40):  # ~11 GFLOP of busy work per step, inside a candidate's hook
        x = (x @ x).clamp(-1.0, 1.0)
    return batch.correct.float() + 0.0 * x.sum()
'''


def test_the_phase_split_sums_to_the_run_and_puts_a_hook_s_work_in_step_other(
        tiny_warm, tiny_train_config):
    """TrainResult.phase_cpu_seconds: every phase, in PHASES order, summing to the run's
    CPU; a candidate hook's own work lands in step_other and nowhere else."""
    from trainers.local.trainer import PHASES

    _, _, model = tiny_warm
    runs = [train(a, model, seed=0, cfg=tiny_train_config)
            for a in (load_algorithm("grpo"), Algorithm.from_source(SLOW_REWARD))]
    for r in runs:
        ph = r.phase_cpu_seconds
        assert list(ph) == list(PHASES)
        assert sum(ph.values()) == pytest.approx(r.cpu_seconds, rel=1e-9)
        assert all(ph[k] > 0 for k in PHASES if k != "setup"), ph
        assert "phase_cpu_seconds" in r.as_dict()
    fast, slow = (r.phase_cpu_seconds for r in runs)
    # 6 steps x ~11 GFLOP of the hook's matmuls: over 0.2 CPU-s on any CPU here
    assert slow["step_other"] - fast["step_other"] > 0.2
    assert slow["step_other"] - fast["step_other"] > 0.5 * (slow["sampling"]
                                                           - fast["sampling"])


def test_the_transfer_families_train_and_evaluate_apart(tiny_warm, tiny_train_config,
                                                         monkeypatch):
    """families="transfer": the prompt stream and every evaluation use the transfer
    families only (what a campaign's transfer stage trains), never the search's."""
    from evals import tasks
    from trainers.local import trainer as trainer_module

    seen = []
    real = trainer_module.PromptStream

    class Recording(real):
        def next_batch(self, size):
            batch = super().next_batch(size)
            seen.extend(p.family for p in batch)
            return batch

    monkeypatch.setattr(trainer_module, "PromptStream", Recording)
    _, _, model = tiny_warm
    cfg = replace(tiny_train_config, families="transfer")
    r = train(load_algorithm("grpo"), model, seed=0, cfg=cfg)
    assert set(seen) == {f.name for f in tasks.TRANSFER_FAMILIES}
    for d in [r.final, *r.evals]:
        assert {"sub2/acc@1", "sub2/pass@1", "sub2/pass@16", "mul3/acc@1", "mul3/pass@1",
                "overall"} <= set(d)
        assert not any(k.startswith("add") for k in d), d
    # Overall: greedy and T=1 accuracy of each transfer family, equal weights
    assert r.final["overall"] == pytest.approx(0.25 * sum(
        r.final[f"{f}/{m}"] for f in ("sub2", "mul3") for m in ("acc@1", "pass@1")))


def test_same_seed_pairs_runs_and_training_moves_the_policy(tiny_warm, tiny_train_config):
    _, _, model = tiny_warm
    before = [p.detach().clone() for p in model.parameters()]
    algo = Algorithm.from_source(VALIDITY_REWARD)
    a = train(algo, model, seed=1, cfg=tiny_train_config)
    b = train(algo, model, seed=1, cfg=tiny_train_config)
    c = train(load_algorithm("dr_grpo"), model, seed=1, cfg=tiny_train_config)
    assert a.curve == [{**row, "cpu_seconds": row2["cpu_seconds"]}
                       for row, row2 in zip(b.curve, a.curve)]  # deterministic
    # a different algorithm with the same seed sees the same first batch
    assert a.curve[0]["validity"] == c.curve[0]["validity"]
    assert a.curve[0]["response_length"] == c.curve[0]["response_length"]
    # the start model is untouched; the trained one moved (validity reward is not flat)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    assert a.curve[-1]["kl_to_start"] != 0.0


def test_validity_reward_raises_validity(tiny_warm, tiny_train_config):
    _, _, model = tiny_warm
    cfg = replace(tiny_train_config, steps=30, prompts_per_step=8, lr=1e-3, eval_every=30)
    r = train(Algorithm.from_source(VALIDITY_REWARD), model, seed=0, cfg=cfg)
    first = sum(row["validity"] for row in r.curve[:5]) / 5
    last = sum(row["validity"] for row in r.curve[-5:]) / 5
    assert last > first + 0.1, (first, last)


@pytest.mark.parametrize("source,hook", [
    ("def shape_reward(batch):\n    return batch.correct.float() / 0 * 0 + float('nan')",
     "shape_reward"),
    ("def compute_advantages(batch, rewards):\n    return rewards[:-1]", "compute_advantages"),
    ("def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):\n"
     "    return logp.sum().detach(), {}", "policy_loss"),
    ("import torch\ndef policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):\n"
     "    return (logp * float('inf')).sum(), {}", "policy_loss"),
])
def test_contract_violations_stop_training_with_the_hook_named(tiny_warm, tiny_train_config,
                                                               source, hook):
    _, _, model = tiny_warm
    with pytest.raises(CandidateError) as err:
        train(Algorithm.from_source(source), model, seed=0, cfg=tiny_train_config)
    assert err.value.hook == hook


def test_cpu_budget_stops_early(tiny_warm, tiny_train_config):
    _, _, model = tiny_warm
    cfg = replace(tiny_train_config, steps=1000, cpu_budget=0.5)
    r = train(load_algorithm("grpo"), model, seed=0, cfg=cfg)
    assert r.steps_done < 1000 and r.evals[-1]["step"] == r.steps_done
