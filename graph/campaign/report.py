"""The campaign's report: verdicts in words from the paired CIs, the markdown report,
the best-so-far plot and the terminal summary. Reads results; trains nothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from evals.tasks import FAMILIES, HARD_FAMILY, PASS_K, TRANSFER_FAMILIES
from graph.campaign.screen import reliability_line
from graph.campaign.stages import best_so_far_curve


def plot_best_so_far(home: Path, run_id: int, path: Path, lines: dict[str, float]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memory.archive import Archive

    with Archive(home) as a:
        cands = [c for c in a.candidates(run_id) if c.generation > 0]
        seed = [c for c in a.candidates(run_id) if c.generation == 0]
    xs = np.arange(1, len(cands) + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter(xs, [c.fitness if c.fitness is not None else np.nan for c in cands], s=14,
               color="0.6", label="candidate (val, screening budget)")
    ax.step(xs, best_so_far_curve(cands), where="post", color="C0", lw=2, label="best so far")
    if seed and seed[0].fitness is not None:
        ax.axhline(seed[0].fitness, color="k", ls="--", lw=1, label="GRPO (seed)")
    for i, (k, v) in enumerate(lines.items()):
        ax.axhline(v, color=f"C{i + 1}", ls=":", lw=1.2, label=k)
    ax.set_xlabel("candidates evaluated")
    ax.set_ylabel("fitness (val)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- verdicts

def overall_verdict(ci: dict | None, margin: float) -> str:
    """A paired 95% CI of a difference in Overall, in words: ``better`` (CI above 0),
    ``worse`` (CI below 0), ``not worse`` (lower bound above -margin), else
    ``inconclusive``."""
    if not ci or not np.isfinite(ci.get("low", np.nan)):
        return "inconclusive"
    if ci["low"] > 0:
        return "better"
    if ci["high"] < 0:
        return "worse"
    if ci["low"] > -margin:
        return "not worse"
    return "inconclusive"


def length_verdict(ci: dict | None) -> str:
    if not ci or not np.isfinite(ci.get("low", np.nan)):
        return "inconclusive"
    if ci["high"] < 0:
        return "shorter"
    if ci["low"] > 0:
        return "longer"
    return "no clear difference"


def verdicts(test: dict, margin: float, length_directive: bool = False,
             transfer: dict | None = None) -> dict:
    """The winner against GRPO and against the best other baseline, in words. Under a
    length directive also the contract (evals/objective.py): ``met`` when the winner is
    not worse than GRPO within the margin and shorter, both by paired 95% CIs."""
    rows = {r["algorithm"]: r for r in test["rows"]}
    w, g = rows.get(test["winner_label"], {}), rows.get("grpo", {})
    out: dict = {"margin": margin}
    if "overall_mean" not in w or "overall_mean" not in g:
        out["vs_grpo"] = {"overall": "inconclusive", "length": "inconclusive"}
    else:
        dlen = w.get("length_delta_vs_baseline_ci95")
        out["vs_grpo"] = {
            "overall": overall_verdict(w.get("delta_vs_baseline_ci95"), margin),
            "length": length_verdict(dlen),
            "length_change_pct": (100.0 * (w["mean_length"] / g["mean_length"] - 1.0)
                                  if g["mean_length"] else None)}
        if dlen and g["mean_length"] and np.isfinite(dlen.get("low", np.nan)):
            out["vs_grpo"]["length_change_pct_ci95"] = [
                100.0 * dlen["low"] / g["mean_length"], 100.0 * dlen["high"] / g["mean_length"]]
    if length_directive:
        vg = out["vs_grpo"]
        out["contract"] = ("met" if vg["overall"] in ("better", "not worse")
                           and vg["length"] == "shorter" else "not met")
    vb = test.get("vs_best_baseline") or {}
    out["vs_best_baseline"] = {"baseline": test.get("best_baseline"),
                               "overall": overall_verdict(vb.get("overall"), margin),
                               "length": length_verdict(vb.get("length"))}
    if transfer is not None:
        rows = {r["algorithm"]: r for r in transfer["rows"]}
        w = rows.get(transfer["winner_label"], {})
        tb = transfer.get("vs_best_baseline") or {}
        out["transfer"] = {
            "vs_grpo": overall_verdict(w.get("delta_vs_baseline_ci95"), margin),
            "best_baseline": transfer.get("best_baseline"),
            "vs_best_baseline": overall_verdict(tb.get("overall"), margin)}
    return out


def verdict_lines(payload: dict) -> list[str]:
    v, t = payload["verdicts"], payload["test"]
    rows = {r["algorithm"]: r for r in t["rows"]}
    w = rows.get(t["winner_label"], {})
    m = v["margin"]
    say = {"better": "beats", "worse": "is worse than", "not worse":
           f"is not worse than (95% CI lower bound above -{m:g})",
           "inconclusive": "cannot be told apart from"}
    lines = []
    if "delta_vs_baseline_ci95" in w:
        vg = v["vs_grpo"]
        lines.append(f"- Overall: the winner {say[vg['overall']]} GRPO: "
                     f"{w['delta_vs_baseline_ci95']['text']} points (paired 95% CI).")
        pct = vg.get("length_change_pct")
        pci = vg.get("length_change_pct_ci95")
        lines.append(f"- Length: {vg['length']} than GRPO"
                     if vg["length"] in ("shorter", "longer") else
                     f"- Length: {vg['length']} from GRPO")
        if pct is not None:
            lines[-1] += (f", {pct:+.1f}%"
                          + (f" [{pci[0]:+.1f}%, {pci[1]:+.1f}%]" if pci else "")
                          + f" ({w['length_delta_vs_baseline_ci95']['text']} tokens).")
    if "contract" in v:
        lines.append(f"- Contract (shorter than GRPO, Overall within {m:g} point(s) of "
                     f"GRPO's, both by paired 95% CIs): **{v['contract']}**.")
    if "transfer" in v:
        tv = v["transfer"]
        transfers = tv["vs_grpo"] in ("better", "not worse")
        tr = {r["algorithm"]: r for r in payload["transfer"]["rows"]}
        ci = tr.get(payload["transfer"]["winner_label"], {}).get(
            "delta_vs_baseline_ci95", {}).get("text", "n/a")
        lines.append(f"- Transfer (RL on families the search never saw): the winner "
                     f"{say[tv['vs_grpo']]} GRPO there, {ci} points; it "
                     + ("transfers" if tv["vs_grpo"] == "better" else
                        "holds up without a shown gain" if transfers else
                        "is not shown to transfer") + ".")
    vb = v["vs_best_baseline"]
    if vb["baseline"] == "grpo":
        lines.append("- GRPO is the best shipped baseline on this test.")
    elif vb["baseline"]:
        ci = t["vs_best_baseline"].get("overall", {}).get("text", "n/a")
        lines.append(f"- Against the best shipped baseline ({vb['baseline']}): the winner "
                     f"{say[vb['overall']]} it, {ci} points.")
    return lines


# ----------------------------------------------------------------------------- report

def _mechanism_bullets(words: str) -> list[str]:
    """Genome.describe() marks changed genes with '* ': one markdown bullet per gene."""
    out = []
    for line in (words or "").splitlines():
        if not line.strip():
            continue
        changed = line.startswith("* ")
        out.append(f"- {'**changed** ' if changed else ''}{line[2:] if changed else line.strip()}")
    return out


def _vs_grpo(row: dict, key: str) -> str:
    """A table row's paired CI vs GRPO; "-" on GRPO's own row (no difference with itself)
    or where the row has none."""
    return "-" if row["algorithm"] == "grpo" or key not in row else row[key]["text"]


def transfer_lines(transfer: dict | None) -> list[str]:
    """The transfer stage's table: per algorithm, Overall and accuracy per transfer
    family on their test split, paired deltas vs GRPO."""
    if not transfer:
        return []
    fams = [f.name for f in TRANSFER_FAMILIES]
    s = transfer["seeds"]
    lines = ["", f"## Transfer: RL on families the search never saw ({len(s)} paired seeds "
                 f"{s[0]}..{s[-1]}, test split)", "",
             "| algorithm | seeds | transfer Overall | "
             + " | ".join(f"{f} greedy | {f} T=1" for f in fams)
             + " | length | valid % | dOverall vs GRPO |", "|---" * (6 + 2 * len(fams)) + "|"]
    nan = float("nan")
    for r in transfer["rows"]:
        if "overall_mean" not in r:
            lines.append(f"| {r['algorithm']} | 0 | failed |" + " |" * (3 + 2 * len(fams)))
            continue
        t1 = r.get("families_t1", {})
        lines.append(f"| {r['algorithm']} | {len(r['seeds'])} | {r['overall_mean']:.1f} | "
                     + " | ".join(f"{r['families'].get(f, nan):.1f} | {t1.get(f, nan):.1f}"
                                  for f in fams)
                     + f" | {r['mean_length']:.1f} | {r['validity']:.1f} | "
                       f"{_vs_grpo(r, 'delta_vs_baseline_ci95')} |")
    lines += ["", "Transfer Overall = mean of each family's greedy accuracy and T=1 accuracy "
                  "(pass@1 over 16 draws), evals.tasks.TRANSFER_WEIGHTS."]
    vb = transfer.get("vs_best_baseline") or {}
    lines += ["", f"Winner vs the best baseline on transfer ({transfer['best_baseline']}): "
                  f"{vb.get('overall', {}).get('text', 'n/a')} (paired 95% CI)."]
    return lines


def plot_pareto(test: dict, path: Path) -> Path | None:
    """The test split's Overall against length: the winner, GRPO and every baseline."""
    from graph.report.plots import pareto_plot

    points = [{"name": r["algorithm"].removeprefix("winner:"), "overall": r["overall_mean"],
               "length": r["mean_length"],
               "kind": ("winner" if r["algorithm"] == test["winner_label"] else
                        "grpo" if r["algorithm"] == "grpo" else "baseline")}
              for r in test["rows"] if "overall_mean" in r]
    png = pareto_plot(points, "held-out test: Overall vs length (means over the paired "
                              "seeds)", split="test")
    if png is None:
        return None
    path.write_bytes(png)
    return path


