"""Parent selection's round-1 rule ("descendant potential", rule="potential") on synthetic archives, plus the archive
adapter on a real SQLite archive."""
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory.archive import Archive
from memory.selection import (Node, SelectionConfig, nodes_from_archive, score_nodes,
                              select_parent_ids, select_parents)

GREEDY = SelectionConfig(temperature=0)


def scores(nodes, config=SelectionConfig()):
    return {s.id: s for s in score_nodes(nodes, config)}


def improving_vs_dead_end():
    """P's children keep improving; H scores higher but every child of H is worse."""
    return [
        Node(1, (), 0.50),                         # root
        Node(2, (1,), 0.60),                       # P: improving lineage
        Node(3, (2,), 0.65), Node(4, (2,), 0.70), Node(5, (3,), 0.72),
        Node(6, (1,), 0.75),                       # H: the high-scoring dead end
        Node(7, (6,), 0.45), Node(8, (6,), 0.40),
        Node(9, (6,), None, "failed_verification"),
    ]


def test_an_improving_lineage_beats_a_high_scoring_dead_end():
    s = scores(improving_vs_dead_end())
    assert s[6].fitness > s[2].fitness                  # H has the better fitness ...
    assert s[2].mu > 0 > s[6].mu                        # ... but P's descendants improve
    assert s[2].value > s[6].value
    best = select_parents(improving_vs_dead_end(), 1, config=GREEDY, rule="potential")[0]
    assert best in {2, 3, 4, 5}                         # the improving lineage


def test_unexplored_nodes_get_the_exploration_bonus_and_get_tried():
    nodes = [Node(1, (), 0.5), Node(2, (1,), 0.5), Node(3, (1,), 0.5), Node(4, (1,), 0.5),
             Node(5, (), 0.5)]                          # 1: three flat children; 5: none
    s = scores(nodes)
    assert s[5].sd == pytest.approx(SelectionConfig().tau)
    assert s[1].sd < s[5].sd and s[5].value > s[1].value
    picks = Counter(select_parents(nodes, 1, seed=seed, rule="potential")[0] for seed in range(200))
    assert set(picks) == {1, 2, 3, 4, 5}                # sampling tries every node
    assert picks[5] > picks[1]


def test_failed_nodes_are_never_parents():
    nodes = [Node(1, (), 0.2), Node(2, (1,), 9.0, "failed_verification"),
             Node(3, (1,), None, "failed_training"), Node(4, (1,), 0.3, "pending"),
             Node(5, (1,), float("nan"))]
    assert set(scores(nodes)) == {1}
    for seed in range(50):
        assert select_parents(nodes, 3, seed=seed, rule="potential") == [1]


def test_failed_descendants_lower_the_potential():
    ok = scores([Node(1, (), 0.5), Node(2, (), 0.6), Node(3, (1,), 0.55)])
    failing = scores([Node(1, (), 0.5), Node(2, (), 0.6), Node(3, (1,), 0.55),
                      Node(4, (1,), None, "failed_verification"),
                      Node(5, (1,), None, "failed_training")])
    assert failing[1].mu < ok[1].mu and failing[1].sd < ok[1].sd


def test_deeper_improvements_count_less():
    child = scores([Node(1, (), 0.0), Node(2, (1,), 1.0)])
    grandchild = scores([Node(1, (), 0.0), Node(2, (1,), None, "pending"),
                         Node(3, (2,), 1.0)])
    assert 0 < grandchild[1].mu < child[1].mu


def test_deterministic_under_a_seed():
    nodes = improving_vs_dead_end()
    runs = {tuple(select_parents(nodes, 3, seed=7, rule="potential")) for _ in range(5)}
    assert len(runs) == 1
    assert len({tuple(select_parents(nodes, 3, seed=s, rule="potential")) for s in range(20)}) > 1
    assert len(set(select_parents(nodes, 3, seed=7, rule="potential"))) == 3          # without replacement


def test_pareto_term_only_with_two_or_more_objectives():
    nodes = [Node(1, (), 0.5, objectives={"acc": 0.5, "short": 0.9}),
             Node(2, (), 0.5, objectives={"acc": 0.6, "short": 0.2}),
             Node(3, (), 0.5, objectives={"acc": 0.4, "short": 0.1})]   # dominated by 2
    s = scores(nodes)
    assert (s[1].pareto, s[2].pareto, s[3].pareto) == (1.0, 1.0, 0.5)
    single = [Node(i, (), 0.5, objectives={"acc": v}) for i, v in ((1, .5), (2, .6))]
    assert {x.pareto for x in score_nodes(single)} == {0.0}


