"""Train one candidate with ``python -m verl.trainer.main_ppo`` (GRPO recipe).

    python -m trainers.verl.launcher --algorithm grpo --trainer-config verl.yaml --dry-run
    python -m trainers.verl.launcher --algorithm path/to/candidate.py --trainer-config verl.yaml

``plan_launch`` writes the candidate's plugin (trainers/verl/plugin.py) into a run
directory ``<workdir>/<registered name>/<run token>/`` and builds the Hydra overrides:
the candidate as ``algorithm.adv_estimator`` and
``actor_rollout_ref.actor.policy_loss.loss_mode``, POISE's ``compute_score`` as
``reward.custom_reward_function``, its KL constant as verl's KL loss, the rollout group
size, model, data, GPUs, validation, and ``trainer.logger=[console,file]`` with
``VERL_FILE_LOGGER_PATH`` in the run directory. ``compose`` checks the overrides
against verl's own Hydra config (and ``validate_config``) on CPU. One node: the command
runs here; with ``ray_address``: ``ray job submit`` ships the plugin directory as the
job's working_dir and POISE's ``trainers`` package as a py_module. ``launch`` runs the
command, tails the metrics (trainers/verl/metrics.py) and returns the curves and the
evaluation record. Training needs CUDA GPUs and vLLM (or SGLang); ``preflight`` says
what is missing in one line.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainers.extras import MissingExtra, require
from trainers.verl.adapter import Settings, run_token
from trainers.verl.config import ConfigError, VerlConfig, describe_fields, load_verl_config
from trainers.verl.plugin import GROUP_FIELDS_IN_LOSS, Plugin, PluginError, write_plugin
from trainers.home import resolve_home

KL_AGG_MODE = "seq-mean-token-mean"  # verl's entropy/KL aggregation (both at coefficient 0)


class LaunchError(Exception):
    """Cannot launch; the message is one line for the person."""


@dataclass
class LaunchPlan:
    label: str
    seed: int
    plugin: Plugin
    config: VerlConfig
    run_dir: Path
    metrics_path: Path            # VERL_FILE_LOGGER_PATH
    step_log: Path                # the adapter's per-step stats
    values: dict[str, object]     # {Hydra key: value} we set (before cfg.overrides)
    overrides: list[str]
    env: dict[str, str]           # set for the command (single node; a cluster job has
    command: list[str]            # them in its runtime_env)
    warnings: list[str] = field(default_factory=list)

    def shell(self) -> str:
        """The command as one shell line, environment included."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"{env} {shlex.join(self.command)}" if env else shlex.join(self.command)


# ----------------------------------------------------------------------------- overrides

_PLAIN = re.compile(r"^[A-Za-z0-9_./:@+-]+$")


