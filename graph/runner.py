"""The loop as a library: ``prepare(request)`` checks a ``RunRequest`` and creates the
run, ``run(request, console)`` runs (or resumes) it to the end, with live progress, a
summary file and a leaderboard. ``python -m graph.run`` (graph/run.py) is the command
line over it; a steering session and a campaign's search call it with their own request.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from dataclasses import asdict, fields
from pathlib import Path

from rich.console import Console

from agents.objective import objective_for
from evals.objective import ObjectiveSpec, objective_from_directive
from graph import tracing
from graph.context import Context
from graph import imports
from graph.request import RunRequest
from graph.summary import (llm_usage, print_leaderboard,  # noqa: F401 - re-exported
                           print_llm_usage, write_summary)
from memory.selection import rule_config
from trainers.home import resolve_home
from trainers.local.device import (DeviceError, describe as describe_device, kept_device,
                                   resolve_device, run_fields)


class UsageError(Exception):
    """Bad input from the person: one clear line, exit code 2."""

def prepare(request: RunRequest):
    """Home, archive, run id, context and graph input; raises UsageError.

    Everything that can be refused is checked before anything is written: the home,
    --config, the model configuration and its server, a Chroma server, the archive,
    the run to resume, the objective. Only then are the home, the archive and the run
    row created (and removed again if that fails half-way)."""
    from memory.archive import ARCHIVE_FILE, Archive
    from memory.schema import ArchiveError, NoArchiveError
    from memory.vectors import check_chroma_server

    home = resolve_home(request.home)
    _check_home(home)
    device = _device(request.device)  # a bad --device is refused before any LLM call
    overrides = _config_file(request.config) if request.resume is None else {}
    try:
        check_chroma_server()
        archive = Archive(home, create=False) if os.environ.get("POISE_DB_URL") or (
            home / ARCHIVE_FILE).is_file() else None
    except NoArchiveError:
        # A second run started at the same moment in a new home is creating it (the file
        # is there, its tables not yet): _create_run opens it, waiting its turn.
        archive = None
    except ArchiveError as e:
        raise UsageError(str(e)) from None
    if request.replay is not None:
        return _prepare_replay(request, home, archive)
    if request.resume is not None:
        return _prepare_resume(request, home, archive)
    from agents import calls
    from agents.llm import resolved_models

    model_ctx = Context(home=str(home), model=request.model,
                        models=overrides.get("models") or {})
    model = _check_models(model_ctx)
    objective_scope = calls.scope(None, None, "objective", "objective")
    try:
        with objective_scope as recorded:   # the run does not exist yet: rows wait
            spec, how = objective_for(request.directive, model)
    except ValueError as e:
        raise UsageError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - the server failed mid-call; nothing written yet
        raise UsageError(f"the LLM scientist could not write the objective: "
                         f"{type(e).__name__}: {_one_line(e)}") from None
    ctx = Context(home=str(home), candidates=request.candidates, width=request.width,
                  seeds=request.seeds, steps=request.steps, seed=request.seed,
                  model=None if request.model in (None, "builtin") else request.model,
                  smoke=request.smoke, steer=request.steer,
                  **{**overrides, **_caps(request), **_tracking_choice(request)},
                  **_executor_choice(request))
    ctx.models = resolved_models(ctx)   # saved: a resume or a replay uses the same roles
    ctx.selection = request.selection or ctx.selection
    ctx.from_runs = list(dict.fromkeys(request.from_runs or ctx.from_runs or []))
    ctx.exclude_genes = list(request.exclude_genes or ctx.exclude_genes or [])
    if request.compose_rate is not None:
        ctx.compose_rate = request.compose_rate
    if not (isinstance(ctx.compose_rate, (int, float)) and 0 <= ctx.compose_rate <= 1):
        raise UsageError(f"compose_rate must be a probability in [0, 1], got "
                         f"{ctx.compose_rate!r}")
    if ctx.exclude_genes and ctx.models.get("scientist", "builtin") != "builtin":
        raise UsageError("--without-genes removes genes from the builtin scientist's "
                         "catalog; an LLM scientist writes free-form code (drop --model)")
    try:
        config = rule_config(ctx.selection, ctx.selection_config)
        ctx.selection_config = config.as_dict() if config else {}  # every value, saved
        saved = {k: v for k, v in asdict(ctx).items() if k not in ("home", "chat_models")}
        same_testbed = bool(ctx.from_runs) and imports.check_sources(
            archive, ctx.from_runs, saved)  # the sources' budget and testbed are ours
    except ValueError as e:  # a bad selection setting or source run (imports.SourceError)
        raise UsageError(str(e)) from None
    vars(ctx).update(run_fields(device, ctx.executor, overrides))  # on CUDA: GPU preset
    _connect(ctx)  # before the run is recorded: an unreachable cluster leaves no trace
    config = {"context": saved, "objective": spec.model_dump(), "objective_source": how}
    archive, run_id = _create_run(home, archive, spec.directive, config)
    if recorded.pending:
        calls.ledger_for(home).add([{**row, "run_id": run_id} for row in recorded.pending])
    state = {"run_id": run_id, "directive": spec.directive,
             "objective": spec.model_dump(), "round": 0, "reference": None}
    if ctx.from_runs and same_testbed:  # the sources' GRPO stands: no round 0 to train
        state.update(imports.start_from(archive, run_id, ctx.from_runs, spec))
    return home, archive, run_id, spec.directive, ctx, state, archive.run(run_id).config


def _prepare_resume(request: RunRequest, home: Path, archive):
    from memory.schema import ArchiveError

    run_id = request.resume
    where = f"no run {run_id} in {home}"
    if archive is None:
        raise UsageError(f"{where}: it has no archive (python -m graph.run --directive "
                         "... starts a run)")
    try:
        run = archive.run(run_id)
    except ArchiveError:
        raise UsageError(f"{where}: see python -m memory.query or start one with "
                         "--directive") from None
    if not (home / "graph.db").is_file():
        raise UsageError(f"run {run_id} has no checkpoint to resume from ({home / 'graph.db'}"
                         " is missing)")
    ctx = Context(**{k: v for k, v in run.config.get("context", {}).items()
                     if k in {f.name for f in fields(Context)}})
    ctx.home = str(home)
    if "selection" not in run.config.get("context", {}):
        ctx.selection = "potential"   # a run from before GP-UCB keeps the rule it began with
    if "compose_rate" not in run.config.get("context", {}):
        ctx.compose_rate = 0.0        # nor did its scientist compose expressions
    if request.compose_rate not in (None, ctx.compose_rate):
        raise UsageError(f"run {run_id} composes with rate {ctx.compose_rate:g}; a resumed "
                         "run keeps its own (start a new run for --compose-rate)")
    if request.selection not in (None, ctx.selection):
        raise UsageError(f"run {run_id} selects parents with {ctx.selection!r}; a resumed run "
                         f"keeps its rule (start a new run for --selection {request.selection})")
    ctx.steer = request.steer  # graph.run finishes a steered run unattended
    for key, value in {**_executor_choice(request), **_caps(request),
                       **_tracking_choice(request)}.items():
        setattr(ctx, key, value)  # explicit beats saved
    ctx.device = _device(request.device, ctx.device)
    if not ctx.replay:  # a replay's models are its recording
        _check_models(ctx)
    _connect(ctx)
    return home, archive, run.id, run.directive, ctx, None, run.config


def _caps(request: RunRequest) -> dict:
    """Context fields for --max-cost / --max-llm-tokens (only those given)."""
    out = {}
    if request.max_cost is not None:
        out["max_cost_usd"] = request.max_cost
    if request.max_llm_tokens is not None:
        out["max_llm_tokens"] = request.max_llm_tokens
    return out


def _tracking_choice(request: RunRequest) -> dict:
    """Context fields for --logger / --tracking-uri (only those given)."""
    return {k: v for k, v in (("loggers", request.loggers),
                              ("tracking_uri", request.tracking_uri)) if v is not None}


def _prepare_replay(request: RunRequest, home: Path, archive):
    """A new home that re-executes run ``request.replay`` of ``home``: its saved
    configuration and objective, every LLM role answered from the recorded replies
    (agents.calls.ReplayChat); nothing is sent to a model server."""
    from agents import calls
    from memory.schema import ArchiveError

    source = request.replay
    if archive is None:
        raise UsageError(f"no run {source} to replay in {home}: it has no archive")
    try:
        run = archive.run(source)
    except ArchiveError:
        raise UsageError(f"no run {source} to replay in {home}") from None
    saved = run.config.get("context", {})
    if not saved.get("models"):
        raise UsageError(f"run {source} saved no model choices (it predates replays); "
                         "it cannot be replayed")
    if not calls.ledger_for(home).rows(source, paid_only=True) and any(
            v != "builtin" for v in saved["models"].values()):
        raise UsageError(f"run {source} has LLM roles but no recorded calls in "
                         f"{home / calls.LEDGER_FILE}")
    target = Path(request.replay_to) if request.replay_to else \
        home / "replays" / f"run-{source}"
    if target.exists() and any(target.iterdir()):
        raise UsageError(f"the replay's home {target} exists: remove it or pass "
                         "--replay-to DIR")
    _check_home(target)
    ctx = Context(**{k: v for k, v in saved.items() if k in {f.name for f in fields(Context)}})
    ctx.home, ctx.steer = str(target), False
    ctx.replay = {"home": str(home), "run_id": source}
    ctx.max_cost_usd = ctx.max_llm_tokens = None  # a replay costs nothing
    ctx.device = _device(None, ctx.device)
    _connect(ctx)
    config = {**run.config, "context": {k: v for k, v in asdict(ctx).items()
                                        if k not in ("home", "chat_models")},
              "replay_of": {"home": str(home), "run_id": source}}
    new_archive, run_id = _create_run(target, None, run.directive, config)
    spec = ObjectiveSpec.model_validate(run.config["objective"])
    state = {"run_id": run_id, "directive": spec.directive,
             "objective": spec.model_dump(), "round": 0, "reference": None}
    return target, new_archive, run_id, spec.directive, ctx, state, \
        new_archive.run(run_id).config


def _check_home(home: Path) -> None:
    """Refuse a home that is a file, or that cannot be written or created; writes
    nothing (a probe file in an existing home is removed at once)."""
    if home.exists():
        if not home.is_dir():
            raise UsageError(f"home {home} is not a directory (a file is in its place): "
                             "pass --home DIR")
        probe = home / f".write-test-{os.getpid()}"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UsageError(f"cannot write to home {home}: {e.strerror}") from None
        return
    parent = home.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot create home {home}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create home {home}: {parent} is not writable")


def _check_models(ctx: Context):
    """Build every role's model (ConfigError: a missing key, a bad model string) and
    check, once per server, that it accepts a connection. Returns the scientist's."""
    from agents.llm import ROLES, check_reachable, get_model

    from agents.llm import check_mix

    checked: set = set()
    try:
        check_mix(ctx)
        models = {role: get_model(role, ctx) for role in ROLES}
        for role in ROLES:
            key = _server_key(role, ctx)
            if models[role] is not None and key not in checked:
                checked.add(key)
                check_reachable(role, ctx)
    except Exception as e:  # noqa: BLE001 - a configuration problem, said in one line
        raise UsageError(_one_line(e)) from None
    return models["objective"]


