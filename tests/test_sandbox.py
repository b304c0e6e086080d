"""The sandbox (trainers/sandbox/): hostile candidates are contained and reported.

Every case runs in its own sandbox child; the module fixture runs them three at a time
(each is ~3 s of child start-up, mostly importing torch) and the tests read the results.
Cases marked ``dynamic`` bypass the static check (``static=False``) so that the child's
own guard is what stops them.
"""
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from trainers.baselines import baseline_source
from trainers.sandbox import MARKER, check_source, run_in_sandbox
from trainers.sandbox.tasks import SMOKE_WARM_CONFIG

ROOT = Path(__file__).resolve().parent.parent
OK_T = 60          # generous wall limit for cases that must end on their own
HANG_T = 5         # wall limit for cases that must be killed

GRPO_LIKE = "import torch\nNAME = 'x'\n"


def cand(body: str) -> str:
    return GRPO_LIKE + textwrap.dedent(body)


def hook(body: str) -> str:
    """A candidate whose shape_reward runs ``body`` and then returns the GRPO reward."""
    return cand("def shape_reward(batch):\n" + textwrap.indent(textwrap.dedent(body), "    ")
                + "\n    return batch.correct.float()\n")


TINY_TRAIN = {"steps": 2, "prompts_per_step": 2, "group_size": 4, "eval_every": 2,
              "max_response": 48,
              "curve_eval": {"size": 4, "pass_problems": 2, "n_samples": 16, "max_response": 48},
              "final_eval": {"size": 4, "pass_problems": 2, "n_samples": 16, "max_response": 48}}


def _cases(sentinel: str, home: str) -> dict[str, tuple[str, dict, dict]]:
    s = repr(sentinel)
    real = "torch.__builtins__"  # the real builtins, reachable once the static check is off
    return {
        "baseline": ("check_hooks", {"source": baseline_source("grpo")}, {}),
        "train": ("train", {"source": baseline_source("dr_grpo"), "seed": 1, "home": home,
                            "train_config": TINY_TRAIN, "warm_config": SMOKE_WARM_CONFIG}, {}),
        "infinite_loop": ("check_hooks", {"source": hook("while True:\n    pass")},
                          {"timeout_s": HANG_T}),
        "slow_finite": ("check_hooks", {"source": hook(
            "s = 0\nfor i in range(10**10):\n    s += i")}, {"timeout_s": HANG_T}),
        "cpu_limit": ("check_hooks", {"source": hook("while True:\n    pass")},
                      {"timeout_s": OK_T, "cpu_s": 5}),
        "fork_bomb": ("check_hooks", {"source": hook("while True:\n    torch.os.fork()")},
                      {"static": False}),
        "memory_bomb": ("check_hooks", {"source": cand("x = torch.ones(2**34)\n")},
                        {"memory_mb": 2048}),
        "memory_bomb_list": ("check_hooks", {"source": hook("x = [0] * (2**33)")},
                             {"memory_mb": 2048}),
        "huge_output": ("check_hooks", {"source": hook(
            "for _ in range(10**7):\n    print('x' * 1000)")}, {"output_kb": 64}),
        "huge_file": ("check_hooks", {"source": hook(
            f"f = {real}['open']('big.bin', 'wb')\nwhile True:\n    f.write(b'x' * 2**20)")},
                      {"static": False, "file_mb": 8}),
        "os_system": ("check_hooks", {"source": hook(f"torch.os.system('touch ' + {s})")},
                      {"static": False}),
        "subprocess_import": ("check_hooks", {"source": cand(
            f"import subprocess\nsubprocess.run(['touch', {s}])\n")}, {"static": False}),
        "subprocess_real": ("check_hooks", {"source": hook(
            f"{real}['__import__']('subprocess').run(['touch', {s}])")}, {"static": False}),
        "socket": ("check_hooks", {"source": hook(
            f"{real}['__import__']('socket').create_connection(('127.0.0.1', 9))")},
                   {"static": False}),
        "open_outside": ("check_hooks", {"source": hook(f"open({s}, 'w').write('x')")},
                         {"static": False}),
        "open_outside_real": ("check_hooks", {"source": hook(
            f"try:\n    {real}['open']({s}, 'w').write('x')\nexcept Exception:\n    pass")},
                              {"static": False}),
        "native_write_outside": ("check_hooks", {"source": hook(
            f"torch.from_file({sentinel + '.bin'!r}, shared=True, size=16)")},
                                 {"static": False}),
        "read_outside": ("check_hooks", {"source": hook(
            f"{real}['open']('/etc/passwd').read()")}, {"static": False}),
        "open_scratch": ("check_hooks", {"source": hook(
            f"{real}['open']('notes.txt', 'w').write('fine')")}, {"static": False}),
        "sys_exit": ("check_hooks", {"source": cand("import sys\nsys.exit(3)\n")},
                     {"static": False}),
        "raise_system_exit": ("check_hooks", {"source": hook("raise SystemExit(3)")},
                              {"static": False}),
        "frame_walk": ("check_hooks", {"source": hook(
            "try:\n    raise ValueError\nexcept ValueError as e:\n"
            "    e.__traceback__.tb_frame.f_back.f_globals['os'].system('true')")},
                       {"static": False}),
        "os_exit": ("check_hooks", {"source": hook("torch.os._exit(0)")}, {"static": False}),
        "raise_everywhere": ("check_hooks", {"source": cand("""
            def shape_reward(batch):
                raise ValueError("boom reward")
            def compute_advantages(batch, rewards):
                raise ValueError("boom adv")
            def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):
                raise ValueError("boom loss")
            """)}, {}),
        "nan_reward": ("check_hooks", {"source": cand("""
            def shape_reward(batch):
                return batch.correct.float() * float("nan")
            """)}, {}),
        "inf_advantage": ("check_hooks", {"source": cand("""
            def compute_advantages(batch, rewards):
                return rewards / 0.0
            """)}, {}),
        "wrong_shape": ("check_hooks", {"source": cand("""
            def compute_advantages(batch, rewards):
                return rewards[:1]
            """)}, {}),
        "zero_grad": ("check_hooks", {"source": cand("""
            def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):
                return (logp * 0.0).sum(), {}
            """)}, {}),
        "padding_grad": ("check_hooks", {"source": cand("""
            def policy_loss(logp, old_logp, advantages, mask, batch, ref_logp=None):
                return -(advantages * logp).mean() + 1e-3 * logp.sum(), {}
            """)}, {}),
        "in_place": ("check_hooks", {"source": cand("""
            def shape_reward(batch):
                batch.length.clamp_(max=4)
                return batch.correct.float()
            """)}, {}),
        "monkeypatch": ("check_hooks", {"source": cand(
            "torch.exp = lambda x: x\ndef shape_reward(batch):\n"
            "    return batch.correct.float()\n")}, {"static": False}),
        "process_tree": ("selftest_process_tree", {"sleepers": 3}, {"timeout_s": HANG_T}),
    }


