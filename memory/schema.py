"""The archive's tables, its schema version and the engine that opens it.

Tables (SQLModel): ``Run`` (directive, config, started), ``Candidate`` (name, generation,
proposal, code, code hash, status, error, cached mean fitness), ``Lineage`` (parent ->
child edge, kind mutation/crossover), ``Evaluation`` (one seed: backend, split metrics,
fitness, objectives, curves, wall time), ``Reflection`` (candidate, text, tags), and
``Meta`` (key/value: schema version, the archive's uid).

``indexed`` columns on Candidate (its proposal) and Reflection are the outbox of the
vector store: a row is committed with ``indexed=False``, its vector is upserted, then
the flag is set (see ``memory.archive``).

The schema is versioned (``SCHEMA_VERSION`` in the Meta table). Opening an older archive
runs the migrations in ``MIGRATIONS`` in one transaction; a newer archive, or a database
with tables but no Meta, is refused with a message that says what to do.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from sqlalchemy import JSON, Column, Connection, Engine, Text, event, inspect, text
from sqlalchemy.exc import DatabaseError
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlmodel import Field, Session, SQLModel, create_engine

SCHEMA_VERSION = 1

# Candidate status, in the order a candidate normally moves through them.
PENDING = "pending"                      # proposed (maybe coded), not verified yet
VERIFIED = "verified"
TRAINING = "training"
EVALUATED = "evaluated"                  # has fitness: the only status that may parent
FAILED_PROPOSAL = "failed_proposal"      # no usable proposal: parent, evidence or scientist
FAILED_CODING = "failed_coding"          # the coder wrote no module to verify
FAILED_VERIFICATION = "failed_verification"
FAILED_TRAINING = "failed_training"
FAILED_EVALUATION = "failed_evaluation"
DUPLICATE = "duplicate"                  # rejected by the novelty check before training
STATUSES = (PENDING, VERIFIED, TRAINING, EVALUATED, FAILED_PROPOSAL, FAILED_CODING,
            FAILED_VERIFICATION, FAILED_TRAINING, FAILED_EVALUATION, DUPLICATE)
FAILED = (FAILED_PROPOSAL, FAILED_CODING, FAILED_VERIFICATION, FAILED_TRAINING,
          FAILED_EVALUATION)
LINEAGE_KINDS = ("mutation", "crossover")


class ArchiveError(Exception):
    """The archive is missing, corrupt, of another schema version, or was misused."""


class NoArchiveError(ArchiveError):
    """There is no archive (yet): no file, or a file another process has only begun to
    create (its tables are not committed)."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def source_hash(code: str) -> str:
    """``trainers.source.code_hash`` of candidate source, imported on first use: it
    pulls in torch, which the read-only commands should not pay for."""
    from trainers.source import code_hash

    return code_hash(code)


