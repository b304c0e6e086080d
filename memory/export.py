"""Export a candidate for plain verl: a self-contained plugin, its overrides, a README.

    python -m memory.export CANDIDATE --verl DIR [--trainer-config verl.yaml] [--home DIR]

CANDIDATE is an archived candidate (id or name), a shipped baseline (``grpo``, ...) or a
candidate ``.py`` file. DIR receives:

- ``<module>.py``: the plugin (trainers/verl/plugin.py; the same file POISE's own verl
  launches use): the text of trainers/verl/runtime.py and the candidate's source. It
  imports the standard library, numpy, torch and verl only, so a colleague needs no POISE;
- ``overrides.txt``: the Hydra overrides that train it with verl's GRPO recipe, one per
  line (from the trainer config: model, data, GPUs; edit freely);
- ``run.sh``: the exact ``python3 -m verl.trainer.main_ppo`` command with the
  environment it needs (``VERL_USE_EXTERNAL_MODULES``, ``PYTHONPATH``);
- ``README.md``: what the files are, the command, and what the hooks see under verl.

A candidate that fails the static check, an unknown candidate or a bad trainer config is
one line on stderr and exit 2, and nothing is written.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from memory.cli import Parser, add_home, fail, open_existing, run_cli


def build_parser() -> Parser:
    p = Parser(prog="python -m memory.export",
               description="Export a candidate as a self-contained plugin for plain verl.")
    p.add_argument("candidate", help="archived candidate id or name, a baseline name "
                                     "(grpo, dr_grpo, ...) or a candidate .py file")
    p.add_argument("--verl", metavar="DIR", required=True,
                   help="directory to write the plugin, overrides.txt, run.sh, README.md")
    p.add_argument("--trainer-config", default=None,
                   help="POISE's verl trainer config (YAML); default: $POISE_TRAINER_CONFIG, "
                        "else the built-in defaults")
    add_home(p)
    return p


def candidate_source(key: str, home: str | None) -> tuple[str, str]:
    """(label, source) of a baseline, a .py file or an archived candidate."""
    from trainers.baselines import BASELINES
    from trainers.source import CandidateError, resolve_algorithm

    if key.endswith(".py") or key.replace("-", "_") in BASELINES:
        try:
            return resolve_algorithm(key)
        except CandidateError as e:
            fail(f"memory.export: {e}")
    cand = open_existing(home).find_candidate(key)
    if not cand.code:
        fail(f"memory.export: candidate {cand.name!r} (#{cand.id}) has no code to export")
    return cand.name, cand.code


def export(source: str, out_dir: str | Path, trainer_config: str | None = None) -> dict:
    """Write the export into ``out_dir``; returns {"plugin", "module", "command", ...}.
    Raises PluginError / ConfigError / LaunchError (nothing written then)."""
    from trainers.verl.adapter import Settings
    from trainers.verl.config import load_verl_config
    from trainers.verl.launcher import (group_warnings, hydra_value, override_values,
                                        to_overrides)
    from trainers.verl.plugin import write_plugin

    cfg = load_verl_config(trainer_config)
    settings = Settings(max_length=cfg.max_response_length,
                        total_steps=cfg.total_training_steps, run_token="export",
                        group_size=cfg.rollout_n)
    out = Path(out_dir).resolve()
    plugin = write_plugin(source, settings, out)  # refuses (PluginError) before writing
    analysis, module = plugin.analysis, plugin.module
    env = {"VERL_USE_EXTERNAL_MODULES": module, "PYTHONPATH": str(out),
           "TOKENIZERS_PARALLELISM": "false"}
    values = override_values(cfg, plugin, out / "outputs", seed=0, env=env)
    values["trainer.logger"] = ["console"]
    overrides = to_overrides(values, cfg.overrides)
    command = ["python3", "-m", "verl.trainer.main_ppo", *overrides]
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    warnings = list(analysis.warnings) + group_warnings(cfg, plugin)
    files = {
        "overrides.txt": "\n".join(overrides) + "\n",
        "run.sh": ("#!/bin/sh\n# train the exported candidate with plain verl 0.9.1\n"
                   f"export {exports}\n" + " \\\n  ".join(
                       [" ".join(command[:3])] + [shlex.quote(c) for c in command[3:]])
                   + ' "$@"\n'),
        "README.md": _readme(analysis, module, exports, cfg, warnings, hydra_value),
    }
    for name, text in files.items():
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)
    (out / "run.sh").chmod(0o755)
    return {"plugin": str(plugin.path), "module": module, "command": command, "env": env,
            "overrides": overrides, "warnings": warnings}


def _readme(analysis, module: str, exports: str, cfg, warnings: list[str], hv) -> str:
    notes = "".join(f"- {w}\n" for w in warnings) or "- none\n"
    return f"""# {analysis.name}: a POISE candidate for plain verl 0.9.1

`{module}.py` is self-contained (standard library, numpy, torch, verl): it registers the
candidate's advantage estimator and policy loss as `{module}` in verl's registries
(`algorithm.adv_estimator`, `actor_rollout_ref.actor.policy_loss.loss_mode`) and exposes
`compute_score` for `reward.custom_reward_function` (1 correct, 0 wrong, -1 no
`\\boxed{{}}` answer: the outcome code the estimator decodes). Install `verl==0.9.1` with
vLLM or SGLang on the GPU node (`math-verify` for robust grading), then, from any
directory:

```sh
export {exports}
sh run.sh                      # python3 -m verl.trainer.main_ppo $(overrides.txt) ...
```

`run.sh` is the exact command; extra Hydra overrides after it are passed on
(`sh run.sh trainer.total_training_steps=100`). `overrides.txt` lists the same
overrides one per line. They come from POISE's trainer config: model
`{cfg.model}`, {cfg.n_gpus_per_node} GPU(s) x {cfg.nnodes} node(s), rollout.n =
{cfg.rollout_n}, data.train_files = {hv(list(cfg.train_files))}, data.val_files =
{hv(list(cfg.val_files) + list(cfg.test_files))} (the validation split, then the test
sets): change the data paths to your parquet files (POISE's
`python -m trainers.verl.data` writes them from a JSONL of problem / answer). On a Ray
cluster, ship this directory as the job's `working_dir`.

What the hooks see under verl: the plugin's docstring. The overrides turn on verl's v1 engine workers
(`trainer.use_v1=True`), which the plugin needs to show the loss its micro-batch.

Notes for this candidate:
{notes}"""


def main(argv: list[str] | None = None) -> int:
    from trainers.extras import MissingExtra, require

    parser = build_parser()
    args = parser.parse_args(argv)
    key = args.candidate.strip()
    if not key:
        parser.error("empty candidate: give an id, a name, a baseline or a .py file")
    try:
        require("verl", "python -m memory.export --verl")
    except MissingExtra as e:
        fail(str(e))
    label, source = candidate_source(key, args.home)
    from trainers.verl.config import ConfigError
    from trainers.verl.launcher import LaunchError
    from trainers.verl.plugin import PluginError

    try:
        result = export(source, args.verl, args.trainer_config)
    except (PluginError, ConfigError, LaunchError) as e:
        fail(f"memory.export: {label}: {e}")
    print(f"wrote {result['plugin']} (+ overrides.txt, run.sh, README.md) for {label!r}")
    for w in result["warnings"]:
        print(f"note: {w}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
