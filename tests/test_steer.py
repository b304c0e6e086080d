"""Chat steering (python -m graph.steer): the instruction parser and its free-text rules,
applying instructions, the steer node's interrupt loop through a real LangGraph with the
SQLite checkpointer, and a person's session in a real terminal (pexpect's pty), closed
with Ctrl-C and resumed by thread id in a new process. Real SQLite archive, Chroma and
embedding model; builtin agents; a fake chat model only for the LLM reading of free text."""
import json
import os
import sqlite3
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from fakes import ScriptedChat
from graph.steering import (Instruction, Steering, action_from_intent, apply_instruction,
                            parse_line, parse_resume, refine_directive)

TINY = Path(__file__).parent / "data" / "tiny_context.json"
REPO = Path(__file__).resolve().parents[1]
NAMES = {"grpo": 1, "bv4-grpo": 2, "broken-grpo": 3}


def _resolve(key: str) -> int:
    if key.isdigit() and int(key) in NAMES.values():
        return int(key)
    if key in NAMES:
        return NAMES[key]
    raise LookupError(f"no candidate {key!r} in run 1")


def _parse(text, directive="accurate"):
    return parse_line(text, directive, _resolve)


# ----------------------------------------------------------------------------- parsing

def test_slash_commands_become_instructions():
    a = _parse("/directive accurate and concise")
    assert a.kind == "instruct" and a.instruction.directive == "accurate and concise"
    assert _parse("/veto bv4-grpo #3").instruction.veto == [2, 3]
    assert _parse("/unveto 2").instruction.unveto == [2]
    assert _parse("/pin grpo").instruction.pin == 1
    assert _parse("/budget candidates=12 seeds=2").instruction.budget == {
        "candidates": 12, "seeds": 2}
    assert _parse("/go").instruction.go == 1 and _parse("/go 3").instruction.go == 3
    assert _parse("/stop").instruction.stop
    assert (_parse("/why bv4-grpo").kind, _parse("/why bv4-grpo").target) == ("why", "2")
    assert [_parse(c).kind for c in ("/help", "/quit", "/leaderboard", "/status", "  ")] == [
        "help", "quit", "leaderboard", "status", "none"]
    assert _parse("/go").instruction.releases and not _parse("/veto 2").instruction.releases


@pytest.mark.parametrize("line,says", [
    ("/frobnicate", "unknown command /frobnicate: /help lists the commands"),
    ("/budget candidates=0", "bad budget item 'candidates=0'"),
    ("/budget speed=3", "keys candidates, width, seeds, steps"),
    ("/budget", "/budget takes KEY=N pairs"),
    ("/go soon", "/go takes a number of rounds >= 1"),
    ("/veto", "/veto needs candidate names or ids"),
    ("/pin 1 2", "/pin needs one candidate"),
    ("/veto nosuch", "no candidate 'nosuch' in run 1"),
    ("/why", "/why needs one candidate name or id"),
    ("/why nosuch", "no candidate 'nosuch' in run 1"),
    ("/directive", "/directive needs the new directive"),
    ("sing me a song", "I could not map that to an instruction"),
    ("why is the sky blue?", "which candidate?"),
])
def test_bad_lines_give_a_helpful_message_not_a_crash(line, says):
    a = _parse(line)
    assert a.kind == "say" and a.instruction is None
    assert says in a.message


@pytest.mark.parametrize("directive,said,expected", [
    ("accurate", "make it more concise", "accurate and concise"),
    ("accurate", "the answers are too verbose", "accurate and concise"),
    ("accurate and concise", "forget about length, accuracy only", "accurate"),
    ("concise", "don't care about length any more", "accurate"),
    ("accurate", "be more stable and explore more", "accurate and stable and explore more"),
    ("concise", "it should be more accurate", "concise and accurate"),
    ("accurate", "more concise but not less accurate", "accurate and concise"),
    ("accurate and concise", "the answers are too short now", "accurate"),
    ("concise", "forget about length, make it accurate", "accurate"),
    ("accurate", "robust please, don't explore", "accurate and stable"),
])
def test_free_text_rules_refine_the_directive(directive, said, expected):
    a = _parse(said, directive)
    assert a.kind == "instruct", a.message
    assert a.instruction.directive == expected and a.instruction.said == said