def _marked(launcher: int | None = None) -> set[int]:
    """Every live process that carries the marker of a sandbox run launched by
    ``launcher`` (default: this test process; the marker starts with the launcher's pid):
    another suite or run on the same machine has sandbox children too, and they are not
    this test's leftovers."""
    mine = f"{MARKER}={launcher or os.getpid()}-".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if mine in f.read():
                        found.add(int(entry))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory):
    return tmp_path_factory.mktemp("outside") / "sentinel.txt"


@pytest.fixture(scope="module")
def runs(sentinel, tiny_warm):
    cases = _cases(str(sentinel), str(tiny_warm[1]))
    before = _marked()
    progress: dict[str, list] = {name: [] for name in cases}

    def run(name):
        task, payload, kw = cases[name]
        kw = {"timeout_s": OK_T, **kw}
        return run_in_sandbox(task, payload, on_progress=progress[name].append, **kw)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(cases, pool.map(run, cases)))
    return {"results": results, "progress": progress, "leftover": _marked() - before}


def check(runs, name, kind, *fragments):
    r = runs["results"][name]
    assert r.kind == kind, (name, r.kind, r.error, r.stdout_tail[-1500:])
    assert not r.ok
    assert "\n" not in r.error
    for fragment in fragments:
        assert fragment in r.error, (name, r.error)
    return r


def test_a_baseline_passes_with_every_layer_on(runs):
    r = runs["results"]["baseline"]
    assert r.ok and r.kind == "ok" and r.error == "", r.error
    assert len(r.value["batches"]) >= 9
    assert r.isolation["rlimits"] and r.isolation["audit_hook"]


def test_training_runs_in_the_sandbox_and_streams_progress(runs):
    r = runs["results"]["train"]
    assert r.ok, (r.error, r.stdout_tail[-1500:])
    assert r.value["algorithm"] == "dr-grpo" and r.value["steps_done"] == 2
    assert isinstance(r.value["final"]["overall"], float) and r.cpu_s > 0
    rows = runs["progress"]["train"]
    assert [row["step"] for row in rows] == [1, 2] and "reward" in rows[0]


