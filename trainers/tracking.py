"""Experiment tracking: each candidate x seed's curves and final metrics, as one tracked run
of MLflow, TensorBoard and/or W&B (offline), under verl's metric names.

Off unless asked (``--logger mlflow,tensorboard,wandb`` of ``python -m graph.run`` and
``python -m trainers.local.compare``). One tracked run per candidate x seed, named
``<candidate>-s<seed>``, grouped by the POISE run (a compare: by its output folder):

- MLflow: experiment ``poise`` of the tracking URI (``--tracking-uri``, else
  ``$MLFLOW_TRACKING_URI``, else the local file store ``file://<home>/mlruns``: no server,
  no database). A parent run named after the group (``poise-run-<id>``) holds the runs
  (``mlflow.parentRunId``); every run is tagged ``poise_run=<id>``, ``poise_home``,
  ``poise_group`` and ``poise_group_id`` (a hash of the group's tags, what the runs are
  found by). MLflow 3.x refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE=true``
  (the store is "in maintenance mode"; its default became a sqlite database, which needs
  the full ``mlflow`` package and its migrations): opening a file store sets that
  variable when it is unset. MLflow's metric names allow no ``@``: as verl's own MLflow
  logger does, ``@`` becomes ``_at_`` (``val-core/add/acc/mean_at_1``) there only.
- TensorBoard: one log dir per run, ``<out>/tensorboard/<candidate>-s<seed>`` (the loop's
  ``<out>`` is ``<home>/runs/<run_id>``), written with torch's ``SummaryWriter`` as verl's
  tensorboard logger does.
- W&B: ``mode="offline"`` (never a login or a network call), ``group=<group>``, under
  ``<out>/wandb``; ``wandb sync <out>/wandb/offline-run-*`` uploads them later.

Metric names (one table: ``trainers.verl.metrics.CURVES``, graph curve key -> verl name):
each training step logs ``poise/reward``, ``poise/accuracy``, ``poise/validity`` (the VERL
adapter's step log), ``actor/entropy``, ``response_length/mean``, ``actor/kl_loss``,
``actor/pg_clipfrac``, ``actor/grad_norm``; the candidate's own namespaced loss metrics as
they are (``actor/pg_loss``; one that is also a curve's verl name wins, and the curve keeps
its POISE key); the local trainer's other row keys as ``poise/<key>``
(``poise/all_fail_groups``, ``poise/cpu_seconds``). The final evaluation, at the last step,
as verl's validation names, the inverse of ``trainers.verl.metrics.evaluation_metrics``
and in verl's units (fractions): ``val-core/<source>/acc/mean@1`` (acc@1),
``val-core/<source>/acc/best@k/mean`` (pass@k; POISE's value is the unbiased estimator),
``val-aux/<source>/valid/mean@1``, ``val-aux/<source>/length/mean@1`` (tokens on the local
backend, characters on verl); POISE's own in points under ``poise/``: ``poise/fitness``,
``poise/overall``, ``poise/acc@1``, ``poise/valid``, ``poise/length`` and the rest
(``poise/<source>/t1_length``). The periodic evaluations (on the smaller curve subset) log
``poise/curve_eval/{overall,acc@1,valid,length}`` at their steps. verl's ``critic/score``
is not used: in POISE's verl runs it is the reward function's outcome code (1 / 0 / -1).

Idempotent: a run already logged (MLflow: a FINISHED run of that name in the group;
TensorBoard and W&B: the marker ``.poise-logged`` written after the run closed) is
skipped, a half-written one (killed mid-log) is removed and written again, so a resumed
loop never logs a candidate twice. A failure is a one-line warning (stderr by default),
and that backend is off for the rest of the process: the candidate itself is archived
before it is tracked, so nothing of it is lost.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from trainers.verl.metrics import CURVES

LOGGERS = ("mlflow", "tensorboard", "wandb")
MODULES = {"mlflow": ("mlflow",), "tensorboard": ("tensorboard",), "wandb": ("wandb",)}
EXPERIMENT = "poise"
MARKER = ".poise-logged"
_lock = threading.Lock()  # W&B's run state is global; one run is written at a time


# ----------------------------------------------------------------------------- flags

def parse_loggers(text: str) -> list[str]:
    """``"mlflow,tensorboard"`` -> ``["mlflow", "tensorboard"]``; ValueError on an unknown
    name or an empty list."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in LOGGERS]
    if unknown or not names:
        raise ValueError(f"unknown logger {', '.join(unknown) or repr(text)}: "
                         f"choose from {', '.join(LOGGERS)} (comma-separated)")
    return list(dict.fromkeys(names))


