"""Per-run settings, read by the nodes through ``Runtime[Context]``."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from trainers.home import resolve_home


@dataclass(kw_only=True)
class Context:
    home: str = field(default_factory=lambda: str(resolve_home()),
                      metadata={"description": "POISE home: archive, vectors, checkpoints"})
    candidates: int = field(default=8, metadata={
        "description": "new candidates to propose after the seed baseline (the budget)"})
    width: int = field(default=2, metadata={
        "description": "candidates per round, run in parallel (Send)"})
    seeds: int = field(default=1, metadata={"description": "training seeds per candidate"})
    steps: int | None = field(default=None, metadata={
        "description": "training steps per seed (None: the trainer's default budget)"})
    train_overrides: dict = field(default_factory=dict, metadata={
        "description": "TrainConfig fields to override (tests use tiny configs)"})
    warm_config: dict | None = field(default=None, metadata={
        "description": "WarmStartConfig override (None: the default warm start)"})
    max_repairs: int = field(default=2, metadata={
        "description": "coder <-> verifier retries before a candidate fails verification"})
    seed: int = field(default=0, metadata={
        "description": "seed of the builtin agents and parent selection"})
    model: str | None = field(default=None, metadata={
        "description": "LLM for all roles (e.g. openai:gpt-4.1-mini); None: builtin agents"})
    models: dict = field(default_factory=dict, metadata={
        "description": "role -> model string, beating `model` and the environment; a new "
                       "run saves every role's resolved choice here (builtin or a model)"})
    context_tokens: int | dict | None = field(default=None, metadata={
        "description": "the models' context window in tokens (or role -> tokens); None: "
                       "$POISE_CONTEXT_TOKENS, the server's, else agents.budget's default"})
    max_cost_usd: float | None = field(default=None, metadata={
        "description": "stop at a round boundary before the LLM spend would pass this "
                       "(--max-cost); --resume with a higher cap continues"})
    max_llm_tokens: int | None = field(default=None, metadata={
        "description": "the same cap in LLM tokens, input + output (--max-llm-tokens)"})
    loggers: list = field(default_factory=list, metadata={
        "description": "experiment trackers each candidate x seed is logged to: mlflow, "
                       "tensorboard, wandb (--logger; trainers/tracking.py); [] = none"})
    tracking_uri: str | None = field(default=None, metadata={
        "description": "MLflow tracking URI (--tracking-uri); None: $MLFLOW_TRACKING_URI, "
                       "else the file store <home>/mlruns"})
    llm_cache: bool = field(default=True, metadata={
        "description": "answer a call already recorded in the ledger from it (a resumed "
                       "run never pays twice for the same call)"})
    replay: dict | None = field(default=None, metadata={
        "description": "{home, run_id}: answer every LLM role from that run's recorded "
                       "replies, with no model server (--replay)"})
    train_timeout_s: float = field(default=1200.0, metadata={
        "description": "hard wall-clock limit of one training job (sandboxed)"})
    verify_timeout_s: float = field(default=60.0, metadata={
        "description": "hard limit of the verifier's sandboxed hook checks"})
    max_parallel_jobs: int = field(default_factory=lambda: os.cpu_count() or 1, metadata={
        "description": "training jobs at once with the process executor (bounded by "
                       "cores; Ray places its tasks by their resource requests)"})
    chat_models: dict = field(default_factory=dict, metadata={
        "description": "role -> chat model object, beating `model` (for Python callers and "
                       "tests with scripted models; never saved with the run)"})
    smoke: bool = field(default=True, metadata={
        "description": "run the verifier's few-step smoke training"})
    steer: bool = field(default=False, metadata={
        "description": "pause between rounds for a person (python -m graph.steer): the run "
                       "waits at an interrupt() for instructions"})
    executor: str = field(default="process", metadata={
        "description": "where training jobs run: 'process' (sandboxed child processes "
                       "here), 'ray' (one Ray task per job) or 'verl' (a verl GRPO run "
                       "per job, python -m graph.run --trainer verl; see "
                       "trainers.executors)"})
    trainer_config: str | None = field(default=None, metadata={
        "description": "with executor 'verl': the verl trainer config (YAML or .env; "
                       "None: $POISE_TRAINER_CONFIG, else the defaults)"})
    ray_address: str | None = field(default=None, metadata={
        "description": "Ray cluster to join (auto, HOST:PORT, ray://HOST:PORT); None: "
                       "start a local Ray for the run"})
    ray_task_memory_mb: int = field(default=1536, metadata={
        "description": "memory a Ray training task asks for, a scheduling hint (a job "
                       "peaks at ~1.0 GB RSS at the default budget; the sandbox's own "
                       "limits still apply)"})
    ray_max_retries: int = field(default=1, metadata={
        "description": "Ray retries of a job whose worker or node died (training is "
                       "deterministic per seed, so a retry gives the same result)"})
    device: str = field(default="cpu", metadata={
        "description": "where the local trainer's jobs (and the verifier's smoke run) "
                       "train: cpu, cuda or cuda:N, resolved from --device (auto: cuda "
                       "when available) when the run starts; saved, so --resume keeps it "
                       "(trainers/local/device.py)"})
    selection: str = field(default="gpucb", metadata={
        "description": "parent selection rule: gpucb (a Gaussian process over the archive, "
                       "memory/gpucb.py), potential (round 1's per-node posterior) or "
                       "greedy (best fitness); --selection; a resumed run keeps its own"})
    selection_config: dict = field(default_factory=dict, metadata={
        "description": "the rule's settings (GPUCBConfig / SelectionConfig fields); a new "
                       "run saves every value it selects with"})
    exclude_genes: list = field(default_factory=list, metadata={
        "description": "catalog genes (slot=kind, or 'paper' for the original system's "
                       "three mechanisms) the builtin scientist may not use: an ablation "
                       "(--without-genes)"})
    compose_rate: float = field(default=0.3, metadata={
        "description": "the fraction of the builtin scientist's proposals that compose a "
                       "new reward or normalization expression from primitives "
                       "(agents/builtin/expr.py) instead of drawing from the catalog; 0: the "
                       "catalog only (--compose-rate; a run from before it resumes on 0)"})
    from_runs: list = field(default_factory=list, metadata={
        "description": "runs whose evaluated candidates this run starts from (--from-run; "
                       "graph/imports.py): copied with their results, not re-trained"})
    preset: str | None = field(default=None, metadata={
        "description": "'gpu' when warm_config and train_overrides hold the GPU preset "
                       "(chosen on CUDA unless --config gives a warm_config); None: the "
                       "default testbed or the --config model"})
