"""The compare and bench commands end to end on a tiny configuration."""
import json
import re
from pathlib import Path

import pytest

from trainers.local import bench, compare
from trainers.local.trainer import PHASES

SIGN_FLIP = "evals/calibration/sign_flip.py"


def test_compare_writes_table_json_and_plots_and_resumes(tiny_warm, tiny_train_config,
                                                         tmp_path, capsys):
    warm, home, _ = tiny_warm
    out = tmp_path / "cmp"
    argv = ["--algorithms", f"grpo,dr_grpo,{SIGN_FLIP}", "--seeds", "2", "--out", str(out),
            "--home", str(home), "--workers", "2", "--quiet"]
    rows = compare.main(argv, train_config=tiny_train_config, warm_config=warm)
    data = json.loads((out / "compare.json").read_text())
    assert [r["algorithm"] for r in data["results"]] == ["grpo", "dr_grpo", "sign_flip"]
    for r in data["results"]:
        for key in ("algorithm", "seeds", "overall_mean", "overall_ci95",
                    "delta_vs_baseline_ci95", "auc_delta_vs_baseline_ci95",
                    "length_delta_vs_baseline_ci95", "validity_auc_delta_vs_baseline_ci95",
                    "mean_length", "validity", "cpu_seconds_per_seed"):
            assert key in r, key
        assert r["seeds"] == [0, 1]
    assert data["results"][0]["delta_vs_baseline_ci95"]["mean"] == 0.0
    assert rows == data["results"]
    for png in data["plots"]:
        assert (out / png).stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "dOverall" in printed and "sign_flip" in printed
    assert "final val metrics" in printed              # the table says the split it scores
    from rich.console import Console
    recorded = Console(record=True, width=400)
    compare.print_table(rows, recorded, "test")
    assert "final test metrics" in recorded.export_text()
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 6
    stamps = [p.stat().st_mtime_ns for p in runs]
    compare.main(argv, train_config=tiny_train_config, warm_config=warm)  # resumes
    assert [p.stat().st_mtime_ns for p in sorted((out / "runs").glob("*.json"))] == stamps


def test_compare_profile_reports_each_trained_policys_answer_by_part(
        tiny_warm, tiny_train_config, tmp_path, capsys):
    from evals.tasks import FAMILY_SETS
    from trainers.local.testbed import ABLATION, PARTS
    from trainers.local.trainer import TrainConfig, train_config_from_dict

    warm, home, _ = tiny_warm
    out = tmp_path / "prof"
    compare.main(["--algorithms", f"grpo,{SIGN_FLIP}", "--seeds", "2", "--out", str(out),
                  "--home", str(home), "--workers", "2", "--quiet", "--profile"],
                 train_config=tiny_train_config, warm_config=warm)
    data = json.loads((out / "compare.json").read_text())
    assert data["train_config"]["profile_after"] is True
    assert set(data["profiles"]) == {"grpo", "sign_flip"}
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("grpo-*.json"))]
    assert len(runs) == 2 and all(set(r["profile"]) == {f.name for f in FAMILY_SETS["search"]}
                                  for r in runs)
    assert any(r["profile"]["add2"]["t1_invalid"] > 0 for r in runs)  # numbers to average
    for fam, row in data["profiles"]["grpo"].items():
        assert row["seeds"] == 2 and {f"correct_{p}_tokens" for p in PARTS} <= set(row)
        for key, got in row.items():  # the mean of the seeds' own profiles (finite ones)
            if key != "seeds":
                xs = [r["profile"][fam][key] for r in runs
                      if r["profile"][fam][key] == r["profile"][fam][key]]
                assert got == pytest.approx(sum(xs) / len(xs)) if xs else got != got, key
        assert set(ABLATION) <= set(row), row  # the re-check ablation, per family
    printed = capsys.readouterr().out
    assert "tokens of a correct answer by part" in printed
    assert "re-checks cut" in printed
    # off by default, and then the config (the key of every cached result) is unchanged
    assert "profile_after" not in TrainConfig().as_dict()
    assert train_config_from_dict(TrainConfig(profile_after=True).as_dict()).profile_after