def test_infinite_and_slow_loops_are_killed_at_the_wall_clock_timeout(runs):
    for name in ("infinite_loop", "slow_finite"):
        r = check(runs, name, "timeout", f"timed out after {HANG_T} s")
        assert r.wall_s < HANG_T + 3


def test_cpu_time_limit(runs):
    check(runs, "cpu_limit", "timeout", "CPU-time limit of 5 s")


def test_fork_bomb_is_refused_and_leaves_no_process(runs):
    check(runs, "fork_bomb", "blocked", "starting processes (os.fork)")
    assert runs["leftover"] == set()


def test_memory_bombs_hit_the_memory_limit(runs):
    check(runs, "memory_bomb", "memory", "out of memory")
    check(runs, "memory_bomb_list", "memory", "out of memory")


def test_huge_output_is_cut(runs):
    r = check(runs, "huge_output", "blocked", "output limit")
    assert len(r.stdout_tail) <= 4000


def test_huge_file_hits_the_file_size_limit(runs):
    check(runs, "huge_file", "blocked", "file-size limit")


def test_processes_network_and_files_outside_scratch_are_refused(runs, sentinel):
    check(runs, "os_system", "blocked", "starting processes (os.system)")
    check(runs, "subprocess_import", "blocked", "import of 'subprocess' is not allowed")
    check(runs, "subprocess_real", "blocked", "starting processes (subprocess.Popen)")
    check(runs, "socket", "blocked", "socket.")
    check(runs, "open_outside", "blocked", "open() is not allowed")
    # Swallowing the PermissionError does not help: the violation is recorded.
    check(runs, "open_outside_real", "blocked", "writing", "only the scratch directory")
    check(runs, "read_outside", "blocked", "reading '/etc/passwd'")
    check(runs, "frame_walk", "blocked", "object.__getattr__ from candidate code")
    assert not sentinel.exists()


def test_native_writes_outside_scratch_are_refused_by_the_kernel(runs, sentinel):
    r = runs["results"]["native_write_outside"]
    if not r.isolation.get("landlock_abi"):
        pytest.skip("Landlock is not available: C++ writers are stopped only statically")
    check(runs, "native_write_outside", "blocked", "refused by the kernel", "Permission denied")
    assert not Path(str(sentinel) + ".bin").exists()


def test_files_inside_scratch_are_allowed(runs):
    r = runs["results"]["open_scratch"]
    assert r.ok, r.error


def test_exiting_is_refused_or_reported(runs):
    check(runs, "sys_exit", "blocked", "import of 'sys'")
    check(runs, "raise_system_exit", "blocked", "tried to exit the process")
    check(runs, "os_exit", "crash", "without a result")


def test_hooks_that_raise_or_return_garbage_are_contract_failures(runs):
    r = check(runs, "raise_everywhere", "contract", "shape_reward: raised ValueError: boom")
    errors = r.value["errors"]  # every broken hook, each on every batch
    assert len(errors) == 3 and all("9 of 9 batches" in e for e in errors), errors
    assert "boom adv" in errors[1] and "boom loss" in errors[2]
    check(runs, "nan_reward", "contract", "shape_reward", "non-finite")
    check(runs, "inf_advantage", "contract", "compute_advantages", "non-finite")
    check(runs, "wrong_shape", "contract", "compute_advantages: must return a tensor of shape")


def test_gradient_and_in_place_checks(runs):
    check(runs, "zero_grad", "contract", "policy_loss: zero gradient w.r.t. logp")
    check(runs, "padding_grad", "contract", "gradient flows into padding positions")
    check(runs, "in_place", "contract", "shape_reward: modified batch.length in place")


def test_monkeypatching_torch_is_caught_and_stays_in_the_child(runs):
    check(runs, "monkeypatch", "blocked", "modified torch.exp")
    assert float(torch.exp(torch.tensor(0.0))) == 1.0  # the parent's torch is untouched