def test_free_text_rules_for_the_other_intents():
    a = _parse("optimize for short correct answers.")
    assert a.instruction.directive == "short correct answers"
    assert (_parse("why did bv4-grpo fail?").kind, _parse("why did bv4-grpo fail?").target) \
        == ("why", "2")
    assert _parse("why was #3 proposed").target == "3"
    assert _parse("go on for 2 rounds").instruction.go == 2
    assert _parse("continue").instruction.go == 1
    assert _parse("show me the leaderboard").kind == "leaderboard"
    already = _parse("make it more concise", "accurate and concise")
    assert already.kind == "say" and "already asks for that" in already.message
    assert refine_directive("accurate", "hello there") is None


def test_the_llm_reading_of_free_text_maps_to_the_same_instructions():
    from agents.steer import interpret_llm

    replies = ['{"action": "directive", "reply": "ok"}',             # no directive: repaired
               '{"action": "directive", "directive": "accurate and brief", '
               '"reply": "I will favour short correct answers."}',
               '{"action": "veto", "candidate": "bv4-grpo", "reply": "vetoed"}']
    model = ScriptedChat.of(*replies)
    cands = [{"id": 2, "name": "bv4-grpo", "status": "evaluated", "fitness": 0.1}]
    intent = interpret_llm(model, "answers should get shorter", "accurate", cands)
    a = action_from_intent(intent, _resolve, "answers should get shorter")
    assert a.instruction.directive == "accurate and brief" and "short" in a.message
    a = action_from_intent(interpret_llm(model, "never use bv4", "accurate", cands),
                           _resolve, "never use bv4")
    assert a.instruction.veto == [2]


def test_a_session_with_a_model_lets_the_scientist_read_free_text(tmp_path):
    """Free text goes to the configured scientist model; slash commands never do; a
    model that gives nothing usable leaves the reading to the rules, saying so."""
    import io

    from rich.console import Console

    from graph.context import Context
    from graph.session import Session

    archive, run, ids = _archive(tmp_path)
    replies = ['{"action": "pin", "candidate": "bv4-grpo", "reply": "pinning bv4-grpo"}'] \
        + ["not json"] * 3
    model = ScriptedChat.of(*replies)
    ctx = Context(home=str(tmp_path), chat_models={"scientist": model})
    session = Session(tmp_path, archive, run, ctx, Console(file=io.StringIO()))
    a = session.interpret("build on the shorter one next", "accurate")
    assert a.instruction.pin == ids[1] and a.message == "pinning bv4-grpo"
    assert session.interpret("/veto grpo", "accurate").instruction.veto == [ids[0]]
    a = session.interpret("make it more concise", "accurate")  # the model's 3 bad replies
    assert a.instruction.directive == "accurate and concise"
    assert a.message.startswith("(the scientist model gave no usable reading")
    assert len(model.calls) == 4  # the pin, then the three bad replies: /veto asked no one


# ----------------------------------------------------------------------------- applying

def _cands():
    return [SimpleNamespace(id=1, name="grpo", status="evaluated"),
            SimpleNamespace(id=2, name="bv4-grpo", status="evaluated"),
            SimpleNamespace(id=3, name="broken-grpo", status="failed_verification")]


def _steering():
    return Steering.of({"directive": "accurate", "objective": {
        "directive": "accurate", "length": "ignore", "margin": 1.0}})


