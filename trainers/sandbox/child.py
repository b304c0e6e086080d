"""The sandbox's child process: ``python -m trainers.sandbox.child REQUEST.json``.

Started only by ``trainers.sandbox.run_in_sandbox``, in a new session (its own process
group), with a minimal environment and a scratch directory as cwd; it is SIGKILLed if
that parent dies (PR_SET_PDEATHSIG). Linux only. In order:

1. limits (``resource``): CPU seconds, address space, processes, file size, open files,
   no core dumps; a private network namespace where the kernel allows it (root or
   CAP_SYS_ADMIN; elsewhere the seccomp filter and the audit hook refuse sockets). A
   CUDA job (``payload["device"]`` cuda) has no address-space limit, which CUDA's
   initialisation cannot live with, but a resident-memory watchdog thread at the same
   ``memory_mb`` (``kernel.apply_limits`` says why);
2. trusted setup of the task (imports, the warm-start checkpoint: built here on first use);
3. the guard, then the candidate is loaded and the task runs:
   - Landlock (Linux >= 5.13, also binding root): files are written only beneath the
     scratch dir, nothing is executed, no TCP, no signals outside the sandbox; this holds
     for C++ writers (torch.save, torch.from_file) that the audit hook never sees;
   - a seccomp filter (x86_64, aarch64; all threads): new processes (fork, vfork, clone
     without CLONE_THREAD), exec, sockets, ptrace, signals to other processes, mount and
     namespace calls fail with EPERM; new threads are fine. It is what stops a fork bomb
     when the sandbox runs as root, where RLIMIT_NPROC is not enforced;
   - a Python audit hook: process creation, signals to other processes, sockets, ctypes,
     files opened for writing outside the scratch dir or read outside it (except Python
     sources and libraries), and, from candidate frames, frame/gc introspection;
   - the candidate module's own builtins: imports only of torch, math, numpy (a blocked
     import raises ImportError saying so), no open/exec/eval/compile/input/exit;
   - stdout/stderr capped: past the cap the child stops at once;
   - a fingerprint of torch, numpy, math, builtins and our trainer modules, compared after
     the candidate loads and after the task: a monkeypatch is a violation.
4. The result goes to a JSON file opened before the guard (outside the scratch dir), never
   to stdout. Any guard violation marks the run "blocked", even if the candidate caught
   the exception it raised.
"""
from __future__ import annotations

import builtins
import ctypes
import json
import os
import signal
import sys
import threading
import traceback
import types
from pathlib import Path
from typing import Callable

from trainers.sandbox.kernel import (apply_limits, install_landlock, install_seccomp,
                                     start_rss_watchdog)

CANDIDATE_FILENAME = "<candidate>"
ALLOWED_IMPORTS = ("torch", "math", "numpy")
READABLE_SUFFIXES = (".py", ".pyc", ".so", ".pyi", ".pth")
ALLOC_FAILURE_MARKERS = ("can't allocate memory", "cannot allocate memory",
                         "not enough memory", "std::bad_alloc", "out of memory")


class SandboxViolation(PermissionError):
    """The candidate tried something the sandbox refuses."""


# ----------------------------------------------------------------------------- the guard

_PROCESS_EVENTS = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                   "os.forkpty", "subprocess.Popen", "pty.spawn", "os.startfile"}
_SIGNAL_EVENTS = {"os.kill", "os.killpg", "signal.pthread_kill"}
_WRITE_EVENTS = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown",
                 "os.link", "os.symlink", "os.truncate", "os.utime", "os.chflags",
                 "os.lchflags", "os.setxattr", "os.removexattr", "shutil.copyfile",
                 "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.move",
                 "shutil.rmtree", "shutil.chown", "shutil.make_archive",
                 "shutil.unpack_archive"}
_READ_EVENTS = {"os.listdir", "os.scandir", "os.chdir", "glob.glob", "os.listxattr",
                "os.getxattr"}
_BLOCKED_PREFIXES = ("socket.", "ctypes.", "urllib.", "http.", "ftplib.", "smtplib.",
                     "telnetlib.", "webbrowser.", "mmap.", "sys.addaudithook",
                     "resource.setrlimit", "resource.prlimit", "sys.remote_exec")
# Legitimate inside torch or the stdlib, suspicious from candidate code.
_CANDIDATE_ONLY = {"sys._getframe", "sys._current_frames", "sys._getframemodulename",
                   "gc.get_objects", "gc.get_referrers", "gc.get_referents",
                   "object.__getattr__", "object.__setattr__", "object.__delattr__",
                   "function.__new__", "code.__new__",
                   "builtins.input", "builtins.breakpoint", "sys.settrace",
                   "sys.setprofile", "cpython.PyInterpreterState_New"}


