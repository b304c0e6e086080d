import os

import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_warm(tmp_path_factory):
    """A tiny warm start (built in seconds) and the home it is cached in: the verifier's
    smoke warm start (trainers/sandbox/tasks.py SMOKE_WARM_CONFIG, which says why its
    corpus keeps testbed v3's 0-4 filler), so the tests build the one the smoke run uses."""
    from trainers.local.warmstart import load_or_build, warm_config_from_dict
    from trainers.sandbox.tasks import SMOKE_WARM_CONFIG

    cfg = warm_config_from_dict(SMOKE_WARM_CONFIG)
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
