"""The VERL backend: the same candidate module, trained by ``verl.trainer.main_ppo``.

- ``adapter``: wraps a candidate's hooks into verl's advantage-estimator and policy-loss
  signatures (``register_adv_est`` / ``register_policy_loss``).
- ``reward``: ``compute_score`` for verl's ``reward.custom_reward_function``: grades a
  ``\\boxed{}`` answer with math-verify and returns correct / valid / length.
- ``plugin``: writes the module verl imports on every Ray worker
  (``VERL_USE_EXTERNAL_MODULES``) that registers one candidate under a unique name.
- ``data``: ``python -m trainers.verl.data`` turns MATH / GSM8K JSONL or parquet into
  verl's parquet format.
- ``config`` / ``launcher``: the trainer config (YAML or env), the Hydra overrides of
  the GRPO recipe, a dry run, and the launch (one node, or ``ray job submit``).
- ``metrics``: tails verl's JSONL file logger into the graph's curves and turns its
  validation metrics into the evaluation record the local backend writes.

Everything here runs on CPU except the training itself, which needs GPUs and vLLM.
"""
