"""``python -m memory.export CANDIDATE --verl DIR``: a discovered candidate handed to someone
who runs plain verl. The exported plugin is imported through ``VERL_USE_EXTERNAL_MODULES``
in a fresh interpreter where every POISE package is blocked from import (and, in the slow
test, in a clean virtualenv holding only torch and verl); its registries resolve, and the
advantages, loss and gradient it gives through verl's estimator registry (as
``compute_advantage`` calls it) and verl's own ``ppo_loss`` on random tensors equal the candidate's through POISE's local trainer."""
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from agents.builtin.genes import Genome, gene
from memory.archive import Archive
from trainers.algorithm import Algorithm, Rollouts
from trainers.verl.launcher import compose
from trainers.verl.runtime import outcome_code

from test_verl_adapter import BLOCK_POISE

REPO = Path(__file__).resolve().parent.parent
STANDINS = REPO / "tests" / "standins"
G, B, T = 4, 5, 12
# validity masking in the loss + analytic-variance scaling + zero-variance filter + KL
CANDIDATE = Genome.grpo().with_genes(gene("validity", "loss"),
                                     gene("normalization", "bernoulli"),
                                     gene("filtering", "zero_variance")).render()


# In the plain-verl interpreter: registries, the reward loader, then the candidate's
# numbers through verl's compute_advantage and ppo_loss on the test's random tensors.
PLAIN_VERL = BLOCK_POISE + '''
import os, torch, numpy as np
import verl
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.workers.config.actor import ActorConfig, PolicyLossConfig
from verl.workers.utils import losses
from verl_batch import micro_batch, unpadded

name = os.environ["VERL_USE_EXTERNAL_MODULES"]
assert name in core_algos.ADV_ESTIMATOR_REGISTRY and name in core_algos.POLICY_LOSS_REGISTRY
score = get_custom_reward_fn(OmegaConf.create({"reward": {"custom_reward_function": {
    "path": os.environ["PLUGIN_PATH"], "name": "compute_score"}}}))(
    data_source="math", solution_str="so \\\\boxed{0.5}", ground_truth="0.5", extra_info={})
assert score["score"] == 1.0, score  # any grader: math-verify or the string fallback
t = torch.load(os.environ["INPUTS"])
# what verl's compute_advantage does for a registered estimator (its module, ray_trainer,
# imports the rollout server's packages, which a bare `pip install verl` lacks)
data = DataProto.from_dict(tensors={"token_level_rewards": t["rewards"],
                                    "response_mask": t["mask"]},
                           non_tensors={"uid": np.array(t["uid"], dtype=object)})
adv, _ = core_algos.get_adv_estimator_fn(name)(
    token_level_rewards=data.batch["token_level_rewards"],
    response_mask=data.batch["response_mask"], index=data.non_tensor_batch["uid"],
    config=AlgoConfig())
logp = t["logp"].clone().requires_grad_(True)
cfg = ActorConfig(strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=4,
                  policy_loss=PolicyLossConfig(loss_mode=name), use_kl_loss=True,
                  kl_loss_coef=0.0, entropy_coeff=0.0, loss_agg_mode="seq-mean-token-mean")
mb = micro_batch(response_mask=t["mask"], old_log_probs=t["old"], advantages=adv,
                 rm_scores=t["rewards"], uid=t["uid"], ref_log_prob=t["ref"])
loss, _ = losses.ppo_loss(cfg, {"log_probs": unpadded(logp, t["mask"])}, mb)
loss.backward()
assert not any(m.split(".")[0] in ("trainers", "agents", "memory") for m in sys.modules)
torch.save({"adv": adv, "loss": loss.detach(), "grad": logp.grad}, os.environ["OUTPUTS"])
print("PLAIN VERL OK")
'''


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = B * G
    correct = torch.rand(n, generator=gen) < 0.5
    correct[G:2 * G] = True                      # a zero-variance group
    valid = correct | (torch.rand(n, generator=gen) < 0.7)
    length = torch.randint(1, T + 1, (n,), generator=gen)
    mask = (torch.arange(T)[None, :] < length[:, None]).float()
    batch = Rollouts(correct=correct, valid=valid, length=length, max_length=2048,
                     group=torch.arange(B).repeat_interleave(G), group_size=G,
                     response_mask=mask, step=0, total_steps=500)
    rewards = torch.zeros_like(mask)
    rewards[torch.arange(n), length - 1] = torch.tensor(
        [outcome_code(bool(c), bool(v)) for c, v in zip(correct, valid)])
    uids = [str(uuid.uuid4()) for _ in range(B)]
    old = -3.0 * torch.rand(mask.shape, generator=gen)
    return batch, {"rewards": rewards, "mask": mask, "uid": [uids[g] for g in batch.group],
                   "old": old, "logp": old + 0.3 * torch.randn(old.shape, generator=gen),
                   "ref": old + 0.1 * torch.randn(old.shape, generator=gen)}


