"""A discovery campaign: search, promote, and test on held-out data.

    python -m graph.campaign --directive "accurate" --candidates 64 --seeds 5 --out out/campaign-acc

Multi-fidelity, three stages, each resumable (rerun the same command after a kill):

1. **search** — the POISE loop (builtin agents, ``graph.run``) proposes ``--candidates``
   candidates from GRPO, each trained at a screening budget (``--screen-steps``: 40, or
   the full budget under a length directive) on ``--screen-seeds`` seeds and scored on
   the val split under the directive's objective.
2. **promote** — the ``--promote`` best distinct candidates and GRPO are retrained at the
   full budget with ``--promote-seeds`` fresh seeds, still on val; the best mean fitness
   is the campaign's winner (under a length directive, the contract's rule: the shortest
   candidate whose mean Overall is within ``--margin`` of GRPO's on the same seeds).
   Selection never sees the test split.
3. **test** — the winner and every shipped baseline are retrained with ``--seeds`` fresh
   seeds (paired: the same seeds for all) and evaluated on the held-out test split.
   Reported: Overall, per family, pass@k, length, validity, paired 95% CIs vs GRPO and
   vs the best baseline, the winner's lineage and mechanism. ``--confirm-seeds K`` then
   trains GRPO, the winner and the best other baseline on more paired seeds (K in all),
   for narrower CIs where they matter.

The plan (every stage's seeds, budgets and decision rules) is written to ``OUT/plan.md``
and ``OUT/plan.json`` before anything trains and printed at the top of the report with what
ran against it; a rerun with other settings is allowed and the change is stated.

``--rediscovery`` also trains the known algorithms the catalog can express but the seed
population lacks (DAPO, Dr. GRPO as genomes) at the screening budget and seed, and says
after how many candidates the search's best-so-far reached each one's score, and which
candidates share most of their genes.

Writes ``OUT/campaign.json``, ``OUT/campaign.md``, ``OUT/best_so_far.png`` and
``OUT/pareto.png`` (the test split's Overall vs length, GRPO and the baselines marked); training
results are cached under ``<home>/campaign-cache`` (keyed by code, config and seed), so
two campaigns share their baseline test runs.

The package: ``stages`` (search, promote, test, rediscovery: what is trained and how it
is scored, as sandboxed jobs of trainers/local/jobs.py, like the loop's), ``screen`` (the
screen's reliability: how much of its ranking is seed noise), ``report``
(verdicts in words, the markdown report, the best-so-far plot, the terminal summary) and
``cli`` (this command).
"""
