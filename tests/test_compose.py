"""The builtin scientist composes mechanisms from primitives (agents/builtin/expr.py):
the grammar reads and writes itself, rendered code computes what the expression says
(checked against ``expr.evaluate`` sample by sample and group by group), composed genes
are told apart from the catalog's as signals, and the scientist proposes them (never a
catalog gene in disguise) only when the run's compose rate lets it."""
import random
from pathlib import Path

import pytest
import torch

from agents.builtin import expr
from agents.builtin.genes import (Genome, as_expression, catalog_match, excluded_kinds,
                                  gene)
from agents.builtin.scientist import compose_gene, preferences, propose
from test_builtin_agents import check_module, edge_batches, make_batch, random_batch
from trainers.algorithm import Algorithm

# ----------------------------------------------------------------------------- grammar


def test_text_round_trips_and_bad_text_is_refused():
    text = "mul correct onem mul 0.25 lfrac"
    node = expr.parse(text, "reward")
    assert node == ("mul", "correct", ("onem", ("mul", 0.25, "lfrac")))
    assert expr.unparse(node) == text
    assert expr.infix(node) == "correct * (1 - 0.25 * lfrac)"
    assert expr.infix(expr.parse("max std sqrt pq", "scale")) == "max(std, sqrt(pq))"
    with pytest.raises(expr.ExprError, match="unknown token 'std' in a reward"):
        expr.parse("mul correct std", "reward")
    with pytest.raises(expr.ExprError, match="trailing tokens"):
        expr.parse("correct lfrac", "reward")
    with pytest.raises(expr.ExprError, match="needs two operands"):
        expr.parse("add correct", "reward")
    with pytest.raises(ValueError, match="reward.expr: f: empty expression"):
        gene("reward", "expr", f="")


def test_simplify_folds_constants_and_gene_text_is_canonical():
    assert expr.simplify(expr.parse("mul add 0.25 0.25 lfrac", "reward")) == \
        ("mul", 0.5, "lfrac")
    assert expr.simplify(expr.parse("mul 1 correct", "reward")) == "correct"
    assert expr.simplify(expr.parse("onem onem p", "reward")) == "p"
    g = gene("reward", "expr", f="sub  correct   mul add 0.05 0.05 lfrac")
    assert g["f"] == "sub correct mul 0.1 lfrac"
    genome = Genome.grpo().with_genes(g)
    assert Genome.from_signature(genome.signature()) == genome
    assert genome.slug().startswith("rx") and genome.slug().endswith("-grpo")


def test_shapes_treat_shifts_and_scales_as_the_same_signal():
    same = {"reward": [("correct", "add 1 correct"), ("correct", "mul 2 correct"),
                       ("correct", "add correct t")],
            "scale": [("std", "mul 0.5 std"), ("1", "2")]}
    for site, pairs in same.items():
        for a, b in pairs:
            assert expr.shape(expr.parse(a, site), site) == \
                expr.shape(expr.parse(b, site), site), (a, b)
    assert expr.shape(expr.parse("correct", "reward"), "reward") != \
        expr.shape(expr.parse("sub correct lfrac", "reward"), "reward")


def test_admissible_refuses_what_cannot_be_a_reward_or_a_scale():
    assert expr.admissible(expr.parse("lfrac", "reward"), "reward") == \
        "does not pay for correctness"
    assert expr.admissible(expr.parse("neg correct", "reward"), "reward") == \
        "does not pay for correctness"
    assert expr.admissible(expr.parse("sub std 0.5", "scale"), "scale") == \
        "not positive on every probe"
    big = "add " * 6 + "correct " * 7
    assert "larger than" in expr.admissible(expr.parse(big, "reward"), "reward")
    assert expr.admissible(expr.parse("max std sqrt pq", "scale"), "scale") is None


# ----------------------------------------------------------------------------- rendering

def _composed(rng, site, n):
    out, start = [], expr.parse("correct" if site == "reward" else "std", site)
    while len(out) < n:
        node = expr.compose(rng, start, site, changes=rng.randint(1, 4))
        if node is not None:
            out.append(node)
    return out