def test_apply_directive_veto_pin_to_the_steering_state():
    s0 = _steering()
    s1, notes = apply_instruction(s0, Instruction(directive="accurate and concise"), _cands())
    assert s1.directive == "accurate and concise" and s1.objective.minimizes_length
    assert s0.directive == "accurate"  # pure: the old state is untouched
    assert s1.update()["objective"]["length"] == "minimize"  # the run state gets JSON
    assert "'accurate' -> 'accurate and concise'" in notes[0]
    s2, notes = apply_instruction(s1, Instruction(pin=2), _cands())
    assert s2.pinned == 2 and "pinned #2" in notes[0]
    s3, notes = apply_instruction(s2, Instruction(veto=[2, 3, 9]), _cands())
    assert s3.vetoed == [2, 3] and s3.pinned is None  # vetoing the pinned one lifts the pin
    assert any("could not parent anyway" in n for n in notes)
    assert any("refused: no candidate #9" in n for n in notes)
    assert any("pin on #2 is lifted" in n for n in notes)
    s4, notes = apply_instruction(s3, Instruction(veto=[1]), _cands())
    assert s4.vetoed == [2, 3] and "last candidate that can parent" in notes[0]
    s5, notes = apply_instruction(s4, Instruction(pin=3), _cands())
    assert s5.pinned is None and "only evaluated candidates can parent" in notes[0]
    s6, notes = apply_instruction(s5, Instruction(pin=2), _cands())
    assert s6.pinned is None and "/unveto it first" in notes[0]
    s7, _ = apply_instruction(s6, Instruction(unveto=[2], pin=2), _cands())
    assert s7.vetoed == [3] and s7.pinned == 2


def test_bad_resume_values_are_refused_with_a_reason():
    assert parse_resume({"go": 0})[1].startswith("refused: not an instruction (go:")
    assert "budget" in parse_resume({"budget": {"speed": 2}})[1]
    assert "extra" in parse_resume({"launch": True})[1].lower()
    assert parse_resume({"veto": [2], "go": 1})[0].releases


def test_selection_never_picks_a_vetoed_parent():
    from memory.selection import Node, select_parents

    nodes = [Node(1, fitness=0.1), Node(2, (1,), fitness=0.9), Node(3, (1,), fitness=0.5)]
    picks = {select_parents(nodes, seed=s, exclude=[2])[0] for s in range(200)}
    assert picks == {1, 3}
    assert 2 in {select_parents(nodes, seed=s)[0] for s in range(200)}  # it would be picked
    with pytest.raises(ValueError, match="every evaluated node is excluded"):
        select_parents(nodes, exclude=[1, 2, 3])


def _archive(home):
    """A run with GRPO (1), an evaluated child (2, shorter) and a failed one (3)."""
    from memory.archive import Archive

    a = Archive(home, index=False)  # SQL only here; the steer node's archive indexes
    run = a.start_run("accurate", {"objective": {"directive": "accurate"}})
    val = [{"overall": 40.0, "length": 100.0}, {"overall": 40.0, "length": 50.0}]
    ids = []
    for i, name in enumerate(("grpo", "bv4-grpo", "broken-grpo")):
        ids.append(a.add_candidate(run, name, min(i, 1), f"name: {name}", parents=ids[:1],
                                   status="evaluated" if i < 2 else "failed_verification",
                                   error=None if i < 2 else "boom"))
        if i < 2:
            a.add_evaluation(ids[-1], 0, metrics={"val": val[i]}, fitness=40.0)
    return a, run, ids


def test_select_parent_node_honours_veto_and_pin(tmp_path):
    from langgraph.runtime import Runtime

    from graph.context import Context
    from graph.graph import select_parent

    _, run, ids = _archive(tmp_path)
    rt = Runtime(context=Context(home=str(tmp_path)))
    base = {"run_id": run, "round": 2, "directive": "accurate"}  # sees rounds 0-1
    free = {select_parent.__wrapped__({**base, "slot": s}, rt)["parent_ids"][0]
            for s in range(40)}
    assert free == {1, 2}
    vetoed = {select_parent.__wrapped__({**base, "slot": s, "vetoed": [2]}, rt)
              ["parent_ids"][0] for s in range(40)}
    assert vetoed == {1}
    pinned = select_parent.__wrapped__({**base, "slot": 0, "pinned": 2, "vetoed": []}, rt)
    assert pinned["parent_ids"] == [2]


