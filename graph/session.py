"""A steering session: one person talking to one paused run from a terminal.

``open_session`` starts a steered run (or reopens thread ``run-<id>`` from its SQLite
checkpoint); ``Session.drive`` renders each pause (graph.steering.pause_payload), reads
the person's lines, answers the read-only ones here (/why from the archive, /leaderboard,
/status, /help) and sends the others to the run as ``Command(resume=instruction)``. The
command line is graph/steer.py.
"""
from __future__ import annotations

import argparse
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import timezone
from pathlib import Path
from typing import Any

from langgraph.types import Command
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from graph.context import Context
from graph.request import RunRequest
from graph.graph import model_for
from graph.runner import UsageError, compile_graph, prepare, print_leaderboard, write_summary
from graph.steering import (COMMANDS, FREE_TEXT_HELP, Action, Instruction,
                            action_from_intent, parse_line, thread_run_id, unknown_thread)
from trainers.home import resolve_home

class Left(Exception):
    """The person left the session (``/quit``, end of input, Ctrl-C at the prompt)."""

    def __init__(self, how: str, code: int):
        super().__init__(how)
        self.code = code


class Session:
    """One person steering one run (thread ``run-<id>``) from this terminal."""

    def __init__(self, home: Path, archive, run_id: int, ctx: Context, console: Console):
        self.home, self.archive, self.run_id, self.ctx = home, archive, run_id, ctx
        self.console = console
        self.app = compile_graph(home)
        self.config = {"configurable": {"thread_id": self.thread},
                       "recursion_limit": 10_000}
        self.model = model_for("steer", ctx)

    @property
    def thread(self) -> str:
        return f"run-{self.run_id}"

    def resume_hint(self) -> str:
        return f"python -m graph.steer --home {self.home} --thread {self.thread}"

    # ------------------------------------------------------------------------- the graph

    def advance(self, value) -> dict | None:
        """Run the graph until its next pause; the pause's payload, or None at the end."""
        for _ns, update in self.app.stream(value, self.config, context=self.ctx,
                                           stream_mode="updates", subgraphs=True):
            for node, out in (update or {}).items():
                if node == "archive" and out:
                    for c in out.get("finished", []):
                        self.console.print(
                            f"  round {c['round']} #{c['id']} {escape(c['name'])}: "
                            f"{c['status']} fitness {_fmt(c['fitness'])}"
                            + (f" ({escape(c['error'][:120])})" if c.get("error") else ""))
        snapshot = self.app.get_state(self.config)
        if snapshot.interrupts:
            return snapshot.interrupts[0].value
        return None

    def drive(self, payload: dict | None) -> int:
        """Converse at each pause until the run ends (0) or the person leaves."""
        while payload is not None:
            self.show_pause(payload)
            payload = self.converse(payload)
        self.finish()
        return 0

    # ------------------------------------------------------------------------- talking

    def converse(self, payload: dict) -> dict | None:
        """Read lines until one lets the run go on; the next pause's payload (or None)."""
        while True:
            try:  # everything but sending an instruction happens at the pause
                action = self.interpret(read_line(self.console, "steer> "),
                                        payload["directive"])
                if action.message:
                    self.console.print(escape(action.message))
                if action.kind == "quit":
                    raise Left("quit", 0)
                if action.kind != "instruct":
                    self.answer(action, payload)
                    continue
            except KeyboardInterrupt:
                raise Left("interrupted", 130) from None
            except EOFError:
                raise Left("end of input", 0) from None
            payload = self.instruct(action.instruction)
            if payload is None or action.instruction.releases:
                return payload
            for note in payload["notes"]:
                self.console.print(escape(note))

    def answer(self, action: Action, payload: dict) -> None:
        """The read-only actions, answered here from the archive and the pause."""
        if action.kind == "help":
            self.show_help()
        elif action.kind == "leaderboard":
            print_leaderboard(self.archive, self.run_id, self.console)
        elif action.kind == "status":
            self.show_status(payload)
        elif action.kind == "why":
            self.console.print(escape(why_text(self.archive, int(action.target))))

    def interpret(self, line: str, directive: str) -> Action:
        """Slash commands are parsed; free text goes to the steer model (the scientist's
        unless configured apart) when one is
        configured, else (or when it gives no usable reading) to the builtin rules."""
        if self.model is None or not line.strip() or line.strip().startswith("/"):
            return parse_line(line, directive, self.resolve)
        from agents.steer import interpret_llm
        from agents.structured import AgentOutputError

        cands = [{"id": c.id, "name": c.name, "status": c.status, "fitness": c.fitness}
                 for c in self.archive.candidates(self.run_id)]
        from agents import calls

        try:
            with calls.scope(calls.ledger_for(self.home), self.run_id, "steer", "steer",
                             cache=False):  # a person's words: answered afresh each time
                intent = interpret_llm(self.model, line, directive, cands)
        except Exception as e:  # noqa: BLE001 - said to the person; the rules take over
            problem = e.problems[-1] if isinstance(e, AgentOutputError) else \
                f"{type(e).__name__}: {e}"
            action = parse_line(line, directive, self.resolve)
            note = f"(the scientist model gave no usable reading: {problem[:160]}; " \
                   "the builtin rules read it)"
            return replace(action, message=f"{note} {action.message}".strip())
        return action_from_intent(intent, self.resolve, line.strip())

    def instruct(self, instr: Instruction) -> dict | None:
        """Send one instruction to the paused run (after completing it here)."""
        if instr.directive is not None and instr.objective is None:
            from agents.objective import objective_for
            from evals.objective import objective_from_directive

            from agents import calls

            try:
                with calls.scope(calls.ledger_for(self.home), self.run_id, "objective",
                                 "objective", cache=False):
                    spec, how = objective_for(instr.directive,
                                              model_for("objective", self.ctx))
            except ValueError as e:  # an empty directive
                self.console.print(escape(f"refused: {e}"))
                return {**self.app.get_state(self.config).interrupts[0].value, "notes": []}
            except Exception as e:  # noqa: BLE001 - the model failed; say so, map keywords
                spec = objective_from_directive(instr.directive)
                how = f"builtin keyword mapping (the LLM failed: {type(e).__name__}: {e})"
            instr = instr.model_copy(update={"objective": spec.model_dump(),
                                             "objective_source": how})
        if instr.budget:
            self.ctx = replace(self.ctx, **instr.budget)
        if instr.releases:
            self.console.print("going on..." if not instr.stop else "stopping the run...")
        return self.advance(_resume(instr))

    def resolve(self, key: str) -> int:
        from memory.schema import ArchiveError

        try:
            cand = self.archive.find_candidate(key)
        except ArchiveError:
            raise LookupError(f"no candidate {key!r} in run {self.run_id} "
                              "(see /leaderboard)") from None
        if cand.run_id != self.run_id:
            raise LookupError(f"#{cand.id} {cand.name} belongs to run {cand.run_id}, "
                              f"not this run ({self.run_id})")
        return cand.id

    # ------------------------------------------------------------------------- showing

    def show_header(self, directive: str, resumed: bool) -> None:
        self.console.rule(f"POISE steering session {self.thread}"
                          + (" (resumed)" if resumed else ""))
        self.console.print(f"directive: {escape(directive)}\n"
                           f"agents: {self.ctx.model or 'builtin (offline)'}; home: "
                           f"{self.home}\nleave any time with /quit or Ctrl-C; resume with "
                           f"{self.resume_hint()}", soft_wrap=True)

    def show_pause(self, p: dict) -> None:
        self.console.rule(f"round {p['round']} done" if p["round"] else
                          "round 0 done: the seed baseline")
        if p["new"]:
            t = Table(title="this round", title_justify="left")
            for col in ("#", "candidate", "parents", "status", "fitness", "error"):
                t.add_column(col)
            for c in p["new"]:
                t.add_row(str(c["id"]), escape(c["name"]),
                          ",".join(map(str, c["parents"])) or "-", c["status"],
                          _fmt(c["fitness"]), escape((c["error"] or "")[:80]))
            self.console.print(t)
        self.show_status(p)
        if p["applied"]:
            self.console.print("said at this pause so far: " + escape("; ".join(p["applied"])))
        for note in p["notes"]:
            self.console.print(escape(note))
        if p["budget_spent"]:
            self.console.print("the budget is spent: /budget candidates=N to go on, "
                               "/go or /stop to finish the run")
        self.console.print("talk to the scientist (/help lists the commands; /go runs the "
                           "next round)")

    def show_status(self, p: dict) -> None:
        b = p["budget"]
        board = ", ".join(f"#{r['id']} {r['name']} {_fmt(r['fitness'])}"
                          for r in p["leaderboard"][:3]) or "-"
        self.console.print(
            f"directive: {escape(p['directive'])}\nobjective: {p['objective_text']}\n"
            f"budget: {b['done']}/{b['candidates']} candidates, width {b['width']}, "
            f"seeds {b['seeds']}, steps {b['steps'] or 'default'}\n"
            f"top: {escape(board)}\nvetoed: "
            f"{', '.join(f'#{i}' for i in p['vetoed']) or '-'}; pinned: "
            f"{'#' + str(p['pinned']) if p['pinned'] else '-'}")

    def show_help(self) -> None:
        t = Table(title="commands", title_justify="left", show_header=False)
        t.add_column("command")
        t.add_column("what it does")
        for cmd, what in COMMANDS.items():
            t.add_row(escape(cmd), what)
        self.console.print(t)
        self.console.print(escape(FREE_TEXT_HELP))

    def finish(self) -> None:
        run = self.archive.run(self.run_id)
        started = run.started if run.started.tzinfo else run.started.replace(
            tzinfo=timezone.utc)
        # the run's whole span, the pauses for the person included (orchestration)
        wall = max(1e-6, time.time() - started.timestamp())
        write_summary(self.archive, self.app, self.config, self.run_id, run.directive,
                      self.home, wall)
        self.archive.finish_run(self.run_id)
        print_leaderboard(self.archive, self.run_id, self.console)
        self.console.print(f"run {self.run_id} finished under the directive "
                           f"{escape(repr(run.directive))}; summary: "
                           f"{self.home / 'runs' / str(self.run_id) / 'summary.json'}")


