"""Steer a POISE run from the terminal: ``python -m graph.steer --directive "accurate"``.

Between rounds the run pauses (LangGraph ``interrupt()``, checkpointed in
<home>/graph.db) and you talk to the scientist: change or refine the directive, ask why
a candidate was proposed or failed, veto or pin parents, change the budget, then let it
go on. /help lists the commands; free text is mapped to them by rules (builtin agents)
or read by the scientist model (--model / POISE_MODEL).

Ctrl-C, end of input or /quit leave the run paused where it is;
``python -m graph.steer --thread run-ID`` picks the conversation up in a new process.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from rich.console import Console

# Only light imports here: bad input is answered before torch (via graph.run) loads.
from graph.steering import THREAD_ID, unknown_thread
from trainers.home import resolve_home

_NEW_RUN_FLAGS = ("directive", "candidates", "width", "seeds", "steps", "seed", "config",
                  "model")


class ArgumentParser(argparse.ArgumentParser):
    """Bad input: one line on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m graph.steer", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", default=None, help="POISE home (default $POISE_HOME or ./.poise)")
    p.add_argument("--directive", help="start a new steered run with this directive")
    p.add_argument("--thread", help="resume a session by thread id (run-ID)")
    p.add_argument("--candidates", type=int, help="new candidates after the seed (default 8)")
    p.add_argument("--width", type=int, help="candidates per round (default 2)")
    p.add_argument("--seeds", type=int, help="training seeds per candidate (default 1)")
    p.add_argument("--steps", type=int, help="training steps per seed")
    p.add_argument("--seed", type=int, help="seed of the builtin agents (default 0)")
    p.add_argument("--no-smoke", action="store_true", help="skip the verifier's smoke run")
    p.add_argument("--config", type=Path, help="JSON file of Context fields")
    p.add_argument("--model", help="LLM for all agents, e.g. openai:gpt-4.1-mini "
                                   "(default: builtin)")
    args = p.parse_args(argv)
    for name in ("candidates", "seeds", "width", "steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.thread is not None:
        given = [f"--{n}" for n in _NEW_RUN_FLAGS if getattr(args, n) is not None]
        if given or args.no_smoke:
            flags = ", ".join(given + ["--no-smoke"] * args.no_smoke)
            p.error(f"--thread resumes a session as it was started; {flags} only start "
                    "new ones (change the budget with /budget inside)")
        if not THREAD_ID.match(args.thread.strip()):
            p.error(f"--thread takes a thread id such as run-3, got {args.thread!r}")
    elif args.directive is None:
        p.error("--directive is required to start a session (or --thread ID to resume one)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.thread is not None:
        home = resolve_home(args.home)
        if not (home / "graph.db").is_file():  # answered before the heavy imports
            print(f"error: {unknown_thread(args.thread, home)}", file=sys.stderr)
            return 2
    from graph.runner import UsageError  # after the input is checked: these import torch
    from graph.session import Left, open_session

    console = Console(highlight=False)
    session = None
    try:
        session, opening = open_session(args, console)
        return 0 if opening.finished else session.drive(opening.first_pause(session))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)  # one line, never wrapped
        return 2
    except Left as e:
        console.print(f"\nleft the session ({e}); the run waits at this pause. "
                      f"Resume with: {session.resume_hint()}", soft_wrap=True)
        return e.code
    except KeyboardInterrupt:
        hint = session.resume_hint() if session else "python -m graph.steer --thread run-ID"
        Console(stderr=True, highlight=False).print(
            f"\ninterrupted during a round; resume with: {hint}", soft_wrap=True)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
