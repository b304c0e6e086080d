"""The SQL archive: round trip, lineage, leaderboard, WAL, schema versions, bad input.

Real SQLite files; these tests never open the vector store (``index=False``: no
embedding model)."""
import sqlite3

import pytest
from sqlalchemy import text

from memory import schema
from memory.archive import Archive
from memory.schema import ArchiveError
from trainers.source import code_hash

CODE = "NAME = 'x'\n\ndef shape_reward(batch):\n    return batch.correct.float()\n"


@pytest.fixture
def archive(tmp_path):
    a = Archive(tmp_path / "home", index=False)
    yield a
    a.close()


def _family(a: Archive):
    run = a.start_run("accurate and concise", {"budget": 8})
    seed = a.add_candidate(run, "grpo", 0, "GRPO baseline", CODE, status="evaluated")
    child = a.add_candidate(run, "child", 1, "length penalty on correct answers",
                            CODE + "# v2\n", parents=[seed])
    other = a.add_candidate(run, "other", 1, "validity masking", CODE + "# v3\n",
                            parents=[seed])
    cross = a.add_candidate(run, "cross", 2, "both", CODE + "# v4\n",
                            parents=[child, other])
    return run, seed, child, other, cross


def test_round_trip_candidates_evaluations_reflections(archive):
    run, seed, child, other, cross = _family(archive)
    c = archive.candidate(child)
    assert (c.run_id, c.name, c.generation, c.status) == (run, "child", 1, "pending")
    assert c.code_hash == code_hash(CODE + "# v2\n")
    assert archive.run(run).config == {"budget": 8}
    archive.add_evaluation(child, 0, "local", {"test": {"overall": 0.5}}, fitness=0.5,
                           curves={"reward": [[0, 0.1], [10, 0.4]]}, wall_time=12.5,
                           objectives={"overall": 0.5, "neg_length": -30})
    archive.add_evaluation(child, 1, "local", {"test": {"overall": 0.7}}, fitness=0.7)
    archive.set_status(child, "evaluated")
    assert archive.candidate(child).fitness == pytest.approx(0.6)
    evals = archive.evaluations(child)
    assert [e.seed for e in evals] == [0, 1]
    assert evals[0].curves["reward"][1] == [10, 0.4]
    assert evals[0].metrics["test"]["overall"] == 0.5
    rid = archive.add_reflection(child, "length fell at equal accuracy", ["length", " "])
    [r] = archive.reflections(child)
    assert (r.id, r.text, r.tags, r.indexed) == (rid, "length fell at equal accuracy",
                                                 ["length"], False)
    assert archive.find_candidate("child").id == child
    assert archive.find_candidate(str(child)).name == "child"
    assert [x.id for x in archive.candidates(run)] == [seed, child, other, cross]
    assert [x.id for x in archive.candidates(run, status="evaluated")] == [seed, child]


def test_lineage_parents_children_and_path(archive):
    _, seed, child, other, cross = _family(archive)
    assert archive.parents(cross) == [child, other]
    assert archive.children(seed) == [child, other]
    assert [c.id for c in archive.lineage_path(cross)] == [cross, child, seed]
    assert [c.id for c in archive.lineage_path(seed)] == [seed]
    kinds = {(e.parent_id, e.child_id): e.kind for e in archive.edges()}
    assert kinds[(seed, child)] == "mutation" and kinds[(other, cross)] == "crossover"


def test_leaderboard_orders_by_mean_fitness_with_sd(archive):
    run, seed, child, other, _ = _family(archive)
    for cid, values in ((seed, [0.4]), (child, [0.5, 0.7]), (other, [0.9, 0.1, 0.5])):
        for s, f in enumerate(values):
            archive.add_evaluation(cid, s, fitness=f)
        archive.set_status(cid, "evaluated")
    board = archive.leaderboard(run)
    assert [b.name for b in board] == ["child", "other", "grpo"]
    assert board[0].fitness == pytest.approx(0.6)
    assert board[0].fitness_sd == pytest.approx(0.1414, abs=1e-3)
    assert board[1].seeds == 3 and board[1].parent_ids == [seed]
    assert [b.name for b in archive.leaderboard(run, limit=1)] == ["child"]


def test_bad_input_is_refused_with_a_message(archive):
    run, seed, *_ = _family(archive)
    with pytest.raises(ArchiveError, match="already exists"):
        archive.add_candidate(run, "grpo", 0, "again")
    assert archive.unique_name("grpo") == "grpo-2"
    assert archive.unique_name("fresh") == "fresh"
    with pytest.raises(ArchiveError, match="unknown status"):
        archive.set_status(seed, "great")
    with pytest.raises(ArchiveError, match="no candidate with id 999"):
        archive.add_candidate(run, "orphan", 1, "p", parents=[999])
    with pytest.raises(ArchiveError, match="no run with id 42"):
        archive.add_candidate(42, "lost", 0, "p")
    with pytest.raises(ArchiveError, match="JSON-serializable"):
        archive.start_run("d", {"bad": object()})
    with pytest.raises(ArchiveError, match="empty reflection"):
        archive.add_reflection(seed, "   ")
    with pytest.raises(ArchiveError, match="no candidate 'nope'"):
        archive.find_candidate("nope")
    assert [c.name for c in archive.candidates()] == ["grpo", "child", "other", "cross"]


