"""A small decoder-only transformer with a KV cache, for the embedded CPU testbed.

Pre-LayerNorm GPT blocks, learned absolute positions, tied input/output embeddings.
Prompts are left-padded: a key-padding mask hides PAD keys and positions count from each
row's first real token, so a padded row computes exactly what it would alone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from evals.tasks import EOS, PAD


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    n_layer: int = 3
    n_head: int = 4
    d_model: int = 96
    max_seq: int = 96

    def as_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Preallocated keys/values of one layer: appending writes in place (no O(T^2) cat)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.k = self.v = None
        self.len = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        b, h, t, dh = k.shape
        if self.k is None:
            size = max(self.capacity, t)
            self.k, self.v = k.new_empty(b, h, size, dh), v.new_empty(b, h, size, dh)
        end = self.len + t
        if end > self.k.shape[2]:  # grow (rare: capacity is set for the whole decode)
            grow = max(end, 2 * self.k.shape[2])
            self.k = torch.cat([self.k, self.k.new_empty(b, h, grow - self.k.shape[2], dh)], 2)
            self.v = torch.cat([self.v, self.v.new_empty(b, h, grow - self.v.shape[2], dh)], 2)
        self.k[:, :, self.len:end] = k
        self.v[:, :, self.len:end] = v
        self.len = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.scale = (cfg.d_model // cfg.n_head) ** -0.5
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
                                 nn.Linear(4 * cfg.d_model, cfg.d_model))

    def forward(self, x: Tensor, attn_mask: Tensor, cache: "KVCache | None") -> Tensor:
        b, t, d = x.shape  # (B, T, D)
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)
                   for z in (q, k, v))  # (B, H, T, Dh)
        if cache is not None:
            k, v = cache.append(k, v)
        # Plain attention: at these sizes the fused CPU kernel is no faster, and it is slow
        # on the strided views of the preallocated cache.
        att = (q @ k.transpose(-1, -2)) * self.scale  # (B, H, T, Tk)
        att = att.masked_fill(~attn_mask, float("-inf")).softmax(-1)
        y = att @ v  # (B, H, T, Dh)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_seq, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: Tensor, key_mask: Tensor, positions: Tensor,
                caches: list[KVCache] | None = None, query_start: int = 0) -> Tensor:
        """ids (B, Tq) at absolute slots [query_start, query_start+Tq) of the sequence;
        key_mask (B, Tk) True on real tokens for all slots so far; positions (B, Tq).
        Returns logits (B, Tq, V)."""
        tq, tk = ids.shape[1], key_mask.shape[1]
        dev = ids.device
        q_slot = torch.arange(query_start, query_start + tq, device=dev)[:, None]  # (Tq, 1)
        causal = torch.arange(tk, device=dev).unsqueeze(0) <= q_slot  # (Tq, Tk)
        attn = causal.unsqueeze(0) & key_mask.unsqueeze(1)  # (B, Tq, Tk)
        # A query on a PAD slot would attend to nothing (NaN); let it see itself.
        attn = attn | torch.eye(tk, dtype=torch.bool, device=dev)[query_start:query_start + tq]
        attn = attn.unsqueeze(1)  # (B, 1, Tq, Tk)
        x = self.tok(ids) + self.pos(positions.clamp(0, self.cfg.max_seq - 1))
        for i, block in enumerate(self.blocks):
            x = block(x, attn, None if caches is None else caches[i])
        return self.ln_f(x) @ self.tok.weight.T


def positions_for(key_mask: Tensor) -> Tensor:
    """Position ids counting from each row's first real token. key_mask (B, T)."""
    return (key_mask.long().cumsum(-1) - 1).clamp_min(0)


def left_pad(prompts: list[list[int]], device=None) -> tuple[Tensor, Tensor]:
    """Token id lists -> (ids (B, P), mask (B, P)) left-padded with PAD, built on the
    CPU and moved to ``device`` (None: left on the CPU)."""
    p = max(len(x) for x in prompts)
    ids = torch.full((len(prompts), p), PAD, dtype=torch.long, device="cpu")
    for i, x in enumerate(prompts):
        ids[i, p - len(x):] = torch.tensor(x, dtype=torch.long, device="cpu")
    if device is not None:
        ids = ids.to(device)
    return ids, ids != PAD


@dataclass
class Generation:
    tokens: Tensor     # (B, L) response tokens, PAD after EOS
    mask: Tensor       # (B, L) float, 1 on response tokens incl. EOS
    logp: Tensor       # (B, L) log-prob of each sampled token under the sampler
    entropy: Tensor    # (B, L) entropy of the sampling distribution
    terminated: Tensor  # (B,) bool, emitted EOS within the budget


@torch.no_grad()
def generate(model: TinyGPT, prompt_ids: Tensor, prompt_mask: Tensor, max_new: int,
             temperature: float = 1.0, generator: torch.Generator | None = None
             ) -> Generation:
    """Batched sampling with a KV cache; temperature 0 is greedy. Runs on the device of
    ``prompt_ids`` (the model's); a ``generator`` must be on that device too."""
    b, p = prompt_ids.shape
    dev = prompt_ids.device
    caches = [KVCache(p + max_new) for _ in model.blocks]
    key_mask = prompt_mask.clone()
    logits = model(prompt_ids, key_mask, positions_for(key_mask), caches)[:, -1]  # (B, V)
    next_pos = key_mask.long().sum(-1)  # (B,)
    alive = torch.ones(b, dtype=torch.bool, device=dev)
    toks, logps, ents, masks = [], [], [], []
    for step in range(max_new):
        logprobs = torch.log_softmax(logits.float(), -1)  # (B, V)
        if temperature == 0:
            tok = logprobs.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / temperature, -1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            logprobs = torch.log(probs.clamp_min(1e-30))
        ents.append(-(logprobs.exp() * logprobs).sum(-1) * alive)
        logps.append(logprobs.gather(-1, tok[:, None]).squeeze(-1) * alive)
        tok = torch.where(alive, tok, torch.full_like(tok, PAD))
        toks.append(tok)
        masks.append(alive.float())
        alive = alive & (tok != EOS)
        if not bool(alive.any()) or step == max_new - 1:
            break
        key_mask = torch.cat([key_mask, torch.ones(b, 1, dtype=torch.bool, device=dev)],
                             dim=1)
        logits = model(tok[:, None], key_mask, next_pos[:, None], caches,
                       query_start=p + step)[:, -1]
        next_pos = next_pos + 1
    tokens = torch.stack(toks, 1)
    mask = torch.stack(masks, 1)
    terminated = (tokens == EOS).any(-1)
    return Generation(tokens, mask, torch.stack(logps, 1), torch.stack(ents, 1), terminated)


def response_logprobs(model: TinyGPT, prompt_ids: Tensor, prompt_mask: Tensor,
                      tokens: Tensor, mask: Tensor) -> Tensor:
    """Log-probs (B, L) of the response tokens under ``model`` (with grad)."""
    ids = torch.cat([prompt_ids, tokens], 1)  # (B, P+L)
    key_mask = torch.cat([prompt_mask, mask.bool()], 1)
    logits = model(ids[:, :-1], key_mask[:, :-1], positions_for(key_mask)[:, :-1])
    p = prompt_ids.shape[1]
    logits = logits[:, p - 1:]  # (B, L, V): predictions of the response tokens
    logp = torch.log_softmax(logits.float(), -1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) * mask
