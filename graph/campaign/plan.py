"""The campaign's preregistered plan: every stage's seeds and budgets, the decision rules
(the winner, the confirmation seeds, the verdicts' margin), written to ``OUT/plan.md``
and ``OUT/plan.json`` before anything trains, and checked against what ran.

A rerun with other settings (a resume after a kill, with a flag changed) is allowed, but
the change is recorded with the time it was made, and the report states it next to the
original plan; the original plan files are never rewritten."""
from __future__ import annotations

import json
import time
from pathlib import Path

from evals.tasks import TRANSFER_FAMILIES
from graph.campaign.stages import (PROMOTE_SEED_OFFSET, TEST_SEED_OFFSET,
                                   TRANSFER_SEED_OFFSET, baseline_names, full_steps)


def make_plan(args, cfg: dict) -> dict:
    """What the campaign will do, from its arguments and ``--config`` alone (nothing
    trained yet)."""
    from evals.objective import objective_from_directive

    steps = full_steps(args, cfg)
    baselines = baseline_names(args)
    test = list(range(TEST_SEED_OFFSET, TEST_SEED_OFFSET + args.seeds))
    confirm = (list(range(test[-1] + 1, TEST_SEED_OFFSET + args.confirm_seeds))
               if args.confirm_seeds else [])
    spec = objective_from_directive(args.directive)
    if spec.minimizes_length:
        winner_rule = (f"the shortest candidate whose mean Overall over the promotion seeds "
                       f"is within {args.margin:g} point(s) of GRPO's on the same seeds wins "
                       "(none: the best mean fitness)")
        contract = (f"; the contract is met when the Overall CI's lower bound > "
                    f"-{args.margin:g} and the length CI's upper bound < 0")
    else:
        winner_rule, contract = "the best mean fitness over the promotion seeds wins", ""
    return {
        "directive": args.directive,
        "objective": spec.describe(),
        "search": {"candidates": args.candidates, "width": args.width,
                   "steps": args.screen_steps, "seeds_per_candidate": args.screen_seeds,
                   "search_seed": args.seed, "selection": args.selection,
                   "without_genes": args.exclude_genes, "compose_rate": args.compose_rate,
                   "split": "val"},
        "promote": {"candidates": args.promote, "seeds": list(range(
                        PROMOTE_SEED_OFFSET, PROMOTE_SEED_OFFSET + args.promote_seeds)),
                    "rank_sample": args.rank_sample, "steps": steps, "split": "val",
                    "rule": f"{winner_rule}; GRPO is trained on the same seeds as the "
                            "fitness reference"},
        "test": {"algorithms": ["winner", *baselines], "seeds": test, "steps": steps,
                 "split": "test"},
        "transfer": ({"algorithms": ["winner", *baselines], "steps": steps, "split": "test",
                      "families": [f.name for f in TRANSFER_FAMILIES],
                      "seeds": list(range(TRANSFER_SEED_OFFSET,
                                          TRANSFER_SEED_OFFSET + args.seeds))}
                     if args.transfer else None),
        "confirm": {"seeds": confirm,
                    "rule": ("unconditional: GRPO, the winner and the best other baseline "
                             f"are trained on seeds {confirm[0]}..{confirm[-1]} whatever the "
                             "first seeds show" if confirm else
                             "none: the verdicts use the test seeds only")},
        "testbed": _testbed(cfg),
        "verdicts": {"margin": args.margin,
                     "rule": "paired 95% t CI of the difference in Overall: better if its "
                             "lower bound > 0, worse if its upper bound < 0, not worse if "
                             f"its lower bound > -{args.margin:g}, else inconclusive"
                             + contract},
    }


def register(out: Path, state, plan: dict) -> list[dict]:
    """Write the plan before the first training; on a rerun, record any change. Returns
    every change recorded so far (``{"at", "field", "before", "after"}``)."""
    first = state.get("plan")
    if first is None:
        stamped = {**plan, "registered_at": _now()}
        (out / "plan.json").write_text(json.dumps(stamped, indent=2))
        (out / "plan.md").write_text("\n".join(plan_lines(stamped, [])) + "\n")
        state.set("plan", stamped)
        state.set("plan_changes", [])
        return []
    changes = list(state.get("plan_changes", []))
    current = _apply(first, changes)
    for key, value in plan.items():
        before = current.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            changes += [{"at": _now(), "field": f"{key}.{k}", "before": before.get(k),
                         "after": v} for k, v in value.items() if before.get(k) != v]
        elif before != value:
            changes.append({"at": _now(), "field": key, "before": before, "after": value})
    state.set("plan_changes", changes)
    return changes


