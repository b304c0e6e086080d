"""What a run of the loop is asked to do: the typed request that ``graph.run``'s command
line, a steering session (graph/session.py) and a campaign's search stage
(graph/campaign/stages.py) each build, instead of an argv list or an argparse Namespace.
``graph.runner.prepare(request)`` checks it and turns it into the run's ``Context``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(kw_only=True)
class RunRequest:
    directive: str | None = None      # a new run's directive (None with ``resume``)
    resume: int | None = None         # continue this run id from its checkpoint
    home: str | None = None           # default $POISE_HOME, else ./.poise
    candidates: int = 8               # new candidates after the seed baseline
    width: int = 2                    # candidates per round, in parallel
    seeds: int = 1                    # training seeds per candidate
    steps: int | None = None          # training steps per seed (default: the trainer's)
    seed: int = 0                     # seed of the builtin agents
    smoke: bool = True                # the verifier's smoke run
    model: str | None = None          # LLM for every role (None: builtin, or POISE_MODEL)
    config: Path | None = None        # JSON file of Context fields
    quiet: bool = False               # no live progress
    trainer: str = "local"            # local | verl
    trainer_config: str | None = None  # verl settings file
    dry_run: bool = False             # --trainer verl: print the command, train nothing
    executor: str | None = None       # process | ray (None: the saved or default one)
    ray_address: str | None = None    # a Ray cluster (implies executor "ray")
    steer: bool = False               # pause after every round for a person
    max_cost: float | None = None     # USD: stop before the LLM spend passes it
    max_llm_tokens: int | None = None  # the same cap in tokens
    loggers: list[str] | None = None  # --logger mlflow,tensorboard,wandb (None: saved/none)
    tracking_uri: str | None = None   # MLflow tracking URI (--tracking-uri)
    replay: int | None = None         # re-execute this recorded run offline
    replay_to: str | None = None      # the replay's home (default <home>/replays/run-N)
    selection: str | None = None      # gpucb | potential | greedy (None: gpucb; a resume: saved)
    exclude_genes: list[str] | None = None  # catalog genes the builtin scientist may not use
    compose_rate: float | None = None  # P(a builtin mutation composes); None: 0.3 (a resume: saved)
    from_runs: list[int] | None = None  # start from these runs' evaluated candidates
    device: str | None = None         # auto | cpu | cuda[:N]; None: cpu (a resume: saved)
