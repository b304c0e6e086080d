"""The VERL trainer's settings: model, data, GPUs, Ray address, the GRPO recipe's sizes.

Read from a YAML file (a top-level ``verl:`` section, or the fields at top level), or a
``.env``-style file of ``POISE_VERL_<FIELD>=value`` lines, given by ``--trainer-config
FILE`` or ``$POISE_TRAINER_CONFIG``; ``POISE_VERL_<FIELD>`` environment variables fill
what the file leaves out (an explicit value beats an env var). Unknown keys, bad types
and missing files are errors (``ConfigError``), never silently defaulted.

Example (verl.yaml)::

    verl:
      model: Qwen/Qwen2.5-Math-1.5B
      train_files: [data/verl/math_train.parquet]       # trainers.verl.data --val-fraction
      val_files: [data/verl/math_train_val.parquet]     # held out: selection reads this
      test_files: [data/verl/math500.parquet, data/verl/aime24.parquet]  # reports only
      n_gpus_per_node: 8
      ray_address: http://head:8265      # omit for one node
      overall_weights: {aime24/pass@32: 0.5, math500/acc@1: 0.5}

Without a file the data is the tiny sample shipped in data/verl/sample/ (160 MATH-shaped
problems split 140 train / 20 validation, 16 GSM8K-shaped as the test set), so
``--trainer verl --dry-run`` on a fresh clone prints a command that runs as is.
"""
from __future__ import annotations

import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "verl" / "sample"
ENV_PREFIX = "POISE_VERL_"
CONFIG_ENV = "POISE_TRAINER_CONFIG"


class ConfigError(ValueError):
    """A bad trainer config; the message says what and where."""


def _f(default, description: str):
    meta = {"description": description}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(kw_only=True)