def _apply(first: dict, changes: list[dict]) -> dict:
    """The plan in force: the registered one with the recorded changes applied."""
    plan = json.loads(json.dumps(first))
    for c in changes:
        if "." in c["field"]:
            key, sub = c["field"].split(".", 1)
            plan.setdefault(key, {})[sub] = c["after"]
        else:
            plan[c["field"]] = c["after"]
    return plan


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def followed(plan: dict, changes: list[dict], payload: dict) -> list[str]:
    """What ran against the plan in force: one line per check, '' when none deviates."""
    plan = _apply(plan, changes)
    prom, test = payload["promote"], payload["test"]
    out = []

    def check(what: str, planned, ran) -> None:
        out.append(f"- {what}: planned {planned}, ran {ran}"
                   + (" (as planned)" if planned == ran else " (**deviation**)"))

    check("promotion seeds", _span(plan["promote"]["seeds"]), _span(prom.get("seeds", [])))
    check("candidates promoted", plan["promote"]["candidates"], len(prom["rows"]))
    check("test seeds", _span(plan["test"]["seeds"]), _span(test["seeds"]))
    check("confirmation seeds", _span(plan["confirm"]["seeds"]),
          _span(test.get("confirm_seeds", [])))
    ran = sorted(r["algorithm"] for r in test["rows"] if r["algorithm"] != test["winner_label"])
    check("test baselines", ", ".join(sorted(plan["test"]["algorithms"][1:])), ", ".join(ran))
    check("verdict margin", plan["verdicts"]["margin"], payload["verdicts"]["margin"])
    if plan.get("transfer") is not None or payload.get("transfer"):
        check("transfer seeds", _span((plan.get("transfer") or {}).get("seeds", [])),
              _span((payload.get("transfer") or {}).get("seeds", [])))
    return out


def _span(seeds: list[int]) -> str:
    if not seeds:
        return "none"
    return f"{seeds[0]}..{seeds[-1]} ({len(seeds)})"


def _testbed(cfg: dict) -> dict:
    """What the jobs train from: ``--config``'s warm start (its fields) or None for the
    default, the warm start's cache key either way (the default changes between testbed
    versions, so a resume on another version shows as a plan change), and the train
    overrides."""
    from trainers.local.warmstart import WarmStartConfig, warm_config_from_dict

    warm = cfg.get("warm_config")
    key = (warm_config_from_dict(warm) if warm else WarmStartConfig()).key()
    return {"warm_config": warm, "warm_key": key,
            "train_overrides": cfg.get("train_overrides")}


def _testbed_line(t: dict | None) -> str:
    if not t or (t.get("warm_config") is None and not t.get("train_overrides")):
        key = (t or {}).get("warm_key")
        return ("- Testbed: the default warm start"
                + (f" (key {key})" if key else "")
                + " and trainer settings.")
    parts = []
    if t.get("warm_config") is not None:
        parts.append(f"warm start {json.dumps(t['warm_config'], sort_keys=True)} (key "
                     f"{t['warm_key']})")
    if t.get("train_overrides"):
        parts.append(f"train overrides {json.dumps(t['train_overrides'], sort_keys=True)}")
    return f"- Testbed (--config): {'; '.join(parts)}."


def plan_lines(plan: dict, changes: list[dict]) -> list[str]:
    """The plan in markdown, as registered, then any change made after the start."""
    s, p, t, c, v = (plan[k] for k in ("search", "promote", "test", "confirm", "verdicts"))
    lines = [f"## Preregistered plan (registered {plan.get('registered_at', '?')}, before "
             "any training)", "",
             f"- Directive \"{plan['directive']}\"; objective: {plan['objective']}.",
             _testbed_line(plan.get("testbed")),
             f"- Search ({s['split']}): {s['candidates']} candidates, {s['width']} per round, "
             f"{s['steps']} steps x {s['seeds_per_candidate']} seed(s) each, search seed "
             f"{s['search_seed']}, selection {s['selection']}, catalog "
             + (f"without {', '.join(s['without_genes'])}" if s["without_genes"]
                else "complete") + ", composition rate "
             + ("0.3 (the default)" if s["compose_rate"] is None else f"{s['compose_rate']:g}")
             + ".",
             f"- Promotion ({p['split']}): the {p['candidates']} best distinct candidates and "
             f"GRPO, {p['steps']} steps, seeds {_span(p['seeds'])}; a random sample of "
             f"{p['rank_sample']} more for the rank correlation; {p['rule']}.",
             f"- Test ({t['split']}): {', '.join(t['algorithms'])}; {t['steps']} steps, "
             f"paired seeds {_span(t['seeds'])}.",
             f"- Confirmation seeds: {c['rule']}.",
             _transfer_line(plan.get("transfer")),
             f"- Verdicts: {v['rule']}."]
    if changes:
        lines += ["", "Changed after the start:", ""]
        lines += [f"- {x['at']}: {x['field']} {x['before']!r} -> {x['after']!r}"
                  for x in changes]
    return lines


def _transfer_line(t: dict | None) -> str:
    if t is None:
        return "- Transfer: none (--no-transfer)."
    return (f"- Transfer ({t['split']} split of {', '.join(t['families'])}, families the "
            f"search never saw): {', '.join(t['algorithms'])} trained with RL on them, "
            f"{t['steps']} steps, paired seeds {_span(t['seeds'])}.")
