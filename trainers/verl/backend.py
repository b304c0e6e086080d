"""The loop's trainer node on verl: one candidate x seed -> the local backend's result.

``train_candidate`` plans the launch (trainers/verl/launcher.py), runs it to its end while
tailing verl's metrics (``on_progress(step, row)`` after each poll: the graph streams
these as the run goes), and returns the same dict the local trainer returns, so the
evaluate / analyst / archive nodes need no verl branch:

- ``final``: the last validation as the flat evaluation record (``<source>/acc@1``,
  ``<source>/pass@k``, ``valid``, ``length``, ...); ``overall`` is the configured Overall
  (``overall_weights``) or, without weights, the mean ``acc@1`` over sources;
- ``curve``: one row per training step with reward, accuracy, entropy, response_length,
  validity, kl_to_start (a metric verl did not log for a step carries its last value;
  before any value it is 0);
- ``evals``: every validation, flat, with ``step``;
- ``test``: the last validation's benchmark sets (``test_files``) alone, flat, for
  reports (archived as the evaluation's ``test`` split); ``final`` and ``evals``, which
  selection reads, hold only the validation split (``val_files``);
- ``cpu_seconds``: the launch's wall time (GPU jobs are billed in wall time);
- ``backend`` "verl" and ``log``: verl's console log.

Limits follow the job, not the CPU testbed: the trainer config's ``timeout_s`` (0: none;
the budget is ``total_training_steps``) and ``stall_timeout_s`` (a heartbeat: stopped only
when verl logs nothing for that long). A launch that exits non-zero, hits a limit,
stalls, or never validates raises ``VerlTrainingError``
with the tail of the log: the node archives the candidate as failed training.
"""
from __future__ import annotations

from pathlib import Path

CURVE_KEYS = ("reward", "accuracy", "entropy", "response_length", "validity", "kl_to_start")


class VerlTrainingError(RuntimeError):
    """A verl launch that did not produce a result; the message says why."""


def _with_overall(flat: dict) -> dict:
    out = dict(flat)
    if "overall" not in out:
        if "acc@1" not in out:
            raise VerlTrainingError("verl's validation logged no acc metric")
        out["overall"] = out["acc@1"]
    out.setdefault("length", 0.0)
    return out


def curve_rows(curves: dict[str, list[list[float]]]) -> list[dict]:
    steps = sorted({int(s) for pts in curves.values() for s, _ in pts})
    by = {k: {int(s): v for s, v in curves.get(k, [])} for k in CURVE_KEYS}
    last = {k: 0.0 for k in CURVE_KEYS}
    rows = []
    for step in steps:
        if step == 0:
            continue  # step 0 is verl's validation before training, not a batch
        for k in CURVE_KEYS:
            if step in by[k]:
                last[k] = float(by[k][step])
        rows.append({"step": step, **last})
    return rows


def _log_tail(path: str, n: int = 5) -> str:
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip()[:200] for line in lines[-n:])


def train_candidate(source: str, label: str, seed: int, home: str | Path,
                    trainer_config: str | None = None, on_progress=None,
                    timeout_s: float | None = None, poll_s: float = 10.0,
                    visible_devices: list[int | str] | None = None) -> dict:
    from trainers.verl.config import load_verl_config
    from trainers.verl.launcher import launch, plan_launch

    cfg = load_verl_config(trainer_config)
    plan = plan_launch(source, cfg, home, label, seed, visible_devices=visible_devices)

    def polled(tail):
        step = tail.last_training_step()
        if on_progress is not None and step is not None:
            on_progress(step, dict(tail.steps[step]))

    limit = cfg.timeout_s if timeout_s is None else timeout_s
    res = launch(plan, poll_s=poll_s, on_poll=polled, timeout_s=limit,
                 stall_s=cfg.stall_timeout_s)
    if res["timed_out"]:
        raise VerlTrainingError(f"verl run hit its wall-clock limit (timeout_s "
                                f"{limit:.0f} s); log {res['log']}")
    if res["stalled"]:
        raise VerlTrainingError(f"verl run stalled: no metric or console output for "
                                f"{cfg.stall_timeout_s:.0f} s (stall_timeout_s); log "
                                f"{res['log']}")
    if res["returncode"] != 0:
        raise VerlTrainingError(f"verl exited with code {res['returncode']}: "
                                f"{_log_tail(res['log'])} (log {res['log']})")
    ev = res["evaluation"]
    if ev is None:
        raise VerlTrainingError(f"verl finished without a validation (trainer.test_freq?); "
                                f"log {res['log']}")
    final = _with_overall(ev["metrics"]["val"])
    evals = [{"step": e["step"], **_with_overall({k: v for k, v in e.items() if k != "step"})}
             for e in ev["evals"]]
    test = ev["metrics"].get("test")
    return {"final": final, "curve": curve_rows(res["curves"]), "evals": evals,
            "test": _with_overall(test) if test else None,
            "cpu_seconds": res["wall_seconds"], "backend": "verl", "log": res["log"],
            "pass_at_k": ev.get("pass_at_k")}
