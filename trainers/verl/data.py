"""Turn MATH / GSM8K-style problems into verl's parquet format.

    python -m trainers.verl.data --input math500.jsonl --out data/verl [--source math500]

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
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = read_records(input_path)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise DataError(f"{input_path} has no records")
    source = source or source_name(input_path)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", source):
        raise DataError(f"--source {source!r}: use letters, digits, _ . - (it names the "
                        "validation metrics)")
    rows = to_verl_rows(records, source, split, str(input_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{source}.parquet"
    tmp = out.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(out)
    return out, len(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.verl.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, type=Path, help=".jsonl or .parquet problems")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--source", default=None,
                   help="data_source name (default: the input file's stem)")
    p.add_argument("--split", default="train", help="extra_info.split (default train)")
    p.add_argument("--limit", type=int, default=None, help="keep the first N records")
    args = p.parse_args(argv)
    try:
        require("verl", "python -m trainers.verl.data")
        if args.limit is not None and args.limit < 1:
            raise DataError("--limit must be at least 1")
        out, n = prepare(args.input, args.out, args.source, args.split, args.limit)
    except (DataError, MissingExtra) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} problems to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
