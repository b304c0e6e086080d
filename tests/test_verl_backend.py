"""The verl trainer behind the loop, on CPU.

A real verl run needs GPUs and vLLM (none here). ``tests/standins/verl_main_ppo.py``
stands in for ``verl.trainer.main_ppo``'s GPU parts only: it is launched by the real
launcher with the real Hydra overrides and environment, imports the real generated
plugin (registering the candidate in verl's registries), grades with the real reward
function, calls the candidate through verl's ``get_adv_estimator_fn`` /
``get_policy_loss_fn``, and writes verl's file-logger JSONL and validation dumps, which
the real tailer turns into the graph's curves and evaluation record."""
import json
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from evals.objective import objective_from_directive
from graph.context import Context
from graph.graph import builder
from memory.archive import Archive
from trainers.baselines import baseline_source
from trainers.verl.backend import CURVE_KEYS, VerlTrainingError, train_candidate

STANDIN = Path(__file__).parent / "standins" / "verl_main_ppo.py"
DATA = Path(__file__).parent / "data" / "verl"
TINY = json.loads((Path(__file__).parent / "data" / "tiny_context.json").read_text())


def _data(tmp_path) -> tuple[str, str]:
    """A validation split (data_source standin_math) and a benchmark (standin_bench),
    which the stand-in validates on like verl: one metric set per data_source."""
    from trainers.verl import data as verl_data

    out = tmp_path / "data"
    val, _ = verl_data.prepare(DATA / "math_tiny.jsonl", out, source="standin_math")
    bench, _ = verl_data.prepare(DATA / "gsm8k_tiny.jsonl", out, source="standin_bench",
                                 split="test")
    return str(val), str(bench)


def _config(tmp_path, **extra) -> str:
    val, bench = _data(tmp_path)
    extra = {"val_files": [val], "test_files": [bench], **extra}
    lines = ["verl:", f"  entrypoint: {STANDIN}", "  total_training_steps: 6",
             "  test_freq: 3", "  rollout_n: 4", "  val_n: 4", "  train_batch_size: 4",
             "  ppo_mini_batch_size: 4", "  overall_weights: {standin_math/acc@1: 0.5, "
             "standin_math/pass@4: 0.5}"]
    for k, v in extra.items():
        lines.append(f"  {k}: {json.dumps(v)}")
    path = tmp_path / "verl.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_verl_run_gives_the_local_result_shape(tmp_path):
    seen = []
    r = train_candidate(baseline_source("dr_grpo"), "dr_grpo", 1, tmp_path / "home",
                        _config(tmp_path), on_progress=lambda s, row: seen.append(s),
                        poll_s=0.2)
    final = r["final"]
    assert {"overall", "length", "valid", "acc@1", "standin_math/acc@1",
            "standin_math/pass@4"} <= set(final)
    # Overall from the configured weights, on verl's validation of the last step
    assert final["overall"] == pytest.approx(0.5 * final["standin_math/acc@1"]
                                             + 0.5 * final["standin_math/pass@4"])
    assert [e["step"] for e in r["evals"]] == [0, 3, 6]
    assert r["evals"][-1]["standin_math/acc@1"] > r["evals"][0]["standin_math/acc@1"]
    # curves: one row per training step; reward/accuracy/validity from the adapter's
    # own step log (the real estimator ran in the launched process)
    assert [row["step"] for row in r["curve"]] == [1, 2, 3, 4, 5, 6]
    assert all(set(CURVE_KEYS) <= set(row) for row in r["curve"])
    assert all(0 <= row["accuracy"] <= 1 and 0 <= row["validity"] <= 1 for row in r["curve"])
    assert r["backend"] == "verl" and Path(r["log"]).is_file()
    assert seen and max(seen) == 6


def test_selection_never_reads_the_benchmark_numbers(tmp_path):
    """verl validates on val_files + test_files at once; the result POISE selects on
    (final, evals: fitness and objectives) holds only the held-out validation split, and
    the benchmark's numbers go to the report-only test split. The stand-in's benchmark
    is harder, so a mix-up would move the numbers."""
    r = train_candidate(baseline_source("grpo"), "grpo", 0, tmp_path / "home",
                        _config(tmp_path, overall_weights={}), poll_s=0.2)
    for record in (r["final"], *r["evals"]):
        assert not any(k.startswith("standin_bench") for k in record), record
    final, test = r["final"], r["test"]
    assert final["acc@1"] == final["standin_math/acc@1"] == final["overall"]
    assert set(k.split("/")[0] for k in test if "/" in k) == {"standin_bench"}
    assert test["acc@1"] == test["standin_bench/acc@1"] < final["acc@1"]
    assert "standin_bench/pass@4" in test