def write_report(out: Path, payload: dict) -> Path:
    t = payload["test"]
    lines = [f"# Campaign: \"{payload['directive']}\"", "",
             f"Objective: {payload['objective']}", "",
             f"Command: `{payload['command']}`", "",
             f"Search: parent selection `{payload['args'].get('selection', 'gpucb')}`; "
             "catalog " + (f"without {', '.join(payload['args']['exclude_genes'])}"
                           if payload["args"].get("exclude_genes") else "complete")
             + f"; composition rate {_rate(payload['args'].get('compose_rate'))}.", "",
             *_plan_section(payload),
             "## Verdict (held-out test split)", "", *verdict_lines(payload), "",
             "## Held-out test split "
             f"({len(t['seeds'])} paired seeds {t['seeds'][0]}..{t['seeds'][-1]}"
             + (f"; GRPO, the winner and the best baseline also seeds {t['confirm_seeds'][0]}.."
                f"{t['confirm_seeds'][-1]}" if t.get("confirm_seeds") else "") + ")", "",
             "| algorithm | seeds | Overall | " + " | ".join(f.name for f in FAMILIES)
             + f" | {HARD_FAMILY} pass@{PASS_K} | length | valid % | dOverall vs GRPO | "
               "dLength vs GRPO |",
             "|---" * (8 + len(FAMILIES)) + "|"]
    for r in t["rows"]:
        if "overall_mean" not in r:
            lines.append(f"| {r['algorithm']} | 0 | failed |" + " |" * (6 + len(FAMILIES)))
            continue
        lines.append(f"| {r['algorithm']} | {len(r['seeds'])} | {r['overall_mean']:.1f} | "
                     + " | ".join(f"{v:.1f}" for v in r["families"].values())
                     + f" | {r[f'pass@{PASS_K}']:.1f} | {r['mean_length']:.1f} | "
                       f"{r['validity']:.1f} | {_vs_grpo(r, 'delta_vs_baseline_ci95')} | "
                       f"{_vs_grpo(r, 'length_delta_vs_baseline_ci95')} |")
    lines += transfer_lines(payload.get("transfer"))
    vb = t["vs_best_baseline"]
    lines += ["", f"Winner vs the best baseline ({t['best_baseline']}): Overall "
                  f"{vb.get('overall', {}).get('text', 'n/a')}, length "
                  f"{vb.get('length', {}).get('text', 'n/a')} (paired 95% CI).", "",
              "## Winner", "", "Lineage: " + " -> ".join(
                  f"{x['name']} ({'-' if x['fitness'] is None else format(x['fitness'], '.1f')})"
                  for x in payload["lineage"]), "",
              "Mechanism (**changed** marks a gene that differs from GRPO's):", "",
              *_mechanism_bullets(payload["mechanism"]["words"]), "",
              "```", payload["mechanism"]["math"], "```", "",
              "## Promotion (val, full budget)", "",
              "| candidate | fitness | Overall | length | seeds | screening fitness |",
              "|---|---|---|---|---|---|"]
    ref = payload["promote"].get("reference")
    if ref:
        lines.append(f"| grpo (reference, same seeds) | - | {ref['overall']:.1f} | "
                     f"{ref['length']:.1f} | {len(payload['promote'].get('seeds', []))} | - |")
    for r, sampled in [(r, False) for r in payload["promote"]["rows"]] + [
            (r, True) for r in payload["promote"].get("sampled_rows", [])]:
        screen = (f"{r['screen_fitness']:.1f} ({r['screen_seeds']} seeds)"
                  if "screen_fitness" in r else "-")
        name = f"{r['name']} (random sample, not eligible)" if sampled else r["name"]
        lines.append(f"| {name} | {r['fitness']:.1f} | {r['overall']:.1f} | "
                     f"{r['length']:.1f} | {r['seeds']} | {screen} |")
    if payload["promote"].get("winner_rule"):
        lines += ["", f"Winner rule: {payload['promote']['winner_rule']}: "
                      f"**{payload['promote']['winner']}**."]
    lines += ["", rank_line(payload["promote"].get("screen_vs_promotion"))]
    if "screen_reliability" in payload["promote"]:  # campaigns before it have none
        lines += ["", reliability_line(payload["promote"]["screen_reliability"])]
    lines += promotion_curve_lines(payload)
    lines += composed_lines(payload.get("composed"))
    if payload.get("rediscovery"):
        lines += ["", "## Rediscovery", ""]
        for k, v in payload["rediscovery"].items():
            if k == "cpu_seconds" or "score" not in v:
                continue
            close = [c for c in v["closest"] if c["shared_genes"]]
            lines.append(f"- {k}: screening score {v['score']:.1f}; best-so-far reached it "
                         f"after {v['reached_after'] or 'never (within the budget)'} "
                         "candidates; " + ("closest genomes: " + "; ".join(
                             f"#{c['index']} {c['name']} shares {len(c['shared_genes'])}/"
                             f"{v['known_genes']} gene kinds ({', '.join(c['shared_genes'])})"
                             for c in close) if close else
                             f"no candidate carries any of its {v['known_genes']} genes "
                             "that GRPO lacks"))
    comp = payload["compute"]
    lines += ["", "## Compute", "",
              f"CPU-seconds: search {comp['search_cpu_s']:.0f}, promotion "
              f"{comp['promote_cpu_s']:.0f}, test {comp['test_cpu_s']:.0f}, transfer "
              f"{comp.get('transfer_cpu_s', 0):.0f}, rediscovery "
              f"{comp['rediscovery_cpu_s']:.0f}; total {comp['total_cpu_s']:.0f} "
              f"({comp['total_cpu_s'] / 3600:.2f} CPU-hours). Wall time: search "
              f"{comp['search_wall_s']:.0f} s, promotion {comp.get('promote_wall_s', 0):.0f} s"
              f", test {comp.get('test_wall_s', 0):.0f} s, transfer "
              f"{comp.get('transfer_wall_s', 0):.0f} s.", *phase_lines(comp.get("phase_cpu_s")),
              "", "![best so far](best_so_far.png)", ""]
    if (out / "pareto.png").is_file():
        lines += ["![Overall vs length on the test split](pareto.png)", ""]
    path = out / "campaign.md"
    path.write_text("\n".join(lines))
    return path


