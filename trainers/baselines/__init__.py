"""Known algorithms, each written as a candidate module (see trainers/algorithm.py).

They are the seeds of every search and the bar it must beat. Each file is
self-contained source (imports only torch/math), exactly as a candidate is stored in the
archive, so an agent can read, mutate and cross them.
"""
from pathlib import Path

_HERE = Path(__file__).parent

BASELINES = ("grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp_baseline", "gspo", "gpg",
             "cispo")


def baseline_path(name: str) -> Path:
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return _HERE / f"{name}.py"


def baseline_source(name: str) -> str:
    return baseline_path(name).read_text()
