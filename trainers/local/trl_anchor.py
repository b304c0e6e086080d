"""A side-by-side anchor for the CPU trainer: the testbed's model trained with TRL's
``GRPOTrainer`` (the optional ``trl`` extra) on the same batch, CPU-s per GRPO cycle.

    python -m trainers.local.bench --out DIR --trl [--cycles 6]

The warm start becomes a Hugging Face ``GPT2LMHeadModel`` with the same weights (TinyGPT
is a pre-LayerNorm GPT-2 with exact GELU, learned positions and tied embeddings, so
``to_hf`` is exact: tests/test_trl_anchor.py checks the logits), and the task's
character vocabulary a ``PreTrainedTokenizerFast``. Both trainers then run GRPO with the
same shape: 16 prompts from the seed's prompt stream x 8 samples at T=1, responses capped
at the trainer's budget (``TrainConfig.max_response``), two Adam updates per generation
(minibatches of 64 groups-aligned rows; lr 2e-4, betas (0.9, 0.99), grad clip 1.0), PPO
clip 0.2, a k3 KL to the start with beta 0.001, seq-mean-token-mean loss, the task's
correctness reward. One cycle is one
generation plus its updates; the first cycle of each is a warm-up, not counted. TRL runs
on the CPU as its docs say (``use_cpu=True``, ``bf16=False``, no gradient checkpointing),
one thread, in this process: only the shipped GRPO runs here, no candidate code. POISE's
side is the sandboxed job ``bench`` always runs (both engines).
"""
from __future__ import annotations

import os
import tempfile
import time

import torch

from evals.tasks import BOS, EOS, PAD, VOCAB, PromptStream, grade
from trainers.local.model import TinyGPT

MISSING = ("the TRL anchor needs the optional trl extra: pip install -c constraints.txt "
           "-e \".[trl]\"")


class MissingExtra(Exception):
    pass


def _hf():
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("trl", "transformers", "datasets")):
        raise MissingExtra(MISSING)


def to_hf(model: TinyGPT):
    """A ``GPT2LMHeadModel`` computing exactly what ``model`` computes (float32)."""
    _hf()
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.cfg
    cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.max_seq, n_embd=c.d_model,
                     n_layer=c.n_layer, n_head=c.n_head, n_inner=4 * c.d_model,
                     activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, layer_norm_epsilon=model.ln_f.eps,
                     bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                     tie_word_embeddings=True)
    hf = GPT2LMHeadModel(cfg)
    sd = {"transformer.wte.weight": model.tok.weight, "transformer.wpe.weight": model.pos.weight,
          "transformer.ln_f.weight": model.ln_f.weight, "transformer.ln_f.bias": model.ln_f.bias}
    for i, b in enumerate(model.blocks):
        h = f"transformer.h.{i}."
        sd.update({  # GPT-2's Conv1D stores (in, out): nn.Linear's weight transposed
            h + "ln_1.weight": b.ln1.weight, h + "ln_1.bias": b.ln1.bias,
            h + "attn.c_attn.weight": b.qkv.weight.T, h + "attn.c_attn.bias": b.qkv.bias,
            h + "attn.c_proj.weight": b.proj.weight.T, h + "attn.c_proj.bias": b.proj.bias,
            h + "ln_2.weight": b.ln2.weight, h + "ln_2.bias": b.ln2.bias,
            h + "mlp.c_fc.weight": b.mlp[0].weight.T, h + "mlp.c_fc.bias": b.mlp[0].bias,
            h + "mlp.c_proj.weight": b.mlp[2].weight.T, h + "mlp.c_proj.bias": b.mlp[2].bias,
        })
    sd = {k: v.detach().clone().contiguous() for k, v in sd.items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(".attn.bias") and k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"to_hf: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def char_tokenizer():
    """The task vocabulary as a fast tokenizer: one token per character, <bos> first."""
    _hf()
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"<pad>|<bos>|<eos>|."), "isolated")
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", BOS)])
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", padding_side="left")