def test_sqlite_is_in_wal_mode_and_a_reader_is_not_blocked_by_a_writer(archive, tmp_path):
    run, seed, *_ = _family(archive)
    db = tmp_path / "home" / "archive.db"
    with archive.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    writer = sqlite3.connect(db, timeout=0.1)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE candidate SET status = 'training' WHERE id = ?", (seed,))
    reader = Archive(tmp_path / "home", create=False)    # a query while the run writes
    assert reader.candidate(seed).status == "evaluated"  # sees the last commit, no wait
    writer.commit()
    assert reader.candidate(seed).status == "training"
    writer.close()
    reader.close()


def test_missing_archive_is_not_created_when_create_is_false(tmp_path):
    home = tmp_path / "nothing"
    with pytest.raises(ArchiveError, match="no archive at .*graph.run"):
        Archive(home, create=False)
    assert not home.exists()


def test_corrupt_archive_file_is_a_clear_error(tmp_path):
    (tmp_path / "archive.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ArchiveError, match="cannot read the archive"):
        Archive(tmp_path, create=False)


def test_newer_schema_is_refused_and_older_is_migrated(tmp_path, monkeypatch):
    a = Archive(tmp_path, index=False)
    run = a.start_run("d")
    a.add_candidate(run, "seed", 0, "p")
    a.close()
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    with pytest.raises(ArchiveError, match="no migration v1 -> v2"):
        Archive(tmp_path)

    def add_note(conn):
        conn.execute(text("ALTER TABLE candidate ADD COLUMN note TEXT DEFAULT 'x'"))
    monkeypatch.setitem(schema.MIGRATIONS, 1, add_note)
    b = Archive(tmp_path)                       # v1 -> v2, data kept
    with b.engine.connect() as conn:
        assert conn.execute(text("SELECT value FROM poise_meta WHERE key = "
                                 "'schema_version'")).scalar() == "2"
        assert conn.execute(text("SELECT name, note FROM candidate")).one() == ("seed", "x")
    b.close()
    monkeypatch.setattr(schema, "SCHEMA_VERSION", 1)
    with pytest.raises(ArchiveError, match="schema v2, newer than this POISE"):
        Archive(tmp_path)


def test_a_foreign_database_is_refused(tmp_path):
    con = sqlite3.connect(tmp_path / "archive.db")
    con.execute("CREATE TABLE candidate (id INTEGER PRIMARY KEY)")
    con.commit()
    con.close()
    with pytest.raises(ArchiveError, match="no poise_meta table"):
        Archive(tmp_path)


def test_poise_db_url_overrides_the_home_file(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.setenv("POISE_DB_URL", url)
    a = Archive(tmp_path / "home", index=False)
    a.start_run("shared")
    a.close()
    assert (tmp_path / "team.db").is_file()
    assert not (tmp_path / "home" / "archive.db").exists()
    assert [r.directive for r in Archive(tmp_path / "elsewhere", create=False).runs()] == [
        "shared"]


def test_candidate_details_read_through_their_typed_model(archive, tmp_path):
    """``Candidate.info`` types the ``details`` column: what the loop writes reads back
    as fields; an archive written before the model (keys missing, keys it does not know)
    and a hand-edited one (a value of the wrong type) read without failing."""
    run = archive.start_run("d", {})
    full = schema.CandidateDetails(key="1:2:0", round=2, slot=0, signature="a=1;b=2",
                                   genes=["a=1", "b=2"], kind="mutation",
                                   changes=["a"], train_spans=[[1.0, 2.5]]).model_dump()
    cid = archive.add_candidate(run, "full", 2, "p", "x", details=full)
    old = archive.add_candidate(run, "old", 1, "p", "y",
                                details={"round": 1, "genes": ["a=1"], "stage": "promotion"})
    bad = archive.add_candidate(run, "bad", 1, "p", "z",
                                details={"round": "two", "slot": 3, "feedback": "oops"})
    info = archive.candidate(cid).info
    assert (info.key, info.round, info.genes, info.kind) == ("1:2:0", 2, ["a=1", "b=2"],
                                                              "mutation")
    assert info.spans("verify", "train") == [[1.0, 2.5]]
    assert archive.candidate(cid).details == full  # the column itself is unchanged JSON
    info = archive.candidate(old).info
    assert (info.round, info.genes, info.key, info.feedback) == (1, ["a=1"], None, [])
    assert info.model_extra == {"stage": "promotion"}  # unknown keys are kept
    info = archive.candidate(bad).info
    assert (info.round, info.slot, info.feedback) == (None, 3, [])  # wrong types read as unset
