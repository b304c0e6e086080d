"""The kernel's layers of the sandbox child, set before any candidate code runs: resource
limits, a private network namespace, a seccomp filter and Landlock rules (see
``trainers/sandbox/child.py`` for the order and what each stops). Linux only."""
from __future__ import annotations

import ctypes
import math
import os
import platform
import resource
import struct
import threading
import time
from typing import Callable

# ----------------------------------------------------------------------------- limits

def apply_limits(limits: dict) -> dict:
    """Set rlimits on this process (inherited by anything it starts); returns what is
    actually enforced, for the result's ``isolation`` report.

    The memory limit is RLIMIT_AS (address space), except for a CUDA job
    (``limits["rss_watchdog"]``): initialising CUDA reserves tens of GB of virtual
    address space (the driver's unified-memory range) without using it, so any address
    space limit that still stops a runaway candidate makes ``cuInit`` fail. Such a job
    gets ``start_rss_watchdog`` instead, which the child starts right after this call:
    the same ``memory_mb``, applied to the process's anonymous resident memory. Every
    other limit and guard layer is the same on both paths; the CPU path is unchanged.
    GPU memory itself is bounded only by the device (a candidate that exhausts it gets
    CUDA's out-of-memory error, reported as a memory failure)."""
    mb = 1024 * 1024
    cpu = max(1, math.ceil(limits["cpu_s"]))
    _lower(resource.RLIMIT_CPU, cpu, cpu + 2)  # SIGXCPU at the soft limit, SIGKILL later
    watchdog = bool(limits.get("rss_watchdog"))
    if not watchdog:
        _lower(resource.RLIMIT_AS, limits["memory_mb"] * mb)
    _lower(resource.RLIMIT_FSIZE, limits["file_mb"] * mb)
    _lower(resource.RLIMIT_NOFILE, limits["max_files"])
    _lower(resource.RLIMIT_CORE, 0)
    # RLIMIT_NPROC counts every task (thread) of the real uid, not only ours.
    _lower(resource.RLIMIT_NPROC, _tasks_of_uid(os.getuid()) + limits["max_procs"])
    return {"rlimits": True, "nproc_enforced": os.getuid() != 0, "netns": _unshare_net(),
            "memory_limit": "rss watchdog" if watchdog else "address space"}


def start_rss_watchdog(limit_mb: int, on_exceed: Callable[[float], None],
                       interval_s: float = 0.05) -> int | None:
    """A daemon thread that polls this process's anonymous resident memory (``statm``'s
    resident minus shared pages: what allocations grow; mapped libraries are left out)
    every ``interval_s`` and calls ``on_exceed(MB)`` once it passes ``limit_mb``. The
    statm file is opened here, before the guard, and re-read with pread. Returns its
    descriptor (for the guard to protect), None where /proc is unavailable. Weaker than
    RLIMIT_AS in one way: an allocation burst between two polls is not refused, only
    caught at the next poll (the kernel's OOM killer remains the backstop)."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    limit = limit_mb * 1024 * 1024

    def watch() -> None:
        while True:
            try:
                fields = os.pread(fd, 256, 0).split()
                anon = (int(fields[1]) - int(fields[2])) * page
            except (OSError, ValueError, IndexError):
                anon = 0
            if anon > limit:
                on_exceed(anon / (1024 * 1024))
                return
            time.sleep(interval_s)

    threading.Thread(target=watch, name="poise-rss-watchdog", daemon=True).start()
    return fd


def _lower(which: int, soft: int, hard: int | None = None) -> None:
    """Set a limit, never above the hard limit this process already has."""
    _, current = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))


def _tasks_of_uid(uid: int) -> int:
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return count


def _unshare_net() -> bool:
    """A private network namespace (only a down loopback): needs CAP_SYS_ADMIN."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(0x40000000) == 0  # CLONE_NEWNET
    except (OSError, AttributeError):
        return False


# ----------------------------------------------------------------------------- seccomp

