"""verl's metrics, read as they are written, in the graph's shapes.

Two JSONL files, both in the format of verl's file logger
(``verl.utils.tracking.FileLogger``: one ``{"step": int, "data": {name: value}}`` per
line, written with ``trainer.logger=[...,file]`` to ``$VERL_FILE_LOGGER_PATH``):
- verl's own log: training metrics each step (``actor/entropy``,
  ``response_length/mean``, ``actor/pg_clipfrac``, ``actor/kl_loss``, ...), and on
  validation steps ``val-core/<source>/acc/mean@N``, ``val-aux/<source>/valid/...``;
- the adapter's step log (``Settings.step_log``): the shaped reward, accuracy and
  validity of each training batch, which verl does not log (its ``critic/score`` is the
  outcome code).

``MetricsTail`` reads both incrementally (a partly written last line waits for the next
poll; a file that was truncated, i.e. a restarted run, is read again from the start).
``curves()`` gives the graph's curves, ``{metric: [[step, value], ...]}`` over
reward / accuracy / entropy / response_length / validity (and kl_to_start, clip_fraction,
grad_norm when logged). ``evaluation()`` turns the validation metrics into the flat
record the local backend writes (trainers/local/evaluate.py), in points (0-100):
``<source>/acc@1`` (mean@N of ``acc``: greedy accuracy when validation draws one
greedy sample, else the mean single-sample accuracy at the validation temperature),
``<source>/pass@k`` (verl's ``acc/best@k/mean``, a bootstrap estimate from N samples),
``<source>/valid``, ``<source>/length`` (characters, see trainers/verl/reward.py), the
means over sources ``acc@1`` / ``valid`` / ``length``, and ``overall`` when Overall
weights are configured and every weighted metric was measured.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

CURVES = {  # graph curve -> (file, metric)
    "reward": "poise/reward",
    "accuracy": "poise/accuracy",
    "validity": "poise/validity",
    "entropy": "actor/entropy",
    "response_length": "response_length/mean",
    "kl_to_start": "actor/kl_loss",
    "clip_fraction": "actor/pg_clipfrac",
    "grad_norm": "actor/grad_norm",
}
VAL_PREFIXES = ("val-core/", "val-aux/")


class JsonlTail:
    """Complete lines appended to a JSONL file since the last ``poll``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0
        self.bad_lines = 0
        self.restarts = 0

    def poll(self) -> list[dict]:
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return []  # not created yet
        if size < self.offset:  # truncated: verl opens its log with "wb" on (re)start
            self.offset = 0
            self.restarts += 1
        if size == self.offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(size - self.offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return []  # only a partial line so far
        self.offset += end + 1
        out = []
        for raw in chunk[:end].split(b"\n"):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                out.append({"step": int(rec["step"]), "data": dict(rec["data"])})
            except (ValueError, KeyError, TypeError):
                self.bad_lines += 1
        return out


@dataclass
class MetricsTail:
    """verl's log plus the adapter's step log, merged per step."""

    verl_log: Path
    step_log: Path | None = None
    steps: dict[int, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self):
        self._tails = [JsonlTail(self.verl_log)]
        if self.step_log is not None:
            self._tails.append(JsonlTail(self.step_log))

    def poll(self) -> list[int]:
        """Read what is new; returns the steps that changed."""
        changed = set()
        for tail in self._tails:
            restarts = tail.restarts
            records = tail.poll()
            if tail.restarts != restarts:  # a restarted run rewrites from its first step
                self.steps.clear()
            for rec in records:
                row = self.steps.setdefault(rec["step"], {})
                row.update({k: v for k, v in rec["data"].items() if _is_number(v)})
                changed.add(rec["step"])
        return sorted(changed)

    @property
    def bad_lines(self) -> int:
        return sum(t.bad_lines for t in self._tails)

    def curves(self) -> dict[str, list[list[float]]]:
        out: dict[str, list[list[float]]] = {}
        for curve, metric in CURVES.items():
            points = [[step, float(row[metric])] for step, row in sorted(self.steps.items())
                      if metric in row]
            if points:
                out[curve] = points
        return out

    def validations(self) -> list[tuple[int, dict[str, float]]]:
        """(step, raw validation metrics) for each step that validated."""
        out = []
        for step, row in sorted(self.steps.items()):
            val = {k: float(v) for k, v in row.items() if k.startswith(VAL_PREFIXES)}
            if val:
                out.append((step, val))
        return out

    def evaluation(self, overall_weights: dict | None = None) -> dict | None:
        """The last validation as an evaluation record; None before any validation."""
        vals = self.validations()
        if not vals:
            return None
        step, raw = vals[-1]
        flat = evaluation_metrics(raw, overall_weights)
        return {"backend": "verl", "step": step, "metrics": {"val": flat},
                "objectives": {k: v for k, v in (("overall", flat.get("overall")),
                                                 ("neg_length", -flat["length"]
                                                  if "length" in flat else None))
                               if v is not None},
                "curves": self.curves(),
                "evals": [{"step": s, **evaluation_metrics(r, overall_weights)}
                          for s, r in vals]}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def evaluation_metrics(raw: dict[str, float], overall_weights: dict | None = None
                       ) -> dict[str, float]:
    """verl's ``val-core|val-aux/<source>/<var>/<metric>`` -> the local record's keys."""
    per_source: dict[str, dict[str, float]] = {}
    for key, value in raw.items():
        parts = key.split("/")
        if len(parts) < 4 or parts[0] not in ("val-core", "val-aux"):
            continue
        source, var, metric = parts[1], parts[2], "/".join(parts[3:])
        out = per_source.setdefault(source, {})
        if metric.startswith("mean@"):
            name = {"acc": "acc@1", "valid": "valid", "length": "length"}.get(var)
            if name is not None:
                out[name] = value if name == "length" else 100.0 * value
        elif var == "acc" and metric.startswith("best@") and metric.endswith("/mean"):
            out[f"pass@{metric[len('best@'):-len('/mean')]}"] = 100.0 * value
    flat: dict[str, float] = {}
    for source, metrics in sorted(per_source.items()):
        flat.update({f"{source}/{k}": v for k, v in metrics.items()})
    for name in ("acc@1", "valid", "length"):
        values = [m[name] for m in per_source.values() if name in m]
        if values:
            flat[name] = sum(values) / len(values)
    if overall_weights:
        from evals.metrics import OverallSpec

        spec = OverallSpec(overall_weights)
        if all(k in flat for k in spec.keys):
            flat["overall"] = spec.overall(flat)
    return flat
