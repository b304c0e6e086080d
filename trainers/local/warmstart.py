"""The SFT warm start: a deliberately imperfect policy for GRPO to improve.

Built on first use from ``evals.tasks.sft_corpus`` (wrong carries, redundant steps,
filler, malformed answers), cached under ``<home>/checkpoints/`` by a hash of its config,
and deterministic: the same config gives the same weights (one thread, fixed seeds).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from evals.tasks import BOS, EOS, PAD, VOCAB_SIZE, CorpusNoise, encode, sft_corpus
from trainers.local.model import ModelConfig, TinyGPT, positions_for
from trainers.home import resolve_home


@dataclass(frozen=True)
class WarmStartConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(vocab_size=VOCAB_SIZE))
    noise: CorpusNoise = field(default_factory=CorpusNoise)
    examples: int = 41_600
    steps: int = 1300
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 50
    seed: int = 0
    # Bump when the model or training code changes numerics, so a stale cache built by
    # older code is never mistaken for this config's warm start.
    code_version: int = 2

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def warm_config_from_dict(d: dict) -> WarmStartConfig:
    from evals.tasks import VOCAB_SIZE

    d = dict(d)
    if isinstance(d.get("model"), dict):  # the vocabulary is the task's unless given
        d["model"] = ModelConfig(**{"vocab_size": VOCAB_SIZE, **d["model"]})
    if isinstance(d.get("noise"), dict):
        d["noise"] = CorpusNoise(**d["noise"])
    return WarmStartConfig(**d)


def default_home() -> Path:
    return resolve_home()


def checkpoint_path(cfg: WarmStartConfig, home: Path | None = None) -> Path:
    return Path(home or default_home()) / "checkpoints" / f"warmstart-{cfg.key()}.pt"


def load_or_build(cfg: WarmStartConfig = WarmStartConfig(), home: Path | None = None,
                  progress=None) -> TinyGPT:
    """The cached warm-start policy, building (and caching) it on first use."""
    path = checkpoint_path(cfg, home)
    if path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = TinyGPT(cfg.model)
        model.load_state_dict(blob["state_dict"])
        return model
    model, info = train_sft(cfg, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name of its own: two processes building the same warm start at once
    # (two runs in one home, parallel seeds) would otherwise write into one file, and
    # the first rename would publish it while the second still writes.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        torch.save({"state_dict": model.state_dict(), "config": asdict(cfg), "info": info},
                   tmp)
        os.replace(tmp, path)  # atomic: a killed build never leaves a half-written file
    finally:
        tmp.unlink(missing_ok=True)
    return model


def _batch(pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """(problem, response) pairs -> ids (B, T) right-padded, loss mask (B, T-1)."""
    seqs, starts = [], []
    for prob, resp in pairs:
        prompt = [BOS] + encode(prob.prompt)
        seqs.append(prompt + encode(resp) + [EOS])
        starts.append(len(prompt))
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), PAD, dtype=torch.long)
    loss_mask = torch.zeros(len(seqs), t - 1)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        ids[i, :len(s)] = torch.tensor(s)
        loss_mask[i, st - 1:len(s) - 1] = 1.0  # predict response tokens and EOS
    return ids, loss_mask


def train_sft(cfg: WarmStartConfig, progress=None) -> tuple[TinyGPT, dict]:
    torch.manual_seed(cfg.seed)
    model = TinyGPT(cfg.model)
    corpus = sft_corpus(cfg.examples, cfg.seed, cfg.noise)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01,
                            betas=(0.9, 0.98))
    order = torch.randperm(len(corpus), generator=torch.Generator().manual_seed(cfg.seed))
    t0, losses = time.process_time(), []
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (
            1 + math.cos(math.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        lo = (step * cfg.batch_size) % len(corpus)
        idx = order[lo:lo + cfg.batch_size]
        ids, loss_mask = _batch([corpus[int(i)] for i in idx])
        key_mask = ids != PAD
        logits = model(ids[:, :-1], key_mask[:, :-1], positions_for(key_mask)[:, :-1])
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        loss = (nll * loss_mask.reshape(-1)).sum() / loss_mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, cfg.steps, float(loss))
    model.eval()
    info = {"cpu_seconds": time.process_time() - t0, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
            "params": model.num_params()}
    return model, info