def check_loggers(names: Iterable[str], tracking_uri: str | None = None) -> None:
    """Refuse, before anything is written: an unknown logger (ValueError), one whose
    library is missing (trainers.extras.MissingExtra, naming the install command), or a
    tracking URI without mlflow among the loggers (ValueError)."""
    from trainers.extras import require

    names = list(names)
    if names:
        parse_loggers(",".join(names))
    for name in names:
        require("tracking", f"--logger {name}", modules=MODULES[name])
    if tracking_uri and "mlflow" not in names:
        raise ValueError("--tracking-uri is MLflow's: it needs --logger mlflow")


def resolve_tracking_uri(tracking_uri: str | None, home: str | Path) -> str:
    """The MLflow store: the flag, else $MLFLOW_TRACKING_URI, else ``<home>/mlruns``."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        Path(home, "mlruns").absolute().as_uri()


# ----------------------------------------------------------------------------- metric names

def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def step_metrics(row: dict) -> dict[str, float]:
    """One curve row (trainers/local/trainer.py) -> verl's names (see the module doc).
    The candidate's own namespaced metrics come first: when it reports a verl name itself
    (GRPO's ``actor/kl_loss``, its KL loss term), the trainer's curve of that name keeps
    its POISE key (``poise/kl_to_start``, the sampled batch's KL to the start policy)."""
    out = {k: float(v) for k, v in row.items() if "/" in k and _number(v)}
    for key, value in row.items():
        if key == "step" or "/" in key or not _number(value):
            continue
        name = CURVES.get(key)
        out[name if name is not None and name not in out else f"poise/{key}"] = float(value)
    return out


def final_metrics(final: dict, fitness: float | None = None) -> dict[str, float]:
    """A flat final evaluation (points) -> verl's validation names (fractions) plus
    POISE's own under ``poise/``; ``trainers.verl.metrics.evaluation_metrics`` reads the
    verl names back into the same record."""
    out: dict[str, float] = {}
    for key, value in final.items():
        if not _number(value):
            continue
        source, _, metric = key.rpartition("/")
        value = float(value)
        if not source:
            out[f"poise/{metric}"] = value
        elif metric == "acc@1":
            out[f"val-core/{source}/acc/mean@1"] = value / 100
        elif metric == "valid":
            out[f"val-aux/{source}/valid/mean@1"] = value / 100
        elif metric == "length":
            out[f"val-aux/{source}/length/mean@1"] = value
        elif re.fullmatch(r"pass@\d+", metric):
            out[f"val-core/{source}/acc/best@{metric[5:]}/mean"] = value / 100
        else:
            out[f"poise/{key}"] = value
    if fitness is not None:
        out["poise/fitness"] = float(fitness)
    return out


def run_steps(result: dict, fitness: float | None = None) -> dict[int, dict[str, float]]:
    """step -> metrics of one seed's training result (``curve``, ``evals``, ``final``)."""
    steps: dict[int, dict[str, float]] = {}
    for row in result.get("curve") or []:
        steps.setdefault(int(row["step"]), {}).update(step_metrics(row))
    for ev in result.get("evals") or []:
        steps.setdefault(int(ev["step"]), {}).update(
            {f"poise/curve_eval/{k}": float(ev[k]) for k in ("overall", "acc@1", "valid",
                                                             "length") if _number(ev.get(k))})
    last = int(result.get("steps_done") or max(steps, default=0))
    if result.get("final"):
        steps.setdefault(last, {}).update(final_metrics(result["final"], fitness))
    return dict(sorted(steps.items()))


def mlflow_name(name: str) -> str:
    """verl's MLflow key sanitizing: ``@`` -> ``_at_``, other disallowed characters -> _."""
    name = re.sub(r"/+", "/", name.replace("@", "_at_"))
    return re.sub(r"[^/\w.\- :]", "_", name)


# ----------------------------------------------------------------------------- backends

def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:limit] or "run"


class _MLflow:
    def __init__(self, t: "Trackers"):
        self.t = t
        if self.t.tracking_uri.startswith("file:") or "://" not in self.t.tracking_uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # see the module doc
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=t.tracking_uri)
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            try:
                self.experiment = self.client.create_experiment(EXPERIMENT)
            except Exception:  # noqa: BLE001 - made meanwhile by another process
                self.experiment = self.client.get_experiment_by_name(EXPERIMENT).experiment_id
        else:
            self.experiment = exp.experiment_id
        self.parent = self._parent()

    def _search(self, role: str) -> list:
        return self.client.search_runs(
            [self.experiment], f"tags.poise_group_id = '{self.t.group_id}' and "
                               f"tags.poise_role = '{role}'", max_results=50_000)

    def _parent(self) -> str:
        found = self._search("group")
        if found:
            return found[0].info.run_id
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment, run_name=self.t.group,
                                     tags={**self.t.tags(), "poise_role": "group"})
        params = [Param(k[:250], str(v)[:500]) for k, v in self.t.config.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i:i + 100])
        self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def log(self, name: str, steps: dict, tags: dict) -> bool:
        from mlflow.entities import Metric

        for old in [r for r in self._search("run") if r.info.run_name == name]:
            if old.info.status == "FINISHED":
                return False
            self.client.delete_run(old.info.run_id)  # half-written by a killed process
        run = self.client.create_run(self.experiment, run_name=name, tags={
            **self.t.tags(), **tags, "poise_role": "run", "mlflow.parentRunId": self.parent})
        now = int(time.time() * 1000)
        metrics = [Metric(mlflow_name(k), v, now, step)
                   for step, row in steps.items() for k, v in row.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000])
        self.client.set_terminated(run.info.run_id)
        return True