class Guard:
    """Everything the candidate runs under; records every violation it refuses."""

    def __init__(self, scratch: Path, protected_fds: tuple[int, ...]):
        self.scratch = os.path.realpath(scratch)
        self.protected_fds = protected_fds
        self.violations: list[str] = []
        roots = {sys.prefix, sys.base_prefix, sys.exec_prefix}
        roots.update(p for p in sys.path if p and os.path.isdir(p))
        self.read_roots = tuple(sorted(os.path.realpath(r) for r in roots))
        self._busy = False
        self._fingerprint: dict[tuple[str, str], object] = {}

    # -- refusing
    def refuse(self, what: str) -> SandboxViolation:
        message = f"sandbox: {what}"
        if message not in self.violations:
            self.violations.append(message)
        return SandboxViolation(message)

    def install(self) -> dict:
        self._fingerprint = fingerprint()
        landlock = install_landlock(self.scratch)
        seccomp = install_seccomp()
        sys.addaudithook(self._audit)
        return {"landlock_abi": landlock, "seccomp": seccomp, "audit_hook": True,
                "import_allowlist": True}

    def _audit(self, event: str, args: tuple) -> None:
        if self._busy:  # our own introspection below
            return
        self._busy = True
        try:
            problem = self._judge(event, args)
        finally:
            self._busy = False
        if problem:
            raise self.refuse(problem)

    def _judge(self, event: str, args: tuple) -> str | None:
        if event == "open":
            return self._judge_open(args)
        if event in _PROCESS_EVENTS:
            return f"starting processes ({event}) is not allowed"
        if event in _SIGNAL_EVENTS:
            return f"sending signals ({event}) is not allowed"
        if event.startswith(_BLOCKED_PREFIXES):
            return f"{event} is not allowed (no network, no native code, no limit changes)"
        if event in _WRITE_EVENTS:
            bad = [a for a in args if _is_path(a) and not self._in_scratch(a)]
            return f"{event} outside the scratch directory ({bad[0]!r})" if bad else None
        if event in _READ_EVENTS:
            bad = [a for a in args if _is_path(a) and not self._readable(a, listing=True)]
            return f"{event} outside the scratch directory ({bad[0]!r})" if bad else None
        if event in _CANDIDATE_ONLY and _candidate_on_stack():
            return f"{event} from candidate code is not allowed"
        return None

    def _judge_open(self, args: tuple) -> str | None:
        path, flags = args[0], args[2] if len(args) > 2 else 0
        if isinstance(path, int):
            return (f"opening protected file descriptor {path}"
                    if path in self.protected_fds else None)
        if path is None or not _is_path(path):
            return None
        writing = bool((flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT
                                       | os.O_TRUNC))
        if self._in_scratch(path):
            return None
        if not writing and self._readable(path):
            return None
        verb = "writing" if writing else "reading"
        return f"{verb} {os.fsdecode(path)!r} is not allowed: only the scratch directory"

    def _in_scratch(self, path) -> bool:
        real = os.path.realpath(os.fsdecode(path))
        return real == self.scratch or real.startswith(self.scratch + os.sep)

    def _readable(self, path, listing: bool = False) -> bool:
        real = os.path.realpath(os.fsdecode(path))
        if self._in_scratch(real):
            return True
        under = any(real == r or real.startswith(r + os.sep) for r in self.read_roots)
        return under and (listing or real.endswith(READABLE_SUFFIXES)
                          or "/__pycache__/" in real)

    # -- the candidate's builtins
    def candidate_builtins(self) -> dict:
        safe = dict(builtins.__dict__)
        real_import = builtins.__import__
        guard = self

        def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
            if level:
                raise guard.refuse_import(f"a relative import (level {level})")
            top = name.split(".")[0]
            if top not in ALLOWED_IMPORTS:
                raise guard.refuse_import(repr(name))
            module = real_import(name, globals, locals, fromlist, level)
            for attr in fromlist or ():
                value = getattr(module, attr, None)
                if isinstance(value, types.ModuleType) and \
                        value.__name__.split(".")[0] not in ALLOWED_IMPORTS:
                    raise guard.refuse_import(f"{value.__name__!r} (from {name} import "
                                              f"{attr})")
            return module

        def forbidden(fn_name):
            def refuse(*args, **kwargs):
                raise guard.refuse(f"{fn_name}() is not allowed in candidate code")
            refuse.__name__ = fn_name
            return refuse

        safe["__import__"] = guarded_import
        for fn_name in ("open", "exec", "eval", "compile", "input", "breakpoint", "exit",
                        "quit", "help", "globals", "locals", "vars", "memoryview"):
            safe[fn_name] = forbidden(fn_name)
        return safe

    def refuse_import(self, what: str) -> ImportError:
        message = (f"sandbox: import of {what} is not allowed: a candidate may import "
                   f"only {', '.join(ALLOWED_IMPORTS)} (and their submodules)")
        if message not in self.violations:
            self.violations.append(message)
        return ImportError(message)

    def check_untouched(self) -> None:
        """A violation for the first library function or class the candidate replaced.
        A library wrapping its own function lazily (torch._dynamo wraps
        torch.manual_seed on first import: ``new.__wrapped__ is old``) is not one."""
        now = fingerprint()
        for key, old in self._fingerprint.items():
            new = now.get(key)
            if new is old:
                continue
            if new is not None and not _from_candidate(new) \
                    and getattr(new, "__wrapped__", None) is old:
                self._fingerprint[key] = new
                continue
            module, attr = key
            self.refuse(f"the candidate modified {module}.{attr} (monkeypatching library "
                        "modules is not allowed)")
            return


