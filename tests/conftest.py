import os

import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_warm(tmp_path_factory):
    """A tiny warm start (built in seconds) and the home it is cached in. Its corpus
    keeps testbed v3's 0-4 filler (trainers/sandbox/tasks.py SMOKE_WARM_CONFIG says why:
    on v4's 0-8 a model this small greedily writes filler to the budget)."""
    from evals.tasks import VOCAB_SIZE, CorpusNoise
    from trainers.local.model import ModelConfig
    from trainers.local.warmstart import WarmStartConfig, load_or_build

    cfg = WarmStartConfig(model=ModelConfig(vocab_size=VOCAB_SIZE, n_layer=1, n_head=2,
                                            d_model=32), examples=3000, steps=120,
                          batch_size=32, lr=3e-3, noise=CorpusNoise(max_filler=4))
    home = tmp_path_factory.mktemp("poise_home")
    return cfg, home, load_or_build(cfg, home)


@pytest.fixture(scope="session")
def tiny_train_config():
    from trainers.local.evaluate import EvalConfig
    from trainers.local.trainer import TrainConfig

    return TrainConfig(steps=6, prompts_per_step=4, group_size=4, eval_every=3,
                       max_response=48,
                       curve_eval=EvalConfig(size=8, pass_problems=4, n_samples=16,
                                             max_response=48),
                       final_eval=EvalConfig(size=16, pass_problems=4, n_samples=16,
                                             max_response=48))
