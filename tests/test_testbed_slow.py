"""The real testbed at its default sizes (slow: builds the ~5 CPU-min warm start once
per home; set POISE_HOME to reuse a cached one). Run with ``pytest -m slow``."""
import os
from dataclasses import replace
from pathlib import Path

import pytest

from trainers.algorithm import load_algorithm
from trainers.local import evaluate as ev
from trainers.local.trainer import TrainConfig, train
from trainers.local.warmstart import WarmStartConfig, load_or_build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    home = Path(os.environ.get("POISE_HOME") or tmp_path_factory.mktemp("home"))
    return load_or_build(WarmStartConfig(), home)


def test_warm_start_gives_grpo_something_to_work_with(warm):
    prof = ev.testbed_profile(warm)
    for fam, row in prof.items():
        assert row["t1_invalid"] >= 2.0, (fam, row)          # the format breaks
        assert row["correct_length_sd"] >= 2.0, (fam, row)   # length varies among correct
    assert prof["add5"]["t1_invalid"] > prof["add2"]["t1_invalid"]
    assert prof["add5"]["all_fail_groups"] >= 15.0          # many all-fail groups (v4: 19.1%, v3: 19.9%)
    assert prof["add2"]["t1_accuracy"] > prof["add5"]["t1_accuracy"]
    # room for "concise": a correct answer is far longer than the oracle, and part of it
    # is verbosity that accuracy does not need (restatement, re-checks, filler)
    for fam, row in prof.items():
        assert row["correct_length_mean"] > 2 * row["oracle_length_mean"], (fam, row)
        spare = sum(row[f"correct_{p}_tokens"] for p in ("restate", "checks", "filler"))
        assert spare >= 4.0, (fam, row)
    transfer = ev.testbed_profile(warm, which="transfer")
    for fam, row in transfer.items():   # the warm start covers the transfer families
        assert row["t1_accuracy"] >= 2.0 and row["all_fail_groups"] < 95.0, (fam, row)


def test_grpo_improves_and_the_sign_flipped_control_collapses(warm):
    cfg = replace(TrainConfig(), steps=40, eval_every=20)
    start = ev.evaluate(warm, cfg.final_eval)["overall"]
    grpo = train(load_algorithm("grpo"), warm, seed=0, cfg=cfg)
    flip = train(load_algorithm("evals/calibration/sign_flip.py"), warm, seed=0, cfg=cfg)
    assert grpo.final["overall"] > start + 5, (start, grpo.final["overall"])
    assert flip.final["overall"] < start - 5, (start, flip.final["overall"])