_FINGERPRINTED = ("builtins", "math", "numpy", "torch", "torch.nn", "torch.nn.functional",
                  "torch.linalg", "trainers.algorithm", "trainers.local.trainer",
                  "trainers.local.evaluate", "trainers.local.model", "evals.tasks",
                  "evals.metrics", "trainers.sandbox.tasks")


def fingerprint() -> dict[tuple[str, str], object]:
    """Every function, class and module attribute of the watched modules (and
    torch.Tensor's methods). Plain values (counters, caches) are left out."""
    out = {}
    for name in _FINGERPRINTED:
        module = sys.modules.get(name)
        if module is None:
            continue
        for attr, value in list(vars(module).items()):
            if callable(value) or isinstance(value, types.ModuleType):
                out[(name, attr)] = value
    tensor = getattr(sys.modules.get("torch"), "Tensor", None)
    if tensor is not None:
        for attr, value in list(vars(tensor).items()):
            out[("torch.Tensor", attr)] = value
    return out


def _from_candidate(value) -> bool:
    code = getattr(value, "__code__", None)
    return (getattr(code, "co_filename", None) == CANDIDATE_FILENAME
            or getattr(value, "__module__", None) == "poise_candidate")


def _is_path(value) -> bool:
    return isinstance(value, (str, bytes, os.PathLike))


def _candidate_on_stack() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename == CANDIDATE_FILENAME:
            return True
        frame = frame.f_back
    return False


# ----------------------------------------------------------------------------- output

class CappedStream:
    """stdout/stderr with a shared byte budget: past it, ``on_flood`` ends the child."""

    budget = {"left": 0}

    def __init__(self, stream, on_flood: Callable[[], None]):
        self.stream = stream
        self.on_flood = on_flood

    def write(self, text: str) -> int:
        left = CappedStream.budget["left"] - len(text)
        CappedStream.budget["left"] = left
        if left < 0:
            self.on_flood()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


# ----------------------------------------------------------------------------- results

class ResultWriter:
    """The result file, opened before the guard; written once."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.written = False
        self.isolation: dict = {}
        self._lock = threading.Lock()  # the RSS watchdog's thread may write too

    def write(self, kind: str, value: dict | None = None, error: str = "") -> None:
        with self._lock:
            self._write(kind, value, error)

    def _write(self, kind: str, value: dict | None, error: str) -> None:
        if self.written:
            return
        self.written = True
        blob = json.dumps({"ok": kind == "ok", "kind": kind, "value": value or {},
                           "error": error, "isolation": self.isolation},
                          default=_jsonable).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, blob, 0)
        os.close(self.fd)


def _jsonable(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return repr(value)


class ProgressWriter:
    """JSON lines the parent tails while the task runs (per-step training metrics)."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def __call__(self, row: dict) -> None:
        os.write(self.fd, (json.dumps(row, default=_jsonable) + "\n").encode())


# ----------------------------------------------------------------------------- loading

def load_candidate(source: str, guard: Guard):
    """The candidate module, executed with the guarded builtins, wrapped in the checked
    ``Algorithm``. Raises CandidateError("load", ...) when it does not load."""
    from trainers.algorithm import Algorithm, CandidateError

    try:
        code = compile(source, CANDIDATE_FILENAME, "exec")
    except SyntaxError as e:
        raise CandidateError("load", f"syntax error at line {e.lineno}: {e.msg}") from None
    module = types.ModuleType("poise_candidate")
    module.__dict__["__builtins__"] = guard.candidate_builtins()
    try:
        exec(code, module.__dict__)
    except Exception as e:
        raise CandidateError("load", f"module raised {type(e).__name__}: {e}") from None
    return Algorithm(module, source=source)


# ----------------------------------------------------------------------------- main

