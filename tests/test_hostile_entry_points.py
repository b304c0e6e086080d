"""Hostile candidate modules given to every entry point that trains candidates outside the
loop: ``trainers.local.compare``, ``trainers.local.bench`` and the campaign's promotion and
test stages (the loop itself: tests/test_hostile_loop.py). Each is called in this very
process, so a module that ran here instead of in the sandbox would write the sentinel's
folder, fork, hang or exhaust this process. Each must be a failed run with its reason,
the caller goes on (the other algorithms train), nothing outside scratch changes, and no
sandbox child outlives the call.

The campaign's rediscovery stage trains only genomes rendered by the builtin catalog (no
archived code reaches it); it runs through the same ``trainers/local/jobs.py`` path.
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from run_checks import TINY, sandbox_children

pytestmark = pytest.mark.reliability
TIMEOUT_S = 40  # per sandboxed job; a tiny GRPO run needs ~10 s of it on a loaded machine


def _module(name: str, body: str) -> str:
    return f"import torch\nimport numpy as np\n\nNAME = {name!r}\n" + textwrap.dedent(body)


def hostile_modules(outside: Path) -> dict[str, tuple[str, str]]:
    """name -> (source, a fragment of the reason it fails with)."""
    pwned = str(outside / "pwned.npy")
    return {
        "writes-at-import": (_module("writes-at-import", f"""
            # passes the static check: only the sandbox's guard stops this write
            np.lib.format.open_memmap({pwned!r}, mode="w+", dtype="float32", shape=(4,))
            """), "only the scratch directory"),
        "forks-at-import": (_module("forks-at-import", """
            torch.os.fork()
            """), "blocked"),
        "sleeps-at-import": (_module("sleeps-at-import", """
            while True:
                pass
            """), "timeout"),
        "memory-at-import": (_module("memory-at-import", """
            hoard = torch.ones(2 ** 34)
            """), "memory"),
        "sleeper": (_module("sleeper", """
            def shape_reward(batch):  # behaves when loaded, hangs once training starts
                while True:
                    pass
            """), "timeout"),
    }


@pytest.fixture
def lab(tmp_path, tiny_warm):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel.txt").write_text("untouched\n")
    files = {}
    for name, (source, _) in hostile_modules(outside).items():
        files[name] = tmp_path / f"{name.replace('-', '_')}.py"
        files[name].write_text(source)
    return {"outside": outside, "files": files, "home": tiny_warm[1],
            "reasons": {n: r for n, (_, r) in hostile_modules(outside).items()}}


def _untouched(lab) -> None:
    assert sorted(p.name for p in lab["outside"].iterdir()) == ["sentinel.txt"]
    assert (lab["outside"] / "sentinel.txt").read_text() == "untouched\n"
    assert not sandbox_children(os.getpid()), "a sandbox child outlived the call"


def _tiny_configs():
    from evals.tasks import VOCAB_SIZE
    from trainers.local.trainer import train_config_from_dict
    from trainers.local.warmstart import warm_config_from_dict

    ctx = json.loads(TINY.read_text())
    warm = {**ctx["warm_config"], "model": {"vocab_size": VOCAB_SIZE,
                                            **ctx["warm_config"]["model"]}}
    return train_config_from_dict(ctx["train_overrides"]), warm_config_from_dict(warm)


def test_compare_fails_each_hostile_module_with_its_reason_and_goes_on(lab, tmp_path):
    from trainers.local.compare import main

    train_config, warm_config = _tiny_configs()
    algorithms = ",".join(["grpo", *map(str, lab["files"].values())])
    rows = main(["--algorithms", algorithms, "--seeds", "1", "--out", str(tmp_path / "cmp"),
                 "--home", str(lab["home"]), "--timeout", str(TIMEOUT_S), "--quiet",
                 "--workers", "2"], train_config=train_config, warm_config=warm_config)
    by = {r["algorithm"]: r for r in rows}   # a file's label is its stem
    assert by["grpo"]["seeds"] == [0] and "overall_mean" in by["grpo"]
    for name, reason in lab["reasons"].items():
        row = by[lab["files"][name].stem]
        assert row["seeds"] == [] and len(row["failures"]) == 1, row
        assert reason in row["failures"][0]["error"], (name, row["failures"])
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["algorithm"] for r in saved["results"]] == \
        ["grpo", *(f.stem for f in lab["files"].values())]
    _untouched(lab)


def test_bench_reports_a_hostile_module_as_a_failed_run(lab, tmp_path, capsys):
    from trainers.local.bench import main

    train_config, warm_config = _tiny_configs()
    with pytest.raises(SystemExit) as stop:
        main(["--algorithm", str(lab["files"]["writes-at-import"]), "--out",
              str(tmp_path / "bench"), "--home", str(lab["home"])],
             train_config=train_config, warm_config=warm_config)
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: writes_at_import failed in training: blocked:")
    assert "only the scratch directory" in err
    assert not (tmp_path / "bench" / "bench.json").exists()
    _untouched(lab)


def _campaign_args(tmp_path, *extra):
    from graph.campaign.cli import parse_args

    return parse_args(["--directive", "accurate", "--out", str(tmp_path / "out"),
                       "--config", str(TINY), "--job-timeout", str(TIMEOUT_S), "--quiet",
                       "--workers", "2", *extra])


def _archive_with(home: Path, name: str, source: str) -> int:
    """A finished search run whose best candidate is the hostile module (as if it had
    behaved at the screening budget)."""
    from memory.archive import Archive
    from trainers.baselines import baseline_source

    with Archive(home, index=False) as a:
        run = a.start_run("accurate", {"objective": {"directive": "accurate"}})
        seed = a.add_candidate(run, "grpo", 0, "GRPO.", baseline_source("grpo"),
                               status="evaluated")
        a.add_evaluation(seed, 0, fitness=10.0)
        cand = a.add_candidate(run, name, 1, "A reward that waits.", source,
                               parents=[seed], status="evaluated")
        a.add_evaluation(cand, 0, fitness=50.0)
        a.finish_run(run)
    return run


def test_campaign_promotion_and_test_stages_fail_a_hostile_winner_and_go_on(lab, tmp_path):
    from evals.objective import objective_from_directive
    from graph.campaign.stages import CampaignError, promote, test_stage

    home = lab["home"]
    cfg = json.loads(TINY.read_text())
    run = _archive_with(home, "writes-at-import", lab["files"]["writes-at-import"].read_text())
    args = _campaign_args(tmp_path, "--promote", "1", "--promote-seeds", "1",
                          "--baselines", "grpo", "--seeds", "2")
    console = Console(quiet=True)
    with pytest.raises(CampaignError, match="every promoted candidate failed to train"):
        promote(args, home, run, objective_from_directive("accurate"), cfg, console)
    _untouched(lab)
    source = lab["files"]["sleeper"].read_text()
    out = test_stage(args, home, ("sleeper", source), cfg, console)
    by = {r["algorithm"]: r for r in out["rows"]}
    assert by["grpo"]["seeds"] == [2000, 2001] and "overall_mean" in by["grpo"]
    failures = by["winner:sleeper"]["failures"]
    assert [f["seed"] for f in failures] == [2000, 2001]
    assert all("timeout" in f["error"] for f in failures), failures
    _untouched(lab)
