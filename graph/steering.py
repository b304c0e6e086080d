"""Steering a run between rounds: the person's instructions and how they apply.

A steering session (``python -m graph.steer``) talks to the run through LangGraph's
``interrupt()``. At the end of each round the ``steer`` node pauses with
``pause_payload`` (the round's candidates, the leaderboard, the budget); the session
answers with one ``Instruction`` at a time (``Command(resume=instruction.model_dump())``).
An instruction that changes something (directive, veto, pin, budget) is applied at once
and the node pauses again with notes that acknowledge or refuse it; one with ``go`` or
``stop`` lets the run go on or end. Each resume value is kept in the checkpoint, so a
session closed mid-pause replays them when resumed by thread id: nothing said is lost.

Three layers, each testable alone:

- ``parse_line``: what the person typed -> an ``Action``: a slash command, or free text
  mapped to an instruction by the builtin rules (``free_text``);
- ``apply_instruction``: (steering state, instruction, the run's candidates) -> the new
  steering state and notes, pure;
- ``record_instruction``: the archive side of an applied instruction (the run's
  directive and objective, fitness re-scored under a new objective, the budget, vetoes).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evals.objective import ObjectiveSpec, objective_from_directive, seed_fitnesses
from memory.schema import EVALUATED

THREAD_ID = re.compile(r"^(?:run-)?(\d+)$")   # a steering session's thread: run-<run id>


def thread_run_id(thread: str) -> int:
    """The run id of a checked thread id (``run-3`` or ``3``)."""
    return int(THREAD_ID.match(thread.strip()).group(1))


def unknown_thread(thread: str, home) -> str:
    return f"no thread run-{thread_run_id(thread)} in {home}: start a session with --directive"

BUDGET_KEYS = ("candidates", "width", "seeds", "steps")
LEADERBOARD_SIZE = 5


class Instruction(BaseModel):
    """One resume value: what the person wants changed, and whether the run goes on."""
    model_config = ConfigDict(extra="forbid")

    directive: str | None = Field(None, description="the new directive, verbatim")
    objective: dict | None = Field(None, description="the ObjectiveSpec for `directive` "
                                   "(the session writes it; absent: keyword mapping)")
    objective_source: str | None = None
    veto: list[int] = Field([], description="candidate ids never to choose as parents")
    unveto: list[int] = Field([], description="vetoed ids to allow again")
    pin: int | None = Field(None, description="the parent of every candidate next round")
    budget: dict[str, int] = Field({}, description=f"new values of {BUDGET_KEYS}")
    go: int | None = Field(None, ge=1, description="rounds to run before pausing again")
    stop: bool = Field(False, description="end the run now")
    said: str | None = Field(None, description="the person's words, for the record")

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: dict[str, int]) -> dict[str, int]:
        for key, n in value.items():
            if key not in BUDGET_KEYS:
                raise ValueError(f"unknown budget key {key!r}: use {', '.join(BUDGET_KEYS)}")
            if n < 1:
                raise ValueError(f"budget {key} must be at least 1, got {n}")
        return value

    @property
    def releases(self) -> bool:
        """Does the run go on (or end) after this instruction?"""
        return self.go is not None or self.stop

    def describe(self) -> str:
        parts = []
        if self.directive is not None:
            parts.append(f"directive {self.directive!r}")
        parts += [f"veto #{i}" for i in self.veto] + [f"unveto #{i}" for i in self.unveto]
        if self.pin is not None:
            parts.append(f"pin #{self.pin}")
        if self.budget:
            parts.append("budget " + " ".join(f"{k}={v}" for k, v in self.budget.items()))
        if self.go is not None:
            parts.append(f"go {self.go}")
        if self.stop:
            parts.append("stop")
        return ", ".join(parts) or "nothing"


Kind = Literal["instruct", "why", "leaderboard", "status", "help", "quit", "say", "none"]


@dataclass
class Action:
    """What a line the person typed asks for. ``say``: a message only (an error, or
    free text the rules could not map), nothing is sent to the run."""
    kind: Kind
    instruction: Instruction | None = None
    target: str | None = None          # the candidate of /why
    message: str = ""


COMMANDS = {
    "/directive TEXT": "set the directive; the objective follows it",
    "/why NAME|ID": "why a candidate was proposed, how it did, what it resembles",
    "/veto NAME|ID ...": "never choose these candidates as parents",
    "/unveto NAME|ID ...": "allow vetoed candidates as parents again",
    "/pin NAME|ID": "make this candidate the parent of the next round",
    "/budget KEY=N ...": f"change the budget ({', '.join(BUDGET_KEYS)})",
    "/leaderboard": "the run's evaluated candidates by fitness",
    "/status": "directive, objective, budget, vetoes and pin",
    "/go [N]": "run N more rounds (default 1) before asking again",
    "/stop": "end the run now and write its summary",
    "/help": "this list",
    "/quit": "leave; the run waits here, resumable with --thread",
}

FREE_TEXT_HELP = ("free text is mapped by rules: 'make it more concise', 'forget about "
                  "length', 'more stable', 'explore more', 'optimize for X', 'why did "
                  "NAME fail?', 'go on for 2 rounds'")


# ----------------------------------------------------------------------------- parsing

Resolve = Callable[[str], int]   # a candidate name or id -> its id; LookupError if none


def parse_line(text: str, directive: str, resolve: Resolve) -> Action:
    """The person's line -> an Action. Never raises on bad input: a mistake becomes a
    ``say`` action whose message says what was wrong and what to type instead."""
    text = text.strip()
    if not text:
        return Action("none")
    if not text.startswith("/"):
        return free_text(text, directive, resolve)
    command, _, rest = text.partition(" ")
    command, rest = command.lower(), rest.strip()
    try:
        return _slash(command, rest, resolve)
    except LookupError as e:
        return Action("say", message=str(e).strip("'\""))


def _slash(command: str, rest: str, resolve: Resolve) -> Action:
    if command == "/help":
        return Action("help")
    if command in ("/quit", "/exit", "/q"):
        return Action("quit")
    if command in ("/leaderboard", "/lb"):
        return Action("leaderboard")
    if command == "/status":
        return Action("status")
    if command == "/stop":
        return Action("instruct", Instruction(stop=True, said=command))
    if command == "/directive":
        if not rest:
            return Action("say", message="/directive needs the new directive, e.g. "
                                         "/directive accurate and concise")
        return Action("instruct", Instruction(directive=rest, said=f"{command} {rest}"))
    if command == "/why":
        if not rest or len(rest.split()) != 1:
            return Action("say", message="/why needs one candidate name or id, "
                                         "e.g. /why 3 (see /leaderboard)")
        return Action("why", target=str(resolve(rest.lstrip("#"))))
    if command in ("/veto", "/unveto", "/pin"):
        keys = rest.replace(",", " ").split()
        if not keys or (command == "/pin" and len(keys) != 1):
            what = "one candidate" if command == "/pin" else "candidate names or ids"
            return Action("say", message=f"{command} needs {what}, e.g. {command} 3")
        ids = [resolve(k.lstrip("#")) for k in keys]
        field_ = {"/veto": "veto", "/unveto": "unveto"}.get(command)
        instr = Instruction(**({field_: ids} if field_ else {"pin": ids[0]}),
                            said=f"{command} {rest}")
        return Action("instruct", instr)
    if command == "/budget":
        return _budget(rest)
    if command == "/go":
        if rest and not (rest.isdigit() and int(rest) >= 1):
            return Action("say", message=f"/go takes a number of rounds >= 1, got {rest!r}")
        return Action("instruct", Instruction(go=int(rest or 1), said=f"/go {rest}".strip()))
    return Action("say", message=f"unknown command {command}: /help lists the commands")


def _budget(rest: str) -> Action:
    usage = (f"/budget takes KEY=N pairs with keys {', '.join(BUDGET_KEYS)} and whole "
             "numbers >= 1, e.g. /budget candidates=12 seeds=2")
    budget = {}
    for pair in rest.replace(",", " ").split():
        key, eq, value = pair.partition("=")
        key = key.strip().lower()
        if not eq or key not in BUDGET_KEYS or not value.isdigit() or int(value) < 1:
            return Action("say", message=f"bad budget item {pair!r}: {usage}")
        budget[key] = int(value)
    if not budget:
        return Action("say", message=usage)
    return Action("instruct", Instruction(budget=budget, said=f"/budget {rest}"))


# ----------------------------------------------------------------------------- free text

_SET = re.compile(r"^(?:new directive|directive|optimi[sz]e(?: for)?|focus on|aim for|"
                  r"target)\s*[:=-]?\s+(?P<d>.+?)[.!]*$", re.IGNORECASE)
_GO = re.compile(r"^(?:go|go on|continue|keep going|carry on|run|proceed)"
                 r"(?:\s+(?:for\s+)?(?P<n>\d+)\s+(?:more\s+)?rounds?)?[.!]*$")
_BOARD = re.compile(r"\b(leaderboard|ranking|standings|best so far|who is winning)\b")
_WHY = re.compile(r"\bwhy\b")
# A negation governs a word up to three words after it in the same clause: "don't care
# about length".
_NOT = (r"\b(?:not|don'?t|do not|no longer|forget|ignore|never mind|stop caring|without|"
        r"drop)\b(?:\s+\w+){0,3}?\s+")
_BRIEF = r"(?:concise\w*|short\w*|brie\w*|terse|length\w*|verbose|wordy)"
_LONGER = re.compile(rf"{_NOT}{_BRIEF}|\baccuracy only\b|\bonly (?:about )?accura|"
                     r"\btoo (?:short|brief|terse|concise)\b|\blonger\b|"
                     r"\bmore (?:verbose|detail)")
# (the person's words, the word added to the directive, the words that show the directive
# already asks for it): the builtin scientist's directive rules and objective read these.
_REFINEMENTS = [
    (r"(?:accura\w*|correct\w*)", "accurate", ("accurate", "accuracy", "correct")),
    (r"(?:stable|stabler|stability|robust\w*|unstable)", "stable", ("stable", "robust")),
    (r"(?:explor\w*|divers\w*|entropy)", "explore more",
     ("explore", "diverse", "diversity", "entropy")),
    (r"(?:valid\w*|format\w*)", "valid format", ("valid", "format")),
]
_BRIEF_WORDS = ("concise", "short", "brief", "terse", "efficient", "length", "compact")


def free_text(text: str, directive: str, resolve: Resolve) -> Action:
    """The builtin rules for free text (documented in ``FREE_TEXT_HELP``)."""
    said = text.strip()
    low = said.lower()
    if m := _SET.match(said):
        return Action("instruct", Instruction(directive=m["d"].strip(), said=said))
    if m := _GO.match(low):
        return Action("instruct", Instruction(go=int(m["n"] or 1), said=said))
    if _WHY.search(low):
        target = _mentioned_candidate(said, resolve)
        if target is None:
            return Action("say", message="which candidate? Ask /why NAME|ID "
                                         "(see /leaderboard)")
        return Action("why", target=str(target))
    if _BOARD.search(low):
        return Action("leaderboard")
    new = refine_directive(directive, low)
    if new is None:
        return Action("say", message="I could not map that to an instruction. "
                      f"{FREE_TEXT_HELP}; or use a command (/help lists them)")
    if new == directive:
        return Action("say", message=f"the directive {directive!r} already asks for that; "
                      "/directive TEXT replaces it")
    return Action("instruct", Instruction(directive=new, said=said))


def action_from_intent(intent: Any, resolve: Resolve, said: str) -> Action:
    """An LLM's ``agents.steer.SteerIntent`` -> the Action the slash command would give."""
    reply = intent.reply.strip()
    try:
        if intent.action == "directive":
            return Action("instruct", Instruction(directive=intent.directive.strip(),
                                                  said=said), message=reply)
        if intent.action == "why":
            return Action("why", target=str(resolve(intent.candidate.strip().lstrip("#"))),
                          message=reply)
        if intent.action in ("veto", "pin"):
            cid = resolve(intent.candidate.strip().lstrip("#"))
            instr = Instruction(veto=[cid], said=said) if intent.action == "veto" else \
                Instruction(pin=cid, said=said)
            return Action("instruct", instr, message=reply)
        if intent.action == "budget":
            return Action("instruct", Instruction(budget=intent.budget, said=said),
                          message=reply)
        if intent.action == "go":
            return Action("instruct", Instruction(go=intent.rounds or 1, said=said),
                          message=reply)
        if intent.action == "leaderboard":
            return Action("leaderboard", message=reply)
    except LookupError as e:
        return Action("say", message=f"{reply} ({str(e).strip(chr(39))})".strip())
    return Action("say", message=reply or "I could not map that to an instruction "
                  "(/help lists the commands)")