def run_trl(start: TinyGPT, seed: int, cycles: int, prompts_per_step: int = 16,
            group_size: int = 8, max_response: int = 64, minibatches: int = 2,
            lr: float = 2e-4) -> dict:
    """GRPO with TRL for ``cycles`` generations; CPU-s per cycle after the first."""
    _hf()
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    os.environ["HF_HUB_OFFLINE"] = "1"  # the model is a local folder; nothing downloads
    torch.set_num_threads(1)
    stream = PromptStream(seed)
    problems = [p for _ in range(cycles) for p in stream.next_batch(prompts_per_step)]
    rows = [{"prompt": p.prompt, "pid": i} for i, p in enumerate(problems)]
    tok = char_tokenizer()

    def correct(prompts, completions, completion_ids, pid, **_):
        return [float(grade(problems[i], text, EOS in ids or len(ids) < max_response).correct)
                for text, ids, i in zip(completions, completion_ids, pid)]

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.process_time())

    rows_per_update = prompts_per_step * group_size // minibatches
    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, fp16=False,
            gradient_checkpointing=False, per_device_train_batch_size=rows_per_update,
            gradient_accumulation_steps=1, steps_per_generation=minibatches,
            num_generations=group_size, max_completion_length=max_response,
            temperature=1.0, top_p=1.0, top_k=0, learning_rate=lr, adam_beta1=0.9,
            adam_beta2=0.99, weight_decay=0.0, max_grad_norm=1.0,
            lr_scheduler_type="constant", warmup_steps=0, beta=0.001, epsilon=0.2,
            loss_type="grpo", scale_rewards="group", num_iterations=1,
            max_steps=cycles * minibatches, shuffle_dataset=False, logging_steps=1,
            report_to="none", save_strategy="no", disable_tqdm=True, seed=seed,
            dataloader_num_workers=0)
        # A saved model, not an object: TRL loads its frozen reference (beta > 0) by path.
        to_hf(start).save_pretrained(f"{out}/model")
        trainer = GRPOTrainer(model=f"{out}/model", reward_funcs=correct, args=cfg,
                              train_dataset=Dataset.from_list(rows), processing_class=tok,
                              callbacks=[Clock()])
        t0 = time.process_time()
        trainer.train()
        total = time.process_time() - t0
    ends = stamps[minibatches - 1::minibatches]  # the end of each cycle
    per_cycle = ((ends[-1] - ends[0]) / (len(ends) - 1)) if len(ends) > 1 else float("nan")
    return {"cycles": len(ends), "cpu_seconds_per_cycle": per_cycle,
            "cpu_seconds_total": total, "trl_version": __import__("trl").__version__}


def main(argv=None) -> None:
    """``python -m trainers.local.trl_anchor --home H --out FILE [--seed S] [--cycles K]``:
    run the TRL side in this process and write its numbers (and peak RSS) as JSON; bench
    runs it as a child process so its memory is its own."""
    import argparse
    import json
    import resource
    import sys
    from pathlib import Path

    from trainers.local.warmstart import load_or_build, warm_config_from_dict

    p = argparse.ArgumentParser(prog="python -m trainers.local.trl_anchor")
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--warm-config", type=Path, default=None, help="a WarmStartConfig as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cycles", type=int, default=8)
    p.add_argument("--train-config", type=Path, default=None,
                   help="TrainConfig fields as JSON: the batch shape to match")
    args = p.parse_args(argv)
    try:
        _hf()
    except MissingExtra as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from trainers.local.warmstart import WarmStartConfig

    warm = (warm_config_from_dict(json.loads(args.warm_config.read_text()))
            if args.warm_config else WarmStartConfig())
    tc = json.loads(args.train_config.read_text()) if args.train_config else {}
    shape = {k: tc[k] for k in ("prompts_per_step", "group_size", "max_response",
                                "minibatches", "lr") if k in tc}
    start = load_or_build(warm, args.home)
    result = run_trl(start, args.seed, args.cycles, **shape)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