def hydra_value(value) -> str:
    """A Python value in Hydra's override grammar (strings quoted when needed)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    return text if _PLAIN.match(text) and text not in ("null", "true", "false") else _quoted(text)


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override_values(cfg: VerlConfig, plugin: Plugin, run_dir: Path, seed: int,
                    env: dict[str, str]) -> dict[str, object]:
    """The GRPO recipe for one candidate, as {Hydra key: value}; ``+`` keys are new."""
    values: dict[str, object] = {
        "algorithm.adv_estimator": plugin.name,
        "algorithm.use_kl_in_reward": False,
        "critic.enable": False,
        # the v1 engine workers hand verl's ppo_loss the whole micro-batch, which the
        # plugin shows the candidate's loss (trainers/verl/runtime.py)
        "trainer.use_v1": True,
        "actor_rollout_ref.actor.policy_loss.loss_mode": plugin.name,
        # reference log-probs for a loss that reads ref_logp; verl's own KL term is off
        # (coefficient 0): the candidate's KL, as written, is the one that trains
        "actor_rollout_ref.actor.use_kl_loss": plugin.analysis.uses_ref,
        "actor_rollout_ref.actor.kl_loss_coef": 0.0,
        "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
        "actor_rollout_ref.actor.loss_agg_mode": KL_AGG_MODE,
        "actor_rollout_ref.actor.entropy_coeff": 0,
        "actor_rollout_ref.actor.optim.lr": cfg.lr,
        "actor_rollout_ref.actor.ppo_mini_batch_size": cfg.ppo_mini_batch_size,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu":
            cfg.ppo_micro_batch_size_per_gpu,
        "actor_rollout_ref.model.path": cfg.model,
        "actor_rollout_ref.model.use_remove_padding": True,
        "actor_rollout_ref.rollout.name": cfg.rollout_name,
        "actor_rollout_ref.rollout.n": cfg.rollout_n,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": cfg.rollout_tp,
        "actor_rollout_ref.rollout.gpu_memory_utilization": cfg.gpu_memory_utilization,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu":
            cfg.log_prob_micro_batch_size_per_gpu,
        "actor_rollout_ref.rollout.seed": seed,
        "actor_rollout_ref.rollout.val_kwargs.n": cfg.val_n,
        "actor_rollout_ref.rollout.val_kwargs.temperature": cfg.val_temperature,
        "actor_rollout_ref.rollout.val_kwargs.do_sample": cfg.val_temperature > 0,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu":
            cfg.log_prob_micro_batch_size_per_gpu,
        "data.train_files": list(cfg.train_files),
        # verl validates on both; the metrics split them by data_source (val / test)
        "data.val_files": list(cfg.val_files) + list(cfg.test_files),
        "data.train_batch_size": cfg.train_batch_size,
        "data.max_prompt_length": cfg.max_prompt_length,
        "data.max_response_length": cfg.max_response_length,
        "data.filter_overlong_prompts": True,
        "data.truncation": "error",
        "data.seed": seed,
        "reward.custom_reward_function.path": plugin.path.name if cfg.ray_address
        else str(plugin.path),
        "reward.custom_reward_function.name": "compute_score",
        "trainer.logger": ["console", "file"],
        "trainer.project_name": cfg.project_name,
        "trainer.experiment_name": f"{plugin.name}-s{seed}",
        "trainer.n_gpus_per_node": cfg.n_gpus_per_node,
        "trainer.nnodes": cfg.nnodes,
        "trainer.total_training_steps": cfg.total_training_steps,
        "trainer.total_epochs": 10_000,  # total_training_steps decides
        "trainer.test_freq": cfg.test_freq,
        "trainer.save_freq": cfg.save_freq,
        "trainer.val_before_train": True,
        "trainer.critic_warmup": 0,
        "trainer.default_local_dir": str(run_dir / "checkpoints"),
        # per-sample validation results: unbiased pass@k (trainers/verl/metrics.py)
        "trainer.validation_data_dir": str(run_dir / "val_generations"),
    }
    if reads_groups(plugin):
        values.update(whole_group_values(cfg))
    # verl passes this runtime_env to ray.init: every actor gets the plugin and the logs.
    for key, value in env.items():
        values[f"+ray_kwargs.ray_init.runtime_env.env_vars.{key}"] = value
    return values


def reads_groups(plugin: Plugin) -> bool:
    return any(f in plugin.analysis.loss_reads for f in GROUP_FIELDS_IN_LOSS)


def whole_group_values(cfg: VerlConfig) -> dict[str, object]:
    """Overrides that put each prompt's rollout.n rows into one loss micro-batch: verl
    keeps a group's rows adjacent (the rollout repeats each prompt n times in a row), so
    no length balancing across ranks, no shuffling, fixed-size micro-batches of a
    multiple of n (rounded up from the config's)."""
    n = cfg.rollout_n
    micro = -(-cfg.ppo_micro_batch_size_per_gpu // n) * n
    return {"trainer.balance_batch": False,
            "actor_rollout_ref.actor.shuffle": False,
            "actor_rollout_ref.actor.use_dynamic_bsz": False,
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": micro}


def group_warnings(cfg: VerlConfig, plugin: Plugin) -> list[str]:
    if not reads_groups(plugin):
        return []
    micro = whole_group_values(cfg)["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"]
    out = [f"policy_loss reads the groups: each loss micro-batch holds whole groups "
           f"(trainer.balance_batch=False, ppo_micro_batch_size_per_gpu={micro}, a "
           f"multiple of rollout.n={cfg.rollout_n})"]
    world = cfg.n_gpus_per_node * cfg.nnodes
    if cfg.ppo_mini_batch_size % world:
        out.append(f"ppo_mini_batch_size={cfg.ppo_mini_batch_size} is not a multiple of the "
                   f"{world} GPUs: a rank's share splits a group (poise/partial_groups "
                   f"counts the rows)")
    return out


def to_overrides(values: dict[str, object], extra: list[str]) -> list[str]:
    return [f"{k}={hydra_value(v)}" for k, v in values.items()] + list(extra)


# ----------------------------------------------------------------------------- plan

def plan_launch(source: str, cfg: VerlConfig, home: str | Path, label: str = "candidate",
                seed: int = 0, visible_devices: list[int | str] | None = None) -> LaunchPlan:
    """Write the plugin and build the command; raises LaunchError. ``visible_devices``
    (one node only) pins the job to those GPUs: ``CUDA_VISIBLE_DEVICES`` goes into the
    command's environment, where the job's own Ray instance reads it, and not into the
    Ray runtime_env, where it would override the device Ray gives each worker."""
    if visible_devices is not None and cfg.ray_address:
        raise LaunchError("visible_devices is for a single-node run; a Ray cluster assigns "
                          "the GPUs")
    workdir = Path(cfg.workdir) if cfg.workdir else Path(home) / "verl"
    token = run_token(label, str(seed), str(time.time_ns()))
    from trainers.verl.plugin import analyze

    try:
        registered = analyze(source).registered
    except PluginError as e:
        raise LaunchError(str(e)) from None
    run_dir = (workdir / registered / token).resolve()
    metrics_path, step_log = run_dir / "verl_metrics.jsonl", run_dir / "poise_steps.jsonl"
    settings = Settings(max_length=cfg.max_response_length,
                        total_steps=cfg.total_training_steps, run_token=token,
                        step_log=str(step_log), group_size=cfg.rollout_n)
    try:
        plugin = write_plugin(source, settings, run_dir / "plugin")
    except PluginError as e:
        raise LaunchError(str(e)) from None
    env = {"VERL_USE_EXTERNAL_MODULES": plugin.module,
           "VERL_FILE_LOGGER_PATH": str(metrics_path),
           "TOKENIZERS_PARALLELISM": "false"}
    if not cfg.ray_address:
        env["PYTHONPATH"] = str(plugin.path.parent)  # the plugin is self-contained
    values = override_values(cfg, plugin, run_dir, seed, env)
    overrides = to_overrides(values, cfg.overrides)
    entry = ["python3" if cfg.ray_address else sys.executable,
             *([str(Path(cfg.entrypoint).resolve())] if cfg.entrypoint.endswith(".py")
               else ["-m", cfg.entrypoint]), *overrides]
    if cfg.ray_address:
        runtime_env = {"working_dir": str(plugin.path.parent), "env_vars": env}
        command = ["ray", "job", "submit", "--address", cfg.ray_address,
                   "--submission-id", f"poise-{plugin.name}-{token}",
                   "--runtime-env-json", json.dumps(runtime_env), "--", *entry]
        env_for_command: dict[str, str] = {}
    else:
        command, env_for_command = entry, dict(env)
        if visible_devices is not None:
            env_for_command["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, visible_devices))
    return LaunchPlan(label=label, seed=seed, plugin=plugin, config=cfg, run_dir=run_dir,
                      metrics_path=metrics_path, step_log=step_log, values=values,
                      overrides=overrides,
                      env=env_for_command, command=command,
                      warnings=list(plugin.analysis.warnings) + group_warnings(cfg, plugin))


# ----------------------------------------------------------------------------- compose

def verl_config_dir() -> Path:
    import verl

    return Path(verl.__file__).parent / "trainer" / "config"


def compose(overrides: list[str]):
    """verl's ppo_trainer config with ``overrides``, composed by Hydra (no GPU); raises
    LaunchError on a bad override or a config verl's own checks refuse."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base=None, config_dir=str(verl_config_dir())):
            composed = hydra_compose(config_name="ppo_trainer", overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise LaunchError(f"verl's config refuses the overrides: "
                          f"{str(e).splitlines()[0]}") from None
    finally:
        GlobalHydra.instance().clear()
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a success line
            validate_config(composed, use_reference_policy=need_reference_policy(composed),
                            use_critic=need_critic(composed))
    except (AssertionError, ValueError) as e:
        raise LaunchError(f"verl's validate_config refuses this config: {e}") from None
    return composed


def check_composed(composed, values: dict[str, object]) -> None:
    """Every value we set is what verl's composed config holds."""
    from omegaconf import OmegaConf

    for key, want in values.items():
        got = OmegaConf.select(composed, key.lstrip("+"), default="<missing>")
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        if got != want:
            raise LaunchError(f"override {key} did not take: verl's config has {got!r}, "
                              f"expected {want!r}")


# ----------------------------------------------------------------------------- run

def preflight(cfg: VerlConfig) -> list[str]:
    """What stops a real launch from here, one phrase each (empty: ready)."""
    import importlib.util
    import shutil

    problems = []
    if cfg.ray_address:
        if shutil.which("ray") is None:
            problems.append("the `ray` CLI is not on PATH (pip install 'ray[default]')")
    else:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            problems.append("no CUDA GPU is visible here (torch.cuda.device_count() == 0) "
                            "and no ray_address is set")
        elif torch.cuda.device_count() < cfg.n_gpus_per_node:
            problems.append(f"n_gpus_per_node is {cfg.n_gpus_per_node} but "
                            f"{torch.cuda.device_count()} GPU(s) are visible")
        missing = [m for m in (cfg.rollout_name, "transfer_queue", "cachetools", "math_verify")
                   if importlib.util.find_spec(m) is None]
        if missing:
            problems.append(f"missing Python modules {missing} (pip install "
                            f"'verl[{cfg.rollout_name}]==0.9.1' math-verify)")
        for name in ("train_files", "val_files", "test_files"):
            files = getattr(cfg, name)
            if not files and name != "test_files":
                problems.append(f"{name} is empty (python -m trainers.verl.data)")
            absent = [f for f in files if not Path(f).expanduser().exists()]
            if absent:
                problems.append(f"{name}: {absent} do not exist")
    return problems


def launch(plan: LaunchPlan, poll_s: float = 10.0, on_poll=None,
           timeout_s: float | None = None, stall_s: float | None = None) -> dict:
    """Run the plan's command to its end, tailing its metrics; its process group is
    stopped after ``timeout_s`` of wall time, or once ``stall_s`` pass with no new metric
    line and no new console output (a heartbeat: a long job that keeps logging is never
    killed for its length).
    Returns {"returncode", "timed_out", "stalled", "curves", "evaluation", "log",
    "wall_seconds"}. ``on_poll(tail)`` is called after each poll."""
    from trainers.verl.metrics import MetricsTail

    plan.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = plan.run_dir / "launch.log"
    tail = MetricsTail(plan.metrics_path, plan.step_log, plan.run_dir / "val_generations")
    started = time.time()
    last_progress, log_size = started, 0
    timed_out = stalled = False
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(plan.command, env={**os.environ, **plan.env},
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=plan.run_dir, start_new_session=True)
        try:
            while proc.poll() is None:
                now = time.time()
                if timeout_s and now - started > timeout_s:
                    _stop(proc)
                    timed_out = True
                    break
                if stall_s and now - last_progress > stall_s:
                    _stop(proc)
                    stalled = True
                    break
                grew = tail.poll()
                if grew and on_poll is not None:
                    on_poll(tail)
                size = log_path.stat().st_size
                if grew or size != log_size:  # metrics or console output: alive
                    last_progress, log_size = time.time(), size
                time.sleep(poll_s)
        except BaseException:
            _stop(proc)
            raise
    tail.poll()
    return {"returncode": proc.returncode, "timed_out": timed_out, "stalled": stalled,
            "curves": tail.curves(),
            "evaluation": tail.evaluation(plan.config.overall_weights,
                                          test_sources(plan.config)),
            "log": str(log_path), "wall_seconds": time.time() - started}


def test_sources(cfg: VerlConfig) -> set[str]:
    """The data_source names of the benchmark sets (``test_files``)."""
    from trainers.verl.data import sources_of

    return {s for f in cfg.test_files for s in sources_of(f)}


def data_warnings(cfg: VerlConfig) -> list[str]:
    out = [f"{name} is empty: make parquet files with python -m trainers.verl.data"
           for name in ("train_files", "val_files") if not getattr(cfg, name)]
    rows = _rows(cfg.train_files)
    if rows is not None and rows < cfg.train_batch_size:
        out.append(f"train_files hold {rows} prompts, fewer than train_batch_size "
                   f"{cfg.train_batch_size}: verl's dataloader drops the incomplete batch "
                   "and has nothing to train on")
    return out


def _rows(files) -> int | None:
    """Rows in these parquet files; None when one cannot be read here."""
    try:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except Exception:  # noqa: BLE001 - on the cluster's filesystem, not parquet, ...
        return None


def _stop(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# ----------------------------------------------------------------------------- dry run

SHOWN_KEYS = ("algorithm.adv_estimator", "actor_rollout_ref.actor.policy_loss.loss_mode",
              "reward.custom_reward_function.path", "reward.custom_reward_function.name",
              "actor_rollout_ref.rollout.n", "actor_rollout_ref.model.path",
              "data.train_files", "data.val_files", "data.max_response_length",
              "actor_rollout_ref.actor.use_kl_loss", "actor_rollout_ref.actor.kl_loss_coef",
              "trainer.logger", "trainer.test_freq", "trainer.total_training_steps",
              "trainer.n_gpus_per_node", "trainer.nnodes",
              "actor_rollout_ref.rollout.val_kwargs.n")


def dry_run(plan: LaunchPlan, write=print) -> Path:
    """Compose and check the plan against verl's config; print the command, the composed
    values that matter and where the full composed config was written."""
    from omegaconf import OmegaConf

    composed = compose(plan.overrides)
    user_keys = {o.split("=", 1)[0].lstrip("+~") for o in plan.config.overrides}
    check_composed(composed, {k: v for k, v in plan.values.items()
                              if k.lstrip("+") not in user_keys})
    out = plan.run_dir / "composed_config.yaml"
    out.write_text(OmegaConf.to_yaml(composed))
    write(f"# {plan.label} (seed {plan.seed}) -> verl estimator/loss {plan.plugin.name}")
    write(f"# plugin: {plan.plugin.path}")
    for w in plan.warnings + data_warnings(plan.config):
        write(f"# warning: {w}")
    write(plan.shell())
    write("# composed by verl's Hydra config (checked with verl's validate_config):")
    for key in SHOWN_KEYS:
        value = OmegaConf.select(composed, key)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        write(f"#   {key} = {value!r}")
    write(f"# full composed config: {out}")
    write(f"# metrics: {plan.metrics_path} (verl), {plan.step_log} (POISE)")
    return out


# ----------------------------------------------------------------------------- entries

def graph_entry(candidates: list[tuple[str, str]] | None, trainer_config: str | None,
                home: str | Path, dry_run_only: bool, seed: int = 0, write=print) -> int:
    """``python -m graph.run --trainer verl``: with ``dry_run_only``, the command and
    composed config of each candidate ((label, source) pairs; None: the seed GRPO);
    exit code 0, or 2 with one line on stderr."""
    try:
        cfg = load_verl_config(trainer_config)
        if dry_run_only:
            from trainers.baselines import baseline_source

            todo = candidates or [("grpo (seed)", baseline_source("grpo"))]
            planned = 0
            for label, source in todo:
                try:
                    dry_run(plan_launch(source, cfg, home, label, seed), write)
                    planned += 1
                except LaunchError as e:
                    if len(todo) == 1:
                        raise
                    write(f"# {label}: skipped: {e}")
            if not planned:
                raise LaunchError("no candidate of this run can train in verl")
            return 0
        problems = preflight(cfg)
        if problems:
            raise LaunchError("cannot train with verl here: " + "; ".join(problems)
                              + " (--dry-run shows the command)")
        raise LaunchError("the loop's trainer node does not dispatch to verl yet; train one "
                          "candidate with python -m trainers.verl.launcher --algorithm FILE")
    except (LaunchError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.verl.launcher",
                                description=__doc__ + "\nTrainer config fields:\n"
                                + describe_fields(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithm", default="grpo",
                   help="a shipped baseline (grpo, dapo, ...) or a candidate .py file")
    p.add_argument("--trainer-config", default=None,
                   help="YAML or .env trainer config (default $POISE_TRAINER_CONFIG)")
    p.add_argument("--home", default=None, help="POISE home (default $POISE_HOME or ./.poise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true",
                   help="print the command and the composed config; do not train")
    args = p.parse_args(argv)
    try:
        require("verl", "python -m trainers.verl.launcher")
        from trainers.source import CandidateError, resolve_algorithm

        try:
            label, source = resolve_algorithm(args.algorithm)
        except CandidateError as e:
            raise LaunchError(e.message) from None
        cfg = load_verl_config(args.trainer_config)
        home = resolve_home(args.home)
        if args.dry_run:
            dry_run(plan_launch(source, cfg, home, label, args.seed))
            return 0
        problems = preflight(cfg)
        if problems:
            raise LaunchError("cannot train with verl here: " + "; ".join(problems)
                              + " (--dry-run shows the command)")
        plan = plan_launch(source, cfg, home, label, args.seed)
        compose(plan.overrides)
        print(plan.shell())
        result = launch(plan, timeout_s=cfg.timeout_s, stall_s=cfg.stall_timeout_s,
                        on_poll=lambda t: print(f"step {max(t.steps)}: "
                                                      f"{len(t.steps)} steps logged"))
        print(json.dumps({k: result[k] for k in ("returncode", "log", "evaluation")},
                         indent=1, default=str))
        return 0 if result["returncode"] == 0 else 1
    except (LaunchError, ConfigError, MissingExtra) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