def _server_key(role: str, ctx: Context) -> tuple:
    """What decides a role's server: its provider, and OPENAI_BASE_URL."""
    from agents.llm import model_spec

    spec, _ = model_spec(role, ctx)
    return (spec or "").partition(":")[0].strip().lower(), os.environ.get("OPENAI_BASE_URL")


def _create_run(home: Path, archive, directive: str, config: dict):
    """Create the home, the archive and the run row; on failure remove what was
    created here, so a refused start leaves the home as it was."""
    from memory.archive import Archive
    from memory.schema import ArchiveError

    # Only a home created here is removed on failure: in an existing home another
    # process (a second run started at the same moment) may own what appeared in it.
    created = None
    try:
        if not home.exists():
            top = _topmost_missing(home)
            try:
                home.mkdir(parents=True)
                created = top
            except FileExistsError:  # made meanwhile by someone else: not ours to remove
                pass
        if archive is None:
            archive = Archive(home)
        return archive, archive.start_run(directive, config)
    except (OSError, ArchiveError) as e:
        if archive is not None:
            archive.close()
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        why = getattr(e, "strerror", None) or _one_line(e)
        raise UsageError(f"cannot create the run in home {home}: {why}") from None


def _topmost_missing(path: Path) -> Path:
    path = path.absolute()
    while not path.parent.exists():
        path = path.parent
    return path


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:500]