def test_plan_round_sends_vetoes_and_the_pin_once():
    from langgraph.runtime import Runtime

    from graph.context import Context
    from graph.graph import plan_round

    state = {"run_id": 1, "directive": "accurate", "objective": {}, "round": 3,
             "finished": [], "vetoed": [4], "pinned": 2}
    out = plan_round(state, Runtime(context=Context(home="unused", width=2, candidates=8)))
    assert [(s.arg["slot"], s.arg["pinned"], s.arg["vetoed"]) for s in out.goto] == [
        (0, 2, [4]), (1, 2, [4])]
    assert out.update == {"pinned": None}  # the pin holds for one round
    unsteered = plan_round({**state, "vetoed": [], "pinned": None},
                           Runtime(context=Context(home="unused", width=1, candidates=8)))
    assert unsteered.update is None and unsteered.goto[0].arg["pinned"] is None


def test_steer_node_pauses_applies_and_survives_a_new_connection(tmp_path):
    """The steer node between rounds, in a graph with the real SQLite checkpointer:
    each instruction is acknowledged at a new pause; a second connection (as a new
    process would open) sees the pause with what was said; go releases the run."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Command

    from graph.context import Context
    from graph.graph import steer
    from graph.state import RunState
    from langgraph.checkpoint.sqlite import SqliteSaver

    archive, run, ids = _archive(tmp_path)
    b = StateGraph(RunState, context_schema=Context)
    b.add_node("steer", steer)
    b.add_node("plan_round", lambda state: {})  # the next round, not under test here
    b.add_edge(START, "steer")
    b.add_edge("plan_round", END)

    def app():
        conn = sqlite3.connect(tmp_path / "graph.db", check_same_thread=False)
        return b.compile(checkpointer=SqliteSaver(conn))

    ctx = Context(home=str(tmp_path), candidates=3, width=1, steer=True)
    config = {"configurable": {"thread_id": f"run-{run}"}}
    start = {"run_id": run, "directive": "accurate", "round": 2,
             "objective": {"directive": "accurate", "length": "ignore", "margin": 1.0},
             "reference": {"overall": 40.0, "length": 100.0},
             "finished": [{"id": i, "name": "x", "parents": [], "status": "evaluated",
                           "fitness": 40.0, "round": min(n, 1), "slot": 0, "error": None}
                          for n, i in enumerate(ids)]}
    first = app()
    first.invoke(start, config, context=ctx)
    pause = first.get_state(config).interrupts[0].value
    assert pause["round"] == 1 and [c["id"] for c in pause["new"]] == [2, 3]
    assert pause["budget"] == {"candidates": 3, "width": 1, "seeds": 1, "steps": None,
                               "done": 2} and not pause["budget_spent"]
    first.invoke(Command(resume=Instruction(directive="accurate and concise",
                                            said="make it more concise").model_dump()),
                 config, context=ctx)
    first.invoke(Command(resume={"veto": [2]}), config, context=ctx)
    ctx = Context(home=str(tmp_path), candidates=5, width=1, steer=True)  # as the session does
    first.invoke(Command(resume={"budget": {"candidates": 5}}), config, context=ctx)
    assert first.get_state(config).interrupts[0].value["budget"]["candidates"] == 5
    assert archive.run(run).config["context"]["candidates"] == 5  # resumes read it there
    first.invoke(Command(resume={"go": 0}), config, context=ctx)  # a bad value: refused
    pause = first.get_state(config).interrupts[0].value
    assert pause["notes"][0].startswith("refused: not an instruction")
    again = app()  # a new connection to the same checkpoint
    pause = again.get_state(config).interrupts[0].value
    assert pause["directive"] == "accurate and concise" and pause["vetoed"] == [2]
    assert pause["applied"] == ["directive 'accurate and concise'", "veto #2",
                                "budget candidates=5"]
    # the new objective re-scored the archive: #2 is 50% shorter at equal Overall, #1
    # is as long as GRPO (fitness: percent shorter than GRPO)
    board = {r["id"]: r["fitness"] for r in pause["leaderboard"]}
    assert board == {1: pytest.approx(0.0), 2: pytest.approx(50.0)}
    run_row = archive.run(run)
    assert run_row.directive == "accurate and concise"
    assert run_row.config["objective"]["length"] == "minimize"
    assert run_row.config["steering"] == {"vetoed": [2], "pinned": None}
    again.invoke(Command(resume={"go": 2}), config, context=ctx)
    final = again.get_state(config)
    assert not final.interrupts and not final.next
    v = final.values
    assert v["directive"] == "accurate and concise" and v["vetoed"] == [2]
    assert v["objective"]["length"] == "minimize" and v["quiet_rounds"] == 1
    assert [e.get("said") for e in v["steering"]] == ["make it more concise", None, None,
                                                       None]
    # /go 2: the next pause is skipped once (quiet_rounds 1 -> 0), no interrupt
    out = steer({**start, **v}, SimpleNamespace(context=ctx))
    assert out.goto == "plan_round" and out.update == {"quiet_rounds": 0}
    unsteered = steer({**start, **v}, SimpleNamespace(context=replace(ctx, steer=False)))
    assert unsteered.goto == "plan_round"


# ----------------------------------------------------------------------------- the terminal

def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("POISE_MODEL")}
    env.update(PYTHONPATH=str(REPO), TERM="xterm", NO_COLOR="1")
    return env


def _spawn(home, *args):
    """The CLI on a terminal; what it prints is kept in <home>/../terminal.log, so a
    failed expectation shows the screen (see _screen)."""
    import pexpect

    s = pexpect.spawn(sys.executable, ["-m", "graph.steer", "--home", str(home), *args],
                      cwd=str(REPO), env=_env(), encoding="utf-8", timeout=300,
                      dimensions=(50, 200), preexec_fn=_as_a_shell_starts_it)
    s.logfile_read = open(home.parent / "terminal.log", "a")
    return s


def _as_a_shell_starts_it():
    """In the child before exec: Ctrl-C's disposition and the signal mask as an
    interactive shell leaves them for a foreground command (bash resets both), not as the
    test process happens to have them after the tests before this one."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _threads(pid: int) -> str:
    """Each thread of ``pid``: its name and which signals it blocks (SigBlk), so a lost
    Ctrl-C shows whether the main thread had SIGINT blocked."""
    rows = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*"), key=lambda t: int(t.name)):
        try:
            status = dict(line.split(":", 1) for line in (task / "status").read_text()
                          .splitlines() if ":" in line)
            rows.append(f"{task.name} {(task / 'comm').read_text().strip()} "
                        f"State={status['State'].strip()} SigBlk={status['SigBlk'].strip()} "
                        f"SigIgn={status['SigIgn'].strip()} SigCgt={status['SigCgt'].strip()}")
        except OSError as e:
            rows.append(f"{task.name}: {e}")
    return "\n".join(rows)