_ARCH = {  # machine -> (AUDIT_ARCH, seccomp syscall nr, blocked nrs, clone, clone3, kill, tgkill)
    "x86_64": (0xC000003E, 317,
               {57: "fork", 58: "vfork", 59: "execve", 322: "execveat", 41: "socket",
                53: "socketpair", 101: "ptrace", 200: "tkill", 310: "process_vm_readv",
                311: "process_vm_writev", 424: "pidfd_send_signal", 165: "mount",
                166: "umount2", 272: "unshare", 308: "setns", 169: "reboot",
                175: "init_module", 313: "finit_module", 176: "delete_module",
                246: "kexec_load", 320: "kexec_file_load", 161: "chroot",
                155: "pivot_root"},
               56, 435, 62, 234),
    "aarch64": (0xC00000B7, 277,
                {221: "execve", 281: "execveat", 198: "socket", 199: "socketpair",
                 117: "ptrace", 130: "tkill", 270: "process_vm_readv",
                 271: "process_vm_writev", 424: "pidfd_send_signal", 40: "mount",
                 39: "umount2", 97: "unshare", 268: "setns", 142: "reboot",
                 105: "init_module", 273: "finit_module", 106: "delete_module",
                 104: "kexec_load", 51: "chroot", 41: "pivot_root"},
                220, 435, 129, 131),
}


def install_seccomp() -> bool:
    """Refuse process creation, exec, sockets and signals to other processes, for every
    thread of this process and anything it could start. False where unsupported."""
    arch = _ARCH.get(platform.machine())
    if arch is None:
        return False
    audit_arch, sys_seccomp, blocked, nr_clone, nr_clone3, nr_kill, nr_tgkill = arch
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    pid = os.getpid()
    prog: list[tuple[int, int, int, int]] = [(ld, 0, 0, 4), (jeq, 1, 0, audit_arch),
                                             (ret, 0, 0, eperm), (ld, 0, 0, 0)]
    if audit_arch == 0xC000003E:  # x32 syscalls share the arch: refuse them
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]
    for nr in blocked:
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    prog += [(jeq, 0, 1, nr_clone3), (ret, 0, 0, enosys)]  # glibc falls back to clone
    # clone: threads (CLONE_THREAD) only; kill/tgkill: this process only.
    prog += [(jeq, 0, 4, nr_clone), (ld, 0, 0, 16), (jset, 0, 1, 0x00010000),
             (ret, 0, 0, allow), (ret, 0, 0, eperm)]
    for nr in (nr_kill, nr_tgkill):
        prog += [(jeq, 0, 4, nr), (ld, 0, 0, 16), (jeq, 0, 1, pid),
                 (ret, 0, 0, allow), (ret, 0, 0, eperm)]
    prog += [(ret, 0, 0, allow)]
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Prog(len(prog), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    # seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC): all threads at once.
    if libc.syscall(sys_seccomp, 1, 1, ctypes.byref(fprog)) == 0:
        return True
    return libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # PR_SET_SECCOMP: this thread


# ----------------------------------------------------------------------------- landlock

_LL_READ = (1 << 2) | (1 << 3)                      # READ_FILE, READ_DIR
_LL_WRITE = sum(1 << b for b in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))  # write, remove, make


def install_landlock(writable: str) -> int:
    """Kernel-enforced file and network rules (Landlock, Linux >= 5.13), for every thread
    and even for root: files may be written only beneath ``writable`` (C++ writers such as
    torch.save bypass Python's audit hook, not this); nothing may be executed; on ABI >= 4
    no TCP bind/connect; on ABI >= 6 no signals or abstract sockets outside the sandbox.
    Returns the ABI version applied, 0 where Landlock is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(VERSION)
    except (OSError, AttributeError):
        return 0
    if abi < 1:
        return 0
    write = _LL_WRITE | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)
    handled = struct.pack("QQQ", _LL_READ | write | 1, 0b11 if abi >= 4 else 0,
                          0b11 if abi >= 6 else 0)  # fs (+ EXECUTE), net, scoped
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    attr = ctypes.create_string_buffer(handled[:size], size)
    ruleset = libc.syscall(444, attr, size, 0)
    if ruleset < 0:
        return 0
    try:
        for path, access in (("/", _LL_READ), (writable, _LL_READ | write)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
            ok = libc.syscall(445, ruleset, 1, rule, 0) == 0  # LANDLOCK_RULE_PATH_BENEATH
            os.close(fd)
            if not ok:
                return 0
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            return 0
        return abi if libc.syscall(446, ruleset, 0) == 0 else 0  # landlock_restrict_self
    finally:
        os.close(ruleset)
