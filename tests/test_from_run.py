"""``python -m graph.run --from-run``: a run that starts from an earlier run's evaluated
candidates, end to end on the tiny testbed (real LangGraph, SQLite, Chroma, sandboxed
training): the copies keep their results without re-training, fitness follows the new
run's objective, and the cross-run lineage is recorded and drawn."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from evals.objective import ObjectiveSpec, seed_fitnesses

TINY = Path(__file__).parent / "data" / "tiny_context.json"
REPO = Path(__file__).resolve().parents[1]


def _run(home, *args):
    return subprocess.run([sys.executable, "-m", "graph.run", "--home", str(home),
                           "--config", str(TINY), "--no-smoke", "--quiet", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    home = tmp_path_factory.mktemp("from-run") / "home"
    first = _run(home, "--directive", "accurate", "--candidates", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    second = _run(home, "--directive", "accurate and concise", "--candidates", "1",
                  "--from-run", "1")
    assert second.returncode == 0, second.stderr[-2000:]
    third = _run(home, "--directive", "accurate", "--candidates", "1", "--from-run", "1",
                 "--steps", "3")
    assert third.returncode == 0, third.stderr[-2000:]
    return home


def test_same_testbed_reuses_every_candidate_without_training_it(homes):
    from memory.archive import Archive

    with Archive(homes) as a:
        originals = [c for c in a.candidates(1) if c.status == "evaluated"]
        run2 = a.candidates(2)
        copies = {c.details["origin"]["candidate"]: c for c in run2 if c.details.get("origin")}
        assert set(copies) == {c.id for c in originals}
        assert all(c.details["origin"]["run"] == 1 for c in copies.values())
        spec = ObjectiveSpec.model_validate(a.run(2).config["objective"])
        assert spec.minimizes_length                      # "accurate and concise"
        seed = next(c for c in originals if c.info.kind == "seed")
        ref_ev = a.evaluations(seed.id)
        ref = (sum(e.metrics["val"]["overall"] for e in ref_ev) / len(ref_ev),
               sum(e.metrics["val"]["length"] for e in ref_ev) / len(ref_ev))
        for orig in originals:
            copy = copies[orig.id]
            assert copy.code == orig.code and copy.generation == 0
            old, new = a.evaluations(orig.id), a.evaluations(copy.id)
            assert [e.seed for e in new] == [e.seed for e in old]
            assert [e.metrics for e in new] == [e.metrics for e in old]     # as measured
            assert all(e.wall_time == 0 for e in new)                    # no training here
            assert [e.fitness for e in new] == pytest.approx(seed_fitnesses(  # the new
                spec, [(e.metrics["val"]["overall"], e.metrics["val"]["length"])  # objective
                       for e in old], ref))
            # lineage mirrored between the copies
            assert sorted(a.parents(copy.id)) == sorted(copies[p].id for p in a.parents(orig.id))
        # the one new candidate trained; it builds on a copy (nothing else is in the run)
        new = [c for c in run2 if not c.details.get("origin")]
        assert len(new) == 1 and a.parents(new[0].id)
        assert set(a.parents(new[0].id)) <= {c.id for c in copies.values()}
        if new[0].status == "evaluated":
            assert all(e.wall_time > 0 for e in a.evaluations(new[0].id))
        # the seed was not trained again: the run's seed is the copy of run 1's
        seeds = [c for c in run2 if c.info.kind == "seed"]
        assert [c.details["origin"]["candidate"] for c in seeds] == [seed.id]
    summary = json.loads((homes / "runs" / "2" / "summary.json").read_text())
    assert len(summary["candidates"]) == len(originals) + 1


def test_another_budget_retrains_the_seed_and_rebases_the_copies(homes):
    from memory.archive import Archive

    with Archive(homes) as a:
        run3 = a.candidates(3)
        own_seed = [c for c in run3 if c.info.kind == "seed" and not c.details.get("origin")]
        assert len(own_seed) == 1                                # trained in run 3
        assert all(e.wall_time > 0 for e in a.evaluations(own_seed[0].id))
        copies = [c for c in run3 if c.details.get("origin")]
        originals = {c.id: c for c in a.candidates(1) if c.status == "evaluated"}
        seed1 = next(c for c in originals.values() if c.info.kind == "seed")
        # every evaluated candidate but run 1's seed is copied; run 1's seed's children
        # hang under run 3's own seed
        assert {c.details["origin"]["candidate"] for c in copies} == set(originals) - {seed1.id}
        for c in copies:
            o = c.details["origin"]
            mean = lambda cid, k: (sum(e.metrics["val"][k] for e in a.evaluations(cid))
                                   / len(a.evaluations(cid)))
            assert o["overall_shift"] == pytest.approx(
                mean(own_seed[0].id, "overall") - mean(seed1.id, "overall"))
            assert [e.fitness for e in a.evaluations(c.id)] == pytest.approx(
                [e.metrics["val"]["overall"] + o["overall_shift"]
                 for e in a.evaluations(o["candidate"])])
            if seed1.id in a.parents(o["candidate"]):
                assert own_seed[0].id in a.parents(c.id)


def test_the_report_and_show_name_the_origin(homes):
    out = subprocess.run([sys.executable, "-m", "graph.report", "2", "--home", str(homes),
                          "--quiet", "--out", str(homes / "r2.html")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    html = (homes / "r2.html").read_text()
    assert "copied from run 1" in html and "(run 1)" in html      # section and genealogy
    shown = subprocess.run([sys.executable, "-m", "memory.show", "--home", str(homes),
                            "grpo-2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "copied from run #1" in shown.stdout


@pytest.mark.parametrize("args, message", [
    (["--from-run", "9"], "--from-run 9: no such run"),
    (["--from-run", "x"], "expected run ids like 3 or 3,5"),
    (["--resume", "1", "--from-run", "1"], "--from-run starts a new run"),
    (["--selection", "best"], "invalid choice: 'best'"),
])
def test_bad_from_run_is_one_line_and_exit_2(homes, args, message):
    before = sorted(p.name for p in (homes / "runs").iterdir())
    r = _run(homes, "--directive", "accurate", "--candidates", "1", *args)
    assert r.returncode == 2 and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(p.name for p in (homes / "runs").iterdir()) == before
