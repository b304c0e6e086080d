"""Run candidate code only in a child process, with hard limits; and its static check.

    result = run_in_sandbox("check_hooks", {"source": src}, timeout_s=30, cpu_s=30,
                            memory_mb=4096)
    result.ok, result.kind, result.error, result.value

Candidate code never runs in the calling process. ``run_in_sandbox`` starts
``python -m trainers.sandbox.child`` (never a thread) and:
- a hard wall-clock timeout: SIGKILL to the child's whole process group, then to any
  process still carrying this run's environment marker (a process that left the group);
  the same on every exit path, so no process outlives the call;
- limits set in the child before any candidate code (``resource``): CPU seconds
  (RLIMIT_CPU), address space (RLIMIT_AS; for a CUDA job, whose driver reserves far more
  virtual memory than any sane limit, a resident-memory watchdog instead: see
  ``trainers/sandbox/kernel.py``), processes (RLIMIT_NPROC; not enforced for
  root, where the child's seccomp filter refuses fork/exec instead), file size
  (RLIMIT_FSIZE, which also caps the captured output), open files (RLIMIT_NOFILE);
- a fresh scratch directory as cwd and HOME (removed afterwards), and a minimal
  environment: PATH, PYTHONPATH, HOME, OMP/MKL_NUM_THREADS=1, OMP_WAIT_POLICY=PASSIVE,
  HF_HUB_OFFLINE=1 and the run marker; no API key or any other variable reaches it;
- stdout/stderr captured to a file, capped, returned as ``stdout_tail``; the result comes
  back through a JSON file beside the scratch dir (the child opens it before loading the
  candidate, which may not write outside scratch, so cannot forge it), never by parsing
  stdout;
- network: the child unshares a private network namespace where the kernel allows it
  (root / CAP_SYS_ADMIN); where it does not, sockets are still refused by the seccomp
  filter, the audit hook, the import allowlist and this module's static check.
The child's guard (Landlock file/network rules, seccomp, audit hook, import allowlist,
monkeypatch fingerprint) is described in ``trainers/sandbox/child.py`` and
``trainers/sandbox/kernel.py``; the tasks it can run in ``trainers/sandbox/tasks.py``; the
static check in ``trainers/sandbox/static.py``. ``SandboxResult.isolation`` says which layers the
kernel granted. Linux only.

``check_source`` is the static check (AST, in this process, nothing executed): imports
only of torch/math/numpy, no ``__import__``/``eval``/``exec``/``open``/``compile``/
``globals``..., no ``os``/``sys``/``subprocess``/``socket``..., no dunder or module-private
attribute access, no ``getattr`` on computed or private names, no assignment into library
modules. ``run_in_sandbox`` applies it to ``payload["source"]`` unless ``static=False``
(the dynamic guard still holds then).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

from trainers.sandbox.static import check_source

# "executor": the job never ran to a result where it was sent (a Ray worker died...).
Kind = Literal["ok", "timeout", "memory", "crash", "contract", "blocked", "executor"]
REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = "POISE_SANDBOX_RUN"
TAIL_CHARS = 4000
MAX_RESULT_BYTES = 64 * 1024 * 1024
DIR_PREFIX = "poise-sandbox-"


@dataclass
class SandboxResult:
    ok: bool
    value: dict
    error: str           # one clear line; "" when ok
    kind: Kind
    stdout_tail: str
    wall_s: float
    cpu_s: float = 0.0   # the child's own CPU seconds (user + system)
    peak_rss_mb: float = 0.0  # the child's peak resident memory
    isolation: dict = field(default_factory=dict)  # which layers were active in the child

    def as_dict(self) -> dict:
        return asdict(self)


def run_in_sandbox(task: str, payload: dict, *, timeout_s: float = 60.0,
                   cpu_s: float | None = None, memory_mb: int = 4096, file_mb: int = 64,
                   output_kb: int = 256, max_procs: int = 32, max_files: int = 256,
                   static: bool = True,
                   on_progress: Callable[[dict], None] | None = None) -> SandboxResult:
    """Run ``task`` (see ``trainers.sandbox.tasks.TASKS``) on ``payload`` in a child.

    ``payload["source"]``, if present, is the candidate module; it is checked statically
    first unless ``static=False``. ``cpu_s`` defaults to ``timeout_s``; ``memory_mb`` is
    the child's whole address space (torch alone takes ~0.6 GB of it), or, when
    ``payload["device"]`` is CUDA, its resident memory (an RSS watchdog). ``on_progress``
    receives the task's progress rows (per-step training metrics) while it runs."""
    started = time.monotonic()
    if static and "source" in payload:
        problems = check_source(payload["source"])
        if problems:
            return SandboxResult(False, {"violations": problems}, problems[0], "blocked",
                                 "", time.monotonic() - started)
    if isinstance(payload.get("home"), (str, Path)):  # the child's cwd is its scratch dir
        payload = {**payload, "home": str(Path(payload["home"]).resolve())}
    limits = {"cpu_s": cpu_s or timeout_s, "memory_mb": int(memory_mb),
              "file_mb": int(file_mb), "output_bytes": int(output_kb) * 1024,
              "max_procs": int(max_procs), "max_files": int(max_files),
              "rss_watchdog": str(payload.get("device") or "cpu").startswith("cuda")}
    _remove_stale_dirs()
    root = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
    # <launcher pid>-<random>: kill_tree finds this run's processes by the whole token,
    # and anyone can tell which process launched a marked one
    token = f"{os.getpid()}-{secrets.token_hex(12)}"
    try:
        scratch = root / "scratch"
        scratch.mkdir()
        request = {"task": task, "payload": payload, "limits": limits,
                   "result_path": str(root / "result.json"),
                   "progress_path": str(root / "progress.jsonl"), "parent_pid": os.getpid()}
        (root / "request.json").write_text(json.dumps(request))
        with open(root / "output.log", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "trainers.sandbox.child", str(root / "request.json")],
                cwd=scratch, env=_child_env(scratch, token), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
            try:
                timed_out = _wait(proc.pid, started + timeout_s, root / "progress.jsonl",
                                  on_progress)
            finally:  # also on KeyboardInterrupt: nothing may outlive the call
                kill_tree(proc.pid, token)
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
        child_cpu = usage.ru_utime + usage.ru_stime
        res = _result(root, proc.returncode, timed_out, limits, timeout_s,
                      time.monotonic() - started, child_cpu)
        res.peak_rss_mb = usage.ru_maxrss / 1024.0  # Linux: KiB
        return res
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _remove_stale_dirs() -> None:
    """Scratch dirs left by a parent that was killed (-9) before its cleanup."""
    base = Path(tempfile.gettempdir())
    for path in base.glob(f"{DIR_PREFIX}*-*"):
        owner = path.name[len(DIR_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(path, ignore_errors=True)


def _child_env(scratch: Path, token: str) -> dict[str, str]:
    paths = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                if p]
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "HOME": str(scratch),
            "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
            "PYTHONDONTWRITEBYTECODE": "1", MARKER: token,
            # where the compiled engine's libraries are (trainers/local/compiled.py)
            **{k: os.environ[k] for k in ("POISE_COMPILED_DIR",) if k in os.environ}}


