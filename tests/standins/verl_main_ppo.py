"""A CPU stand-in for ``python -m verl.trainer.main_ppo`` (real verl needs GPUs + vLLM).

It stands in for the GPU parts only, the rollout engine and the FSDP actor; everything of
POISE's it touches is real and runs as verl would run it: it imports the plugin named by
``VERL_USE_EXTERNAL_MODULES`` (which registers the candidate in verl's registries), loads
``reward.custom_reward_function`` from its path, and each step grades synthetic
``\\boxed{}`` answers with it, calls the candidate's estimator through verl's
``compute_advantage`` on a ``DataProto`` and its loss through verl's own ``ppo_loss`` on
the micro-batch TensorDict the v1 engine workers pass (tests/standins/verl_batch.py),
with verl's own config classes, and writes verl's file-logger JSONL (``$VERL_FILE_LOGGER_PATH``),
validation metrics under verl's names and a validation dump. The "policy" is a single
probability of answering correctly that rises with the step, so the curves move.
Used by tests/test_verl_backend.py through VerlConfig.entrypoint. At its end it writes
``standin_run.json`` in its cwd (the plan's run_dir): its ``CUDA_VISIBLE_DEVICES`` and
start / end wall times, so tests/test_verl_gpu_pool.py can see which GPUs each
concurrent job was given and when it ran.
"""
import importlib
import importlib.util
import json
import os
import random
import sys
import time

import torch


def overrides(argv):
    out = {}
    for arg in argv:
        if "=" in arg:
            k, v = arg.split("=", 1)
            out[k.lstrip("+~")] = v
    return out


def main(argv):
    started = time.time()
    cfg = overrides(argv)
    if cfg.get("standin.fail") == "true":
        print("stand-in: failing as asked", file=sys.stderr)
        return 3
    importlib.import_module(os.environ["VERL_USE_EXTERNAL_MODULES"])  # registers it
    import numpy as np
    from verl import DataProto
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.ray_trainer import compute_advantage
    from verl.workers.config.actor import ActorConfig, PolicyLossConfig
    from verl.workers.utils import losses
    from verl_batch import micro_batch, unpadded

    spec = importlib.util.spec_from_file_location("reward_fn",
                                                  cfg["reward.custom_reward_function.path"])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    score = getattr(mod, cfg["reward.custom_reward_function.name"])
    name = cfg["algorithm.adv_estimator"]
    n = int(cfg["actor_rollout_ref.rollout.n"])
    steps = int(cfg["trainer.total_training_steps"])
    test_freq = int(cfg["trainer.test_freq"])
    val_n = int(cfg["actor_rollout_ref.rollout.val_kwargs.n"])
    rng = random.Random(int(cfg.get("data.seed", 0)))
    torch.manual_seed(int(cfg.get("data.seed", 0)))
    log = open(os.environ["VERL_FILE_LOGGER_PATH"], "a")
    val_dir = cfg["trainer.validation_data_dir"]
    os.makedirs(val_dir, exist_ok=True)
    prompts, length = 4, 16

    def answer(p_correct, truth):
        u = rng.random()
        if u < p_correct:
            return f"so the answer is \\boxed{{{truth}}}"
        return f"so the answer is \\boxed{{{truth + 1}}}" if u < 0.9 else "I am not sure"

    def hydra_list(text):
        return [t.strip().strip("'\"") for t in text.strip("[]").split(",") if t.strip()]

    import pyarrow.parquet as pq
    sources = []  # verl validates every val file; metrics are per data_source
    for f in hydra_list(cfg.get("data.val_files", "[]")):
        for src in sorted(set(pq.read_table(f, columns=["data_source"])
                              .column("data_source").to_pylist())):
            if src not in sources:
                sources.append(src)
    sources = sources or ["standin_math"]

    def validate(step, p):
        rows, out, m = [], {}, f"mean@{val_n}"
        for rank, src in enumerate(sources):  # later sources are harder
            acc, valid, lens = [], [], []
            for q in range(8):
                for i in range(val_n):
                    text = answer(p / (1 + rank), q)
                    s = score(src, text, str(q))
                    rows.append({"uid": f"{src}{q}_0_{i}", "source": s["source"],
                                 "acc": s["acc"]})
                    acc.append(s["acc"]); valid.append(s["valid"]); lens.append(s["length"])
            out.update({f"val-core/{src}/acc/{m}": sum(acc) / len(acc),
                        f"val-aux/{src}/valid/{m}": sum(valid) / len(valid),
                        f"val-aux/{src}/length/{m}": sum(lens) / len(lens)})
        with open(os.path.join(val_dir, f"{step}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        return out

    def p_at(step):
        return min(0.9, 0.2 + 0.05 * step)

    if cfg.get("trainer.val_before_train") == "True":
        log.write(json.dumps({"step": 0, "data": validate(0, p_at(0))}) + "\n")
        log.flush()
    actor = ActorConfig(
        strategy="fsdp", rollout_n=n, ppo_micro_batch_size_per_gpu=1, entropy_coeff=0.0,
        policy_loss=PolicyLossConfig(
            loss_mode=cfg["actor_rollout_ref.actor.policy_loss.loss_mode"]),
        use_kl_loss=cfg["actor_rollout_ref.actor.use_kl_loss"].lower() == "true",
        kl_loss_coef=float(cfg["actor_rollout_ref.actor.kl_loss_coef"]),
        loss_agg_mode=cfg["actor_rollout_ref.actor.loss_agg_mode"])
    step_sleep = float(cfg.get("standin.step_sleep_s", 0))  # a slow GPU step
    for step in range(1, steps + 1):
        time.sleep(step_sleep)
        bs = prompts * n
        rewards = torch.zeros(bs, length)
        mask = torch.zeros(bs, length)
        index = []
        for row in range(bs):
            q = row // n
            s = score("standin_math", answer(p_at(step), q), str(q))
            ln = rng.randint(4, length)
            mask[row, :ln] = 1
            rewards[row, ln - 1] = s["score"]
            index.append(f"uid{step}-{q}")
        batch = DataProto.from_dict(tensors={"token_level_rewards": rewards,
                                             "response_mask": mask},
                                    non_tensors={"uid": np.array(index, dtype=object)})
        adv = compute_advantage(batch, adv_estimator=name, config=AlgoConfig()
                                ).batch["advantages"]
        old = -2.0 * torch.rand(bs, length)
        logp = (old + 0.1 * torch.randn(bs, length)).requires_grad_(True)
        data = micro_batch(response_mask=mask, old_log_probs=old, advantages=adv,
                           rm_scores=rewards, uid=index,
                           ref_log_prob=old + 0.05 * torch.randn(bs, length),
                           global_batch_size=bs)
        loss, metrics = losses.ppo_loss(actor, {"log_probs": unpadded(logp, mask)}, data)
        metrics = {k: (v.values[-1] if hasattr(v, "values") else v) for k, v in metrics.items()}
        loss.backward()
        data = {"actor/entropy": 1.0 - 0.03 * step, "actor/pg_loss": float(loss),
                "response_length/mean": float(mask.sum(1).mean()),
                "actor/pg_clipfrac": float(metrics.get("actor/pg_clipfrac", 0.0)),
                "actor/kl_loss": 0.001 * step,
                "actor/grad_norm": float(logp.grad.norm())}
        if step % test_freq == 0 or step == steps:
            data.update(validate(step, p_at(step)))
        log.write(json.dumps({"step": step, "data": data}) + "\n")
        log.flush()
    with open("standin_run.json", "w") as f:  # in the plan's run_dir: the devices it got
        json.dump({"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "start": started, "end": time.time()}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