def _config_file(path: Path | None) -> dict:
    """Context fields from a JSON file; unknown keys are an error, not ignored."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read --config {path}: {_one_line(e)}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a JSON object of Context fields")
    allowed = {f.name for f in fields(Context)} - {"home", "candidates", "width", "seeds",
                                                  "steps", "seed", "model", "smoke",
                                                  "chat_models", "steer", "executor",
                                                  "ray_address", "device", "preset"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UsageError(f"--config {path}: unknown keys {unknown}; allowed: "
                         f"{sorted(allowed)}")
    return data


def compile_graph(home: Path):
    from langgraph.checkpoint.sqlite import SqliteSaver

    from graph.graph import builder

    conn = sqlite3.connect(home / "graph.db", check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    return builder.compile(checkpointer=SqliteSaver(conn))


def run(request: RunRequest, console: Console, tracer=None, on_start=None) -> dict:
    """Run (or resume) the loop. ``on_start(run_id)`` is called once the run exists."""
    from trainers.executors import close_executors

    try:
        return _run(request, console, tracer, on_start)
    finally:
        close_executors()  # a local Ray we started is shut down, a cluster disconnected


def _executor_choice(request: RunRequest) -> dict:
    """Context fields for --executor / --ray-address (an address implies ray)."""
    executor = request.executor
    address = request.ray_address
    if not (executor or address):
        return {}
    choice = {"executor": "ray" if address else executor, "ray_address": address}
    if choice["executor"] == "verl":  # --trainer verl
        choice["trainer_config"] = request.trainer_config
    return choice


def _device(spec: str | None, saved: str | None = None) -> str | None:
    """--device resolved, or a resumed run's own (trainers/local/device.py)."""
    try:
        return kept_device(saved, spec) if saved else resolve_device(spec) if spec else None
    except DeviceError as e:
        raise UsageError(str(e)) from None