class _TensorBoard:
    def __init__(self, t: "Trackers"):
        self.root = t.out_dir / "tensorboard"

    def log(self, name: str, steps: dict, tags: dict) -> bool:
        from torch.utils.tensorboard import SummaryWriter

        logdir = self.root / name
        if (logdir / MARKER).is_file():
            return False
        shutil.rmtree(logdir, ignore_errors=True)  # half-written by a killed process
        writer = SummaryWriter(log_dir=str(logdir))
        try:
            for step, row in steps.items():
                for key, value in row.items():
                    writer.add_scalar(key, value, step)
            writer.add_text("poise/tags", json.dumps(tags, sort_keys=True), 0)
        finally:
            writer.close()
        (logdir / MARKER).write_text(json.dumps(tags, sort_keys=True))
        return True


class _Wandb:
    def __init__(self, t: "Trackers"):
        self.t = t
        self.root = t.out_dir / "wandb"  # wandb.init(dir=out) writes out/wandb/

    def run_id(self, name: str) -> str:
        digest = hashlib.sha256(f"{self.t.group_id}:{name}".encode()).hexdigest()[:8]
        return f"{_slug(name)}-{digest}"

    def log(self, name: str, steps: dict, tags: dict) -> bool:
        import wandb

        rid = self.run_id(name)
        marker = self.root / MARKER / rid
        if marker.is_file():
            return False
        for old in self.root.glob(f"offline-run-*-{rid}"):
            shutil.rmtree(old, ignore_errors=True)  # half-written by a killed process
        self.root.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")  # no Weave hints or set-up
        settings = wandb.Settings(silent=True, save_code=False, disable_git=True,
                                  console="off", x_disable_stats=True, x_disable_meta=True)
        run = wandb.init(mode="offline", project=EXPERIMENT, group=self.t.group, name=name,
                         id=rid, dir=str(self.t.out_dir), reinit="create_new",
                         config={**self.t.config, **tags}, tags=[self.t.group],
                         settings=settings)
        try:
            for step, row in steps.items():
                run.log(row, step=step)
        finally:
            run.finish()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(name)
        return True


BACKENDS = {"mlflow": _MLflow, "tensorboard": _TensorBoard, "wandb": _Wandb}


# ----------------------------------------------------------------------------- trackers