STAGE_NAMES = {"search": "Search", "promote": "Promotion", "test": "Test",
               "transfer": "Transfer"}


def phase_lines(phases: dict | None) -> list[str]:
    """Where each stage's training CPU went, by trainer phase (shares of the stage's CPU
    in its training runs); nothing for a campaign before the trainer recorded it."""
    if not phases:
        return []
    lines = ["", "Where the training CPU went, by phase (share of each stage's runs):", ""]
    from trainers.local.trainer import phase_shares

    for stage, split in phases.items():
        lines.append(f"- {STAGE_NAMES.get(stage, stage)} ({sum(split.values()):,.0f} "
                     f"CPU-s): {phase_shares(split)}")
    return lines


def promotion_curve_lines(payload: dict) -> list[str]:
    """The promoted candidates against GRPO at each evaluation of the promotion runs
    (same seeds): Overall difference and % shorter per step, the screen's budget marked,
    so a cost that shows only after the screen's steps is visible."""
    rows = [r for r in payload["promote"]["rows"] + payload["promote"].get("sampled_rows", [])
            if r.get("by_step")]
    if not rows:
        return []
    screen = (payload.get("plan") or {}).get("search", {}).get("steps")
    steps = sorted({s["step"] for r in rows for s in r["by_step"]})
    head = [f"step {s}" + (" (the screen's budget)" if s == screen else "") for s in steps]
    lines = ["", "Over training (val, the promotion runs, paired with GRPO's seeds): "
                 "dOverall vs GRPO / % shorter at each evaluation.", "",
             "| candidate | " + " | ".join(head) + " |", "|---" * (1 + len(steps)) + "|"]
    for r in rows:
        at = {s["step"]: s for s in r["by_step"]}
        lines.append(f"| {r['name']} | " + " | ".join(
            f"{at[s]['delta_overall']:+.1f} / {at[s]['shorter_pct']:.0f}%" if s in at else "-"
            for s in steps) + " |")
    return lines