class VerlConfig:
    model: str = _f("Qwen/Qwen2.5-Math-1.5B", "actor model: HF id or local path")
    train_files: list = _f([str(SAMPLE_DIR / "math_sample.parquet")],
                           "training parquet files (python -m trainers.verl.data)")
    val_files: list = _f([str(SAMPLE_DIR / "math_sample_val.parquet")],
                         "validation parquet files held out from the training data "
                         "(trainers.verl.data --val-fraction): the only numbers selection "
                         "reads")
    test_files: list = _f([str(SAMPLE_DIR / "gsm8k_sample.parquet")],
                          "benchmark parquet files: scored at each validation, recorded as "
                          "the 'test' split for reports, never read by selection")
    n_gpus_per_node: int = _f(8, "GPUs per node")
    gpus: list = _f([], "this node's GPU ids that verl jobs may use (one node only); "
                        "concurrent jobs (--width) each get n_gpus_per_node of "
                        "them, never shared, as CUDA_VISIBLE_DEVICES; empty: every "
                        "GPU visible here ($CUDA_VISIBLE_DEVICES if set, else "
                        "torch.cuda.device_count())")
    nnodes: int = _f(1, "nodes")
    cluster_gpus: int = _f(0, "with ray_address: the cluster's GPUs POISE's jobs may use; "
                              "a job is submitted only when its n_gpus_per_node x nnodes "
                              "fit beside the running ones (the rest wait); 0: submit "
                              "every job up to --width at once")
    ray_address: str = _f("", "Ray dashboard address (http://head:8265): submit with "
                              "`ray job submit`; empty: run on this node")
    workdir: str = _f("", "where plugins, metrics and checkpoints go (default "
                          "<home>/verl); on a cluster it must be a shared filesystem")
    rollout_name: str = _f("vllm", "rollout engine: vllm or sglang")
    rollout_n: int = _f(8, "samples per prompt (the group size G)")
    train_batch_size: int = _f(128, "prompts per step")
    ppo_mini_batch_size: int = _f(64, "prompts per optimizer update")
    ppo_micro_batch_size_per_gpu: int = _f(4, "sequences per forward/backward on one GPU")
    log_prob_micro_batch_size_per_gpu: int = _f(8, "sequences per log-prob pass on one GPU")
    max_prompt_length: int = _f(1024, "prompt budget in tokens")
    max_response_length: int = _f(3072, "response budget in tokens (the hooks' max_length)")
    total_training_steps: int = _f(500, "training steps")
    test_freq: int = _f(25, "validate every this many steps (and at the end)")
    save_freq: int = _f(-1, "checkpoint every this many steps (-1: never)")
    val_n: int = _f(32, "samples per validation prompt (pass@k needs k <= val_n)")
    val_temperature: float = _f(1.0, "validation sampling temperature")
    lr: float = _f(1e-6, "actor learning rate")
    rollout_tp: int = _f(1, "tensor parallel size of the rollout engine")
    gpu_memory_utilization: float = _f(0.6, "rollout engine's share of GPU memory")
    project_name: str = _f("poise", "trainer.project_name")
    overall_weights: dict = _f({}, "Overall = sum of weight * <source>/<metric> over "
                                   "validation metrics, e.g. {aime24/pass@32: 0.2, ...}; "
                                   "empty: no Overall")
    stall_timeout_s: float = _f(7200.0, "stop a launch when verl has logged no new metric "
                                        "for this long (model load and the first "
                                        "validation included); 0: never")
    timeout_s: float = _f(0.0, "hard wall-clock limit of one launch; 0: none (the budget "
                               "is total_training_steps, not a CPU-testbed timeout)")
    overrides: list = _f([], "extra Hydra overrides, appended last (they win)")
    entrypoint: str = _f("verl.trainer.main_ppo", "the trainer: a module run with python -m, "
                                                   "or a .py script (a verl recipe's main "
                                                   "takes the same overrides)")

    def __post_init__(self):
        problems = []
        for name in ("n_gpus_per_node", "nnodes", "rollout_n", "train_batch_size",
                     "ppo_mini_batch_size", "ppo_micro_batch_size_per_gpu",
                     "log_prob_micro_batch_size_per_gpu", "max_prompt_length",
                     "max_response_length", "total_training_steps", "val_n", "rollout_tp"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("stall_timeout_s", "timeout_s"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (0: no limit), got {getattr(self, name)}")
        both = sorted(set(map(str, self.val_files)) & set(map(str, self.test_files)))
        if both:
            problems.append(f"{both} are in both val_files and test_files: selection would "
                            "read benchmark numbers")
        if self.cluster_gpus < 0:
            problems.append(f"cluster_gpus must be >= 0, got {self.cluster_gpus}")
        elif self.cluster_gpus and not self.ray_address:
            problems.append("cluster_gpus is for a Ray cluster (ray_address); on one node "
                            "set gpus")
        elif self.cluster_gpus and self.cluster_gpus < self.n_gpus_per_node * self.nnodes:
            problems.append(f"cluster_gpus {self.cluster_gpus} is fewer than one job's "
                            f"n_gpus_per_node x nnodes = {self.n_gpus_per_node * self.nnodes}")
        if self.rollout_n < 2:
            problems.append("rollout_n must be at least 2: group baselines need G >= 2")
        if self.ppo_mini_batch_size > self.train_batch_size:
            problems.append("ppo_mini_batch_size cannot exceed train_batch_size")
        if self.rollout_name not in ("vllm", "sglang"):
            problems.append(f"rollout_name must be vllm or sglang, got {self.rollout_name!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            problems.append("gpu_memory_utilization must be in (0, 1]")
        if self.ray_address and "://" not in self.ray_address:
            problems.append(f"ray_address must look like http://host:8265, got "
                            f"{self.ray_address!r}")
        try:
            self.gpus = [int(g) for g in self.gpus]
        except (TypeError, ValueError):
            problems.append(f"gpus must be a list of GPU indices, got {self.gpus!r}")
        else:
            if any(g < 0 for g in self.gpus) or len(set(self.gpus)) != len(self.gpus):
                problems.append(f"gpus must be distinct indices >= 0, got {self.gpus}")
            if self.gpus and self.ray_address:
                problems.append("gpus is for one node; with ray_address the cluster "
                                "assigns the GPUs")
            elif self.gpus and len(self.gpus) < self.n_gpus_per_node:
                problems.append(f"gpus lists {len(self.gpus)} GPU(s) but a job needs "
                                f"n_gpus_per_node = {self.n_gpus_per_node}")
        if not self.model:
            problems.append("model is empty")
        if self.overall_weights:
            from evals.metrics import OverallSpec

            try:
                OverallSpec(self.overall_weights)
            except ValueError as e:
                problems.append(f"overall_weights: {e}")
        if problems:
            raise ConfigError("; ".join(problems))


FIELDS = {f.name: f for f in fields(VerlConfig)}


def _coerce(name: str, value, where: str):
    kind = typing.get_type_hints(VerlConfig)[name]
    origin = typing.get_origin(kind) or kind
    try:
        if origin is list:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return [str(v) for v in value]
        if origin is dict:
            if isinstance(value, str):
                import yaml

                value = yaml.safe_load(value) or {}
            if not isinstance(value, dict):
                raise TypeError
            return {str(k): v for k, v in value.items()}
        if origin is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if origin is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if value is None:
            return ""
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name} must be {getattr(origin, '__name__', origin)}, "
                          f"got {value!r}") from None


def _from_env(env) -> dict:
    out = {}
    for name in FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            out[name] = _coerce(name, raw, f"${ENV_PREFIX}{name.upper()}")
    return out


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"trainer config {path} does not exist")
    text = path.read_text()
    if path.suffix == ".env" or path.name.startswith(".env"):
        data = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.removeprefix("export ").partition("=")
            key = key.strip()
            if not sep:
                raise ConfigError(f"{path}:{n}: expected {ENV_PREFIX}<FIELD>=value")
            if not key.startswith(ENV_PREFIX):
                continue  # other settings may share the .env file
            field_name = key[len(ENV_PREFIX):].lower()
            if field_name not in FIELDS:
                raise ConfigError(f"{path}:{n}: unknown setting {key}; known: "
                                  + ", ".join(ENV_PREFIX + f.upper() for f in FIELDS))
            data[field_name] = value.strip().strip("'\"")
        return data
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping (a `verl:` section)")
    if "verl" in data:
        section = data["verl"]
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: the `verl:` section must be a mapping")
        return section
    return data


def load_verl_config(path: str | Path | None = None, env=None) -> VerlConfig:
    """Defaults < ``POISE_VERL_*`` env vars < the file (``path``, else
    ``$POISE_TRAINER_CONFIG``). Raises ConfigError."""
    env = os.environ if env is None else env
    values = _from_env(env)
    path = path or env.get(CONFIG_ENV) or None
    if path:
        path = Path(path)
        data = _read_file(path)
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise ConfigError(f"{path}: unknown keys {unknown}; known: {sorted(FIELDS)}")
        values.update({k: _coerce(k, v, str(path)) for k, v in data.items()})
    for key in ("train_files", "val_files", "test_files"):
        if key in values:  # relative to where POISE runs: the job's cwd is its run dir
            values[key] = [f if "://" in str(f) or Path(str(f)).is_absolute()
                           else str(Path(str(f)).expanduser().resolve())
                           for f in values[key]]
    try:
        return VerlConfig(**values)
    except ConfigError as e:
        raise ConfigError(f"{path or 'trainer config'}: {e}") from None


def describe_fields() -> str:
    """One line per setting, for --help and the README."""
    return "\n".join(f"  {f.name}: {f.metadata['description']}" for f in fields(VerlConfig))