def classify(exc: BaseException, guard: Guard, limits: dict) -> tuple[str, str]:
    """(kind, one-line error) for an exception that ended the task."""
    from trainers.algorithm import CandidateError

    text = " ".join(str(exc).split())
    if guard.violations:
        return "blocked", guard.violations[0]
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        return "blocked", (f"sandbox: the candidate tried to exit the process "
                           f"({type(exc).__name__}({text})); a candidate must not exit")
    if not isinstance(exc, CandidateError):
        text = f"{type(exc).__name__}: {text}"
    return hit_limit(text, limits, "contract" if isinstance(exc, CandidateError) else "crash")


def hit_limit(error: str, limits: dict, default: str) -> tuple[str, str]:
    """(kind, error): an error caused by the memory or file-size limit says so."""
    if "MemoryError" in error or any(m in error.lower() for m in ALLOC_FAILURE_MARKERS):
        return "memory", f"out of memory (memory limit of {limits['memory_mb']} MB): {error}"[:600]
    if "Permission denied" in error or "Operation not permitted" in error:
        return "blocked", f"sandbox: refused by the kernel (Landlock / seccomp): {error}"[:600]
    if "File too large" in error:
        return "blocked", (f"sandbox: wrote more than {limits['file_mb']} MB to a file "
                           f"(file-size limit): {error}")[:600]
    return default, error[:600]


def main(request_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    _die_with_parent(request["parent_pid"])
    sys.dont_write_bytecode = True  # no .pyc writes: every write outside scratch is refused
    writer = ResultWriter(request["result_path"])
    signal.signal(signal.SIGXCPU, lambda *_: _exit_with(
        writer, "timeout", f"exceeded the CPU-time limit of {request['limits']['cpu_s']:g} s"))
    guard = Guard(Path.cwd(), (writer.fd,))
    try:
        writer.isolation = apply_limits(request["limits"])
        if request["limits"].get("rss_watchdog"):
            _watch_memory(request["limits"], writer, guard)
        _run_task(request, writer, guard)
    except BaseException as e:  # noqa: BLE001 - every ending is a result
        kind, error = classify(e, guard, request["limits"])
        value = {"traceback": traceback.format_exc()[-4000:]} if kind == "crash" else {}
        writer.write(kind, value, error)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream must not hide the result
                pass
    os._exit(0)  # skip interpreter teardown: candidate objects may misbehave in __del__


def _run_task(request: dict, writer: ResultWriter, guard: Guard) -> None:
    from trainers.sandbox import tasks as sandbox_tasks

    limits, payload = request["limits"], request["payload"]
    task = sandbox_tasks.TASKS.get(request["task"])
    if task is None:
        writer.write("crash", error=f"unknown sandbox task {request['task']!r}; known: "
                                    f"{', '.join(sandbox_tasks.TASKS)}")
        return
    context = task.setup(payload)  # trusted: before any candidate code
    progress = ProgressWriter(request["progress_path"])
    guard.protected_fds += (progress.fd,)
    CappedStream.budget["left"] = limits["output_bytes"]
    flood = lambda: _exit_with(writer, "blocked", (  # noqa: E731
        f"sandbox: the candidate printed more than {limits['output_bytes']} bytes "
        "(output limit)"))
    sys.stdout = CappedStream(sys.stdout, flood)
    sys.stderr = CappedStream(sys.stderr, flood)
    writer.isolation.update(guard.install())
    algo = None
    if "source" in payload:
        algo = load_candidate(payload["source"], guard)
        guard.check_untouched()  # a monkeypatch at import time stops the run here
        if guard.violations:
            writer.write("blocked", {}, guard.violations[0])
            return
    value = task.run(context, algo, payload, progress)
    guard.check_untouched()
    if guard.violations:  # even if the candidate caught the exception the guard raised
        writer.write("blocked", value, guard.violations[0])
    elif value.get("errors"):
        kind, error = hit_limit(value["errors"][0], limits, "contract")
        writer.write(kind, value, error)
    else:
        writer.write("ok", value)


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this child if the process that started it dies (PR_SET_PDEATHSIG), so
    even a parent killed with -9 leaves nothing running."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # it died before the prctl
        os._exit(1)


def _watch_memory(limits: dict, writer: ResultWriter, guard: Guard) -> None:
    """A CUDA job's memory limit: the RSS watchdog ends the child with a memory failure
    (``kernel.start_rss_watchdog``)."""
    limit = limits["memory_mb"]
    fd = start_rss_watchdog(limit, lambda mb: _exit_with(writer, "memory", (
        f"out of memory: {mb:.0f} MB resident passed the memory limit of {limit} MB "
        "(the RSS watchdog of a CUDA job)")))
    writer.isolation["rss_watchdog"] = fd is not None
    if fd is not None:
        guard.protected_fds += (fd,)


def _exit_with(writer: ResultWriter, kind: str, error: str) -> None:
    writer.write(kind, {}, error)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
