"""The archive: every run, candidate, lineage edge, evaluation and reflection, in SQL.

    archive = Archive(home)                       # HOME/archive.db, or $POISE_DB_URL
    run = archive.start_run("accurate and concise", {"budget": 64})
    cid = archive.add_candidate(run, "dace-grpo", 1, proposal, code, parents=[seed])
    archive.add_evaluation(cid, seed=0, backend="local", metrics={...}, fitness=0.52)
    archive.add_reflection(cid, "length fell 29% at equal accuracy", ["length"])
    archive.similar_reflections("entropy collapse", k=5, status="failed")

SQL (SQLite in WAL mode by default, any SQLAlchemy URL through ``POISE_DB_URL``, e.g.
PostgreSQL for a team) is the source of truth. Reflections and proposals are mirrored in
Chroma (``memory.vectors``) for semantic search.

Crash consistency (SQL <-> vectors): a row is committed to SQL first with
``indexed=False``; its vector is then upserted under a deterministic id
(``reflection-<id>`` / ``proposal-<id>``), and only then is ``indexed`` set. A crash at
any point leaves either an un-indexed row, which ``sync()`` re-upserts (the upsert is
idempotent), or, if SQL lost a commit, a vector without a row, which ``sync()`` deletes.
``sync()`` runs when the vector store is first opened in a process; ``reindex()``
rebuilds the store from SQL. Changing a candidate's status clears the flags of its
vectors (their metadata carries the status) and re-indexes them.

A candidate can be written with its evaluations and reflection in one transaction
(``add_candidate(..., evaluations=, reflection=)``): the loop does, so a killed run
never leaves a candidate without its results. Test-only fault points
(``_fault_point``, ``$POISE_TEST_PAUSE_AT``) pause inside that transaction and between
its commit and its vectors, so the crash tests can kill a run exactly there.
"""
from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from sqlalchemy import func, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from memory.schema import (EVALUATED, LINEAGE_KINDS, ArchiveError, Candidate, Evaluation,
                           Lineage, NoArchiveError, Reflection, Run, Standing, SyncReport,
                           check_status, clean_tags, evaluation_row, get_row, jsonable,
                           make_engine, open_schema, source_hash, sqlite_url, utcnow)
from trainers.home import resolve_home

if TYPE_CHECKING:
    from memory.evidence import Evidence, Novelty
    from memory.vectors import Embedder, VectorStore

ARCHIVE_FILE = "archive.db"
_BATCH = 256


