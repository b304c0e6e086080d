"""Optional extras: a command that needs one that is not installed says so in one line.

The default install (`pip install -c constraints.txt -e .`) runs the whole loop on the
local trainer; verl and Ray come with extras of pyproject.toml. `require(extra, what)`
raises `MissingExtra`, whose message names the command that installs the extra; entry
points print it as their one-line error and exit with code 2.
"""
from __future__ import annotations

import importlib.util

# extra -> the modules whose absence means the extra is not installed
EXTRAS: dict[str, tuple[str, ...]] = {
    "verl": ("verl", "omegaconf", "hydra", "pyarrow"),
    "ray": ("ray",),
    # --logger mlflow,tensorboard,wandb: trainers/tracking.py asks only for the loggers
    # given (``require(..., modules=...)``)
    "tracking": ("mlflow", "tensorboard", "wandb"),
}


class MissingExtra(RuntimeError):
    """An optional extra a command needs is not installed."""


def install_command(extra: str) -> str:
    return f"pip install -c constraints.txt -e \".[{extra}]\""


def missing_modules(extra: str, modules: tuple[str, ...] | None = None) -> list[str]:
    return [m for m in (EXTRAS[extra] if modules is None else modules)
            if importlib.util.find_spec(m) is None]


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise MissingExtra when ``what`` (e.g. "--trainer verl") cannot run for want of
    ``extra`` (or of those of its ``modules`` that ``what`` needs)."""
    missing = missing_modules(extra, modules)
    if missing:
        raise MissingExtra(f"{what} needs the '{extra}' extra (missing {', '.join(missing)}): "
                           f"{install_command(extra)}")
