"""Experiment tracking (trainers/tracking.py) against the real local backends: MLflow's file
store read back with ``MlflowClient``, TensorBoard event files with TensorBoard's
``EventAccumulator``, W&B offline runs with W&B's own reader of the ``.wandb`` transaction
log (``wandb leet inspect --json``). The training results are real (the tiny trainer), and
two tests go through the loop (``python -m graph.run``)."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from trainers.tracking import Trackers, final_metrics, step_metrics
from trainers.verl.metrics import CURVES, evaluation_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny_context.json"
ALL = ["mlflow", "tensorboard", "wandb"]
SCRUB = ("POISE_HOME", "POISE_DB_URL", "POISE_MODEL", "CHROMA_HOST", "CHROMA_PORT",
         "OPENAI_API_KEY", "OPENAI_BASE_URL", "LANGSMITH_TRACING", "MLFLOW_TRACKING_URI")


@pytest.fixture(scope="module")
def results(tiny_warm, tiny_train_config):
    """Two seeds of GRPO on the tiny testbed, as the loop's per-seed result dicts."""
    from trainers.algorithm import load_algorithm
    from trainers.local.trainer import train

    _, _, model = tiny_warm
    return [train(load_algorithm("grpo"), model, seed=s, cfg=tiny_train_config).as_dict()
            for s in (0, 1)]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update(extra, COLUMNS="200", PYTHONPATH=os.pathsep.join(
        [str(REPO / "tests" / "hide_modules")] * ("POISE_TEST_HIDE_MODULES" in extra)
        + [str(REPO)]))
    return env


# ----------------------------------------------------------------------------- readers

def mlflow_runs(uri: str, **tags) -> list:
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("poise")
    where = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    return client, client.search_runs([exp.experiment_id], where) if exp else []


def tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def wandb_records(run_dir: Path) -> list[dict]:
    """W&B's own reader of an offline run's .wandb file (wandb-core, via its CLI)."""
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json",
                           str(run_dir)], capture_output=True, text=True, timeout=120,
                          env=_env(WANDB_MODE="offline"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def wandb_run(run_dir: Path) -> tuple[dict, dict[int, dict]]:
    """(the run record, step -> the history row logged at it)."""
    recs = wandb_records(run_dir)
    run = next(r["run"] for r in recs if r["type"] == "run")
    history = {int(r["history"]["step"]["num"]): r["history"]["item"]
               for r in recs if r["type"] == "history"}
    return run, history


# ----------------------------------------------------------------------------- names

def test_step_and_final_metrics_take_verls_names(results):
    row = results[0]["curve"][0]
    names = step_metrics(row)
    for curve, verl in CURVES.items():  # one table, shared with trainers/verl/metrics.py
        assert verl in names, verl
    assert names["actor/entropy"] == row["entropy"]
    assert names["response_length/mean"] == row["response_length"]
    assert names["poise/reward"] == row["reward"]
    assert names["actor/grad_norm"] == row["grad_norm"]
    # GRPO reports verl's actor/kl_loss itself: it wins, the trainer's KL keeps its key
    assert names["actor/kl_loss"] == row["actor/kl_loss"]
    assert names["poise/kl_to_start"] == row["kl_to_start"]
    assert names["poise/all_fail_groups"] == row["all_fail_groups"]
    assert "step" not in names and not any(k.startswith("poise/actor") for k in names)

    final = results[0]["final"]
    fm = final_metrics(final, fitness=12.5)
    assert fm["poise/fitness"] == 12.5 and fm["poise/overall"] == final["overall"]
    assert fm["val-core/add2/acc/mean@1"] == pytest.approx(final["add2/acc@1"] / 100)
    assert fm["val-core/add5/acc/best@16/mean"] == pytest.approx(final["add5/pass@16"] / 100)
    # verl's reader (trainers/verl/metrics.py) turns the names back into the local record
    back = evaluation_metrics(fm)
    for key in back:
        assert back[key] == pytest.approx(final[key]), key
    assert {k for k in final if k.endswith(("/acc@1", "/valid", "/length"))
            or "/pass@" in k} <= set(back)


# ----------------------------------------------------------------------------- backends

def _trackers(tmp_path: Path, names=ALL, uri: str | None = None, warn=None) -> Trackers:
    kw = {"warn": warn} if warn else {}
    return Trackers(names, tmp_path / "runs" / "7", "poise-run-7",
                    tracking_uri=uri or (tmp_path / "mlruns").as_uri(),
                    group_tags={"poise_run": 7, "poise_home": tmp_path},
                    config={"directive": "accurate"}, **kw)


def test_each_backend_holds_one_run_per_candidate_seed_read_back(results, tmp_path):
    t = _trackers(tmp_path)
    for seed, r in enumerate(results):
        assert t.log_run("grpo", seed, r, fitness=40.0 + seed, tags={"candidate_id": 1}) \
            == {b: "logged" for b in ALL}
    steps = [row["step"] for row in results[0]["curve"]]
    last = results[0]["steps_done"]

    client, runs = mlflow_runs(t.tracking_uri, poise_run=7, poise_role="run")
    assert sorted(r.info.run_name for r in runs) == ["grpo-s0", "grpo-s1"]
    _, (parent,) = mlflow_runs(t.tracking_uri, poise_run=7, poise_role="group")
    assert parent.info.run_name == "poise-run-7" and parent.data.params["directive"] == "accurate"
    for run in runs:
        seed = int(run.data.tags["seed"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["candidate"] == "grpo" and run.data.tags["candidate_id"] == "1"
        hist = client.get_metric_history(run.info.run_id, "actor/entropy")
        assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == \
            [(row["step"], pytest.approx(row["entropy"])) for row in results[seed]["curve"]]
        (acc,) = client.get_metric_history(run.info.run_id, "val-core/add2/acc/mean_at_1")
        assert acc.step == last and acc.value == pytest.approx(
            results[seed]["final"]["add2/acc@1"] / 100)
        assert run.data.metrics["poise/fitness"] == 40.0 + seed

    tb = tmp_path / "runs" / "7" / "tensorboard"
    assert sorted(p.name for p in tb.iterdir()) == ["grpo-s0", "grpo-s1"]
    for seed in (0, 1):
        scalars = tb_scalars(tb / f"grpo-s{seed}")
        assert [s for s, _ in scalars["response_length/mean"]] == steps
        assert scalars["actor/pg_clipfrac"][0][1] == pytest.approx(
            results[seed]["curve"][0]["actor/pg_clipfrac"])
        assert scalars["val-core/add5/acc/best@16/mean"] == [
            (last, pytest.approx(results[seed]["final"]["add5/pass@16"] / 100))]
        assert scalars["poise/fitness"] == [(last, 40.0 + seed)]

    wb = sorted((tmp_path / "runs" / "7" / "wandb").glob("offline-run-*"))
    assert len(wb) == 2
    for run_dir in wb:
        run, history = wandb_run(run_dir)
        seed = int(run["display_name"][-1])
        assert run["display_name"] == f"grpo-s{seed}" and run["run_group"] == "poise-run-7"
        assert run["project"] == "poise"
        assert sorted(history) == steps
        assert history[1]["poise/accuracy"] == pytest.approx(
            results[seed]["curve"][0]["accuracy"])
        assert history[last]["val-core/add2/acc/mean@1"] == pytest.approx(
            results[seed]["final"]["add2/acc@1"] / 100)

    # Logged again (a resumed run replaying the node): nothing is written twice.
    again = _trackers(tmp_path)
    assert again.log_run("grpo", 0, results[0], 40.0) == {b: "skipped" for b in ALL}
    assert len(mlflow_runs(t.tracking_uri, poise_run=7, poise_role="run")[1]) == 2
    assert len(list((tb / "grpo-s0").glob("events.out.tfevents.*"))) == 1
    assert len(list((tmp_path / "runs" / "7" / "wandb").glob("offline-run-*"))) == 2


def test_a_half_written_run_is_written_again_once(results, tmp_path):
    """A process killed while logging leaves a RUNNING MLflow run and unmarked TensorBoard
    and W&B folders: the next log replaces them, and still one run per name."""
    t = _trackers(tmp_path)
    assert set(t.log_run("grpo", 0, results[0], 1.0).values()) == {"logged"}
    client, (run,) = mlflow_runs(t.tracking_uri, poise_run=7, poise_role="run")
    client.update_run(run.info.run_id, status="RUNNING")
    out = tmp_path / "runs" / "7"
    (out / "tensorboard" / "grpo-s0" / ".poise-logged").unlink()
    for marker in (out / "wandb" / ".poise-logged").iterdir():
        marker.unlink()
    assert _trackers(tmp_path).log_run("grpo", 0, results[0], 2.0) == \
        {b: "logged" for b in ALL}
    _, runs = mlflow_runs(t.tracking_uri, poise_run=7, poise_role="run")
    assert [(r.info.run_name, r.info.status, r.data.metrics["poise/fitness"])
            for r in runs] == [("grpo-s0", "FINISHED", 2.0)]
    assert len(list((out / "tensorboard" / "grpo-s0").glob("events.out.tfevents.*"))) == 1
    assert tb_scalars(out / "tensorboard" / "grpo-s0")["poise/fitness"][0][1] == 2.0
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    _, history = wandb_run(run_dir)
    assert history[results[0]["steps_done"]]["poise/fitness"] == 2.0


def test_a_failing_backend_warns_once_and_the_others_still_log(results, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    warnings: list[str] = []
    t = _trackers(tmp_path, ["mlflow", "tensorboard"], uri=(blocker / "mlruns").as_uri(),
                  warn=warnings.append)
    first = t.log_run("grpo", 0, results[0], 1.0)
    assert first["tensorboard"] == "logged" and first["mlflow"].startswith("off: ")
    second = t.log_run("grpo", 1, results[1], 1.0)
    assert second["tensorboard"] == "logged" and second["mlflow"] == first["mlflow"]
    assert len(warnings) == 1 and "mlflow tracking failed on grpo-s0" in warnings[0]
    assert "\n" not in warnings[0]
    assert sorted(p.name for p in (tmp_path / "runs" / "7" / "tensorboard").iterdir()) == \
        ["grpo-s0", "grpo-s1"]


# ----------------------------------------------------------------------------- the loop

def _loop(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graph.run", "--home", str(home),
                           "--directive", "accurate", "--candidates", "1", "--width", "1",
                           "--config", str(TINY), "--no-smoke", "--quiet", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=_env())


def _archived(home: Path) -> list[tuple[int, str, int, float | None]]:
    """(candidate id, name, seed, fitness) of every archived evaluation."""
    con = sqlite3.connect(home / "archive.db")
    try:
        return con.execute("select c.id, c.name, e.seed, e.fitness from evaluation e join "
                           "candidate c on c.id = e.candidate_id order by c.id, e.seed"
                           ).fetchall()
    finally:
        con.close()


def test_the_loop_logs_every_candidate_seed_to_every_backend(tmp_path):
    home = tmp_path / "home"
    r = _loop(home, "--seeds", "2", "--logger", "mlflow,tensorboard,wandb")
    assert r.returncode == 0, r.stderr[-3000:]
    header = " ".join(r.stdout.split())
    assert f"tracking: mlflow {(home / 'mlruns').as_uri()} (experiment poise)" in header
    assert "warning" not in r.stderr
    evals = _archived(home)
    assert len(evals) == 4 and {e[2] for e in evals} == {0, 1}  # grpo + 1 candidate, 2 seeds
    names = {f"{name}-s{seed}": (cid, fit) for cid, name, seed, fit in evals}

    client, runs = mlflow_runs((home / "mlruns").as_uri(), poise_run=1, poise_role="run")
    assert sorted(x.info.run_name for x in runs) == sorted(names)
    for x in runs:
        cid, fit = names[x.info.run_name]
        assert x.data.tags["candidate_id"] == str(cid)
        assert x.data.metrics["poise/fitness"] == pytest.approx(fit)
        steps = [m.step for m in client.get_metric_history(x.info.run_id, "actor/entropy")]
        assert sorted(steps) == [1, 2, 3, 4]  # tiny_context.json: 4 steps

    tb = home / "runs" / "1" / "tensorboard"
    assert sorted(p.name for p in tb.iterdir()) == sorted(names)
    for name in names:
        assert [s for s, _ in tb_scalars(tb / name)["poise/accuracy"]] == [1, 2, 3, 4]

    wb = sorted((home / "runs" / "1" / "wandb").glob("offline-run-*"))
    seen = {}
    for run_dir in wb:
        run, history = wandb_run(run_dir)
        assert run["run_group"] == "poise-run-1"
        seen[run["display_name"]] = history[4]["poise/fitness"]
    assert seen == {n: pytest.approx(fit) for n, (_, fit) in names.items()}

    # The loggers are saved with the run: --resume keeps them, --logger replaces them.
    from graph.request import RunRequest
    from graph.runner import prepare

    for given, kept in ((None, ALL), (["tensorboard"], ["tensorboard"])):
        _, archive, _, _, ctx, *_ = prepare(RunRequest(resume=1, home=str(home),
                                                       loggers=given))
        archive.close()
        assert ctx.loggers == kept and ctx.tracking_uri is None


def test_a_tracking_failure_in_the_loop_is_a_warning_and_loses_no_candidate(tmp_path):
    home = tmp_path / "home"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = _loop(home, "--logger", "mlflow,tensorboard",
              "--tracking-uri", (blocker / "mlruns").as_uri())
    assert r.returncode == 0, r.stderr[-3000:]
    warned = [line for line in r.stderr.splitlines() if "tracking failed" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: mlflow tracking failed on ")
    evals = _archived(home)
    assert len(evals) == 2  # both candidates archived with their evaluation
    tb = home / "runs" / "1" / "tensorboard"
    assert sorted(p.name for p in tb.iterdir()) == sorted(f"{n}-s{s}" for _, n, s, _ in evals)


def test_compare_logs_each_algorithm_seed_once(tiny_warm, tiny_train_config, tmp_path):
    from trainers.local import compare

    warm, home, _ = tiny_warm
    out = tmp_path / "cmp"
    argv = ["--algorithms", "grpo,dr_grpo", "--seeds", "1", "--out", str(out), "--home",
            str(home), "--workers", "2", "--quiet", "--logger", "mlflow,tensorboard"]
    compare.main(argv, train_config=tiny_train_config, warm_config=warm)
    uri = (out / "mlruns").as_uri()
    _, runs = mlflow_runs(uri, poise_role="run", poise_group="compare-cmp")
    assert sorted(r.info.run_name for r in runs) == ["dr_grpo-s0", "grpo-s0"]
    assert all(r.data.tags["poise_compare"] == str(out.absolute()) for r in runs)
    assert "poise/overall" in runs[0].data.metrics and "poise/fitness" not in runs[0].data.metrics
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == ["dr_grpo-s0", "grpo-s0"]
    compare.main(argv, train_config=tiny_train_config, warm_config=warm)  # resumes
    assert len(mlflow_runs(uri, poise_role="run", poise_group="compare-cmp")[1]) == 2
    assert len(list((out / "tensorboard" / "grpo-s0").glob("events.out.tfevents.*"))) == 1


# ----------------------------------------------------------------------------- bad input

HIDE = "POISE_TEST_HIDE_MODULES"
EXTRA = "needs the 'tracking' extra (missing {m}): pip install -c constraints.txt -e \".[tracking]\""
BAD = {
    "run-unknown-logger": ("graph.run", ["--logger", "mlflow,bogus"], {},
                           "unknown logger bogus"),
    "run-uri-without-mlflow": ("graph.run", ["--tracking-uri", "file:/tmp/x"], {},
                               "--tracking-uri is MLflow's: it needs --logger mlflow"),
    "run-no-mlflow": ("graph.run", ["--logger", "mlflow"], {HIDE: "mlflow"},
                      "--logger mlflow " + EXTRA.format(m="mlflow")),
    "run-no-tensorboard": ("graph.run", ["--logger", "tensorboard,wandb"],
                           {HIDE: "tensorboard"},
                           "--logger tensorboard " + EXTRA.format(m="tensorboard")),
    "compare-no-wandb": ("trainers.local.compare", ["--logger", "wandb"], {HIDE: "wandb"},
                         "--logger wandb " + EXTRA.format(m="wandb")),
    "compare-unknown-logger": ("trainers.local.compare", ["--logger", "neptune"], {},
                               "unknown logger neptune"),
}


def test_bad_tracking_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    def one(name):
        module, args, env, _ = BAD[name]
        where = tmp_path / name
        base = ["--directive", "accurate", "--home", str(where / "home")] \
            if module == "graph.run" else \
            ["--algorithms", "grpo", "--out", str(where / "out"), "--home", str(where / "home")]
        return subprocess.run([sys.executable, "-m", module, *base, *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300, env=_env(**env))

    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(BAD, pool.map(one, BAD)))
    for name, proc in procs.items():
        err = proc.stderr.strip()
        assert proc.returncode == 2, (name, proc.returncode, err[-2000:])
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert BAD[name][3] in err, (name, err)
        assert not (tmp_path / name).exists(), name  # neither home nor out was created