def _resume(instr: Instruction) -> Command:
    return Command(resume=instr.model_dump())


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


# ----------------------------------------------------------------------------- the prompt

def read_line(console: Console, prompt: str, poll_s: float = 0.2) -> str:
    """A line from the person at ``prompt``, where Ctrl-C always leaves.

    ``input()`` can miss a Ctrl-C: its read() only returns early when the SIGINT lands on
    the main thread, so one handled on another of the CLI's threads (torch, Chroma and
    SQLite keep several) leaves it blocked until the next key; and a KeyboardInterrupt
    raised while a finalizer runs is printed and swallowed. On a terminal this waits in
    ``select`` with a short timeout instead, under a handler that also records the
    interrupt, so either way the next poll raises KeyboardInterrupt. Elsewhere (a pipe,
    or SIGINT ignored by whoever started us) it is ``console.input``."""
    if not sys.stdin.isatty() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN \
            or threading.current_thread() is not threading.main_thread():
        return console.input(prompt)
    interrupted = threading.Event()

    def on_sigint(signum, frame):
        interrupted.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        console.print(prompt, end="")
        while True:
            if interrupted.is_set():
                raise KeyboardInterrupt
            ready, _, _ = select.select([sys.stdin], [], [], poll_s)
            if ready:
                line = sys.stdin.readline()
                if not line:
                    raise EOFError
                return line.rstrip("\n")
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- why