def refine_directive(directive: str, request: str) -> str | None:
    """The directive refined by a free-text request, or None when no rule applies.
    Brevity: asked for -> "concise" is added; negated, "too short", "longer" or
    "accuracy only" -> the clauses about length are dropped. Accuracy, stability,
    exploration, format validity: asked for (not negated) -> the word is added."""
    low = request.lower()
    matched = False
    new = directive.strip()
    if re.search(rf"\b{_BRIEF}\b", low) or _LONGER.search(low):
        matched = True
        if _LONGER.search(low):
            clauses = [c.strip() for c in re.split(r",|;|\band\b", new)]
            kept = [c for c in clauses if c and not any(w in c.lower() for w in _BRIEF_WORDS)]
            new = " and ".join(kept) or "accurate"
        elif not any(w in new.lower() for w in _BRIEF_WORDS):
            new = f"{new} and concise"
    for words, word, present in _REFINEMENTS:
        if re.search(rf"\b{words}\b", low) and not re.search(rf"{_NOT}{words}", low):
            matched = True
            if not any(w in new.lower() for w in present):
                new = f"{new} and {word}"
    return new if matched else None


def _mentioned_candidate(text: str, resolve: Resolve) -> int | None:
    for token in re.findall(r"#?[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        key = token.lstrip("#").rstrip(".")
        if key.lower() in ("why", "did", "was", "is", "the", "a", "it", "fail", "failed"):
            continue
        try:
            return resolve(key)
        except LookupError:
            continue
    return None


# ----------------------------------------------------------------------------- applying

@dataclass
class Steering:
    """The part of the run state a person steers (the objective typed; the run state
    and its checkpoints hold its JSON)."""
    directive: str
    objective: ObjectiveSpec
    vetoed: list[int] = field(default_factory=list)
    pinned: int | None = None

    @classmethod
    def of(cls, state: dict) -> "Steering":
        return cls(state["directive"], ObjectiveSpec.model_validate(state["objective"]),
                   list(state.get("vetoed") or []), state.get("pinned"))

    def update(self) -> dict:
        """The RunState update that carries this steering state."""
        return {"directive": self.directive, "objective": self.objective.model_dump(),
                "vetoed": list(self.vetoed), "pinned": self.pinned}


def apply_instruction(steer: Steering, instr: Instruction, candidates: Sequence[Any]
                      ) -> tuple[Steering, list[str]]:
    """The steering state after ``instr`` and notes for the person (what changed, what
    was refused and why). ``candidates``: the run's candidates (id, name, status)."""
    by_id = {c.id: c for c in candidates}
    notes: list[str] = []
    new = replace(steer, vetoed=list(steer.vetoed))
    if instr.directive is not None:
        _directive(new, instr, notes)
    for cid in instr.veto:
        _veto(new, cid, by_id, notes)
    for cid in instr.unveto:
        if cid in new.vetoed:
            new.vetoed.remove(cid)
            notes.append(f"#{cid} {_name(by_id, cid)} may parent again")
        else:
            notes.append(f"#{cid} was not vetoed")
    if instr.pin is not None:
        _pin(new, instr.pin, by_id, notes)
    if instr.budget:
        notes.append("budget: " + ", ".join(f"{k}={v}" for k, v in instr.budget.items()))
    if instr.stop:
        notes.append("stopping: the run ends now")
    elif instr.go is not None:
        notes.append(f"going on for {instr.go} round(s)")
    return new, notes


def _directive(steer: Steering, instr: Instruction, notes: list[str]) -> None:
    text = instr.directive.strip()
    if not text:
        notes.append("refused: the directive cannot be empty")
        return
    if instr.objective is not None:
        spec = ObjectiveSpec.model_validate({**instr.objective, "directive": text})
        how = instr.objective_source or "given"
    else:
        spec, how = objective_from_directive(text), "builtin keyword mapping"
    old = steer.directive
    steer.directive, steer.objective = text, spec
    notes.append(f"directive {old!r} -> {text!r}; objective: {spec.describe()} ({how})")


def _veto(steer: Steering, cid: int, by_id: dict, notes: list[str]) -> None:
    if cid not in by_id:
        notes.append(f"refused: no candidate #{cid} in this run")
        return
    if cid in steer.vetoed:
        notes.append(f"#{cid} {by_id[cid].name} is already vetoed")
        return
    parents_left = [c for c in by_id.values() if c.status == EVALUATED
                    and c.id not in steer.vetoed and c.id != cid]
    if by_id[cid].status == EVALUATED and not parents_left:
        notes.append(f"refused: #{cid} {by_id[cid].name} is the last candidate that can "
                     "parent; veto it once another one is evaluated")
        return
    steer.vetoed.append(cid)
    why = "" if by_id[cid].status == EVALUATED else \
        f" (it is {by_id[cid].status}, so it could not parent anyway)"
    notes.append(f"vetoed #{cid} {by_id[cid].name}: never chosen as a parent{why}")
    if steer.pinned == cid:
        steer.pinned = None
        notes.append(f"the pin on #{cid} is lifted")


def _pin(steer: Steering, cid: int, by_id: dict, notes: list[str]) -> None:
    if cid not in by_id:
        notes.append(f"refused: no candidate #{cid} in this run")
    elif by_id[cid].status != EVALUATED:
        notes.append(f"refused: #{cid} {by_id[cid].name} is {by_id[cid].status}; only "
                     "evaluated candidates can parent")
    elif cid in steer.vetoed:
        notes.append(f"refused: #{cid} {by_id[cid].name} is vetoed; /unveto it first")
    else:
        steer.pinned = cid
        notes.append(f"pinned #{cid} {by_id[cid].name}: the parent of the next round")


def _name(by_id: dict, cid: int) -> str:
    return by_id[cid].name if cid in by_id else "?"


# ----------------------------------------------------------------------------- archive

def record_instruction(archive, run_id: int, before: Steering, after: Steering,
                       instr: Instruction, context: dict, reference: dict | None) -> None:
    """The archive side of an applied instruction; idempotent (a resumed session
    replays its instructions). A new objective re-scores the run's evaluations, so
    the leaderboard and parent selection compare candidates under one objective."""
    config: dict = {"steering": {"vetoed": after.vetoed, "pinned": after.pinned}}
    if instr.budget:
        config["context"] = context
    if after.directive != before.directive or after.objective != before.objective:
        config["objective"] = after.objective.model_dump()
        config["objective_source"] = instr.objective_source or "builtin keyword mapping"
    archive.update_run(run_id, directive=after.directive, config=config)
    if after.objective != before.objective:
        rescore(archive, run_id, after.objective, reference)


def rescore(archive, run_id: int, spec: ObjectiveSpec, reference: dict | None) -> int:
    """Every evaluation of the run scored again under ``spec``, a candidate's seeds
    together (evals.objective.seed_fitnesses: the penalty reads their mean Overall)."""
    ref = (reference["overall"], reference["length"]) if reference else None
    new: dict[int, float] = {}
    for c in archive.candidates(run_id):
        evals = [e for e in archive.evaluations(c.id) if (e.metrics or {}).get("val")]
        fits = seed_fitnesses(spec, [(e.metrics["val"]["overall"], e.metrics["val"]["length"])
                                     for e in evals], ref)
        new.update({e.id: f for e, f in zip(evals, fits)})
    return archive.rescore(run_id, lambda ev: new.get(ev.id, ev.fitness))


def pause_payload(archive, state: dict, steer: Steering, budget: dict,
                  notes: Sequence[str], applied: Sequence[Instruction]) -> dict:
    """What the person sees at a pause: the round that ended, the leaderboard, the
    budget, the steering state, and the notes on their last instruction."""
    run_id = state["run_id"]
    ended = state["round"] - 1
    fresh = {c.id: c for c in archive.candidates(run_id)}
    new = []
    for c in state.get("finished", []):
        if c["round"] == ended and c["id"] in fresh:
            cand = fresh[c["id"]]
            new.append({"id": cand.id, "name": cand.name, "status": cand.status,
                        "fitness": cand.fitness, "parents": c["parents"],
                        "error": cand.error})
    board = [{"id": s.candidate_id, "name": s.name, "fitness": s.fitness,
              "generation": s.generation, "parents": s.parent_ids}
             for s in archive.leaderboard(run_id, limit=LEADERBOARD_SIZE)]
    done = len([c for c in state.get("finished", []) if c["round"] > 0])
    return {"run_id": run_id, "round": ended, "directive": steer.directive,
            "objective": steer.objective.model_dump(),
            "objective_text": steer.objective.describe(),
            "new": new, "leaderboard": board,
            "budget": {**{k: budget.get(k) for k in BUDGET_KEYS}, "done": done},
            "budget_spent": done >= budget["candidates"],
            "vetoed": list(steer.vetoed), "pinned": steer.pinned,
            "notes": list(notes), "applied": [i.describe() for i in applied]}


def parse_resume(raw: Any) -> tuple[Instruction | None, str | None]:
    """A resume value -> (instruction, None), or (None, why it is not one)."""
    try:
        return Instruction.model_validate(raw), None
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"])) or "value"
        return None, f"refused: not an instruction ({where}: {err['msg']})"