def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class Trackers:
    """The tracking backends of one group (a POISE run, a compare), opened on first use."""

    def __init__(self, names: Iterable[str], out_dir: str | Path, group: str, *,
                 tracking_uri: str, group_tags: dict | None = None,
                 config: dict | None = None, warn: Callable[[str], None] = _stderr):
        self.names = list(names)
        self.out_dir = Path(out_dir).absolute()
        self.group = group
        self.tracking_uri = tracking_uri
        self.group_tags = {k: str(v) for k, v in (group_tags or {"poise_group": group}).items()}
        self.group_id = hashlib.sha256(json.dumps(self.group_tags, sort_keys=True)
                                       .encode()).hexdigest()[:16]
        self.config = {k: v if isinstance(v, (int, float, str, bool)) or v is None
                       else json.dumps(v, sort_keys=True, default=str)
                       for k, v in (config or {}).items()}
        self.warn = warn
        self._open: dict[str, object] = {}
        self.off: dict[str, str] = {}  # backend -> why it was turned off

    def tags(self) -> dict[str, str]:
        return {**self.group_tags, "poise_group": self.group, "poise_group_id": self.group_id}

    def where(self) -> str:
        """Where each backend writes, for a run header."""
        parts = {"mlflow": f"mlflow {self.tracking_uri} (experiment {EXPERIMENT})",
                 "tensorboard": f"tensorboard {self.out_dir / 'tensorboard'}",
                 "wandb": f"wandb offline {self.out_dir / 'wandb'} (group {self.group})"}
        return ", ".join(parts[n] for n in self.names)

    def log_run(self, candidate: str, seed: int, result: dict, fitness: float | None = None,
                tags: dict | None = None) -> dict[str, str]:
        """Log one candidate x seed (a training result: ``curve``, ``evals``, ``final``) to
        every backend. Returns backend -> "logged" | "skipped" (already there) | "off: why";
        a failure warns once and turns that backend off."""
        name = f"{candidate}-s{seed}"
        tags = {k: str(v) for k, v in {"candidate": candidate, "seed": seed,
                                        **(tags or {})}.items()}
        steps = {s: {k: v for k, v in row.items() if math.isfinite(v)}
                 for s, row in run_steps(result, fitness).items()}
        out = {}
        with _lock:
            for backend in self.names:
                if backend in self.off:
                    out[backend] = f"off: {self.off[backend]}"
                    continue
                try:
                    if backend not in self._open:
                        self._open[backend] = BACKENDS[backend](self)
                    out[backend] = "logged" if self._open[backend].log(name, steps, tags) \
                        else "skipped"
                except Exception as e:  # noqa: BLE001 - tracking never fails the candidate
                    why = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}" \
                        if str(e).strip() else type(e).__name__
                    self.off[backend] = why
                    out[backend] = f"off: {why}"
                    self.warn(f"{backend} tracking failed on {name} ({why}); it is off for "
                              "the rest of this process (the candidate is archived)")
        return out

    def log_candidate(self, candidate: str, results: list[dict | None],
                      tags: dict | None = None) -> list[dict[str, str]]:
        """Every seed of a candidate (the loop's per-seed results, ``fitness`` in each)."""
        return [self.log_run(candidate, int(r.get("seed", seed)), r, r.get("fitness"), tags)
                for seed, r in enumerate(results) if r]


_runs: dict[tuple, Trackers] = {}
_runs_lock = threading.Lock()


def run_trackers(home: str | Path, run_id: int, names: Iterable[str],
                 tracking_uri: str | None = None, config: dict | None = None) -> Trackers:
    """The loop's trackers of POISE run ``run_id`` in ``home`` (one per process): group
    ``poise-run-<id>``, files under ``<home>/runs/<id>/``."""
    home = Path(home).absolute()
    key = (str(home), run_id, tuple(names), tracking_uri)
    with _runs_lock:
        if key not in _runs:
            _runs[key] = Trackers(
                names, home / "runs" / str(run_id), f"poise-run-{run_id}",
                tracking_uri=resolve_tracking_uri(tracking_uri, home),
                group_tags={"poise_run": run_id, "poise_home": home}, config=config)
        return _runs[key]