class Archive:
    """The genealogical archive of one POISE home (or one database URL).

    ``create=False`` refuses to create anything: a missing archive raises ArchiveError
    ("no archive at ..."). The vector store and the embedding model are opened lazily,
    on the first call that needs them, and the store is synced then. ``index=False``
    makes writes SQL-only until the store is opened (tools that never search: the rows
    wait, un-indexed, for the next sync)."""

    def __init__(self, home: str | Path | None = None, *, url: str | None = None,
                 create: bool = True, index: bool = True, embedder: Embedder | None = None):
        self.home = resolve_home(home)
        url = url or os.environ.get("POISE_DB_URL")
        lock = None
        if url:
            self.where = make_url(url).render_as_string(hide_password=True)
        else:
            path = self.home / ARCHIVE_FILE
            self.where = str(path)
            if not path.is_file():
                if not create:
                    raise NoArchiveError(f"no archive at {path}: run python -m graph.run "
                                         "first")
                self.home.mkdir(parents=True, exist_ok=True)
            url = sqlite_url(path)
            # Two processes creating one archive at once (two runs started together in
            # a new home) would race through CREATE TABLE: creators take turns. A reader
            # waits for a creator at work (it would see the file without its tables).
            lock = self.home / "archive.lock"
        self.engine = make_engine(url)
        with _locked(lock, exclusive=create):
            self.uid = open_schema(self.engine, create=create, where=self.where)
        self._embedder = embedder
        self._index_on_write = index
        self._stores: dict | None = None
        self._recoveries = 0
        self.last_sync: SyncReport | None = None
        # One indexer at a time per process: two threads indexing the same row could
        # otherwise flag it indexed with the older of two metadata versions.
        self._index_lock = threading.RLock()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ------------------------------------------------------------------------- runs

    def start_run(self, directive: str, config: dict | None = None) -> int:
        """A new run under ``directive``; returns its id."""
        with self.session() as s:
            run = Run(directive=directive, config=jsonable(config or {}, "config"))
            s.add(run)
            s.commit()
            return run.id

    def finish_run(self, run_id: int, status: str = "done") -> None:
        with self.session() as s:
            run = get_row(s, Run, run_id)
            run.status, run.finished = status, utcnow()
            s.commit()

    def update_run(self, run_id: int, *, directive: str | None = None,
                   config: dict | None = None) -> None:
        """Change a run's directive (a person steering it) and/or merge ``config`` keys
        into its config. A new directive re-indexes the run's vectors: their metadata
        carries it."""
        with self.session() as s:
            run = get_row(s, Run, run_id)
            if config:
                run.config = jsonable({**run.config, **config}, "config")
            changed = directive is not None and directive != run.directive
            if changed:
                run.directive = directive
                cids = list(s.exec(select(Candidate.id).where(Candidate.run_id == run_id)))
                s.exec(update(Candidate).where(col(Candidate.id).in_(cids))
                       .values(indexed=False))
                s.exec(update(Reflection).where(col(Reflection.candidate_id).in_(cids))
                       .values(indexed=False))
            s.commit()
            if changed:
                refl = list(s.exec(select(Reflection.id).where(
                    col(Reflection.candidate_id).in_(cids))))
        if changed:
            self._index_now("proposals", cids)
            self._index_now("reflections", refl)

    def run(self, run_id: int) -> Run:
        with self.session() as s:
            return get_row(s, Run, run_id)

    def runs(self) -> list[Run]:
        with self.session() as s:
            return list(s.exec(select(Run).order_by(Run.id)).all())

    # ------------------------------------------------------------------------- candidates

    def unique_name(self, name: str) -> str:
        """``name`` if no candidate has it, else ``name-2``, ``name-3``, ..."""
        with self.session() as s:
            taken = set(s.exec(select(Candidate.name).where(
                col(Candidate.name).startswith(name))).all())
        if name not in taken:
            return name
        n = 2
        while f"{name}-{n}" in taken:
            n += 1
        return f"{name}-{n}"

    def add_candidate(self, run_id: int, name: str, generation: int, proposal: str,
                      code: str | None = None, parents: Sequence[int] = (),
                      kind: str | None = None, status: str = "pending",
                      error: str | None = None, details: dict | None = None, *,
                      evaluations: Sequence[dict] = (),
                      reflection: tuple[str, Sequence[str]] | None = None,
                      rename_on_conflict: bool = False) -> int:
        """Record a candidate and its lineage edges (``kind``: mutation for one parent,
        crossover for several, by default); returns its id. Its proposal is then indexed
        for the novelty check.

        ``evaluations`` (dicts of ``add_evaluation``'s keyword arguments) and
        ``reflection`` ((text, tags)) go into the same transaction: a process killed
        mid-write leaves the candidate whole or absent, never without its results.
        ``rename_on_conflict``: a name taken meanwhile (by another thread or process)
        becomes ``name-2``, ``name-3``, ... instead of an error."""
        check_status(status)
        kind = kind or ("crossover" if len(parents) > 1 else "mutation")
        if kind not in LINEAGE_KINDS:
            raise ArchiveError(f"unknown lineage kind {kind!r}: expected one of "
                               f"{', '.join(LINEAGE_KINDS)}")
        if reflection is not None and not (reflection[0] or "").strip():
            raise ArchiveError(f"empty reflection for candidate {name!r}")
        wanted = name
        for _ in range(100):
            try:
                cid, reflection_ids = self._insert_candidate(
                    run_id, name, generation, proposal, code, parents, kind, status, error,
                    details, evaluations, reflection)
                break
            except _NameTaken:
                if not rename_on_conflict:
                    raise ArchiveError(f"a candidate named {name!r} already exists: names "
                                       "are unique in the archive (see Archive.unique_name)"
                                       ) from None
                name = self.unique_name(wanted)
        else:
            raise ArchiveError(f"no free name for {wanted!r} after 100 tries")
        _fault_point("candidate-before-index")
        self._index_now("proposals", [cid])
        if reflection_ids:
            self._index_now("reflections", reflection_ids)
        return cid

    def _insert_candidate(self, run_id, name, generation, proposal, code, parents, kind,
                          status, error, details, evaluations, reflection
                          ) -> tuple[int, list[int]]:
        with self.session() as s:
            get_row(s, Run, run_id)
            for p in parents:
                get_row(s, Candidate, p)
            cand = Candidate(run_id=run_id, name=name, generation=generation,
                             proposal=proposal, code=code, status=status, error=error,
                             code_hash=source_hash(code) if code else None,
                             details=jsonable(details or {}, "details"))
            s.add(cand)
            try:
                s.flush()
            except IntegrityError:
                s.rollback()
                raise _NameTaken() from None
            s.add_all(Lineage(parent_id=p, child_id=cand.id, kind=kind)
                      for p in dict.fromkeys(parents))
            for ev in evaluations:
                s.add(evaluation_row(cand.id, **ev))
            rows = [] if reflection is None else [Reflection(
                candidate_id=cand.id, text=reflection[0], tags=clean_tags(reflection[1]))]
            s.add_all(rows)
            s.flush()
            if evaluations:
                cand.fitness = s.exec(select(func.avg(Evaluation.fitness)).where(
                    Evaluation.candidate_id == cand.id)).one()
            _fault_point("candidate-before-commit")
            s.commit()
            return cand.id, [r.id for r in rows]

    def set_code(self, candidate_id: int, code: str) -> None:
        """Store (or replace) the candidate's module source and its code hash."""
        with self.session() as s:
            cand = get_row(s, Candidate, candidate_id)
            cand.code, cand.code_hash, cand.updated = code, source_hash(code), utcnow()
            s.commit()

    def set_status(self, candidate_id: int, status: str, error: str | None = None) -> None:
        """Move a candidate to ``status`` (``error`` says why, for a failure) and refresh
        the status in its vectors' metadata."""
        check_status(status)
        with self.session() as s:
            cand = get_row(s, Candidate, candidate_id)
            cand.status, cand.updated = status, utcnow()
            if error is not None:
                cand.error = error
            s.exec(update(Reflection).where(col(Reflection.candidate_id) == candidate_id)
                   .values(indexed=False))
            cand.indexed = False
            s.commit()
            refl = s.exec(select(Reflection.id).where(
                Reflection.candidate_id == candidate_id)).all()
        self._index_now("proposals", [candidate_id])
        self._index_now("reflections", list(refl))

    def candidate(self, candidate_id: int) -> Candidate:
        with self.session() as s:
            return get_row(s, Candidate, candidate_id)

    def find_candidate(self, key: str | int) -> Candidate:
        """A candidate by id or by name."""
        with self.session() as s:
            if isinstance(key, int) or str(key).isdigit():
                found = s.get(Candidate, int(key))
            else:
                found = s.exec(select(Candidate).where(Candidate.name == key)).first()
        if found is None:
            raise ArchiveError(f"no candidate {key!r} in the archive at {self.where}")
        return found

    def candidates(self, run_id: int | None = None, status: str | None = None
                   ) -> list[Candidate]:
        with self.session() as s:
            q = select(Candidate).order_by(Candidate.id)
            if run_id is not None:
                q = q.where(Candidate.run_id == run_id)
            if status is not None:
                q = q.where(Candidate.status == status)
            return list(s.exec(q).all())

    def parents(self, candidate_id: int) -> list[int]:
        """Parent ids, first (primary) parent first."""
        with self.session() as s:
            return list(s.exec(select(Lineage.parent_id).where(
                Lineage.child_id == candidate_id).order_by(Lineage.id)).all())

    def children(self, candidate_id: int) -> list[int]:
        with self.session() as s:
            return list(s.exec(select(Lineage.child_id).where(
                Lineage.parent_id == candidate_id).order_by(Lineage.child_id)).all())

    def edges(self, run_id: int | None = None) -> list[Lineage]:
        with self.session() as s:
            q = select(Lineage).order_by(Lineage.id)
            if run_id is not None:
                q = q.join(Candidate, col(Candidate.id) == Lineage.child_id).where(
                    Candidate.run_id == run_id)
            return list(s.exec(q).all())

    def lineage_path(self, candidate_id: int) -> list[Candidate]:
        """The candidate, its primary parent, that one's, ... up to a root (a seed)."""
        path: list[Candidate] = []
        seen: set[int] = set()
        current: int | None = candidate_id
        with self.session() as s:
            while current is not None and current not in seen:
                seen.add(current)
                path.append(get_row(s, Candidate, current))
                current = s.exec(select(Lineage.parent_id).where(
                    Lineage.child_id == current).order_by(Lineage.id)).first()
        return path

    # ------------------------------------------------------------------------- evaluations

    def add_evaluation(self, candidate_id: int, seed: int, backend: str = "local",
                       metrics: dict | None = None, fitness: float | None = None,
                       curves: dict | None = None, wall_time: float | None = None,
                       objectives: dict | None = None) -> int:
        """One seed's evaluation. ``metrics`` is {split: {metric: value}}, ``objectives``
        {name: value, higher is better}, ``curves`` {metric: [[step, value], ...]}. The
        candidate's cached fitness becomes the mean over its evaluations."""
        with self.session() as s:
            cand = get_row(s, Candidate, candidate_id)
            ev = evaluation_row(candidate_id, seed, backend, metrics, fitness, curves,
                                 wall_time, objectives)
            s.add(ev)
            s.flush()
            cand.fitness = s.exec(select(func.avg(Evaluation.fitness)).where(
                Evaluation.candidate_id == candidate_id)).one()
            cand.updated = utcnow()
            s.commit()
            return ev.id

    def evaluations(self, candidate_id: int) -> list[Evaluation]:
        with self.session() as s:
            return list(s.exec(select(Evaluation).where(
                Evaluation.candidate_id == candidate_id).order_by(Evaluation.seed)).all())

    def rescore(self, run_id: int, score: Callable[[Evaluation], float | None]) -> int:
        """Recompute the fitness of every evaluation of ``run_id`` with ``score`` (e.g.
        after the run's objective changed) and the candidates' cached means; returns
        the number of evaluations rescored."""
        with self.session() as s:
            rows = s.exec(select(Evaluation).join(
                Candidate, col(Candidate.id) == Evaluation.candidate_id).where(
                Candidate.run_id == run_id)).all()
            for ev in rows:
                ev.fitness = score(ev)
            s.flush()
            for cid in {ev.candidate_id for ev in rows}:
                cand = get_row(s, Candidate, cid)
                cand.fitness = s.exec(select(func.avg(Evaluation.fitness)).where(
                    Evaluation.candidate_id == cid)).one()
            s.commit()
            return len(rows)

    def leaderboard(self, run_id: int | None = None, limit: int | None = None
                    ) -> list[Standing]:
        """Evaluated candidates by mean fitness, best first."""
        with self.session() as s:
            q = (select(Candidate, func.count(col(Evaluation.id)),
                        func.avg(Evaluation.fitness * Evaluation.fitness))
                 .join(Evaluation, col(Evaluation.candidate_id) == Candidate.id)
                 .where(Candidate.status == EVALUATED, col(Candidate.fitness).is_not(None))
                 .group_by(col(Candidate.id)).order_by(col(Candidate.fitness).desc()))
            if run_id is not None:
                q = q.where(Candidate.run_id == run_id)
            rows = s.exec(q.limit(limit) if limit else q).all()
        out = []
        for cand, n, mean_sq in rows:
            var = max(0.0, (mean_sq or 0.0) - cand.fitness ** 2) * n / max(n - 1, 1)
            out.append(Standing(cand.id, cand.name, cand.generation, cand.status,
                                cand.fitness, var ** 0.5, n, self.parents(cand.id)))
        return out

    # ------------------------------------------------------------------------- reflections

    def add_reflection(self, candidate_id: int, text: str, tags: Iterable[str] = ()) -> int:
        """Record a reflection (SQL first, then its vector); returns its id."""
        return self.add_reflections([(candidate_id, text, list(tags))])[0]

    def add_reflections(self, items: Sequence[tuple[int, str, Sequence[str]]]) -> list[int]:
        """Bulk ``add_reflection``: one SQL commit, then vectors in batches."""
        with self.session() as s:
            for cid in {c for c, _, _ in items}:
                get_row(s, Candidate, cid)
            rows = []
            for cid, body, tags in items:
                if not body or not body.strip():
                    raise ArchiveError(f"empty reflection for candidate {cid}")
                rows.append(Reflection(candidate_id=cid, text=body, tags=clean_tags(tags)))
            s.add_all(rows)
            s.commit()
            ids = [r.id for r in rows]
        self._index_now("reflections", ids)
        return ids

    def reflections_count(self) -> int:
        with self.session() as s:
            return s.exec(select(func.count(col(Reflection.id)))).one()

    def reflections(self, candidate_id: int | None = None) -> list[Reflection]:
        with self.session() as s:
            q = select(Reflection).order_by(Reflection.id)
            if candidate_id is not None:
                q = q.where(Reflection.candidate_id == candidate_id)
            return list(s.exec(q).all())

    # ------------------------------------------------------------------------- evidence

    def similar_reflections(self, text: str, k: int = 5, **filters) -> list[Evidence]:
        """The ``k`` past reflections nearest to ``text`` with their candidates'
        outcomes; see ``memory.evidence.similar_reflections`` for the filters."""
        from memory.evidence import similar_reflections

        return similar_reflections(self, text, k, **filters)

    def novelty(self, proposal: str, code: str | None = None, **options) -> Novelty:
        """Is this proposal/code a near-duplicate of an archived one? See
        ``memory.evidence.novelty``."""
        from memory.evidence import novelty

        return novelty(self, proposal, code, **options)

    # ------------------------------------------------------------------------- vectors

    def store(self, kind: str) -> VectorStore:
        """The VectorStore for ``"reflections"`` or ``"proposals"`` (opened and synced
        on first use; that sync's report is kept in ``last_sync``)."""
        with self._index_lock:
            fresh = self._stores is None
            if fresh:
                self._open_stores()
            # also after the store was rebuilt empty (a writer died mid-operation)
            recoveries = getattr(self._stores[kind].access, "recoveries", 0)
            if fresh or recoveries != self._recoveries:
                self._recoveries = recoveries
                self.last_sync = self.sync()
        return self._stores[kind]

    def _open_stores(self) -> None:
        from memory.vectors import VectorStore, chroma_client, default_embedder

        client = chroma_client(self.home)
        embedder = self._embedder or default_embedder()
        self._stores = {k: VectorStore(client, f"poise-{k}-{self.uid}", embedder)
                        for k in ("reflections", "proposals")}

    def sync(self) -> SyncReport:
        """Make the vector store match SQL: upsert rows not yet indexed, then (when the
        counts disagree) upsert indexed rows missing from the store and delete vectors
        whose row is gone."""
        if self._stores is None:
            self._open_stores()
        report = SyncReport()
        for kind, model in (("reflections", Reflection), ("proposals", Candidate)):
            store = self._stores[kind]
            with self.session() as s:
                pending = list(s.exec(select(model.id).where(col(model.indexed).is_(False))))
                n_sql = s.exec(select(func.count(col(model.id)))).one()
            report.upserted += self._index(kind, pending)
            if store.count() == n_sql:
                continue
            # The store first, then SQL: a writer commits its row before upserting the
            # vector, so every vector read here has its row in the SQL read that follows
            # (the other order deletes another process's fresh vector as an orphan).
            have = store.ids()
            with self.session() as s:
                sql_ids = {_vector_id(kind, i) for i in s.exec(select(model.id))}
            orphans = sorted(have - sql_ids)
            store.delete(orphans)
            report.deleted += len(orphans)
            report.upserted += self._index(kind, [_row_id(v) for v in sql_ids - have])
        return report

    def reindex(self) -> SyncReport:
        """Rebuild both collections from SQL (e.g. after losing the vector directory)."""
        if self._stores is None:
            self._open_stores()
        for store in self._stores.values():
            store.reset()
        with self.session() as s:
            s.exec(update(Reflection).values(indexed=False))
            s.exec(update(Candidate).values(indexed=False))
            s.commit()
        return self.sync()

    def _index_now(self, kind: str, ids: list[int]) -> None:
        """Index freshly committed rows (with ``index=False``, only if the store is
        already open: otherwise the next sync indexes them)."""
        if self._index_on_write or self._stores is not None:
            self._index(kind, ids)

    def _index(self, kind: str, ids: list[int]) -> int:
        """Upsert the vectors of SQL rows ``ids`` and set their ``indexed`` flag."""
        from memory.evidence import vector_records

        store = self.store(kind)
        model = Reflection if kind == "reflections" else Candidate
        done = 0
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start:start + _BATCH]
            with self._index_lock:
                with self.session() as s:
                    records = vector_records(s, kind, chunk)
                store.upsert([_vector_id(kind, i) for i, _, _ in records],
                             [doc for _, doc, _ in records], [m for _, _, m in records])
                self._mark_indexed(model, [i for i, _, _ in records])
            done += len(records)
        return done

    def _mark_indexed(self, model, ids: list[int]) -> None:
        with self.session() as s:
            s.exec(update(model).where(col(model.id).in_(ids)).values(indexed=True))
            s.commit()