@pytest.mark.parametrize("argv,message", [
    (["--algorithms", "grpo,nope"], "unknown algorithm 'nope'"),
    (["--algorithms", "missing_file.py"], "no such candidate file"),
    (["--algorithms", "grpo,grpo"], "two algorithms share a name"),
])
def test_compare_bad_algorithms_exit_2_with_one_clear_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        compare.main(argv + ["--out", str(tmp_path / "o"), "--seeds", "1"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_compare_bad_flags_exit_2(tmp_path, capsys):
    for argv in (["--algorithms", "grpo", "--out", str(tmp_path), "--seeds", "0"],
                 ["--algorithms", "grpo", "--out", str(tmp_path), "--bogus"]):
        with pytest.raises(SystemExit) as e:
            compare.main(argv)
        assert e.value.code == 2


def test_failed_candidate_is_reported_not_fatal(tiny_warm, tiny_train_config, tmp_path):
    warm, home, _ = tiny_warm
    bad = tmp_path / "bad.py"
    bad.write_text("def compute_advantages(batch, rewards):\n    raise RuntimeError('boom')\n")
    rows = compare.main(["--algorithms", f"grpo,{bad}", "--seeds", "1", "--out",
                         str(tmp_path / "o"), "--home", str(home), "--workers", "1",
                         "--quiet"], train_config=tiny_train_config, warm_config=warm)
    assert "overall_mean" in rows[0]
    assert "overall_mean" not in rows[1]
    assert "compute_advantages: raised RuntimeError: boom" in rows[1]["failures"][0]["error"]


def test_bench_engines_trains_every_engine_side_by_side_and_resumes(tiny_warm,
                                                                     tiny_train_config,
                                                                     tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # five engine columns: no wrapped headers
    warm, home, _ = tiny_warm
    out = tmp_path / "eng"
    argv = ["--out", str(out), "--home", str(home), "--engines", "--paired-seeds", "2",
            "--workers", "2"]
    report = bench.main(argv, train_config=tiny_train_config, warm_config=warm)
    saved = json.loads((out / "bench.json").read_text())
    assert saved == json.loads(json.dumps(report))
    eng = saved["engines"]
    assert list(eng) == ["reference", "fast", "compiled"]
    for e in eng.values():
        assert [r["seed"] for r in e["per_seed"]] == [0, 1]
        assert e["cpu_seconds_per_candidate_seed"] > 0 and e["peak_rss_mb"] > 0
    for e in ("fast", "compiled"):
        assert saved["speedup_vs_reference"][e] == pytest.approx(
            eng["reference"]["cpu_seconds_per_candidate_seed"]
            / eng[e]["cpu_seconds_per_candidate_seed"])
        same = saved["same_learning"][e]
        diffs = [b["overall"] - a["overall"] for a, b in zip(eng["reference"]["per_seed"],
                                                              eng[e]["per_seed"])]
        assert same["diff"] == f"{e} - reference"
        assert same["n"] == 2 and same["mean"] == pytest.approx(sum(diffs) / 2)
        assert same["ci_low"] <= same["mean"] <= same["ci_high"]
    # the compiled decode step was built (or found) by the parent, and every compiled
    # job loaded it: none fell back to the eager decode
    assert saved["compiled_decode"]["error"] is None
    assert Path(saved["compiled_decode"]["package"]).is_file()
    runs = sorted((out / "engine-runs").glob("*.json"))
    compiled_runs = [json.loads(p.read_text()) for p in runs if ".compiled-" in p.name]
    assert len(compiled_runs) == 2
    assert all("engine_fallback" not in r for r in compiled_runs)
    for e in eng.values():  # the phase split: every phase, summing to the CPU-s per seed
        assert list(e["phase_cpu_seconds"]) == list(PHASES)
        assert sum(e["phase_cpu_seconds"].values()) == pytest.approx(
            e["cpu_seconds_per_candidate_seed"], rel=1e-9)
        assert all(e["phase_cpu_seconds"][k] > 0 for k in PHASES if k != "setup")
    printed = capsys.readouterr().out
    assert "reference / fast" in printed and "reference / compiled" in printed
    assert "compiled - reference" in printed and "same learning" in printed
    assert "where the CPU goes" in printed
    for k in PHASES:
        assert k in printed
    assert len(runs) == 6 and {p.name.split("-seed")[0] for p in runs} == {
        "grpo.reference", "grpo.fast", "grpo.compiled"}
    stamps = [p.stat().st_mtime_ns for p in runs]
    bench.main(argv, train_config=tiny_train_config, warm_config=warm)  # resumes
    assert [p.stat().st_mtime_ns for p in sorted((out / "engine-runs").glob("*.json"))] == stamps


def test_bench_engines_bad_flags_exit_2(tmp_path, capsys):
    for argv in (["--engines", "--paired-seeds", "0"], ["--engines", "--device", "cuda"]):
        with pytest.raises(SystemExit) as e:
            bench.main(["--out", str(tmp_path / "o")] + argv)
        assert e.value.code == 2
        assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()



def test_checks_ablation_scores_the_same_greedy_answers_as_evaluate_and_cuts_re_checks(
        tiny_warm):
    """The ablation's own greedy decoding agrees with evaluate()'s acc@1 on the same
    problems, and on a warm start that re-checks (the v3 corpus: 80% of answers) it
    answers again with '#' forced before the re-checks."""
    from trainers.local.evaluate import EvalConfig, checks_ablation, evaluate

    _, _, model = tiny_warm
    got = checks_ablation(model, problems=24, max_response=48)
    ref = evaluate(model, EvalConfig(size=24, pass_problems=2, n_samples=16, max_response=48))
    assert set(got) == {"add2", "add3", "add5"}
    for fam, row in got.items():
        assert row["greedy_acc"] == pytest.approx(ref[f"{fam}/acc@1"]), fam
        assert 0 <= row["rechecked_pct"] <= 100
    rechecked = [row for row in got.values() if row["rechecked_pct"] > 0]
    assert rechecked, got  # the tiny warm start re-checks somewhere
    for row in rechecked:
        assert 0 <= row["checks_cut_acc"] <= 100 and 0 <= row["rechecked_acc"] <= 100
    # without the re-check ablation (the testbed CLI's case): the same greedy, scratchpad
    # and direct numbers, and no re-check keys
    lean = checks_ablation(model, problems=24, max_response=48, rechecks=False)
    for fam, row in lean.items():
        assert row == {k: got[fam][k] for k in ("greedy_acc", "scratch_pct", "direct_acc")}


def test_checks_ablation_answers_directly_as_the_reference_engine_does(tiny_warm):
    """``direct_acc``: greedy with '#' forced as the first response token, graded as
    written ('#' + continuation), equals the reference engine's decoding of the same
    forced prefix; ``scratch_pct`` is the share of greedy answers that start with a
    column step."""
    import torch

    from evals.tasks import BOS, decode, encode, grade, heldout_set
    from trainers.local.evaluate import checks_ablation
    from trainers.local.model import generate, left_pad

    _, _, model = tiny_warm
    got = checks_ablation(model, problems=16, max_response=48)
    for fam in ("add2", "add5"):
        probs = heldout_set(fam, "val", 16)
        want = []
        for forced in (True, False):
            ids, mask = left_pad([[BOS] + encode(p.prompt + ("#" if forced else ""))
                                  for p in probs])
            gen = generate(model, ids, mask, 48 - forced, 0.0, torch.Generator())
            texts = [decode(row) for row in gen.tokens.tolist()]
            if forced:
                want.append(100 * sum(grade(p, "#" + t, bool(done)).correct for p, t, done
                                      in zip(probs, texts, gen.terminated)) / len(probs))
            else:
                want.append(100 * sum(re.match(r"1?\d[-+*]\d", t.lstrip("~")) is not None
                                      for t in texts) / len(probs))
        assert got[fam]["direct_acc"] == pytest.approx(want[0]), fam
        assert got[fam]["scratch_pct"] == pytest.approx(want[1]), fam


@pytest.mark.parametrize("text,scratch", [
    ("2+7=9;3+9=12;#529.", True), ("~~2+7=9;#9.", True), ("12-5=7;#7.", True),
    ("3*4+1=13;#13.", True), ("00432+00097;2+7=9;#1.", True),
    ("#529.", False), ("~#5.", False), ("=529;#529.", False), ("", False)])
def test_scratchpad_is_a_leading_column_step(text, scratch):
    from trainers.local.evaluate import _STEPS
    assert (_STEPS.match(text) is not None) is scratch


def test_recheck_start_finds_whole_re_checks_not_a_steps_tail():
    from trainers.local.evaluate import recheck_start

    assert recheck_start("2+7=9;3+9=12;4+1=5;=529;=529;#529.") == len("2+7=9;3+9=12;4+1=5;")
    assert recheck_start("2+7=9;3+9=12;4+1=5;~~=529;#529.") == len("2+7=9;3+9=12;4+1=5;~~")
    assert recheck_start("=529;#529.") == 0
    assert recheck_start("2+7=9;3+9=12;4+1=5;#529.") is None   # the last step is not one
    assert recheck_start("2+7=9;3+9=12;4+1=5;~#529.") is None
    assert recheck_start("#529.") is None


def test_compare_warm_config_builds_and_records_a_variant_warm_start(
        tiny_warm, tiny_train_config, tmp_path):
    """--warm-config: a JSON file of WarmStartConfig fields (here the tiny model with the
    add2 corpus overridden) is the warm start every job trains from: built once under
    its own key in the home, recorded in compare.json."""
    from dataclasses import asdict

    from trainers.local.warmstart import checkpoint_path, warm_config_from_dict

    warm, _, _ = tiny_warm
    variant = {**asdict(warm), "corpus": {"add2": {"sft_weight": 0.8, "scratch_prob": 0.3}}}
    path = tmp_path / "warm.json"
    path.write_text(json.dumps(variant))
    home, out = tmp_path / "home", tmp_path / "cmp"
    compare.main(["--algorithms", "grpo", "--seeds", "1", "--out", str(out), "--home",
                  str(home), "--workers", "1", "--quiet", "--warm-config", str(path)],
                 train_config=tiny_train_config)
    data = json.loads((out / "compare.json").read_text())
    key = warm_config_from_dict(variant).key()
    assert key != warm.key()
    assert data["warm_key"] == key
    assert data["warm_config"]["corpus"] == variant["corpus"]
    assert checkpoint_path(warm_config_from_dict(variant), home).is_file()
    assert [p.name for p in (home / "checkpoints").glob("*.pt")] == [f"warmstart-{key}.pt"]


@pytest.mark.parametrize("text,message", [
    (None, "No such file"),
    ("{", "not JSON"),
    ("[1]", "expected a JSON object"),
    ('{"stepz": 3}', "unknown field 'stepz'"),
    ('{"corpus": {"add9": {}}}', "unknown family 'add9'"),
    ('{"corpus": {"add2": {"scratch_prob": 2}}}', "add2.scratch_prob must be a number in [0, 1]"),
])
def test_compare_and_testbed_refuse_a_bad_warm_config_in_one_line(tmp_path, capsys, text,
                                                                  message):
    from trainers.local import testbed

    path = tmp_path / "warm.json"
    if text is not None:
        path.write_text(text)
    for main, argv in ((compare.main, ["--algorithms", "grpo"]), (testbed.main, [])):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--out", str(tmp_path / "o"), "--warm-config", str(path)])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_testbed_profiles_a_variant_warm_start_with_its_direct_answers(tiny_warm, tmp_path):
    """``python -m trainers.local.testbed --warm-config``: the table's JSON holds, per
    family, the greedy scratchpad share and the accuracy answered directly."""
    from dataclasses import asdict

    from trainers.local import testbed

    warm, home, _ = tiny_warm
    path = tmp_path / "warm.json"
    path.write_text(json.dumps(asdict(warm)))
    assert testbed.main(["--out", str(tmp_path / "tb"), "--home", str(home), "--problems",
                         "8", "--warm-config", str(path)]) == 0
    rows = json.loads((tmp_path / "tb" / "testbed.json").read_text())
    assert set(rows) == {"add2", "add3", "add5", "sub2", "mul3"}
    for fam, row in rows.items():
        assert 0 <= row["scratch_pct"] <= 100 and 0 <= row["direct_acc"] <= 100, fam
    assert [p.name for p in (home / "checkpoints").glob("*.pt")] == [
        f"warmstart-{warm.key()}.pt"]  # the cached tiny warm start, not a new build