def test_rendered_composed_rewards_compute_the_expression_per_sample():
    rng, gen = random.Random(3), torch.Generator().manual_seed(0)
    batches = list(edge_batches().values()) + [random_batch(gen, 4, 4) for _ in range(3)]
    for node in _composed(rng, "reward", 30):
        genome = Genome.grpo().with_genes(gene("reward", "expr", f=expr.unparse(node)))
        algo = check_module(genome.render())
        for batch in batches:
            got = algo.shape_reward(batch)
            t = min(1.0, batch.step / max(1, batch.total_steps - 1))
            for i in range(batch.n):
                members = batch.group == batch.group[i]
                k, n = float(batch.correct[members].sum()), float(members.sum())
                env = {"correct": float(batch.correct[i]), "valid": float(batch.valid[i]),
                       "lfrac": float(batch.length[i]) / batch.max_length, "t": t,
                       "p": (k + 1) / (n + 2)}
                assert got[i].item() == pytest.approx(expr.evaluate(node, env), abs=1e-5), \
                    (expr.unparse(node), i)


@pytest.mark.parametrize("validity", ["none", "stats"])
def test_rendered_composed_scales_divide_by_the_expression_per_group(validity):
    rng, gen = random.Random(4), torch.Generator().manual_seed(1)
    batches = list(edge_batches().values()) + [random_batch(gen, 5, 4) for _ in range(3)]
    for node in _composed(rng, "scale", 30):
        genome = Genome.grpo().with_genes(gene("normalization", "expr", f=expr.unparse(node)),
                                          gene("validity", validity))
        algo = check_module(genome.render())
        for batch in batches:
            rewards = batch.correct.float()
            adv = algo.compute_advantages(batch, rewards)
            t = min(1.0, batch.step / max(1, batch.total_steps - 1))
            for i in range(batch.n):
                if validity == "stats" and not batch.valid[i]:
                    assert adv[i].item() == -1.0
                    continue
                m = batch.group == batch.group[i]
                if validity == "stats":
                    m = m & batch.valid
                r, c = rewards[m].double(), batch.correct[m].double()
                n = len(r)
                p = (float(c.sum()) + 1) / (n + 2)
                env = {"std": float(r.std()) if n > 1 else 1.0, "p": p, "pq": p * (1 - p),
                       "range": float(r.max() - r.min()), "t": t}
                scale = max(expr.evaluate(node, env), expr.SCALE_FLOOR)
                base = float(r.mean()) if n > 1 else 0.0
                want = (float(rewards[i]) - base) / scale
                assert adv[i].item() == pytest.approx(want, abs=1e-4), (expr.unparse(node), i)


