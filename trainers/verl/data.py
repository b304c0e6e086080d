"""Turn MATH / GSM8K-style problems into verl's parquet format.

    python -m trainers.verl.data --input math500.jsonl --out data/verl [--source math500]
    python -m trainers.verl.data --input math_train.jsonl --out data/verl --val-fraction 0.05

``--val-fraction F`` carves a validation split out of the training problems (a seeded
shuffle, ``--seed``): ``<source>.parquet`` keeps the rest and ``<source>_val.parquet`` the
held-out ones (data_source ``<source>_val``). Selection reads only that split
(``val_files``); benchmark sets go in ``test_files`` and are scored for reports only.

Input: JSONL or parquet, one problem per record, with the question in ``problem``,
``question`` or ``prompt`` (a string), and the answer in ``answer`` (GSM8K's
``... #### 72`` keeps what follows ``####``), else the last ``\\boxed{}`` of
``solution`` (MATH). Output ``<out>/<source>.parquet`` with verl's columns:
``data_source`` (the source name: validation metrics are reported per source, e.g.
``val-core/math500/acc/mean@32``), ``prompt`` (a chat list with one user message: the
question and the instruction to box the final answer), ``ability``, ``reward_model``
(``{"style": "rule", "ground_truth": answer}``) and ``extra_info`` (split, index,
question, answer). A bad record stops the run with its line number (exit 2).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from trainers.extras import MissingExtra, require
from trainers.verl.grading import extract_boxed

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
QUESTION_KEYS = ("problem", "question", "prompt")


class DataError(ValueError):
    """Bad input data; the message names the file and record."""


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types; one line out
            raise DataError(f"{path} is not a readable parquet file: {e}") from None
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: expected a .jsonl or .parquet file")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{n}: expected a JSON object per line")
        records.append(rec)
    return records


def question_and_answer(rec: dict, where: str) -> tuple[str, str]:
    question = next((rec[k] for k in QUESTION_KEYS if isinstance(rec.get(k), str)), None)
    if question is None:
        if isinstance(rec.get("prompt"), list):
            raise DataError(f"{where}: already in verl's format (prompt is a chat list)")
        raise DataError(f"{where}: no question (expected one of {', '.join(QUESTION_KEYS)})")
    answer = rec.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if isinstance(answer, str) and "####" in answer:  # GSM8K: the final answer follows ####
        answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
    if not (isinstance(answer, str) and answer.strip()):
        answer = extract_boxed(rec.get("solution") or "") if isinstance(
            rec.get("solution"), str) else None
    if not answer:
        raise DataError(f"{where}: no answer (expected `answer`, or a \\boxed{{}} answer in "
                        "`solution`)")
    return question.strip(), answer.strip()


def to_verl_rows(records: list[dict], source: str, split: str, where: str) -> list[dict]:
    rows = []
    for i, rec in enumerate(records):
        question, answer = question_and_answer(rec, f"{where} record {i + 1}")
        rows.append({
            "data_source": source,
            "prompt": [{"role": "user", "content": f"{question}\n\n{INSTRUCTION}"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": answer},
            "extra_info": {"split": split, "index": i, "question": question, "answer": answer},
        })
    return rows


def source_name(path: Path) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", path.stem.lower()).strip("_") or "data"


def prepare(input_path: Path, out_dir: Path, source: str | None = None,
            split: str = "train", limit: int | None = None) -> tuple[Path, int]:
    """Write ``<out_dir>/<source>.parquet``; returns (path, rows)."""
    records = read_records(input_path)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise DataError(f"{input_path} has no records")
    source = source or source_name(input_path)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", source):
        raise DataError(f"--source {source!r}: use letters, digits, _ . - (it names the "
                        "validation metrics)")
    return _write(records, out_dir, source, split, str(input_path))


def prepare_with_validation(input_path: Path, out_dir: Path, val_fraction: float,
                            source: str | None = None, seed: int = 0,
                            limit: int | None = None) -> tuple[tuple[Path, int], tuple[Path, int]]:
    """Train and held-out validation parquet files from one input; returns
    ((train path, rows), (val path, rows))."""
    import random

    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    records = read_records(input_path)[:limit]
    if len(records) < 2:
        raise DataError(f"{input_path}: need at least 2 records to carve a validation split")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = min(len(records) - 1, max(1, round(val_fraction * len(records))))
    held = set(order[:n_val])
    source = source or source_name(input_path)
    parts = []
    for name, split, keep in ((source, "train", lambda i: i not in held),
                              (f"{source}_val", "val", lambda i: i in held)):
        rows = [r for i, r in enumerate(records) if keep(i)]
        parts.append(_write(rows, out_dir, name, split, str(input_path)))
    return parts[0], parts[1]


def _write(records: list[dict], out_dir: Path, source: str, split: str, where: str
           ) -> tuple[Path, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = to_verl_rows(records, source, split, where)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{source}.parquet"
    tmp = out.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(out)
    return out, len(rows)


def sources_of(path: str | Path) -> list[str]:
    """The data_source names in a verl parquet file (its file stem when unreadable here,
    e.g. a path on the cluster's filesystem)."""
    try:
        import pyarrow.parquet as pq

        return sorted(set(pq.read_table(path, columns=["data_source"])
                          .column("data_source").to_pylist()))
    except Exception:  # noqa: BLE001 - missing here, not parquet, no pyarrow
        return [source_name(Path(path))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.verl.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, type=Path, help=".jsonl or .parquet problems")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--source", default=None,
                   help="data_source name (default: the input file's stem)")
    p.add_argument("--split", default="train", help="extra_info.split (default train)")
    p.add_argument("--limit", type=int, default=None, help="keep the first N records")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="hold out this fraction as <source>_val.parquet (selection's split)")
    p.add_argument("--seed", type=int, default=0, help="the validation split's shuffle seed")
    args = p.parse_args(argv)
    try:
        require("verl", "python -m trainers.verl.data")
        if args.limit is not None and args.limit < 1:
            raise DataError("--limit must be at least 1")
        if args.val_fraction is not None:
            parts = prepare_with_validation(args.input, args.out, args.val_fraction,
                                            args.source, args.seed, args.limit)
        else:
            parts = (prepare(args.input, args.out, args.source, args.split, args.limit),)
    except (DataError, MissingExtra) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for out, n in parts:
        print(f"wrote {n} problems to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