def why_text(archive, cid: int, similar: int = 3) -> str:
    """Why candidate ``cid`` was proposed and how it did, from the archive: proposal,
    parent, the evidence behind it, outcome, reflection, and similar past reflections."""
    c = archive.candidate(cid)
    d = c.info
    lines = [f"#{c.id} {c.name}: round {'?' if d.round is None else d.round}, "
             f"generation {c.generation}, {c.status}"
             + (f", fitness {c.fitness:.2f}" if c.fitness is not None else "")]
    parents = [archive.candidate(p) for p in archive.parents(cid)]
    lines.append("parent: " + (", ".join(f"#{p.id} {p.name} ({p.status}, fitness "
                                         f"{_fmt(p.fitness)})" for p in parents)
                               or "none (the seed baseline)"))
    if d.kind:
        lines.append(f"proposed as: {d.kind}"
                     + (f", changing {', '.join(d.changes)}" if d.changes else ""))
    if d.rationale:
        lines.append("evidence behind the proposal: " + "; ".join(d.rationale))
    from memory.cards import shown
    from memory.show import shown_text

    seen = shown_text(shown(archive, cid))
    if seen:
        lines.append("the scientist was shown " + seen.replace("\n", "; "))
    lines.append(c.proposal.strip())
    evals = archive.evaluations(cid)
    if evals:
        vals = [e.metrics.get("val", {}) for e in evals]
        lines.append("outcome: val Overall " + ", ".join(
            _fmt(v.get("overall")) for v in vals) + "; mean length " + ", ".join(
            _fmt(v.get("length")) for v in vals) + f" ({len(evals)} seed(s))")
    if c.error:
        lines.append(f"why it failed: {c.error}")
    if d.feedback:
        lines.append("verifier feedback: " + "; ".join(d.feedback[:3]))
    for j in d.judge:
        if j.get("judge_error"):
            lines.append(f"the consistency judge failed: {j['judge_error']} (the builtin "
                         "rule judged instead)")
    refl = archive.reflections(cid)
    for r in refl:
        lines.append(f"reflection [{', '.join(r.tags)}]: {r.text}")
    query = refl[-1].text if refl else c.proposal
    if query.strip():
        hits = archive.similar_reflections(query, k=similar, exclude_candidate=cid)
        if hits:
            lines.append("similar reflections in the archive:")
            lines += [f"  #{h.candidate_id} {h.candidate_name} ({h.status}, fitness "
                      f"{_fmt(h.fitness)}, similarity {h.similarity:.2f}): "
                      f"{h.reflection[:160]}" for h in hits]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