def _plan_section(payload: dict) -> list[str]:
    """The preregistered plan, any change made after the start, and what ran against it."""
    from graph.campaign.plan import plan_lines

    if not payload.get("plan"):
        return []
    return [*plan_lines(payload["plan"], payload.get("plan_changes", [])), "",
            "What ran, against the plan in force:", "", *payload.get("plan_outcome", []), ""]


def _rate(rate) -> str:
    return "0.3 (the default)" if rate is None else f"{rate:g}"


def composed_lines(comp: dict | None) -> list[str]:
    """The promoted (and sampled) candidates whose mechanism the scientist composed from
    primitives rather than drew from the catalog: math and code."""
    if not comp:
        return []
    lines = ["", "## Composed mechanisms", "",
             f"{comp['with_composed']} of the search's {comp['candidates']} candidates carry "
             "a gene composed from primitives (agents/builtin/expr.py); "
             f"{len(comp['promoted'])} of them reached promotion."]
    for c in comp["promoted"]:
        lines += ["", f"### {c['name']}", ""]
        for g in c["genes"]:
            same = (f"computes the signal of the catalog's {g['slot']}={g['catalog_match']}"
                    if g["catalog_match"] else "no catalog gene computes this signal")
            lines.append(f"- {g['slot']}: `{g['math']}` ({same}; expression "
                         f"`{g['expression']}`)")
        lines += ["", "```python", c["code"].rstrip(), "```"]
    return lines