def test_default_composed_genes_equal_the_catalog_genes_they_start_from():
    gen = torch.Generator().manual_seed(2)
    batches = list(edge_batches().values()) + [random_batch(gen, 4, 4)]
    pairs = [(gene("reward", "expr", f=as_expression(gene("reward", "gated_length"))),
              gene("reward", "gated_length")),
             (gene("normalization", "expr", f="sqrt pq"),
              gene("normalization", "bernoulli", prior=1.0))]
    for composed_gene, catalog_gene in pairs:
        a = Algorithm.from_source(Genome.grpo().with_genes(composed_gene).render())
        b = Algorithm.from_source(Genome.grpo().with_genes(catalog_gene).render())
        for batch in batches:
            ra, rb = a.shape_reward(batch), b.shape_reward(batch)
            torch.testing.assert_close(ra, rb)
            torch.testing.assert_close(a.compute_advantages(batch, ra),
                                       b.compute_advantages(batch, rb), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- catalog

def test_catalog_match_names_the_catalog_gene_a_composed_one_computes():
    g = gene("reward", "expr", f="add 1 mul correct onem mul 0.25 lfrac")
    assert catalog_match(g) == gene("reward", "gated_length", alpha=0.25)
    assert catalog_match(gene("normalization", "expr", f="mul 2 std")) == \
        gene("normalization", "group_std")
    assert catalog_match(gene("normalization", "expr", f="max std sqrt pq")) is None
    assert catalog_match(gene("reward", "expr", f="mul correct sub 1 mul lfrac p")) is None
    # in an ablation without it, the same expression is new to the catalog searched
    assert catalog_match(g, excluded_kinds(["paper"])) is None


# ----------------------------------------------------------------------------- scientist

def test_the_scientist_composes_new_mechanisms_at_the_runs_rate():
    def draws(rate, seed=0, n=150, excluded=frozenset()):
        rng = random.Random(seed)
        return [propose(None, "accurate", [], [], rng, compose=rate, excluded=excluded)
                for _ in range(n)]

    assert not any(g.composed for p in draws(0.0) for g in p.genome.genes())
    proposals = draws(0.5)
    composed = [p for p in proposals if any(g.composed for g in p.genome.genes())]
    # the rate is per proposal: about half of them compose (binomial sd 6 of 150)
    assert 55 <= len(composed) <= 95, len(composed)
    for p in composed:
        for g in p.genome.genes():
            if g.composed:
                assert catalog_match(g) is None, g.label()   # not a catalog gene in disguise
                assert expr.admissible(expr.parse(g["f"], "reward" if g.slot == "reward"
                                                  else "scale"),
                                       "reward" if g.slot == "reward" else "scale") is None
                assert g.math() in p.math and "not a catalog gene" in p.hypothesis
                assert any("composed from primitives" in r for r in p.rationale)
        check_module(p.genome.render())
    assert [p.genome for p in proposals] == [p.genome for p in draws(0.5)]  # seeded
    no_reward = draws(0.5, excluded=excluded_kinds(["reward=expr"]))
    assert not any(p.genome.reward.composed for p in no_reward)
    assert any(p.genome.normalization.composed for p in no_reward)


def test_a_composed_parent_is_refined_as_an_expression():
    parent = Genome.grpo().with_genes(gene("normalization", "expr", f="max std sqrt pq"))
    prefs = preferences(parent, "", [])
    prefs.compose = 0.3
    rng = random.Random(1)
    children = [compose_gene(rng, prefs, parent.normalization) for _ in range(20)]
    assert all(c is not None and c.composed for c in children)
    parent_shape = expr.shape(expr.parse("max std sqrt pq", "scale"), "scale")
    assert all(expr.shape(expr.parse(c["f"], "scale"), "scale") != parent_shape
               for c in children)
    # a small edit: most children keep some of the parent's primitives
    kept = sum(bool(expr.variables(expr.parse(c["f"], "scale")) & {"std", "pq"})
               for c in children)
    assert kept >= 10, kept


def test_a_composed_child_renders_its_math_into_the_module_docstring():
    g = gene("reward", "expr", f="mul correct sub 1 mul lfrac p")
    src = Genome.grpo().with_genes(g).render()
    assert "r = correct * (1 - L/L_max * p)" in src
    assert "p = ((k + 1) / (n + 2))[batch.group]" in src
    algo = Algorithm.from_source(src)
    b = make_batch([True, True, False, False], [True] * 4, [4, 16, 4, 16], g=4)
    # p = (2 + 1) / (4 + 2) = 0.5: r = 1 - 0.5 * L/16 for the correct ones, 0 otherwise
    torch.testing.assert_close(algo.shape_reward(b), torch.tensor([0.875, 0.5, 0.0, 0.0]))


# ----------------------------------------------------------------------------- a run

def test_a_run_trains_the_mechanisms_its_scientist_composed(tmp_path):
    """graph.run --compose-rate 1 on the tiny testbed: the composed candidates pass the
    verifier, are trained on every seed, and their archived code computes the expression
    of their signature; the run saves the rate and a resume keeps it."""
    import json

    from memory.archive import Archive
    from run_checks import run_to_end

    home = tmp_path / "home"
    tiny = str(Path(__file__).parent / "data" / "tiny_context.json")
    r = run_to_end(home, "--directive", "accurate", "--candidates", "3", "--width", "1",
                   "--seed", "0", "--config", tiny, "--no-smoke", "--compose-rate", "1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    with Archive(home) as a:
        run = a.run(1)
        assert run.config["context"]["compose_rate"] == 1.0
        composed = []
        for c in a.candidates(1):
            genes = [g for g in Genome.from_signature(c.info.signature).genes()
                     if g.composed] if c.info.signature else []
            if genes:
                composed.append(c)
                assert c.status == "evaluated" and len(a.evaluations(c.id)) >= 1, c.name
                genome = Genome.from_signature(c.info.signature)
                assert c.code == genome.render(name=c.name)
                assert all(catalog_match(g) is None for g in genes)
                assert all(g.math() in c.proposal for g in genes)
    assert composed, "no candidate of the run carries a composed gene"
    bad = run_to_end(home, "--resume", "1", "--compose-rate", "0.5")
    assert bad.returncode == 2 and "keeps its own" in bad.stderr, bad.stderr
    summary = json.loads((home / "runs" / "1" / "summary.json").read_text())
    assert {c.name for c in composed} <= {row["name"] for row in summary["candidates"]}