def test_diversity_rewards_unusual_signatures():
    common = frozenset({"grpo", "std", "clip"})
    nodes = [Node(1, (), 0.5, signature=common), Node(2, (), 0.5, signature=common),
             Node(3, (), 0.5, signature=frozenset({"rloo", "token_mean", "kl"}))]
    s = scores(nodes)
    assert s[3].diversity > s[1].diversity and s[3].value > s[1].value


def test_no_eligible_node_is_an_error_and_k_is_capped():
    with pytest.raises(ValueError, match="no eligible parent"):
        select_parents([Node(1, (), None, "pending")])
    assert sorted(select_parents([Node(1, (), 0.1), Node(2, (), 0.2)], 5)) == [1, 2]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["evaluated", "failed_verification", "pending"]),
                          st.floats(0, 1), st.integers(0, 50)), min_size=1, max_size=25),
       st.integers(0, 2**31 - 1))
def test_random_archives_only_yield_eligible_distinct_parents(spec, seed):
    nodes = [Node(i, (p % i,) if i else (), f if s == "evaluated" else None, s)
             for i, (s, f, p) in enumerate(spec)]
    ok = {n.id for n in nodes if n.status == "evaluated"}
    if not ok:
        with pytest.raises(ValueError):
            select_parents(nodes, 2, seed=seed, rule="potential")
        return
    picked = select_parents(nodes, 2, seed=seed, rule="potential")
    assert set(picked) <= ok and len(picked) == len(set(picked)) == min(2, len(ok))
    assert picked == select_parents(nodes, 2, seed=seed, rule="potential")


def test_adapter_reads_nodes_from_the_archive(tmp_path):
    a = Archive(tmp_path, index=False)
    run = a.start_run("accurate and concise")
    seed = a.add_candidate(run, "grpo", 0, "GRPO", "def f(a):\n    return a\n",
                           status="evaluated")
    good = a.add_candidate(run, "good", 1, "p", "x", parents=[seed],
                           details={"genes": ["norm:std", "kl:none"]})
    bad = a.add_candidate(run, "bad", 1, "p", parents=[seed], status="failed_verification")
    for cid, fits in ((seed, [0.4]), (good, [0.6, 0.8])):
        for s, f in enumerate(fits):
            a.add_evaluation(cid, s, fitness=f, objectives={"acc": f, "short": -s})
        a.set_status(cid, "evaluated")
    nodes = {n.id: n for n in nodes_from_archive(a, run)}
    assert nodes[good].parents == (seed,) and nodes[good].fitness == pytest.approx(0.7)
    assert nodes[good].objectives == {"acc": pytest.approx(0.7), "short": -0.5}
    assert nodes[good].signature == frozenset({"norm:std", "kl:none"})
    assert {"f", "a", "def", "return"} <= nodes[seed].signature
    assert nodes[bad].status == "failed_verification" and nodes[bad].fitness is None
    picks = {select_parent_ids(a, run, 1, seed=s)[0] for s in range(30)}
    assert picks <= {seed, good} and bad not in picks


def test_archive_order_of_a_rounds_parallel_branches_does_not_change_the_pick(tmp_path):
    """Two archives of the same run whose round-1 branches were archived in opposite
    orders (ids swapped): the same seed picks the same slot in both."""
    def build(home, slots):
        a = Archive(home, index=False)
        run = a.start_run("accurate")
        root = a.add_candidate(run, "grpo", 0, "GRPO", "x", details={"slot": 0})
        ids = {}
        for slot in slots:  # the order the branches finished in
            ids[slot] = a.add_candidate(run, f"child{slot}", 1, "p", f"y{slot}",
                                        parents=[root], details={"slot": slot})
        for cid in (root, *ids.values()):
            a.add_evaluation(cid, 0, fitness=0.5)  # tied: the pick rests on the order
            a.set_status(cid, "evaluated")
        return a, run, {cid: slot for slot, cid in ids.items()} | {root: "root"}

    first, run1, slot1 = build(tmp_path / "a", [0, 1, 2])
    second, run2, slot2 = build(tmp_path / "b", [2, 0, 1])
    picks1 = [slot1[select_parent_ids(first, run1, 1, seed=s)[0]] for s in range(40)]
    picks2 = [slot2[select_parent_ids(second, run2, 1, seed=s)[0]] for s in range(40)]
    assert picks1 == picks2
    assert len(set(picks1)) > 1  # the seeds do pick different slots
    vetoed = next(cid for cid, slot in slot2.items() if slot == 0)  # archive ids, as given
    assert 0 not in {slot2[select_parent_ids(second, run2, 1, seed=s, exclude=[vetoed])[0]]
                     for s in range(40)}
    with pytest.raises(ValueError, match=re.escape(f"excluded ({sorted(slot2)})")):
        select_parent_ids(second, run2, 1, exclude=list(slot2))