def rank_line(rc: dict | None) -> str:
    """The screen-vs-promotion rank correlation in one sentence."""
    if not rc:
        return "Screen vs promotion: not measured."
    if rc.get("rho") is None:
        return f"Screen vs promotion (Spearman, {rc['n']} candidates): {rc.get('note')}."
    return (f"Screen vs promotion (Spearman's rho over the {rc['n']} promoted and sampled "
            f"candidates): {rc['rho']:+.2f} (p = {rc['p']:.2f}).")


def print_summary(payload: dict, console: Console) -> None:
    t = payload["test"]
    tab = Table(title=f"\"{payload['directive']}\": held-out test, paired seeds; deltas vs "
                      "GRPO (95% CI)")
    for col in ("algorithm", "seeds", "Overall", "length", "valid%", "dOverall", "dLength"):
        tab.add_column(col, justify="left" if col == "algorithm" else "right")
    for r in t["rows"]:
        if "overall_mean" not in r:
            tab.add_row(r["algorithm"], "0", "failed", "", "", "", "")
            continue
        tab.add_row(r["algorithm"], str(len(r["seeds"])), f"{r['overall_mean']:.1f}",
                    f"{r['mean_length']:.1f}", f"{r['validity']:.1f}",
                    _vs_grpo(r, "delta_vs_baseline_ci95"),
                    _vs_grpo(r, "length_delta_vs_baseline_ci95"))
    console.print(tab)
    console.print(rank_line(payload["promote"].get("screen_vs_promotion")))
    if "screen_reliability" in payload["promote"]:
        console.print(reliability_line(payload["promote"]["screen_reliability"]))
    for line in verdict_lines(payload):
        console.print(line[2:])
