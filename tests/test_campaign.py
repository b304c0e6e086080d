"""The discovery campaign end to end on the tiny testbed: search (the real loop), promote,
test on the held-out split with paired seeds, rediscovery, report; resumes; bad input.

The tiny testbed cannot learn arithmetic (every score is 0), so this checks the plumbing
and the bookkeeping, not a discovery: the real campaign's numbers are in the README."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = Path(__file__).parent / "data" / "tiny_context.json"
REPO = Path(__file__).resolve().parents[1]
ARGS = ["--candidates", "2", "--width", "2", "--screen-steps", "2", "--screen-seeds", "2",
        "--steps", "3", "--promote", "1", "--promote-seeds", "2", "--rank-sample", "1",
        "--seeds", "2", "--confirm-seeds", "3",
        "--baselines", "grpo,rloo", "--selection", "greedy", "--without-genes", "paper",
        "--compose-rate", "1", "--seed", "3",
        "--rediscovery", "--no-smoke", "--config", str(TINY), "--quiet"]


def _campaign(tmp_path, *extra, directive="accurate and concise"):
    return subprocess.run([sys.executable, "-m", "graph.campaign", "--directive", directive,
                           "--home", str(tmp_path / "home"), "--out", str(tmp_path / "out"),
                           *extra], cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("campaign")
    r = _campaign(tmp, *ARGS)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp, r


def test_campaign_writes_every_stage(campaign):
    tmp, proc = campaign
    out = tmp / "out"
    data = json.loads((out / "campaign.json").read_text())
    assert data["directive"] == "accurate and concise"
    assert data["objective"].startswith("as short as possible while Overall >= GRPO's - 1")
    # search: the loop archived the seed + 2 candidates
    from memory.archive import Archive
    with Archive(tmp / "home") as a:
        cands = a.candidates(data["run_id"])
        assert len(cands) == 3 and a.run(data["run_id"]).status == "done"
        names = {c.name for c in cands if c.generation > 0}
        # the screen trained every candidate, the seed baseline too, on 2 seeds
        assert all(len(a.evaluations(c.id)) == 2 for c in cands)
        screen = {c.name: c.fitness for c in cands}
    # promotion: one candidate from the search, 2 fresh seeds, val split
    prom = data["promote"]
    assert [r["name"] for r in prom["rows"]] == [prom["winner"]]
    assert prom["winner"] in names and prom["rows"][0]["seeds"] == 2
    assert prom["seeds"] == [1000, 1001]
    # the random sample: the other candidate, trained like the promoted one, not eligible
    [other] = names - {prom["winner"]}
    assert [r["name"] for r in prom["sampled_rows"]] == [other]
    for r in prom["rows"] + prom["sampled_rows"]:
        assert r["seeds"] == 2 and r["screen_seeds"] == 2
        assert r["screen_fitness"] == pytest.approx(screen[r["name"]])
    # each promoted run against GRPO's at every evaluation of training, the final last
    for r in prom["rows"] + prom["sampled_rows"]:
        steps = [s["step"] for s in r["by_step"]]
        assert steps == sorted(steps) and steps[-1] == 3 and len(steps) >= 2
        assert all(s["delta_overall"] == 0.0 and s["seeds"] == 2 for s in r["by_step"])
        assert r["by_step"][-1]["shorter_pct"] == pytest.approx(r["shorter_pct"])
    rank = prom["screen_vs_promotion"]
    assert rank["n"] == 2 and rank["names"] == [prom["winner"], other]
    assert rank["rho"] is None and "need 3" in rank["note"]
    # the screen's reliability, over every screened candidate's archived seeds (GRPO too)
    rel = prom["screen_reliability"]
    assert rel["candidates"] == 3 and rel["evaluations"] == 6
    # test: the baselines asked for + the winner, paired fresh seeds, CIs vs GRPO
    test = data["test"]
    assert test["seeds"] == [2000, 2001] and test["confirm_seeds"] == [2002]
    labels = [r["algorithm"] for r in test["rows"]]
    assert labels == ["grpo", "rloo", f"winner:{prom['winner']}"]
    # every score of the tiny testbed is 0, so the best baseline is the first: grpo; the
    # confirmation seed goes to GRPO and the winner only
    assert test["best_baseline"] == "grpo"
    seeds = {r["algorithm"]: r["seeds"] for r in test["rows"]}
    assert seeds["grpo"] == seeds[labels[2]] == [2000, 2001, 2002]
    assert seeds["rloo"] == [2000, 2001]
    for r, n in zip(test["rows"][1:], (2, 3)):
        ci = r["delta_vs_baseline_ci95"]
        assert ci["n"] == n and ci["low"] <= ci["mean"] <= ci["high"]
    assert test["vs_best_baseline"]["overall"]["n"] == 3
    # winner: lineage from the root GRPO to the winner, mechanism in words and math
    assert data["lineage"][0]["name"] == "grpo" and data["lineage"][-1]["name"] == prom["winner"]
    assert data["mechanism"]["signature"] and data["mechanism"]["words"]
    # rediscovery: DAPO and Dr. GRPO scored at the screening budget
    for k in ("dapo", "dr_grpo"):
        v = data["rediscovery"][k]
        assert "score" in v and v["known_genes"] >= 3 and len(v["closest"]) == 2
    comp = data["compute"]
    assert comp["total_cpu_s"] > 0 and comp["test_cpu_s"] > 0 and comp["search_wall_s"] > 0
    assert comp["promote_wall_s"] > 0 and comp["test_wall_s"] > 0
    md = (out / "campaign.md").read_text()
    assert "Wall time: search" in md
    # where each stage's training CPU went, by trainer phase: the search's from its
    # archived evaluations (each seed's split sums to its CPU-s), the others' from runs
    from trainers.local.trainer import PHASES
    with Archive(tmp / "home") as a:
        for c in a.candidates(data["run_id"]):
            for e in a.evaluations(c.id):
                split = e.metrics["cpu_seconds"]
                assert list(split) == list(PHASES)
                assert sum(split.values()) == pytest.approx(e.wall_time, rel=1e-9)
    phases = comp["phase_cpu_s"]
    assert set(phases) == {"search", "promote", "test"} | (
        {"transfer"} if data.get("transfer") else set())
    for stage in phases:
        assert set(phases[stage]) == set(PHASES)
        assert sum(phases[stage].values()) == pytest.approx(comp[f"{stage}_cpu_s"], rel=1e-9)
    assert "Where the training CPU went, by phase" in md
    for stage, name in (("search", "Search"), ("promote", "Promotion"), ("test", "Test")):
        assert f"- {name} ({comp[stage + '_cpu_s']:,.0f} CPU-s): sampling " in md
    from graph.campaign.screen import reliability_line
    assert reliability_line(rel) in md and reliability_line(rel) in " ".join(proc.stdout.split())
    assert "| step 3 |" in md and f"| {prom['winner']} | +0.0 / " in md
    # the ablation settings reach the search run, and the report says them
    assert ("Search: parent selection `greedy`; catalog without paper; composition rate 1."
            in md)
    # composed mechanisms: counted over the search, shown with math and code when promoted
    composed = data["composed"]
    assert composed["candidates"] == 3 and "## Composed mechanisms" in md
    assert f"{composed['with_composed']} of the search's 3 candidates" in md
    # search seed 3's two candidates both carry a composed reward; both reach promotion
    # (one promoted, one sampled), so the report shows their math and code
    assert composed["with_composed"] == 2 and len(composed["promoted"]) == 2
    for c in composed["promoted"]:
        assert c["name"] in names and c["code"] and c["code"].strip() in md
        assert all(g["catalog_match"] is None and f"`{g['math']}`" in md for g in c["genes"])
    from agents.builtin.genes import PAPER_GENES
    from memory.archive import Archive
    with Archive(tmp / "home") as a:
        ctx = a.run(data["run_id"]).config["context"]
        assert ctx["selection"] == "greedy" and ctx["exclude_genes"] == ["paper"]
        assert ctx["compose_rate"] == 1.0
        genes = {g.split("(")[0] for c in a.candidates(data["run_id"]) for g in c.info.genes or []}
        assert genes and not genes & set(PAPER_GENES)
    assert "Held-out test split" in md and "Rediscovery" in md and "Lineage" in md
    # the verdict in words, from the winner's paired CIs (every tiny score is 0: no
    # difference in Overall, a CI of zero width, "not worse" within the margin)
    # the winner's genes as bullets, the changed ones marked; GRPO's promotion reference
    assert "- **changed** " in md and "| grpo (reference, same seeds) |" in md
    assert "## Verdict" in md and "GRPO" in md.split("## Verdict")[1].split("##")[0]
    assert data["verdicts"]["vs_grpo"]["overall"] == "not worse"
    assert data["verdicts"]["vs_grpo"]["length"] == "no clear difference"
    # "concise" is a contract: not shorter by its CI, so not met, and the report says so;
    # the promotion's winner came from the contract's rule (one promoted candidate)
    assert data["verdicts"]["contract"] == "not met"
    assert "- Contract (shorter than GRPO, Overall within 1 point(s)" in md
    assert "**not met**" in md
    assert prom["winner_rule"].startswith("the shortest of the 1 candidate(s) whose mean "
                                          "Overall is within 1 point(s) of GRPO's")
    assert prom["rows"][0]["within_margin"] and prom["rows"][0]["delta_overall"] == 0.0
    assert f"Winner rule: {prom['winner_rule']}: **{prom['winner']}**." in md
    plan = json.loads((out / "plan.json").read_text())
    assert plan["promote"]["rule"].startswith("the shortest candidate whose mean Overall")
    assert "the contract is met when" in plan["verdicts"]["rule"]
    # transfer: GRPO, the baselines and the winner RL'd on the families the search never
    # saw, paired fresh seeds, scored on their test split, reported apart
    tr = data["transfer"]
    assert tr["seeds"] == [3000, 3001] and plan["transfer"]["seeds"] == [3000, 3001]
    assert [r["algorithm"] for r in tr["rows"]] == ["grpo", "rloo", f"winner:{prom['winner']}"]
    for r in tr["rows"]:
        assert set(r["families"]) == {"sub2", "mul3"} and "pass@16" not in r
        assert set(r["families_t1"]) == {"sub2", "mul3"}   # T=1 accuracy beside greedy
    assert "| algorithm | seeds | transfer Overall | sub2 greedy | sub2 T=1 | mul3 greedy | " \
           "mul3 T=1 | length |" in md
    assert data["verdicts"]["transfer"]["vs_grpo"] == "not worse"  # every tiny score is 0
    assert "## Transfer: RL on families the search never saw" in md
    assert "- Transfer (RL on families the search never saw): the winner" in md
    assert "- Transfer (test split of sub2, mul3, families the search never saw)" in md
    assert "- transfer seeds: planned 3000..3001 (2), ran 3000..3001 (2) (as planned)" in md
    assert comp["transfer_cpu_s"] > 0 and comp["transfer_wall_s"] > 0
    with Archive(tmp / "home") as a:  # the search never trained on a transfer family
        for c in a.candidates(data["run_id"]):
            for e in a.evaluations(c.id):
                assert not any(k.startswith(("sub2", "mul3")) for k in e.metrics["val"])
    # the test split's Overall vs length, GRPO and the baselines marked
    pareto = (out / "pareto.png").read_bytes()
    assert pareto[:8] == b"\x89PNG\r\n\x1a\n" and "![Overall vs length" in md
    assert "python -m graph.campaign --directive 'accurate and concise'" in md
    png = (out / "best_so_far.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_rank_correlation_is_spearmans_rho_or_says_why_not():
    from scipy.stats import spearmanr

    from graph.campaign.stages import rank_correlation

    rows = [{"name": f"c{i}", "screen_fitness": s, "fitness": f}
            for i, (s, f) in enumerate([(1.0, 10.0), (2.0, 30.0), (3.0, 20.0), (4.0, 40.0)])]
    got = rank_correlation(rows)
    assert got["n"] == 4 and got["rho"] == pytest.approx(0.8)
    # the p is exact for few candidates: of the 24 orderings of 4, four reach rho >= 0.8
    # (1.0 once, 0.8 three times) and four rho <= -0.8, 8 in all; the t approximation
    # says 0.20
    assert got["p"] == pytest.approx(8 / 24)
    assert spearmanr([1, 2, 3, 4], [10, 30, 20, 40]).pvalue == pytest.approx(0.2)
    # a perfect order of 3 is 2 of 6 orderings (either direction), not p = 0
    three = rank_correlation([dict(r, fitness=-r["screen_fitness"]) for r in rows[:3]])
    assert three["rho"] == pytest.approx(-1.0) and three["p"] == pytest.approx(1 / 3)
    assert spearmanr([1, 2, 3], [-1, -2, -3]).pvalue < 1e-6   # what the report said before
    flat = [dict(r, fitness=5.0) for r in rows]
    assert rank_correlation(flat)["rho"] is None
    assert "constant" in rank_correlation(flat)["note"]


@pytest.mark.parametrize("directive, extra, steps, full", [
    ("accurate and concise", [], 80, 80),             # a length directive: the full budget
    ("short answers", ["--steps", "30"], 30, 30),
    ("accurate", [], 40, 80),
    ("accurate", ["--steps", "20"], 20, 20),          # never longer than the full budget
    ("accurate and concise", ["--screen-steps", "10"], 10, 80),   # the flag wins
    # the tiny config's train overrides set the full budget (4 steps) when --steps does not
    ("accurate and concise", ["--config", str(TINY)], 4, 4),
    ("accurate", ["--config", str(TINY)], 4, 4),
    ("accurate and concise", ["--config", str(TINY), "--steps", "6"], 6, 6),
])
def test_the_screen_budget_defaults_to_the_full_one_under_a_length_directive(
        tmp_path, directive, extra, steps, full):
    from graph.campaign.cli import parse_args, resolve_screen_steps
    from graph.campaign.plan import make_plan
    from graph.campaign.stages import load_config
    from trainers.local.trainer import TrainConfig

    assert TrainConfig().steps == 80
    assert json.loads(TINY.read_text())["train_overrides"]["steps"] == 4
    args = parse_args(["--directive", directive, "--out", str(tmp_path), *extra])
    cfg = load_config(args)
    resolve_screen_steps(args, cfg)
    assert args.screen_steps == steps
    plan = make_plan(args, cfg)
    assert plan["search"]["steps"] == steps
    assert plan["promote"]["steps"] == plan["test"]["steps"] == full


def test_the_plan_states_the_testbed_it_trains_on(tmp_path):
    """A campaign on a variant warm start (``--config``'s warm_config, e.g. a corpus mix
    of docs/direct-answers) registers it, with its cache key, in the plan; without
    --config the plan says the defaults."""
    from graph.campaign.cli import parse_args
    from graph.campaign.plan import make_plan, plan_lines
    from graph.campaign.stages import load_config
    from trainers.local.warmstart import WarmStartConfig, warm_config_from_dict

    warm = {"examples": 144000, "steps": 4500, "seed": 1,
            "corpus": {"add2": {"sft_weight": 0.8}}}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"warm_config": warm}))
    lines = {}
    for name, extra in (("variant", ["--config", str(path)]), ("default", [])):
        args = parse_args(["--directive", "accurate and concise", "--out",
                           str(tmp_path / name), *extra])
        plan = make_plan(args, load_config(args))
        lines[name] = [x for x in plan_lines(plan, []) if x.startswith("- Testbed")]
        if name == "variant":
            key = warm_config_from_dict(warm).key()
            assert key != WarmStartConfig().key()
            assert plan["testbed"] == {"warm_config": warm, "warm_key": key,
                                       "train_overrides": None}
        else:   # the default's key too: the default changes between testbed versions
            assert plan["testbed"]["warm_key"] == WarmStartConfig().key()
    assert lines["default"] == [f"- Testbed: the default warm start (key "
                                f"{WarmStartConfig().key()}) and trainer settings."]
    (line,) = lines["variant"]
    assert '"corpus": {"add2": {"sft_weight": 0.8}}' in line
    assert f"(key {warm_config_from_dict(warm).key()})" in line


def test_a_resume_on_another_default_testbed_is_a_stated_plan_change(tmp_path):
    """The default warm start changes between testbed versions (v3 -> v4 doubled the
    filler); a campaign registered on one and resumed on another records the change."""
    from graph.campaign.cli import parse_args
    from graph.campaign.plan import make_plan, register
    from graph.campaign.stages import State, load_config
    from trainers.local.warmstart import WarmStartConfig

    args = parse_args(["--directive", "accurate and concise", "--out", str(tmp_path)])
    plan = make_plan(args, load_config(args))
    old = json.loads(json.dumps(plan))
    old["testbed"]["warm_key"] = "5f7771f59c46"          # testbed v3's default warm start
    state = State(tmp_path)
    assert register(tmp_path, state, old) == []
    assert "(key 5f7771f59c46)" in (tmp_path / "plan.md").read_text()
    changes = register(tmp_path, State(tmp_path), plan)
    assert [(c["field"], c["before"], c["after"]) for c in changes] == [
        ("testbed.warm_key", "5f7771f59c46", WarmStartConfig().key())]
    assert register(tmp_path, State(tmp_path), plan) == changes  # stated once, kept


def test_step_deltas_pair_seeds_at_every_evaluation_both_runs_have():
    from graph.campaign.stages import step_deltas

    def run(seed, curve, final, steps=40):
        return {"seed": seed, "steps_done": steps,
                "evals": [{"step": s, "overall": o, "length": n} for s, o, n in curve],
                "final": {"overall": final[0], "length": final[1]}}

    ref = [run(1, [(20, 80, 40), (30, 80, 40)], (82, 40)), run(2, [(20, 70, 40)], (72, 50)),
           run(9, [(20, 0, 1)], (0, 1))]                   # seed 9: the candidate lacks it
    cand = [run(1, [(20, 81, 30), (30, 85, 30)], (80, 30)), run(2, [(20, 68, 30)], (71, 30))]
    got = step_deltas(cand, ref)
    # step 30 is missing from seed 2's runs, so only the steps every pair has
    assert [g["step"] for g in got] == [20, 40]
    assert got[0] == {"step": 20, "delta_overall": pytest.approx(-0.5), "seeds": 2,
                      "shorter_pct": pytest.approx(25.0)}
    assert got[1]["delta_overall"] == pytest.approx(-1.5)
    assert got[1]["shorter_pct"] == pytest.approx(100 * (45 - 30) / 45)
    assert step_deltas([], ref) == []


def test_the_best_baseline_is_the_top_mean_and_a_stage_with_none_says_which():
    from graph.campaign.stages import CampaignError, _best_baseline

    rows = [{"algorithm": "grpo", "overall_mean": 80.0}, {"algorithm": "rloo"},
            {"algorithm": "gspo", "overall_mean": 82.0},
            {"algorithm": "winner:x", "overall_mean": 90.0}]
    assert _best_baseline(rows, ["grpo", "rloo", "gspo"]) == "gspo"  # winner not a baseline
    with pytest.raises(CampaignError, match="every baseline failed in the transfer stage"):
        _best_baseline([{"algorithm": "rloo"}], ["rloo"], "transfer")


def test_rerun_resumes_without_training_again(campaign):
    tmp, _ = campaign
    cache = tmp / "home" / "campaign-cache"
    before = sorted(p.name for p in cache.iterdir())
    r = _campaign(tmp, *ARGS)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "already finished" in r.stdout
    assert sorted(p.name for p in cache.iterdir()) == before  # every run came from cache


def test_the_plan_is_registered_before_training_and_followed(campaign):
    from datetime import datetime, timezone

    from memory.archive import Archive

    tmp, _ = campaign
    out = tmp / "out"
    plan = json.loads((out / "plan.json").read_text())
    data = json.loads((out / "campaign.json").read_text())
    with Archive(tmp / "home") as a:
        started = a.run(data["run_id"]).started
    registered = datetime.strptime(plan["registered_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc)
    if started.tzinfo is None:
        started = started.replace(tzinfo=timezone.utc)
    assert registered <= started.replace(microsecond=0)  # before the search began
    assert plan["search"] == {"candidates": 2, "width": 2, "steps": 2,
                              "seeds_per_candidate": 2, "search_seed": 3,
                              "selection": "greedy", "without_genes": ["paper"],
                              "compose_rate": 1.0, "split": "val"}
    assert plan["promote"]["seeds"] == [1000, 1001] and plan["promote"]["steps"] == 3
    assert plan["test"]["seeds"] == [2000, 2001]
    assert plan["test"]["algorithms"] == ["winner", "grpo", "rloo"]
    assert plan["confirm"]["seeds"] == [2002] and "unconditional" in plan["confirm"]["rule"]
    assert plan["verdicts"]["margin"] == 1.0
    md = (out / "campaign.md").read_text()
    assert "## Preregistered plan" in md and (out / "plan.md").read_text().strip() in md
    assert ("- promotion seeds: planned 1000..1001 (2), ran 1000..1001 (2) (as planned)"
            in md)
    assert "- confirmation seeds: planned 2002..2002 (1), ran 2002..2002 (1) (as planned)" in md
    assert "deviation" not in md and "Changed after the start" not in md
    assert data["plan_changes"] == []


def test_a_plan_changed_after_the_start_is_stated(campaign):
    tmp, _ = campaign
    out = tmp / "out"
    registered = (out / "plan.json").read_text()
    r = _campaign(tmp, *ARGS, "--margin", "0.5")
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((out / "campaign.json").read_text())
    fields = {c["field"]: (c["before"], c["after"]) for c in data["plan_changes"]}
    # under "concise" the margin is also the promotion's winner rule (the contract)
    assert fields["verdicts.margin"] == (1.0, 0.5) and set(fields) == {
        "verdicts.margin", "verdicts.rule", "promote.rule"}
    assert "within 0.5 point(s) of GRPO's" in fields["promote.rule"][1]
    md = (out / "campaign.md").read_text()
    assert "Changed after the start:" in md and "verdicts.margin 1.0 -> 0.5" in md
    assert "- verdict margin: planned 0.5, ran 0.5 (as planned)" in md
    assert (out / "plan.json").read_text() == registered  # the registration is never rewritten


@pytest.mark.parametrize("args,message", [
    (["--candidates", "0"], "--candidates must be at least 1"),
    (["--seeds", "1"], "at least 2"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--seeds", "5", "--confirm-seeds", "4"], "--confirm-seeds must exceed --seeds (5)"),
    (["--margin", "-1"], "--margin must be a number >= 0"),
    (["--margin", "nan"], "--margin must be a number >= 0"),
    (["--screen-seeds", "0"], "--screen-seeds must be at least 1"),
    (["--rank-sample", "-1"], "--rank-sample must be 0 or more"),
    (["--selection", "best"], "invalid choice: 'best'"),
    (["--without-genes", "kl=bogus"], "unknown gene 'kl=bogus'"),
    (["--compose-rate", "-1"], "'-1' is not a probability in [0, 1]"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    r = _campaign(tmp_path, *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_unknown_baseline_is_refused_before_any_test_training(tmp_path):
    from graph.campaign.cli import parse_args
    from graph.campaign.stages import CampaignError, test_stage
    from rich.console import Console

    args = parse_args(["--directive", "accurate", "--out", str(tmp_path),
                       "--baselines", "grpo,nope"])
    with pytest.raises(CampaignError, match=r"unknown: \['nope'\]"):
        test_stage(args, tmp_path, ("w", "x"), {}, Console(quiet=True))
    assert not (tmp_path / "campaign-cache").exists()


def test_out_dir_of_another_directive_is_refused(campaign):
    tmp, _ = campaign
    r = _campaign(tmp, *ARGS, directive="accurate")
    assert r.returncode == 2 and "holds a campaign" in r.stderr


@pytest.mark.parametrize("low,high,word", [
    (0.5, 3.0, "better"), (-3.0, -0.2, "worse"), (-0.8, 2.0, "not worse"),
    (-1.5, 2.0, "inconclusive"), (float("-inf"), float("inf"), "inconclusive")])
def test_overall_verdict_reads_the_paired_ci(low, high, word):
    from graph.campaign.report import overall_verdict
    assert overall_verdict({"low": low, "high": high, "mean": 0.0}, margin=1.0) == word


def test_verdicts_from_real_paired_cis():
    """Verdicts computed from the same paired-CI code the report uses, on seeded numbers."""
    import numpy as np

    from graph.campaign.report import verdicts
    from evals.stats import paired_diff_ci
    from trainers.local.compare import _ci

    rng = np.random.default_rng(0)
    grpo_o = 50 + rng.normal(0, 3, 8)
    win_o = grpo_o + 2.0 + rng.normal(0, 0.5, 8)        # clearly better
    grpo_l = 40 + rng.normal(0, 2, 8)
    win_l = grpo_l - 10 + rng.normal(0, 1, 8)          # clearly shorter
    rows = [{"algorithm": "grpo", "overall_mean": grpo_o.mean(), "mean_length": grpo_l.mean()},
            {"algorithm": "winner:x", "overall_mean": win_o.mean(), "mean_length": win_l.mean(),
             "delta_vs_baseline_ci95": _ci(paired_diff_ci(list(grpo_o), list(win_o))),
             "length_delta_vs_baseline_ci95": _ci(paired_diff_ci(list(grpo_l), list(win_l)))}]
    v = verdicts({"rows": rows, "winner_label": "winner:x", "best_baseline": "grpo",
                  "vs_best_baseline": {}}, margin=1.0)
    assert v["vs_grpo"]["overall"] == "better" and v["vs_grpo"]["length"] == "shorter"
    assert "contract" not in v  # "accurate": no length contract
    concise = verdicts({"rows": rows, "winner_label": "winner:x", "best_baseline": "grpo",
                        "vs_best_baseline": {}}, margin=1.0, length_directive=True)
    assert concise["contract"] == "met"
    worse = [rows[0], {**rows[1], "delta_vs_baseline_ci95": _ci(paired_diff_ci(
        list(grpo_o), list(grpo_o - 1.5 + rng.normal(0, 0.3, 8))))}]
    assert verdicts({"rows": worse, "winner_label": "winner:x", "best_baseline": "grpo",
                     "vs_best_baseline": {}}, margin=1.0, length_directive=True
                    )["contract"] == "not met"   # shorter, but 1.5 points worse
    pct = 100 * (win_l.mean() / grpo_l.mean() - 1)
    assert v["vs_grpo"]["length_change_pct"] == pytest.approx(pct)
    lo, hi = v["vs_grpo"]["length_change_pct_ci95"]
    assert lo < pct < hi < 0


def test_the_winner_under_a_length_directive_is_the_shortest_within_the_margin():
    from evals.objective import objective_from_directive
    from graph.campaign.stages import pick_winner

    rows = [  # sorted by fitness, as promote() gives them
        {"name": "short-but-worse", "fitness": 30.0, "shorter_pct": 40.0,
         "within_margin": False},
        {"name": "accurate", "fitness": 5.0, "shorter_pct": 5.0, "within_margin": True},
        {"name": "concise", "fitness": 4.0, "shorter_pct": 20.0, "within_margin": True}]
    concise = objective_from_directive("accurate and concise")
    winner, rule = pick_winner(rows, concise)
    assert winner["name"] == "concise" and rule.startswith("the shortest of the 2 candidate")
    none_kept = [dict(r, within_margin=False) for r in rows]
    winner, rule = pick_winner(none_kept, concise)
    assert winner["name"] == "short-but-worse" and rule.startswith("no promoted candidate")
    winner, rule = pick_winner(rows, objective_from_directive("accurate"))
    assert winner["name"] == "short-but-worse" and "best mean fitness" in rule


def test_transfer_table_grpo_row_has_no_difference_with_itself():
    """GRPO's transfer row shows '-' (as in the test table), not a '+0.0 [+0.0, +0.0]'
    CI of GRPO against itself; the other rows keep their paired CI."""
    from graph.campaign.report import transfer_lines

    def row(name, text):
        return {"algorithm": name, "seeds": [3000, 3001], "overall_mean": 40.0,
                "families": {"sub2": 50.0, "mul3": 30.0},
                "families_t1": {"sub2": 45.0, "mul3": 25.0}, "mean_length": 32.0,
                "validity": 99.8, "delta_vs_baseline_ci95": {"text": text}}
    lines = transfer_lines({"seeds": [3000, 3001], "best_baseline": "rloo",
                            "rows": [row("grpo", "+0.0 [+0.0, +0.0]"),
                                     row("winner:x", "+2.8 [+0.7, +5.0]")]})
    grpo = next(x for x in lines if x.startswith("| grpo |"))
    winner = next(x for x in lines if x.startswith("| winner:x |"))
    assert grpo.endswith("| 32.0 | 99.8 | - |")
    assert winner.endswith("| +2.8 [+0.7, +5.0] |")