def _connect(ctx: Context) -> str:
    """Connect the run's executor (once; a bad --ray-address fails before any work) and
    describe it for the header."""
    from graph.graph import executor_for
    from trainers.executors import ExecutorUnavailable
    from trainers.extras import MissingExtra, require

    try:
        if ctx.executor in ("ray", "verl"):
            require(ctx.executor, f"--executor {ctx.executor}" if ctx.executor == "ray"
                    else "--trainer verl")
        executor = executor_for(ctx)
        if ctx.loggers or ctx.tracking_uri:  # trainers/tracking.py: names, extras, URI
            from trainers.tracking import check_loggers

            check_loggers(ctx.loggers, ctx.tracking_uri)
    except (ExecutorUnavailable, MissingExtra, ValueError) as e:
        raise UsageError(str(e)) from None
    return executor.describe()


def _run(request: RunRequest, console: Console, tracer, on_start) -> dict:
    home, archive, run_id, directive, ctx, state, run_config = prepare(request)
    jobs = _connect(ctx)
    if on_start is not None:
        on_start(run_id)
    app = compile_graph(home)
    config = {"configurable": {"thread_id": f"run-{run_id}"}, "recursion_limit": 10_000,
              **tracing.run_config(tracer, run_id, directive, resumed=state is None)}
    config["metadata"].update(llm_models=ctx.models, max_cost_usd=ctx.max_cost_usd,
                              max_llm_tokens=ctx.max_llm_tokens,
                              llm_cost_usd_at_start=llm_usage(home, run_id)["cost_usd"])
    if state is None:  # resuming
        snapshot = app.get_state(config)
        if not snapshot.values:
            raise UsageError(f"run {run_id} has no checkpoint to resume from")
        if snapshot.interrupts:
            raise UsageError(f"run {run_id} is paused in a steering session: continue it "
                             f"with python -m graph.steer --home {home} --thread run-{run_id}")
        if not snapshot.next:
            console.print(f"run {run_id} already finished")
        archive.store("reflections")  # opens and syncs the vectors a kill left behind
    spec = ObjectiveSpec.model_validate(run_config["objective"]) if "objective" in run_config else \
        objective_from_directive(directive)
    how = run_config.get("objective_source", "builtin keyword mapping")
    from agents.calls import BudgetStop

    console.rule(f"POISE run {run_id}")
    console.print(f"directive: [bold]{directive}[/bold]\nobjective: {spec.describe()} "
                  f"({how})\n"
                  f"agents: {_agents_line(ctx)}; trainer: {jobs}; "
                  f"budget: {ctx.candidates} candidates x {ctx.seeds} seed(s)"
                  f"{_caps_line(ctx)}; home: {home}")
    console.print(f"device: {describe_device(ctx.device, ctx.warm_config, ctx.preset)}")
    _engine_line(ctx, console)
    if ctx.loggers:  # the node graph.graph.archive logs to the same trackers
        from trainers.tracking import run_trackers
        trackers = run_trackers(home, run_id, ctx.loggers, ctx.tracking_uri, config={
            "directive": directive, "objective": spec.describe(), "seeds": ctx.seeds,
            "steps": ctx.steps, "executor": ctx.executor})
        console.print(f"tracking: {trackers.where()}", soft_wrap=True)
    if ctx.replay:
        console.print(f"replay of run {ctx.replay['run_id']} in {ctx.replay['home']}: "
                      "every LLM reply comes from its recording")
    started = time.time()
    stopped = None
    try:
        _stream(app, state, config, ctx, console, quiet=request.quiet)
    except BudgetStop as e:
        stopped = str(e)
    wall = time.time() - started
    summary = write_summary(archive, app, config, run_id, directive, home, wall,
                            stopped=stopped)
    if stopped is None:
        archive.finish_run(run_id)
    print_leaderboard(archive, run_id, console)
    print_llm_usage(summary["llm"], console)
    if stopped is not None:
        console.print(f"[yellow]stopped: {stopped}[/yellow]", soft_wrap=True)
    shares = summary["time_shares"]
    console.print(f"wall time {wall:.0f} s: training+evaluation "
                  f"{100 * shares['training_and_evaluation']:.1f}%, verifier smoke training "
                  f"{100 * shares['smoke_training']:.1f}%, verifier checks "
                  f"{100 * shares['verification_checks']:.1f}%, orchestration "
                  f"{100 * shares['orchestration']:.1f}%; summary: "
                  f"{home / 'runs' / str(run_id) / 'summary.json'}")
    if summary.get("training_cpu_by_phase"):
        from trainers.local.trainer import phase_shares
        split = summary["training_cpu_by_phase"]
        console.print(f"training jobs' CPU ({sum(split.values()):,.0f} CPU-s) by phase: "
                      f"{phase_shares(split)}", soft_wrap=True)
    try:  # the report is a view of the archive: its failure must not fail the run
        from graph.report import write_report
        console.print(f"report: {write_report(home, run_id)}", soft_wrap=True)
    except Exception as e:  # noqa: BLE001 - said as a warning, the run's results stand
        console.print(f"[yellow]warning: report not written: {e}[/yellow]")
    return summary