def _screen(home, chars: int = 4000) -> str:
    return (home.parent / "terminal.log").read_text()[-chars:]


def _rows(home, sql):
    con = sqlite3.connect(home / "archive.db")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _checkpoint(home):
    from graph.runner import compile_graph

    return compile_graph(home).get_state({"configurable": {"thread_id": "run-1"}})


def test_a_person_steers_quits_and_resumes_by_thread_in_a_new_process(tmp_path):
    import pexpect

    home = tmp_path / "home"
    prompt = "steer> "
    s = _spawn(home, "--directive", "accurate", "--candidates", "2", "--width", "1",
               "--config", str(TINY), "--no-smoke")
    s.expect("round 0 done")
    s.expect(prompt)
    s.sendline("/go")
    s.expect("round 1 done")
    s.expect(prompt)
    child_id, child = _rows(home, "select id, name from candidate where generation = 1")[0]
    assert _rows(home, f"select status from candidate where id = {child_id}")[0][0] \
        == "evaluated"
    s.sendline("make it more concise")
    s.expect("directive 'accurate' -> 'accurate and concise'")
    s.expect(prompt)
    s.sendline(f"/why {child}")
    for part in (f"#{child_id} {child}: round 1", "parent: #1 grpo", "hypothesis:",
                 "outcome: val Overall", r"reflection \[", "similar reflections"):
        s.expect(part)
    s.expect(prompt)
    s.sendline(f"/veto {child_id}")
    s.expect(f"vetoed #{child_id} {child}: never chosen as a parent")
    s.expect(prompt)
    s.sendcontrol("c")
    try:
        s.expect("Resume with: python -m graph.steer --home .* --thread run-1")
    except pexpect.TIMEOUT:
        import signal

        raise AssertionError(
            f"no exit on Ctrl-C; SIGINT in the test process: "
            f"{signal.getsignal(signal.SIGINT)}, its blocked signals: "
            f"{sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))}; the CLI's threads:\n"
            f"{_threads(s.pid)}\nscreen:\n{_screen(home)}") from None
    s.expect(pexpect.EOF)
    s.close()
    assert s.exitstatus == 130

    # what was said is in the archive and in the checkpoint, though the run is paused
    assert _rows(home, "select directive from run")[0][0] == "accurate and concise"
    assert json.loads(_rows(home, "select config from run")[0][0])["steering"]["vetoed"] \
        == [child_id]
    pause = _checkpoint(home).interrupts[0].value
    assert pause["directive"] == "accurate and concise" and pause["vetoed"] == [child_id]

    s = _spawn(home, "--thread", "run-1")
    s.expect(r"steering session run-1 \(resumed\)")
    s.expect("directive: accurate and concise")
    s.expect(f"vetoed: #{child_id};")
    s.expect(prompt)
    s.sendline("/go")
    s.expect("round 2 done")
    s.expect("the budget is spent")
    s.expect(prompt)
    s.sendline("/go")
    s.expect("run 1 finished under the directive 'accurate and concise'")
    s.expect(pexpect.EOF)
    s.close()
    assert s.exitstatus == 0

    later = _rows(home, f"select c.id, l.parent_id from candidate c join lineage l on "
                        f"l.child_id = c.id where c.id > {child_id}")
    assert later and all(parent != child_id for _, parent in later)  # the veto held
    final = _checkpoint(home)
    assert not final.interrupts and not final.next
    assert final.values["directive"] == "accurate and concise"
    assert final.values["objective"]["length"] == "minimize"
    assert final.values["vetoed"] == [child_id]
    assert _rows(home, "select status from run")[0][0] == "done"
    summary = json.loads((home / "runs" / "1" / "summary.json").read_text())
    assert summary["directive"] == "accurate and concise" and len(summary["candidates"]) == 3


