"""The trainer's Adam (trainers/local/optim.py) against torch.optim.Adam: bit-identical
parameters, and a training job that never imports torch._dynamo."""
import subprocess
import sys

import pytest
import torch

from trainers.local.optim import Adam


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 16),
                               torch.nn.GELU(), torch.nn.Linear(16, 11))


@pytest.mark.parametrize("lr,betas,eps", [(2e-4, (0.9, 0.99), 1e-8), (3e-2, (0.5, 0.9), 1e-6)])
def test_bit_identical_to_torch_adam(lr, betas, eps):
    ours, theirs = _model(0), _model(0)
    opt_ours = Adam(ours.parameters(), lr=lr, betas=betas, eps=eps)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=lr, betas=betas, eps=eps)
    gen = torch.Generator().manual_seed(1)
    for step in range(25):
        ids = torch.randint(0, 11, (6, 5), generator=gen)
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad(set_to_none=True)
            logits = model(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 11),
                                                     ids[:, 1:].reshape(-1))
            loss.backward()
            if step % 7 == 3:  # a parameter without a gradient this step is skipped
                model[1].bias.grad = None
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    # and the training moved them (the check is not vacuous)
    assert not torch.equal(next(ours.parameters()), next(_model(0).parameters()))


def test_zero_grad_keeps_or_drops_gradients():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Adam([p])
    p.grad = torch.ones(3)
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))
    opt.zero_grad()
    assert p.grad is None
    with pytest.raises(ValueError, match="no parameters"):
        Adam([torch.zeros(2)])


def test_training_does_not_import_dynamo(tmp_path):
    """A training job's process stays clear of torch._dynamo (what torch.optim costs)."""
    code = (
        "import sys, torch\n"
        "from dataclasses import replace\n"
        "from trainers.local.model import ModelConfig, TinyGPT\n"
        "from trainers.local.trainer import TrainConfig, train\n"
        "from trainers.local.evaluate import EvalConfig\n"
        "from trainers.algorithm import Algorithm\n"
        "from evals.tasks import VOCAB_SIZE\n"
        "torch.manual_seed(0)\n"
        "m = TinyGPT(ModelConfig(vocab_size=VOCAB_SIZE, n_layer=1, d_model=16, n_head=2))\n"
        "tiny = EvalConfig(size=2, pass_problems=1, n_samples=16, max_response=8)\n"
        "cfg = replace(TrainConfig(), steps=2, prompts_per_step=2, group_size=2, "
        "max_response=8, curve_eval=tiny, final_eval=tiny, engine='fast')\n"
        "r = train(Algorithm.from_source('trainers/baselines/grpo.py'), m, 0, cfg)\n"
        "assert r.steps_done == 2\n"
        "print('dynamo' if 'torch._dynamo' in sys.modules else 'clear')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "clear"