def test_no_process_outlives_its_timeout_even_outside_the_group(runs):
    check(runs, "process_tree", "timeout")
    pids = runs["progress"]["process_tree"][0]["pids"]
    assert len(pids) == 3
    for pid in pids:  # gone or a zombie waiting for init
        try:
            with open(f"/proc/{pid}/stat") as f:
                assert f.read().split(")")[-1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            pass
    assert runs["leftover"] == set()


def test_a_parent_killed_with_sigkill_leaves_no_child(tmp_path):
    script = tmp_path / "parent.py"
    src = hook("while True:\n    pass")
    script.write_text("from trainers.sandbox import run_in_sandbox\n"
                      f"run_in_sandbox('check_hooks', {{'source': {src!r}}}, timeout_s=120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not _marked(parent.pid):  # the sandbox child is up
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.1)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _marked(parent.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _marked(parent.pid) == set()


def test_the_child_sees_a_minimal_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-planted-secret")
    src = hook("assert 'OPENAI_API_KEY' not in torch.os.environ, 'key leaked'\n"
               "assert torch.os.environ['OMP_NUM_THREADS'] == '1'")
    r = run_in_sandbox("check_hooks", {"source": src}, timeout_s=OK_T, static=False)
    assert r.ok, r.error


def test_static_check_rejects_before_launch():
    r = run_in_sandbox("check_hooks", {"source": "import os\nos.system('true')\n"},
                       timeout_s=OK_T)
    assert r.kind == "blocked" and r.wall_s < 1.0
    assert "imports 'os'" in r.error and r.value["violations"]


@pytest.mark.parametrize("source, fragment", [
    ("import os", "imports 'os'"),
    ("from subprocess import run", "imports 'subprocess'"),
    ("import socket", "imports 'socket'"),
    ("from . import x", "relative imports"),
    ("x = __import__('os')", "__import__"),
    ("eval('1')", "eval"),
    ("exec('x = 1')", "exec"),
    ("open('/tmp/x', 'w')", "open"),
    ("compile('1', 'f', 'eval')", "compile"),
    ("globals()['x'] = 1", "globals"),
    ("import torch\ntorch.os.system('ls')", ".os"),
    ("import torch\ngetattr(torch, '__builtins__')", "getattr"),
    ("import torch\nname = 'exp'\ngetattr(torch, name)", "computed attribute name"),
    ("x = ().__class__.__bases__[0].__subclasses__()", "dunder attributes"),
    ("import torch\nf = torch.exp.__globals__", "__globals__"),
    ("x = __builtins__", "__builtins__"),
    ("import torch\ntorch.exp = lambda x: x", "monkeypatching"),
    ("import torch.nn.functional as F\nF.softmax = None", "monkeypatching"),
    ("import torch\nsetattr(torch, 'exp', abs)", "setattr"),
    ("import torch\ntorch.load('w.pt')", ".load"),
    ("import numpy as np\nnp.save('x', 1)", ".save"),
    ("import torch\nx = torch._C", "private internals"),
    ("raise SystemExit(1)", "SystemExit"),
    ("g = (x for x in [0])\nf = g.gi_frame.f_back.f_globals", "introspection"),
    ("def f(:\n  pass", "syntax error"),
])
def test_static_check_rules(source, fragment):
    problems = check_source(source)
    assert problems and any(fragment in p for p in problems), problems
    assert all(p.startswith("line ") for p in problems if "syntax" not in p)


def test_static_check_accepts_ordinary_candidate_code():
    src = cand("""
        import math
        import numpy as np
        import torch.nn.functional as F
        from torch import Tensor

        ALPHA = 0.5

        def shape_reward(batch):
            signal = batch.correct.float()  # common words are fine as local names
            x = torch.zeros(3)
            x[torch.arange(2)] = 1.0
            return signal * (1 - ALPHA * batch.length.float() / batch.max_length)

        def compute_advantages(batch, rewards):
            scale = math.sqrt(2.0) * float(np.float32(1.0))
            return F.softplus(rewards) * scale
        """)
    assert check_source(src) == []


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_seccomp_filter_refuses_processes_and_sockets_but_not_threads():
    out = _run_python("""
        import os, socket, subprocess, threading
        from trainers.sandbox.kernel import install_seccomp
        if not install_seccomp():
            print("unsupported"); raise SystemExit(0)
        results = []
        t = threading.Thread(target=lambda: results.append("thread"))
        t.start(); t.join()
        for name, fn in [("fork", os.fork), ("exec", lambda: subprocess.run(["true"])),
                         ("socket", socket.socket), ("kill", lambda: os.kill(1, 0))]:
            try:
                fn()
                results.append(name + " allowed")
            except PermissionError:
                results.append(name + " refused")
        os.kill(os.getpid(), 0)  # signalling itself stays allowed
        print(" ".join(results))
        """)
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "unsupported":
        pytest.skip("seccomp is not available on this machine")
    assert out.stdout.split() == ["thread", "fork", "refused", "exec", "refused", "socket",
                                  "refused", "kill", "refused"]