@dataclass
class Opening:
    """Where a session starts: at a pause (``payload``), by running the graph from
    ``value`` (a new run's input, or None to finish a round cut short), or at the end
    of a run that had already finished."""
    payload: dict | None = None
    value: Any = None
    finished: bool = False

    def first_pause(self, session: "Session") -> dict | None:
        return self.payload if self.payload is not None else session.advance(self.value)


def open_session(args: argparse.Namespace, console: Console) -> tuple[Session, Opening]:
    """A new steered run's session (``args.directive``) or a resumed one (``args.thread``);
    raises UsageError for an unknown thread."""
    if args.thread is not None:
        return _resume_session(args, console)
    request = RunRequest(
        home=args.home, directive=args.directive, steer=True,
        candidates=args.candidates or 8, width=args.width or 2, seeds=args.seeds or 1,
        steps=args.steps, seed=args.seed or 0, smoke=not args.no_smoke,
        config=args.config, model=args.model)
    home, archive, run_id, directive, ctx, state, _ = prepare(request)
    session = Session(home, archive, run_id, ctx, console)
    session.show_header(directive, resumed=False)
    console.print("training the seed baseline (GRPO)...")
    return session, Opening(value=state)


def _resume_session(args, console: Console) -> tuple[Session, Opening]:
    from memory.archive import Archive
    from memory.schema import ArchiveError

    run_id = thread_run_id(args.thread)
    home = resolve_home(args.home)
    unknown = UsageError(unknown_thread(args.thread, home))
    if not (home / "graph.db").is_file():
        raise unknown
    try:
        Archive(home, create=False).run(run_id)
    except ArchiveError:
        raise unknown from None
    home, archive, run_id, directive, ctx, _, _ = prepare(
        RunRequest(home=str(home), resume=run_id, steer=True))
    session = Session(home, archive, run_id, ctx, console)
    snapshot = session.app.get_state(session.config)
    if not snapshot.values:
        raise unknown
    if snapshot.interrupts:  # the pause's payload carries what was said at it
        payload = snapshot.interrupts[0].value
        session.show_header(payload["directive"], resumed=True)
        return session, Opening(payload=payload)
    session.show_header(snapshot.values.get("directive", directive), resumed=True)
    if snapshot.tasks:  # not .next: a task whose writes were saved is not listed there
        console.print("the session stopped during a round: finishing that round first")
        return session, Opening(value=None)
    console.print(f"thread {session.thread} already finished")
    print_leaderboard(archive, run_id, console)
    return session, Opening(finished=True)
