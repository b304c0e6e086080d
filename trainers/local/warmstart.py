"""The SFT warm start: a deliberately imperfect policy for GRPO to improve.

Built on first use from ``evals.tasks.sft_corpus`` (every family, the transfer ones
included: wrong carries and borrows, redundant steps, filler, restated problems,
re-checked answers, malformed answers), cached under ``<home>/checkpoints/`` by a hash
of its config (``code_version`` changes with the corpus), and deterministic: the same
config gives the same weights (one thread, fixed seeds).

The config's hash covers the model size (``ModelConfig``), so the GPU preset
(trainers/local/device.py) has a checkpoint of its own. A warm start built on CUDA has
different weights from one built on CPU, so its file carries the device too
(``warmstart-<key>-cuda.pt``; the CPU file's name is unchanged). Checkpoints hold CPU
tensors and load with ``map_location="cpu"`` before moving to the device asked for, so
any checkpoint loads on any device: a CUDA job uses the CPU-built file when there is
one (the reference weights: a CPU and a GPU job of one config then start from the same
policy, as ``bench`` needs; a Ray task writes this file too), else its CUDA-built one,
building that on first use; a CPU job only ever uses the CPU-built file, which keeps
CPU runs bit-identical.
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

from evals.tasks import (BOS, EOS, PAD, VOCAB_SIZE, CorpusNoise, corpus_families, encode,
                         sft_corpus)
from trainers.local.device import device_kind, torch_threads
from trainers.local.model import ModelConfig, TinyGPT, positions_for
from trainers.home import resolve_home


@dataclass(frozen=True)
class WarmStartConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(vocab_size=VOCAB_SIZE))
    noise: CorpusNoise = field(default_factory=CorpusNoise)
    examples: int = 96_000  # the verbose corpus with transfer families needs more SFT
    steps: int = 3000       # than round 1's 1300 x 32 (1300: add5 never correct at T=1)
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 50
    seed: int = 0
    # Per-family overrides of the corpus mix (evals.tasks.corpus_families), e.g.
    # {"add2": {"sft_weight": 0.8}}: a variant testbed with a warm start of its own.
    corpus: dict = field(default_factory=dict)
    # Bump when the model or training code changes numerics, so a stale cache built by
    # older code is never mistaken for this config's warm start.
    code_version: int = 7

    def __post_init__(self):
        corpus_families(self.corpus)  # ValueError on an unknown family, field or value

    def key(self) -> str:
        d = asdict(self)
        if not d["corpus"]:  # the default mix: the key (and cache file) it always had
            del d["corpus"]
        blob = json.dumps(d, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def warm_config_from_dict(d: dict) -> WarmStartConfig:
    from evals.tasks import VOCAB_SIZE

    d = dict(d)
    if isinstance(d.get("model"), dict):  # the vocabulary is the task's unless given
        d["model"] = ModelConfig(**{"vocab_size": VOCAB_SIZE, **d["model"]})
    if isinstance(d.get("noise"), dict):
        d["noise"] = CorpusNoise(**d["noise"])
    return WarmStartConfig(**d)


def read_warm_config(path: str | Path) -> WarmStartConfig:
    """A WarmStartConfig from a JSON file of its fields (``--warm-config``), e.g.
    ``{"examples": 144000, "steps": 4500, "corpus": {"add2": {"sft_weight": 0.8}}}``;
    ValueError with a one-line reason when the file is missing, not JSON or not a
    valid config."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"--warm-config {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--warm-config {path}: not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(d, dict):
        raise ValueError(f"--warm-config {path}: expected a JSON object of WarmStartConfig "
                         "fields")
    unknown = sorted(set(d) - {f for f in WarmStartConfig.__dataclass_fields__})
    if unknown:
        raise ValueError(f"--warm-config {path}: unknown field {unknown[0]!r} (one of "
                         f"{', '.join(WarmStartConfig.__dataclass_fields__)})")
    try:
        return warm_config_from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--warm-config {path}: {e}") from None


def default_home() -> Path:
    return resolve_home()


def checkpoint_path(cfg: WarmStartConfig, home: Path | None = None,
                    device: str = "cpu") -> Path:
    """The checkpoint built on ``device`` (its kind: cpu or cuda) for ``cfg``."""
    suffix = "" if device_kind(device) == "cpu" else f"-{device_kind(device)}"
    return Path(home or default_home()) / "checkpoints" / f"warmstart-{cfg.key()}{suffix}.pt"


def load_checkpoint(path: Path, cfg: WarmStartConfig, device: str = "cpu") -> TinyGPT:
    """A saved warm start, on ``device`` whatever device it was built on."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = TinyGPT(cfg.model)
    model.load_state_dict(blob["state_dict"])
    return model.to(device)


def load_or_build(cfg: WarmStartConfig = WarmStartConfig(), home: Path | None = None,
                  progress=None, device: str = "cpu") -> TinyGPT:
    """The cached warm-start policy on ``device``, building (and caching) it there on
    first use. On CUDA a CPU-built checkpoint is preferred to a CUDA-built one."""
    path = checkpoint_path(cfg, home, device)
    for existing in dict.fromkeys([checkpoint_path(cfg, home, "cpu"), path]):
        if existing.is_file():
            return load_checkpoint(existing, cfg, device)
    model, info = train_sft(cfg, progress=progress, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name of its own: two processes building the same warm start at once
    # (two runs in one home, parallel seeds) would otherwise write into one file, and
    # the first rename would publish it while the second still writes.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"state_dict": state, "config": asdict(cfg), "info": info}, tmp)
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


def train_sft(cfg: WarmStartConfig, progress=None, device: str = "cpu"
              ) -> tuple[TinyGPT, dict]:
    """SFT from a fresh init (made on the CPU, so every device starts from the same
    weights), trained on ``device``. On the CPU it trains on one thread whatever the
    caller's setting (restored after): a multi-threaded build sums in another order and
    gives other weights under the same key."""
    if device_kind(device) != "cpu":
        return _train_sft(cfg, progress, device)
    with torch_threads(1):
        return _train_sft(cfg, progress, device)


def _train_sft(cfg: WarmStartConfig, progress, device: str) -> tuple[TinyGPT, dict]:
    torch.manual_seed(cfg.seed)
    model = TinyGPT(cfg.model).to(device)
    corpus = sft_corpus(cfg.examples, cfg.seed, cfg.noise, corpus_families(cfg.corpus))
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
        ids, loss_mask = ids.to(device), loss_mask.to(device)
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
            "params": model.num_params(), "device": device_kind(device)}
    return model, info