def test_ctrl_c_handled_on_another_thread_still_leaves_the_prompt(tmp_path):
    """The kernel may hand a Ctrl-C to any thread that does not block it, and the CLI has
    many (torch, Chroma, SQLite). A SIGINT sent to one that is not the main thread (with
    tgkill) left input() blocked in read() until the next key; the prompt must leave at
    once, as on a Ctrl-C the main thread takes."""
    import ctypes

    import pexpect

    home = tmp_path / "home"
    s = _spawn(home, "--directive", "accurate", "--candidates", "1", "--width", "1",
               "--config", str(TINY), "--no-smoke")
    s.expect("round 0 done")
    s.expect("steer> ")
    others = [int(t.name) for t in Path(f"/proc/{s.pid}/task").iterdir()
              if int(t.name) != s.pid]
    assert others, "the CLI has no thread besides the main one"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.tgkill(s.pid, others[0], signal.SIGINT) == 0, ctypes.get_errno()
    try:
        s.expect("Resume with: python -m graph.steer --home .* --thread run-1", timeout=60)
    except pexpect.TIMEOUT:
        raise AssertionError(f"the prompt stayed after a SIGINT on thread {others[0]}; "
                             f"threads:\n{_threads(s.pid)}\nscreen:\n{_screen(home)}"
                             ) from None
    s.expect(pexpect.EOF)
    s.close()
    assert s.exitstatus == 130


@pytest.mark.parametrize("args,message", [
    (["--thread", "run-7"], "no thread run-7 in"),
    (["--thread", "seven"], "--thread takes a thread id such as run-3"),
    (["--thread", "run-1", "--width", "3"], "--thread resumes a session as it was started"),
    ([], "--directive is required to start a session"),
    (["--directive", "x", "--candidates", "0"], "--candidates must be at least 1"),
])
def test_bad_cli_input_is_one_line_and_exit_2(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "graph.steer", "--home", str(tmp_path / "h"),
                        *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "h").exists()  # nothing created for a bad command
