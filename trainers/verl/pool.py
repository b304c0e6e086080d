"""The GPUs of this node, lent to verl jobs so that concurrent jobs never share one.

    pool = node_pool(cfg.gpus or visible_gpus())
    with pool.lease(cfg.n_gpus_per_node) as ids:     # blocks until that many are free
        train_candidate(..., visible_devices=ids)    # CUDA_VISIBLE_DEVICES=<ids>

A single-node verl job starts its own Ray instance, which takes every GPU its process can
see; pinning each job to a disjoint ``CUDA_VISIBLE_DEVICES`` is what lets several run on
one node. Waiters are served first come, first served (a later small request never
overtakes an earlier one), so no job starves. A request for more GPUs than the pool holds
can never be served and fails at once (``GpuPoolError``) instead of waiting forever.
On a Ray cluster there is no pool: the cluster places the jobs (trainers/executors.py).
"""
from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from contextlib import contextmanager
from typing import Iterator, Sequence

GpuId = int | str   # an index, or a UUID / MIG name when CUDA_VISIBLE_DEVICES holds those


class GpuPoolError(RuntimeError):
    """A request the pool can never serve; the message is one line for the person."""


def visible_gpus(env=None) -> list[GpuId]:
    """The GPUs a job started from here may use: ``$CUDA_VISIBLE_DEVICES`` when set (its
    ids as written, since a child's CUDA_VISIBLE_DEVICES names the same devices; CUDA
    ignores everything from the first invalid entry on, like ``-1``), else
    ``torch.cuda.device_count()`` indices."""
    env = os.environ if env is None else env
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        import torch

        return list(range(torch.cuda.device_count()))
    ids: list[GpuId] = []
    for token in (t.strip() for t in raw.split(",")):
        if not token:
            break
        if token.lstrip("-").isdigit():
            if int(token) < 0:
                break
            ids.append(int(token))
        else:
            ids.append(token)
    return ids


class GpuPool:
    """A fixed set of GPU ids; ``acquire(n)`` hands out ``n`` free ones (FIFO among
    waiters), ``release`` returns them. Thread-safe."""

    def __init__(self, gpus: Sequence[GpuId]):
        if len(set(gpus)) != len(gpus):
            raise GpuPoolError(f"the GPU ids {list(gpus)} repeat one")
        self.gpus: tuple[GpuId, ...] = tuple(gpus)
        self._free: list[GpuId] = list(gpus)
        self._cond = threading.Condition()
        self._queue: deque[int] = deque()
        self._tickets = itertools.count()

    @property
    def size(self) -> int:
        return len(self.gpus)

    def free(self) -> list[GpuId]:
        with self._cond:
            return list(self._free)

    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)

    def acquire(self, n: int, timeout: float | None = None) -> list[GpuId]:
        """``n`` GPU ids no one else holds, lowest first, blocking until that many are
        free and every earlier waiter is served. Raises GpuPoolError when ``n`` exceeds
        the pool (it could never be served), TimeoutError after ``timeout`` seconds."""
        if n < 1:
            raise GpuPoolError(f"a job needs at least one GPU, asked for {n}")
        if n > self.size:
            raise GpuPoolError(f"a verl job needs {n} GPUs (n_gpus_per_node) but this node's "
                               f"pool has {self.size} ({list(self.gpus)}; set `gpus` or "
                               f"CUDA_VISIBLE_DEVICES, or lower n_gpus_per_node)")
        with self._cond:
            ticket = next(self._tickets)
            self._queue.append(ticket)
            try:
                ready = self._cond.wait_for(
                    lambda: self._queue[0] == ticket and len(self._free) >= n, timeout)
                if not ready:
                    raise TimeoutError(f"no {n} free GPUs within {timeout} s")
                taken = self._free[:n]
                del self._free[:n]
                return taken
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next waiter may now be at the head

    def release(self, ids: Sequence[GpuId]) -> None:
        with self._cond:
            stray = [g for g in ids if g not in self.gpus or g in self._free]
            if stray:
                raise GpuPoolError(f"releasing GPUs {stray} that this pool did not lend")
            self._free.extend(ids)
            self._free.sort(key=self.gpus.index)
            self._cond.notify_all()

    @contextmanager
    def lease(self, n: int, timeout: float | None = None) -> Iterator[list[GpuId]]:
        """``acquire(n)`` for the block; released however it ends."""
        ids = self.acquire(n, timeout)
        try:
            yield ids
        finally:
            self.release(ids)


_pools: dict[tuple[GpuId, ...], GpuPool] = {}
_pools_lock = threading.Lock()


def node_pool(gpus: Sequence[GpuId]) -> GpuPool:
    """The process-wide pool of these GPUs: every executor of the process that uses the
    same ids shares one pool, so two executors never pin jobs to the same GPU."""
    key = tuple(gpus)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = GpuPool(key)
        return _pools[key]


__all__ = ["GpuPool", "GpuPoolError", "node_pool", "visible_gpus"]