# ----------------------------------------------------------------------------- helpers

@contextmanager
def _locked(lock: Path | None, *, exclusive: bool) -> Iterator[None]:
    """Hold a flock on ``lock``: exclusive (created if missing) for a creator; shared
    for a reader, and only when the file exists and can be opened (a read-only home is
    still readable). Nothing when ``lock`` is None (a database URL)."""
    fd = None
    if lock is not None and exclusive:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    elif lock is not None:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        if fd is not None:
            os.close(fd)


class _NameTaken(Exception):
    """The candidate name is taken (the insert hit the unique constraint)."""


FAULT_POINTS_ENV = "POISE_TEST_PAUSE_AT"


def _fault_point(point: str) -> None:
    """Fault injection for the crash tests (tests/test_crash_resume.py); inert unless
    ``$POISE_TEST_PAUSE_AT`` (comma-separated) names ``point``. Then it appends the point
    to ``$POISE_TEST_PAUSE_LOG`` and sleeps ``$POISE_TEST_PAUSE_S`` seconds (default 5),
    so a test can kill the process exactly there. Points: ``candidate-before-commit``
    (inside the candidate's transaction) and ``candidate-before-index`` (committed to
    SQL, vectors not yet written)."""
    wanted = os.environ.get(FAULT_POINTS_ENV)
    if not wanted or point not in wanted.split(","):
        return
    import time

    log = os.environ.get("POISE_TEST_PAUSE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {point}\n")
    time.sleep(float(os.environ.get("POISE_TEST_PAUSE_S", "5")))


def _vector_id(kind: str, row_id: int) -> str:
    return f"{kind[:-1]}-{row_id}"          # reflection-12, proposal-7


def _row_id(vector_id: str) -> int:
    return int(vector_id.rsplit("-", 1)[1])