def _wait(pid: int, deadline: float, progress_path: Path,
          on_progress: Callable[[dict], None] | None) -> bool:
    """Poll until the child exits (left unreaped, so its pid and process group cannot be
    reused before ``kill_tree``) or the deadline passes. True if it timed out."""
    offset, pause = 0, 0.02
    while True:
        if on_progress is not None:
            offset = _tail_progress(progress_path, offset, on_progress)
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            if on_progress is not None:
                _tail_progress(progress_path, offset, on_progress)
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(pause)
        pause = min(0.2, pause * 1.5)


def _tail_progress(path: Path, offset: int, on_progress: Callable[[dict], None]) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except OSError:
        return offset
    complete = chunk[:chunk.rfind(b"\n") + 1]
    for line in complete.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        on_progress(row)
    return offset + len(complete)


def kill_tree(pid: int, token: str) -> None:
    """SIGKILL the child's process group, then every process carrying ``token`` in its
    environment (one that called setsid or setpgid), until none is left."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for _ in range(50):
        found = marked_processes(token)
        if not found:
            return
        for other in found:
            try:
                os.kill(other, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def marked_processes(token: str) -> list[int]:
    """Live processes whose environment holds this run's marker (zombies have none)."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _result(root: Path, returncode: int, timed_out: bool, limits: dict, timeout_s: float,
            wall_s: float, cpu_s: float) -> SandboxResult:
    tail = _output_tail(root / "output.log")
    data = _read_result(root / "result.json")
    if data is None and timed_out:
        data = {"kind": "timeout", "error": f"timed out after {timeout_s:g} s (wall clock); "
                                            "the process tree was killed"}
    if data is None:
        data = {"kind": "crash" if returncode >= 0 else None, "error": ""}
        if returncode < 0:
            data["kind"], data["error"] = _signal_reason(-returncode, limits, cpu_s)
        else:
            last = tail.strip().splitlines()[-1] if tail.strip() else "no output"
            data["error"] = (f"the sandbox child exited with code {returncode} without a "
                             f"result (did the candidate exit the process?): {last[:300]}")
    kind = data.get("kind", "crash")
    return SandboxResult(ok=kind == "ok", value=data.get("value") or {},
                         error=data.get("error", ""), kind=kind, stdout_tail=tail,
                         wall_s=wall_s, cpu_s=cpu_s, isolation=data.get("isolation") or {})


def _signal_reason(signum: int, limits: dict, cpu_s: float) -> tuple[str, str]:
    if signum == signal.SIGXCPU or (signum == signal.SIGKILL
                                    and cpu_s >= limits["cpu_s"] - 0.5):
        return "timeout", f"exceeded the CPU-time limit of {limits['cpu_s']:g} s"
    if signum == signal.SIGXFSZ:
        return "blocked", (f"sandbox: wrote more than {limits['file_mb']} MB to a file "
                           "(file-size limit)")
    if signum == signal.SIGKILL:
        return "memory", "killed by SIGKILL: out of memory (the kernel's OOM killer)"
    if signum == signal.SIGSEGV:
        return "crash", ("segmentation fault (often a failed allocation under the memory "
                         f"limit of {limits['memory_mb']} MB)")
    return "crash", f"killed by signal {signal.Signals(signum).name}"


def _read_result(path: Path) -> dict | None:
    try:
        if path.stat().st_size == 0 or path.stat().st_size > MAX_RESULT_BYTES:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _output_tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - TAIL_CHARS))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


__all__ = ["SandboxResult", "run_in_sandbox", "check_source", "kill_tree",
           "marked_processes"]
