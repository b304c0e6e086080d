"""Hostile candidates through the whole loop (tests/test_sandbox.py covers the sandbox
alone): ``python -m graph.run`` against a scripted OpenAI-compatible server whose coder
writes hostile modules. Each must be archived as a failed candidate with a clear reason,
the loop must go on to the next one and finish, nothing outside the sandbox's scratch
directory may change (a planted sentinel), and no sandbox child may outlive its
timeout or the run.

Some cases the static check stops before anything runs; the evasive ones pass it
(``# passes the static check``) so the sandbox's dynamic guard is what stops them; the
"sleeper" ones behave under the verifier and turn hostile only in training
(``batch.total_steps`` is 10 in the verifier's batches and 4 in the tiny training).
"""
from __future__ import annotations

import json
import textwrap
import threading
import time

import pytest

from fakes import OpenAIServer, deterministic_reply
from run_checks import TINY, candidates, sandbox_children, start_run, vector_problems

pytestmark = pytest.mark.reliability

VERIFY_TIMEOUT_S = 20   # wall clock, torch's import in the child included
TRAIN_TIMEOUT_S = 30
SLACK_S = 10            # a child may outlive its timeout by this much (polling, kill)


def _hooks(body: str) -> str:
    return "import torch\nimport numpy as np\n\n" + textwrap.dedent(body)


def hostile(sentinel: str, archive_db: str) -> dict[str, tuple[str, str, str]]:
    """name -> (module body, expected status, a fragment of the archived reason)."""
    s = repr(sentinel)
    return {
        "infinite-loop": (_hooks("""
            def compute_advantages(batch, rewards):
                while True:
                    pass
            """), "failed_verification", "did not finish in time"),
        "slow-finite": (_hooks("""
            def shape_reward(batch):
                total = 0
                for i in range(10 ** 10):
                    total += i
                return batch.correct.float()
            """), "failed_verification", "did not finish in time"),
        "os-system": (_hooks(f"""
            import os
            def shape_reward(batch):
                os.system("touch " + {s})
                return batch.correct.float()
            """), "failed_verification", "imports 'os'"),
        "subprocess-socket": (_hooks("""
            import subprocess, socket
            def shape_reward(batch):
                socket.create_connection(("127.0.0.1", 9))
                subprocess.run(["true"])
                return batch.correct.float()
            """), "failed_verification", "imports 'subprocess'"),
        "open-outside": (_hooks(f"""
            def shape_reward(batch):
                open({s}, "w").write("pwned")
                return batch.correct.float()
            """), "failed_verification", "uses `open`"),
        "memmap-outside": (_hooks(f"""
            def shape_reward(batch):  # passes the static check
                np.lib.format.open_memmap({s}, mode="w+", dtype="float32", shape=(4,))
                return batch.correct.float()
            """), "failed_verification", "only the scratch directory"),
        "memmap-archive": (_hooks(f"""
            def shape_reward(batch):  # passes the static check; aims at the run's archive
                np.lib.format.open_memmap({archive_db!r}, mode="w+", dtype="uint8",
                                          shape=(64,))
                return batch.correct.float()
            """), "failed_verification", "only the scratch directory"),
        "sys-exit": (_hooks("""
            def shape_reward(batch):
                raise SystemExit(3)
            """), "failed_verification", "SystemExit"),
        "raise-everywhere": (_hooks("""
            def shape_reward(batch):
                raise ValueError("boom reward")
            def compute_advantages(batch, rewards):
                raise ValueError("boom adv")
            def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):
                raise ValueError("boom loss")
            """), "failed_verification", "raised ValueError: boom"),
        "nan-returns": (_hooks("""
            def compute_advantages(batch, rewards):
                return rewards * float("nan")
            """), "failed_verification", "non-finite"),
        "alias-monkeypatch": (_hooks("""
            t = torch  # passes the static check: the alias hides the module
            t.exp = lambda x: x
            def shape_reward(batch):
                return batch.correct.float()
            """), "failed_verification", "modified torch.exp"),
        "sleeper-hang": (_hooks("""
            def shape_reward(batch):
                if batch.total_steps < 10:
                    while True:
                        pass
                return batch.correct.float()
            """), "failed_training", "timeout:"),
        "sleeper-nan": (_hooks("""
            def compute_advantages(batch, rewards):
                if batch.total_steps < 10:
                    return rewards * float("nan")
                return rewards - rewards.mean()
            """), "failed_training", "non-finite"),
    }