def _engine_line(ctx: Context, console: Console) -> None:
    """Local CPU jobs on the compiled engine: build its decode step now (once per
    machine, ~25 s; trusted code, before any candidate) and say so."""
    if ctx.executor != "process" or ctx.device != "cpu":
        return
    from trainers.executors import prebuild_compiled

    payload = {"train_config": dict(ctx.train_overrides), "home": ctx.home,
               **({"warm_config": ctx.warm_config} if ctx.warm_config else {})}
    with console.status("compiled engine: its decode step (built once per machine)..."):
        ready = prebuild_compiled([payload])
    for why in ready.values():
        console.print("engine: compiled (decode step compiled ahead of time)" if why is None
                      else f"[yellow]engine: compiled, but its decode step is not available "
                           f"({why}): the jobs decode eagerly[/yellow]")


def _agents_line(ctx: Context) -> str:
    models = ctx.models or {}
    llm = {r: m for r, m in models.items() if m != "builtin"}
    if not llm:
        return ctx.model or "builtin (offline)"
    if len(set(llm.values())) == 1 and len(llm) == len(models):
        return next(iter(llm.values()))
    return ", ".join(f"{r} {m}" for r, m in models.items())


def _caps_line(ctx: Context) -> str:
    caps = ([f"max ${ctx.max_cost_usd:g} LLM"] if ctx.max_cost_usd is not None else []) + \
        ([f"max {ctx.max_llm_tokens:,} LLM tokens"] if ctx.max_llm_tokens is not None else [])
    return "".join(f", {c}" for c in caps)