def test_a_failed_verl_run_says_why(tmp_path):
    cfg = _config(tmp_path, overrides=["+standin.fail=true"])
    with pytest.raises(VerlTrainingError, match="exited with code 3.*failing as asked"):
        train_candidate(baseline_source("grpo"), "grpo", 0, tmp_path / "home", cfg,
                        poll_s=0.2)


def test_the_loop_trains_candidates_on_verl(tmp_path, monkeypatch):
    """The graph with executor 'verl': the seed GRPO and one builtin proposal train
    through verl, the metrics stream as custom events, the archive gets the verl
    evaluation record and curves like a local run's."""
    monkeypatch.setenv("POISE_VERL_POLL_S", "0.2")
    home = tmp_path / "home"
    ctx = Context(home=str(home), candidates=1, width=1, seeds=1, smoke=False,
                  executor="verl", trainer_config=_config(tmp_path),
                  warm_config=TINY["warm_config"], train_overrides=TINY["train_overrides"])
    spec = objective_from_directive("accurate")
    with Archive(home) as a:
        run_id = a.start_run(spec.directive, {})
    app = builder.compile(checkpointer=InMemorySaver())
    progress = []
    for _ns, mode, chunk in app.stream(
            {"run_id": run_id, "directive": spec.directive, "objective": spec.model_dump(),
             "round": 0, "reference": None},
            {"configurable": {"thread_id": "t"}, "recursion_limit": 200}, context=ctx,
            stream_mode=["custom", "updates"], subgraphs=True):
        if mode == "custom" and "verl_progress" in chunk:
            progress.append(chunk["verl_progress"])
    with Archive(home) as a:
        cands = a.candidates(run_id)
        assert len(cands) == 2 and all(c.status == "evaluated" for c in cands), \
            [(c.name, c.status, c.error) for c in cands]
        for c in cands:
            ev = a.evaluations(c.id)[0]
            assert ev.backend == "verl"  # the executor's backend, not a fixed "local"
            val = ev.metrics["val"]
            assert c.fitness == pytest.approx(val["overall"])  # "accurate": fitness = Overall
            assert "standin_math/pass@4" in val
            # the benchmark is archived for reports, apart from what selection read
            assert not any(k.startswith("standin_bench") for k in val)
            assert "standin_bench/acc@1" in ev.metrics["test"]
            assert [p[0] for p in ev.curves["accuracy"]] == [1, 2, 3, 4, 5, 6]
            assert a.reflections(c.id)
    assert {p["candidate"] for p in progress} == {c.name for c in cands}
    assert all(p["step"] >= 1 for p in progress)


def test_graph_run_trainer_verl_without_gpus_is_one_line_exit_2(tmp_path, capsys):
    from graph.run import main

    assert main(["--trainer", "verl", "--directive", "accurate", "--home",
                 str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot train with verl here" in err[0]
    assert not (tmp_path / "h" / "archive.db").exists()


def test_a_500_step_budget_is_not_killed_by_the_cpu_testbed_timeout(tmp_path):
    """The loop passes Context.train_timeout_s (the CPU testbed's limit) to every
    executor; a verl job ignores it: its limits are the trainer config's (no wall-clock
    limit by default, a stall heartbeat). Here a job of 2+ s runs under a 0.5 s
    train_timeout_s and finishes."""
    from trainers.executors import VerlExecutor
    from trainers.verl.config import load_verl_config

    cfg_path = _config(tmp_path, overrides=["+standin.step_sleep_s=0.4"])
    cfg = load_verl_config(cfg_path)
    assert cfg.timeout_s == 0 and cfg.stall_timeout_s >= 3600  # the defaults
    assert load_verl_config(None, env={}).total_training_steps == 500
    ex = VerlExecutor(cfg_path, poll_s=0.1)
    [out] = ex.train([{"source": baseline_source("grpo"), "seed": 0, "home": str(tmp_path / "h"),
                       "label": "grpo"}], timeout_s=0.5)
    assert out.result.ok, out.result.error
    assert out.span[1] - out.span[0] > 2.0
    assert [row["step"] for row in out.result.value["curve"]] == [1, 2, 3, 4, 5, 6]