# What each proposal claims: distinct texts, so that no proposal is a near-duplicate of
# another (the novelty check would otherwise reject a sleeper before it trains).
CLAIMS = {
    "infinite-loop": "advantages from an iterative solver run until it converges",
    "slow-finite": "a reward that first sums a very long series",
    "os-system": "a reward that records each batch with a shell command",
    "subprocess-socket": "a reward scored by a remote service over the network",
    "open-outside": "a reward that logs every batch to a file",
    "memmap-outside": "a reward that keeps a memory-mapped running buffer on disk",
    "memmap-archive": "a reward that caches statistics in the run's database",
    "sys-exit": "stop training early when the reward looks bad",
    "raise-everywhere": "hooks that reject every batch they are given",
    "nan-returns": "advantages scaled by an undefined constant",
    "alias-monkeypatch": "a faster exponential function for every hook",
    "sleeper-hang": "a reward that waits for a schedule signal once training starts",
    "sleeper-nan": "advantages that switch estimator in the middle of training",
}


class HostileLab:
    """The scripted agents: the scientist hands out one hostile proposal per call; the
    coder writes that proposal's module; the judge finds every module consistent."""

    def __init__(self, cases: dict):
        self.cases, self.next, self.lock = cases, iter(cases), threading.Lock()

    def reply(self, role: str, body: dict) -> str:
        if role == "scientist":
            with self.lock:
                name = next(self.next)
            return json.dumps({"name": name, "hypothesis": CLAIMS[name],
                               "mechanism": CLAIMS[name], "math": f"see {name}",
                               "changes": ["shape_reward"], "crossover_with": None,
                               "rationale": []})
        if role == "coder":
            text = "\n".join(str(m.get("content")) for m in body["messages"])
            name = next(n for n in self.cases if f'"name": "{n}"' in text)
            return f'```python\nNAME = "{name}"\n{self.cases[name][0]}```'
        return deterministic_reply(role, body)


def test_hostile_candidates_fail_alone_and_the_loop_goes_on(tmp_path):
    sentinel = tmp_path / "outside" / "sentinel.txt"
    sentinel.parent.mkdir()
    sentinel.write_text("untouched\n")
    home = tmp_path / "home"
    cases = hostile(str(sentinel), str(home / "archive.db"))
    config = json.loads(TINY.read_text())
    config.update(verify_timeout_s=VERIFY_TIMEOUT_S, train_timeout_s=TRAIN_TIMEOUT_S,
                  max_repairs=0, max_parallel_jobs=2)
    (tmp_path / "config.json").write_text(json.dumps(config))
    lab = HostileLab(cases)
    lifetimes: dict[int, list] = {}   # sandbox child pid -> [task, first seen, last seen]
    with OpenAIServer.scripted(lab.reply) as server:
        proc = start_run(home, "--directive", "accurate", "--candidates", str(len(cases)),
                         "--width", "3", "--model", "openai:test-model", "--no-smoke",
                         "--config", str(tmp_path / "config.json"),
                         env={"OPENAI_BASE_URL": server.base_url}, log=tmp_path / "run.log")
        deadline = time.monotonic() + 1500
        while proc.poll() is None and time.monotonic() < deadline:
            now = time.monotonic()
            for pid, task in sandbox_children(proc.pid).items():
                lifetimes.setdefault(pid, [task, now, now])[2] = now
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    log = (tmp_path / "run.log").read_text()
    assert proc.returncode == 0, log[-5000:]
    rows = {r["name"]: r for r in candidates(home)}
    assert rows["grpo"]["status"] == "evaluated"
    problems = []
    for name, (_, status, reason) in cases.items():
        row = rows.get(name)
        if row is None:
            problems.append(f"{name}: not archived")
        elif row["status"] != status or reason not in (row["error"] or ""):
            problems.append(f"{name}: {row['status']}: {row['error']}")
        elif row["reflections"] != 1 or row["parents"] != ["grpo"]:
            problems.append(f"{name}: no reflection or lineage: {row}")
    assert not problems, "\n".join(problems)
    assert len(rows) == len(cases) + 1  # the loop went on: every candidate, once
    assert sentinel.read_text() == "untouched\n"
    assert sorted(p.name for p in sentinel.parent.iterdir()) == ["sentinel.txt"]
    assert not sandbox_children(proc.pid)  # nothing outlived the run
    limit = {"train": TRAIN_TIMEOUT_S}
    overdue = {pid: v for pid, v in lifetimes.items()
               if v[2] - v[1] > limit.get(v[0], VERIFY_TIMEOUT_S) + SLACK_S}
    assert not overdue, overdue       # no child outlived its timeout
    assert {v[0] for v in lifetimes.values()} >= {"check_hooks", "train"}
    assert not vector_problems(home, all_indexed=True)
    summary = json.loads((home / "runs" / "1" / "summary.json").read_text())
    assert summary["best"]["name"] == "grpo"