def _exported(tmp_path):
    """An archived candidate, exported through the CLI entry point."""
    home = tmp_path / "home"
    a = Archive(home, index=False)
    run = a.start_run("accurate and concise")
    a.add_candidate(run, "vl-av-zf", 1, "validity masking + analytic variance", CANDIDATE,
                    status="evaluated")
    a.close()
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "memory.export", "vl-av-zf", "--verl",
                           str(out), "--home", str(home)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plugins = list(out.glob("poise_*.py"))
    assert len(plugins) == 1, list(out.iterdir())
    return out, plugins[0]


def _check_in_plain_verl(python, out, plugin, tmp_path):
    batch, inputs = _inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(VERL_USE_EXTERNAL_MODULES=plugin.stem, PLUGIN_PATH=str(plugin),
               PYTHONPATH=os.pathsep.join([str(out), str(STANDINS)]),
               INPUTS=str(tmp_path / "inputs.pt"), OUTPUTS=str(tmp_path / "outputs.pt"))
    proc = subprocess.run([str(python), "-c", PLAIN_VERL], cwd=out, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PLAIN VERL OK" in proc.stdout
    got = torch.load(tmp_path / "outputs.pt")
    algo = Algorithm.from_source(CANDIDATE)
    adv = algo.compute_advantages(batch, algo.shape_reward(batch))
    adv = (adv[:, None] if adv.dim() == 1 else adv) * batch.response_mask
    assert_close(got["adv"], adv)
    logp = inputs["logp"].clone().requires_grad_(True)
    loss, _ = algo.policy_loss(logp, inputs["old"], got["adv"], batch.response_mask, batch,
                               ref_logp=inputs["ref"])
    loss.backward()
    assert_close(got["loss"], loss.detach())
    assert_close(got["grad"], logp.grad)
    assert logp.grad.abs().sum() > 0


def test_an_exported_candidate_runs_in_verl_without_poise(tmp_path):
    out, plugin = _exported(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [plugin.name, "overrides.txt", "run.sh", "README.md"])
    readme, run_sh = (out / "README.md").read_text(), (out / "run.sh").read_text()
    assert f"VERL_USE_EXTERNAL_MODULES={plugin.stem}" in run_sh
    assert "python3 -m verl.trainer.main_ppo" in run_sh and "sh run.sh" in readme
    assert f"PYTHONPATH={out.resolve()}" in run_sh
    assert "whole groups" in readme                     # its loss reads the groups
    overrides = (out / "overrides.txt").read_text().split("\n")[:-1]
    composed = compose(overrides)                       # verl's Hydra + validate_config
    assert composed.algorithm.adv_estimator == plugin.stem
    assert composed.actor_rollout_ref.actor.policy_loss.loss_mode == plugin.stem
    assert composed.reward.custom_reward_function.path == str(plugin.resolve())
    assert composed.actor_rollout_ref.actor.kl_loss_coef == 0.0
    assert composed.trainer.balance_batch is False
    _check_in_plain_verl(sys.executable, out, plugin, tmp_path)


def test_bad_exports_are_one_line_and_write_nothing(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nNAME = 'bad'\n")
    for args in (["nosuch", "--home", str(tmp_path / "nohome")], [str(bad)],
                 [str(tmp_path / "missing.py")], ["grpo", "--trainer-config",
                                                  str(tmp_path / "none.yaml")]):
        out = tmp_path / "out"
        proc = subprocess.run([sys.executable, "-m", "memory.export", *args, "--verl",
                               str(out)], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not out.exists(), args


@pytest.mark.slow
def test_an_exported_candidate_runs_in_a_clean_virtualenv_with_verl_only(tmp_path):
    """A virtualenv with torch==2.13.0 and verl==0.9.1 from the package index, nothing
    else (minutes: it installs verl's dependencies)."""
    out, plugin = _exported(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=1800)
    subprocess.run([*pip, "verl==0.9.1"], check=True, timeout=1800)
    _check_in_plain_verl(venv / "bin" / "python", out, plugin, tmp_path)