def expand_statuses(status: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """Status filter -> exact statuses; ``"failed"`` stands for every ``failed_*``."""
    if status is None:
        return None
    wanted = [status] if isinstance(status, str) else list(status)
    out: list[str] = []
    for s in wanted:
        if s == "failed":
            out.extend(FAILED)
        elif s in STATUSES:
            out.append(s)
        else:
            raise ArchiveError(f"unknown status {s!r}: expected 'failed' or one of "
                               f"{', '.join(STATUSES)}")
    return out


# ----------------------------------------------------------------------------- tables

class Meta(SQLModel, table=True):
    __tablename__ = "poise_meta"
    key: str = Field(primary_key=True)
    value: str


class Run(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    directive: str
    config: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = "running"              # running / done / failed
    started: datetime = Field(default_factory=utcnow)
    finished: datetime | None = None


class Candidate(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    name: str = Field(unique=True)       # the module's NAME slug, unique in the archive
    generation: int = 0
    proposal: str = Field(default="", sa_column=Column(Text, nullable=False))
    code: str | None = Field(default=None, sa_column=Column(Text))
    code_hash: str | None = Field(default=None, index=True)
    status: str = Field(default=PENDING, index=True)
    error: str | None = Field(default=None, sa_column=Column(Text))
    fitness: float | None = None         # mean fitness over its evaluations (cached)
    details: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created: datetime = Field(default_factory=utcnow)
    updated: datetime = Field(default_factory=utcnow)
    indexed: bool = Field(default=False, index=True)   # proposal vector is in the store

    @property
    def info(self) -> CandidateDetails:
        """``details`` read through its typed model (missing keys are None or empty; a
        value of the wrong type, from a hand-edited or foreign archive, reads as missing
        rather than failing the reader)."""
        raw = dict(self.details or {})
        try:
            return CandidateDetails.model_validate(raw)
        except ValidationError as e:
            for bad in {err["loc"][0] for err in e.errors() if err["loc"]}:
                raw.pop(bad, None)
            return CandidateDetails.model_validate(raw)


class CandidateDetails(BaseModel):
    """What the loop records about a candidate in ``Candidate.details`` (a JSON column):
    where it came from in the run, what the scientist said, how verification went and
    when its jobs ran. Archives written before this model read the same way: every key
    is optional, and keys it does not know are kept (``extra="allow"``)."""

    model_config = ConfigDict(extra="allow")

    key: str | None = None            # "run:round:slot": a resumed run's idempotence key
    round: int | None = None
    slot: int | None = None
    signature: str | None = None      # a builtin genome's signature ("gene=value;...")
    genes: list[str] | None = None    # the signature split into its genes
    kind: str | None = None           # how it was proposed: seed, mutation, crossover, ...
    feedback: list[str] = []          # the verifier's feedback, when it failed
    changes: list[str] | None = None  # the genes (builtin) or hooks (LLM) it changes
    rationale: list[str] | None = None  # the evidence the scientist cited
    evidence: list[int] = []          # ids of the reflections the scientist was shown
    references: list[int] = []        # ids of the candidates it was shown as references
    crossover_with: str | None = None  # an LLM crossover's other parent, by name
    origin: dict | None = None        # a --from-run copy: {run, candidate, name} it came from
    judge: list[dict] = []            # per verification: the consistency judge, its error
    verify_spans: list[list[float]] = []   # wall-clock (start, end) of verification steps
    smoke_spans: list[list[float]] = []    # ... of the verifier's smoke training
    train_spans: list[list[float]] = []    # ... of each seed's training job

    def spans(self, *kinds: str) -> list[list[float]]:
        """The spans of ``kinds`` ("verify", "smoke", "train"), in that order."""
        return [sp for k in kinds for sp in getattr(self, f"{k}_spans")]


class Lineage(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    parent_id: int = Field(foreign_key="candidate.id", index=True)
    child_id: int = Field(foreign_key="candidate.id", index=True)
    kind: str = "mutation"


class Evaluation(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    candidate_id: int = Field(foreign_key="candidate.id", index=True)
    seed: int
    backend: str = "local"
    metrics: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    fitness: float | None = None
    objectives: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    curves: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    wall_time: float | None = None       # seconds
    created: datetime = Field(default_factory=utcnow)


class Reflection(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    candidate_id: int = Field(foreign_key="candidate.id", index=True)
    text: str = Field(sa_column=Column(Text, nullable=False))
    tags: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created: datetime = Field(default_factory=utcnow)
    indexed: bool = Field(default=False, index=True)   # vector is in the store


TABLES = [m.__table__ for m in (Meta, Run, Candidate, Lineage, Evaluation, Reflection)]

# MIGRATIONS[v] upgrades an archive from schema v to v + 1 inside one transaction.
# Add an entry (and bump SCHEMA_VERSION) with every change to the tables above.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {}


# ----------------------------------------------------------------------------- engine

def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL (a reader never blocks the run that writes),
    foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
        return engine
    return create_engine(url, pool_pre_ping=True)


def open_schema(engine: Engine, *, create: bool, where: str) -> str:
    """Check (or create, or migrate) the schema; return the archive's uid.

    Raises ArchiveError for a corrupt file, a non-POISE database, a newer schema, or a
    missing archive when ``create`` is false."""
    try:
        with engine.begin() as conn:
            names = set(inspect(conn).get_table_names())
            if Meta.__tablename__ not in names:
                if names & {t.name for t in TABLES}:
                    raise ArchiveError(f"{where} has POISE-like tables but no "
                                       f"{Meta.__tablename__} table: not an archive this "
                                       "version can read")
                if not create:
                    raise NoArchiveError(f"no archive at {where}: run python -m graph.run "
                                         "first")
                return _create(conn)
            return _check_version(conn, where)
    except DatabaseError as e:
        reason = str(e.orig) if getattr(e, "orig", None) else str(e)
        raise ArchiveError(f"cannot read the archive at {where}: {reason} (corrupt or "
                           "not a database?)") from None


def _create(conn: Connection) -> str:
    SQLModel.metadata.create_all(conn, tables=TABLES)
    uid = uuid.uuid4().hex[:12]
    conn.execute(Meta.__table__.insert(), [
        {"key": "schema_version", "value": str(SCHEMA_VERSION)},
        {"key": "archive_uid", "value": uid},
        {"key": "created", "value": utcnow().isoformat()}])
    return uid


def _check_version(conn: Connection, where: str) -> str:
    meta = dict(conn.execute(text(f"SELECT key, value FROM {Meta.__tablename__}")).all())
    try:
        version = int(meta["schema_version"])
        uid = meta["archive_uid"]
    except (KeyError, ValueError):
        raise ArchiveError(f"{where}: the {Meta.__tablename__} table has no valid "
                           "schema_version/archive_uid (damaged archive)") from None
    if version > SCHEMA_VERSION:
        raise ArchiveError(f"{where} has archive schema v{version}, newer than this POISE "
                           f"(v{SCHEMA_VERSION}): upgrade POISE to read it")
    for v in range(version, SCHEMA_VERSION):
        if v not in MIGRATIONS:
            raise ArchiveError(f"{where} has archive schema v{version} and no migration "
                               f"v{v} -> v{v + 1} exists: open it with an older POISE and "
                               "export it")
        MIGRATIONS[v](conn)
    if version != SCHEMA_VERSION:
        conn.execute(text(f"UPDATE {Meta.__tablename__} SET value = :v "
                          "WHERE key = 'schema_version'"), {"v": str(SCHEMA_VERSION)})
    return uid


# ----------------------------------------------------------------------------- rows

@dataclass
class SyncReport:
    """What ``Archive.sync`` repaired: vectors upserted (rows that were not indexed, or
    indexed rows missing from the store) and orphan vectors deleted."""

    upserted: int = 0
    deleted: int = 0


@dataclass
class Standing:
    """One leaderboard row: mean fitness over seeds and its sample sd."""

    candidate_id: int
    name: str
    generation: int
    status: str
    fitness: float
    fitness_sd: float
    seeds: int
    parent_ids: list[int]


def evaluation_row(candidate_id: int, seed: int, backend: str = "local",
                    metrics: dict | None = None, fitness: float | None = None,
                    curves: dict | None = None, wall_time: float | None = None,
                    objectives: dict | None = None) -> Evaluation:
    return Evaluation(candidate_id=candidate_id, seed=seed, backend=backend,
                      metrics=jsonable(metrics or {}, "metrics"), fitness=fitness,
                      objectives=jsonable(objectives or {}, "objectives"),
                      curves=jsonable(curves or {}, "curves"), wall_time=wall_time)


def clean_tags(tags: Iterable[str]) -> list[str]:
    return [str(t).strip() for t in tags if str(t).strip()]


def get_row(s: Session, model, row_id: int):
    row = s.get(model, row_id)
    if row is None:
        raise ArchiveError(f"no {model.__name__.lower()} with id {row_id} in the archive")
    return row


def check_status(status: str) -> None:
    if status not in STATUSES:
        raise ArchiveError(f"unknown status {status!r}: expected one of {', '.join(STATUSES)}")


def jsonable(value: dict, what: str) -> dict:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise ArchiveError(f"{what} must be JSON-serializable: {e}") from None
    return value
