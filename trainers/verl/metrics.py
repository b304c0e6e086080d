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
``<source>/pass@k`` (the unbiased estimator of Chen et al., as the local backend, from
verl's per-sample validation dump in ``trainer.validation_data_dir`` when it is there;
else verl's ``acc/best@k/mean``, a bootstrap with replacement that underestimates it),
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
    val_dir: Path | None = None   # trainer.validation_data_dir: <step>.jsonl per validation
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

    def last_training_step(self) -> int | None:
        """The newest step that trained (verl logs its validation before training as
        step 0, a row of validation metrics only): None until one has."""
        trained = [step for step, row in self.steps.items()
                   if step >= 1 and any(not k.startswith(VAL_PREFIXES) for k in row)]
        return max(trained, default=None)

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

    def evaluation(self, overall_weights: dict | None = None,
                   test_sources: set[str] | frozenset = frozenset()) -> dict | None:
        """The last validation as an evaluation record; None before any validation.
        Sources in ``test_sources`` (the benchmarks) go to ``metrics["test"]`` only:
        ``metrics["val"]``, the objectives and ``evals``, which selection reads, come
        from the other sources (the validation split held out from training)."""
        vals = self.validations()
        if not vals:
            return None
        step, raw = vals[-1]
        flat, test, how = self._flat(step, raw, overall_weights, test_sources)
        metrics = {"val": flat, **({"test": test} if test else {})}
        return {"backend": "verl", "step": step, "metrics": metrics,
                "pass_at_k": how,
                "objectives": {k: v for k, v in (("overall", flat.get("overall")),
                                                 ("neg_length", -flat["length"]
                                                  if "length" in flat else None))
                               if v is not None},
                "curves": self.curves(),
                "evals": [{"step": s, **self._flat(s, r, overall_weights, test_sources)[0]}
                          for s, r in vals]}

    def _flat(self, step: int, raw: dict, overall_weights: dict | None,
              test_sources=frozenset()) -> tuple[dict[str, float], dict[str, float], str]:
        dump = Path(self.val_dir) / f"{step}.jsonl" if self.val_dir is not None else None
        exact = pass_at_k_from_dump(dump) if dump is not None and dump.is_file() else {}
        how = "unbiased, from verl's validation dump" if exact else "verl's bootstrap best@k"
        val_raw, test_raw = split_by_source(raw, test_sources)
        pick = lambda want: {k: v for k, v in exact.items()  # noqa: E731
                             if (k.split("/", 1)[0] in test_sources) == want}
        test = evaluation_metrics(test_raw, overall_weights, pick(True)) if test_raw else {}
        return evaluation_metrics(val_raw, overall_weights, pick(False)), test, how


def split_by_source(raw: dict[str, float], test_sources) -> tuple[dict, dict]:
    """verl's validation metrics -> (those of the other sources, those of test_sources)."""
    val, test = {}, {}
    for key, value in raw.items():
        parts = key.split("/")
        (test if len(parts) > 1 and parts[1] in test_sources else val)[key] = value
    return val, test


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def pass_at_k_from_dump(path: Path) -> dict[str, float]:
    """``<source>/pass@k`` (points) from one validation dump of verl
    (``PPOTrainer._write_generations``: one JSON object per sample with ``uid``
    ``<prompt uid>_<session>_<index>`` and the reward's extra info ``acc``, ``source``),
    for k = 1, 2, 4, ... up to the fewest samples any prompt of the source has."""
    import numpy as np

    from evals.metrics import pass_at_k

    counts: dict[str, dict[str, list[int]]] = {}
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
            source, acc = str(rec["source"]), float(rec["acc"])
        except (ValueError, KeyError, TypeError):
            continue  # an unfinished line, or a sample without POISE's extra info
        parts = str(rec.get("uid", "")).rsplit("_", 2)
        prompt = parts[0] if len(parts) == 3 else str(rec.get("input", ""))
        nc = counts.setdefault(source, {}).setdefault(prompt, [0, 0])
        nc[0] += 1
        nc[1] += int(acc > 0.5)
    out = {}
    for source, by_prompt in counts.items():
        n, c = np.array(list(by_prompt.values())).T
        k = 1
        while k <= n.min():
            out[f"{source}/pass@{k}"] = 100.0 * float(np.mean(pass_at_k(n, c, k)))
            k *= 2
        if n.min() & (n.min() - 1):  # also k = n when n is not a power of two
            out[f"{source}/pass@{n.min()}"] = 100.0 * float(np.mean(pass_at_k(n, c, n.min())))
    return out


def evaluation_metrics(raw: dict[str, float], overall_weights: dict | None = None,
                       exact_pass: dict[str, float] | None = None) -> dict[str, float]:
    """verl's ``val-core|val-aux/<source>/<var>/<metric>`` -> the local record's keys;
    ``exact_pass`` (from ``pass_at_k_from_dump``) replaces verl's bootstrap pass@k."""
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
    if exact_pass:
        for m in per_source.values():
            for k in [k for k in m if k.startswith("pass@")]:
                del m[k]
        for key, value in exact_pass.items():
            source, metric = key.split("/", 1)
            per_source.setdefault(source, {})[metric] = value
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