def _spend(ctx: Context, run_id: int) -> str:
    from agents import calls

    t = calls.ledger_for(ctx.home).totals(run_id)
    if not t["calls"]:
        return ""
    return f"; LLM ${t['cost_usd']:.4f}, {t['tokens']:,} tok"


def _stream(app, state, config, ctx: Context, console: Console, quiet: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = ctx.candidates + 1
    saved = app.get_state(config).values if state is None else state
    done = len(saved.get("finished", [])) if state is None else 0
    rnd = saved.get("round", 0)   # the round in flight, from round_end's updates
    best: float | None = None
    run_id = config["metadata"]["run_id"]
    spend = _spend(ctx, run_id)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=quiet) as bar:
        task = bar.add_task("starting", total=total, completed=done)
        # durability="sync": a step's checkpoint is on disk before the next step starts,
        # so a kill -9 loses at most the step in flight (the default, "async", may lose
        # more, which a resumed run then redoes: LLM calls and training included).
        for ns, mode, update in app.stream(state, config, context=ctx,
                                           stream_mode=["updates", "custom"],
                                           subgraphs=True, durability="sync"):
            if mode == "custom":  # a verl run's metrics, as they are logged
                _log_progress(console, (update or {}).get("verl_progress"))
                continue
            for node, value in (update or {}).items():
                if node == "round_end" and isinstance(value, dict) and "round" in value:
                    rnd = value["round"]
                bar.update(task, description=f"{node} (round {rnd}); best {_fmt(best)}{spend}")
                if node == "archive" and value:
                    spend = _spend(ctx, run_id)
                    for c in value.get("finished", []):
                        bar.advance(task)
                        if c["fitness"] is not None:
                            best = c["fitness"] if best is None else max(best, c["fitness"])
                        console.log(f"round {c['round']} #{c['id']} {c['name']}: "
                                    f"{c['status']} fitness {_fmt(c['fitness'])}"
                                    + (f" (Overall {c['overall']:.1f}, length "
                                       f"{c['length']:.1f})" if c.get("overall") is not None
                                       else "")
                                    + (f" ({c['error'][:120]})" if c.get("error") else ""))


def _log_progress(console: Console, p: dict | None) -> None:
    if not p:
        return
    m = p["metrics"]
    shown = [(k.split("/")[-1], m[k]) for k in ("poise/reward", "poise/accuracy",
                                                "actor/entropy", "response_length/mean")
             if k in m]
    console.log(f"{p['candidate']} seed {p['seed']} verl step {p['step']}: "
                + ", ".join(f"{k} {v:.3g}" for k, v in shown))


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"
