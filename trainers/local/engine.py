"""The fast engine: the same TinyGPT computed with less wasted work.

On this testbed the matrix work is not small (a default step is ~13 GFLOP of forwards on
one core) and most of it was padding: a batch's responses average ~22 tokens but are
padded to the longest (~56), and every row recomputes its prompt although a group's
``group_size`` rows share one. This engine computes the same functions of the same
weights (``trainers.local.model`` is the reference engine, kept for the paired check in
``python -m trainers.local.bench --engines``):

- ``generate``: each distinct prompt is prefilled once and its KV cache copied to its
  rows; finished rows are dropped from the batch as they finish (the caches are
  compacted when a quarter of the rows are done), so decoding costs what the live rows
  cost; the attention mask is a slice of one preallocated buffer, not rebuilt per token.
- ``response_logprobs``: the shared prompts run once (their keys and values are
  gathered per row, so gradients from every row reach them), and the response rows run
  in length buckets (rows sorted by length; cut points chosen to minimise padded tokens
  plus a per-bucket overhead), each padded only to its own longest row.

Results equal the reference engine's to float rounding (tests/test_engine.py); sampling
draws from the same distributions but consumes the generator in a different order, so a
seed's samples differ from the reference engine's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from evals.tasks import EOS, PAD
from trainers.local.model import Generation, TinyGPT, positions_for

COMPACT_BELOW = 0.75     # compact the decode batch when fewer than this share are alive
BUCKET_OVERHEAD = 96     # a bucket's fixed cost, in padded tokens (per-op overhead)
MAX_BUCKETS = 6


def unique_prompts(prompt_ids: Tensor, prompt_mask: Tensor, group_size: int
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """(ids, mask, index): every ``group_size``-th row's prompt and, per row, which of
    them it is. Raises if a group's rows do not share their prompt."""
    n = prompt_ids.shape[0]
    if group_size <= 1 or n % group_size:
        return prompt_ids, prompt_mask, torch.arange(n, device=prompt_ids.device)
    ids, mask = prompt_ids[::group_size], prompt_mask[::group_size]
    index = torch.arange(n // group_size, device=prompt_ids.device).repeat_interleave(
        group_size)
    if not torch.equal(ids[index], prompt_ids):
        raise ValueError("rows of a group do not share their prompt")
    return ids, mask, index


def _attend(block, x: Tensor, k_ctx: Tensor | None, v_ctx: Tensor | None,
            attn_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One Block on queries ``x`` (B, T, D) over context keys/values (B, H, C, Dh), if
    any, followed by the queries' own; returns (out, k, v) with k, v the queries' own."""
    b, t, d = x.shape
    q, k, v = block.qkv(block.ln1(x)).split(d, dim=-1)
    q, k, v = (z.view(b, t, block.n_head, d // block.n_head).transpose(1, 2)
               for z in (q, k, v))
    keys = k if k_ctx is None else torch.cat([k_ctx, k], 2)
    values = v if v_ctx is None else torch.cat([v_ctx, v], 2)
    att = (q @ keys.transpose(-1, -2)) * block.scale
    att = att.masked_fill(~attn_mask, float("-inf")).softmax(-1)
    y = (att @ values).transpose(1, 2).reshape(b, t, d)
    x = x + block.proj(y)
    return x + block.mlp(block.ln2(x)), k, v


def _prompt_mask(mask: Tensor) -> Tensor:
    """(B, 1, P, P) causal & key-padding mask of left-padded prompts (a PAD query sees
    itself, so no row is all -inf)."""
    p = mask.shape[1]
    causal = torch.ones(p, p, dtype=torch.bool, device=mask.device).tril()
    eye = torch.eye(p, dtype=torch.bool, device=mask.device)
    return ((causal & mask[:, None, :]) | eye).unsqueeze(1)


def _prefill(model: TinyGPT, ids: Tensor, mask: Tensor
             ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Hidden state after ln_f at the last prompt slot (G, D) and each layer's (k, v)."""
    x = model.tok(ids) + model.pos(positions_for(mask).clamp(0, model.cfg.max_seq - 1))
    attn = _prompt_mask(mask)
    kv = []
    for block in model.blocks:
        x, k, v = _attend(block, x, None, None, attn)
        kv.append((k, v))
    return model.ln_f(x[:, -1]), kv


@torch.no_grad()
def generate(model: TinyGPT, prompt_ids: Tensor, prompt_mask: Tensor, max_new: int,
             temperature: float = 1.0, generator: torch.Generator | None = None,
             group_size: int = 1) -> Generation:
    """As ``trainers.local.model.generate``; rows ``i*group_size .. (i+1)*group_size-1``
    share a prompt (their prefill is computed once)."""
    n, p = prompt_ids.shape
    dev = prompt_ids.device
    logits, caches, key_bias, next_pos = start(model, prompt_ids, prompt_mask, max_new,
                                               group_size)
    rows = torch.arange(n, device=dev)          # original row of each live row
    alive = torch.ones(n, dtype=torch.bool, device=dev)
    outs = Outputs(n, max_new, dev)
    for step in range(max_new):
        drawn = draw(logits, temperature, generator, alive)
        outs.append(drawn)
        tok = drawn[0]
        alive = alive & (tok != EOS)
        live = int(alive.sum())
        if live == 0 or step == max_new - 1:
            break
        if live < COMPACT_BELOW * alive.shape[0]:
            outs.flush(rows)
            keep = alive.nonzero().squeeze(-1)
            rows, tok, next_pos, key_bias = rows[keep], tok[keep], next_pos[keep], key_bias[keep]
            alive = alive[keep]
            for c in caches:
                c.keep(keep)
        slot = p + step
        x = model.tok(tok[:, None]) + model.pos(
            next_pos.clamp(max=model.cfg.max_seq - 1)[:, None])
        bias = key_bias[..., :slot + 1]
        for block, c in zip(model.blocks, caches):
            x = _decode_block(block, x, c, bias)
        logits = model.ln_f(x[:, -1]) @ model.tok.weight.T
        next_pos = next_pos + 1
    return outs.generation(rows)


class Outputs:
    """A generation's per-token tokens, mask, log-probs and entropies, (N, max_new): the
    steps since the last compaction are kept as a segment and written once per field
    for the rows still in the batch (one indexed write instead of one per step)."""

    def __init__(self, n: int, max_new: int, device):
        self.fields = (torch.full((n, max_new), PAD, dtype=torch.long, device=device),
                       *(torch.zeros(n, max_new, device=device) for _ in range(3)))
        self.segment: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self.done = 0  # steps written

    def append(self, step: tuple[Tensor, Tensor, Tensor, Tensor]) -> None:
        self.segment.append(step)

    def flush(self, rows: Tensor) -> None:
        """Write the segment for ``rows`` (the original row of each live row)."""
        if self.segment:
            for dst, col in zip(self.fields, zip(*self.segment)):
                dst[rows, self.done:self.done + len(self.segment)] = torch.stack(col, 1)
        self.done += len(self.segment)
        self.segment = []

    def generation(self, rows: Tensor) -> Generation:
        self.flush(rows)
        tokens, masks, logps, ents = (o[:, :self.done] for o in self.fields)
        return Generation(tokens, masks, logps, ents, (tokens == EOS).any(-1))


def start(model: TinyGPT, prompt_ids: Tensor, prompt_mask: Tensor, max_new: int,
          group_size: int) -> tuple[Tensor, list["DecodeCache"], Tensor, Tensor]:
    """A decode's starting state: the logits at each row's last prompt slot (N, V), each
    layer's cache (room for ``max_new`` more tokens), the additive key bias (N, 1,
    P + max_new; -inf on PAD keys) and each row's next position."""
    n, p = prompt_ids.shape
    uids, umask, index = unique_prompts(prompt_ids, prompt_mask, group_size)
    h_last, kv = _prefill(model, uids, umask)
    logits = (h_last @ model.tok.weight.T)[index]
    caches = [DecodeCache(k[index], v[index], p + max_new) for k, v in kv]
    key_bias = torch.zeros(n, 1, p + max_new, device=prompt_ids.device)
    key_bias[:, 0, :p].masked_fill_(~prompt_mask, float("-inf"))
    return logits, caches, key_bias, prompt_mask.long().sum(-1)


def draw(logits: Tensor, temperature: float, generator: torch.Generator | None,
         alive: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One decode step's draw from ``logits`` (N, V): greedy at temperature 0, else one
    uniform per row from ``generator``; ``step_outputs`` of it."""
    logprobs = torch.log_softmax(logits.float() / (temperature or 1.0), -1)
    probs = logprobs.exp()
    tok = logprobs.argmax(-1) if temperature == 0 else _sample(probs, generator)
    return step_outputs(logprobs, probs, tok, alive)


def step_outputs(logprobs: Tensor, probs: Tensor, tok: Tensor, alive: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(token, mask, log-prob, entropy) per row of one step; a finished row gets PAD and
    zeros. Also traced into the compiled engine's graph (trainers/local/compiled.py)."""
    af = alive.float()
    ent = -(probs * logprobs).sum(-1) * af
    lp = logprobs.gather(-1, tok[:, None]).squeeze(-1) * af
    return torch.where(alive, tok, PAD), af, lp, ent


def _sample(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One categorical draw per row by inverting the CDF with one uniform per row (a
    single small op chain; ``torch.multinomial`` costs ~4x more per call here)."""
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device)
    return invert_cdf(probs, u)


def invert_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """The token whose CDF interval holds ``u`` (N, 1) in each row of ``probs`` (N, V).
    Also traced into the compiled engine's graph."""
    cdf = probs.cumsum(-1)
    return (cdf < u * cdf[:, -1:]).sum(-1).clamp(max=probs.shape[-1] - 1)


class DecodeCache:
    """One layer's keys, stored transposed (B, H, Dh, capacity), and values (B, H,
    capacity, Dh): a decode step's two attention products are then plain batched
    matmuls over strided views, with no copy of the cache."""

    def __init__(self, k: Tensor, v: Tensor, capacity: int):
        b, h, t, dh = k.shape
        self.kt = k.new_empty(b, h, dh, capacity)
        self.v = v.new_empty(b, h, capacity, dh)
        self.kt[..., :t] = k.transpose(-1, -2)
        self.v[:, :, :t] = v
        self.len = t

    def keep(self, rows: Tensor) -> None:
        self.kt, self.v = self.kt[rows], self.v[rows]


def _decode_block(block, x: Tensor, cache: DecodeCache, bias: Tensor) -> Tensor:
    """One Block for one new token per row (x (B, 1, D)); ``bias`` (B, 1, Tk) is 0 on
    visible keys and -inf on PAD."""
    b, _, d = x.shape
    h = block.n_head
    dh = d // h
    q, k, v = block.qkv(block.ln1(x)).view(b, 3, h, dh).unbind(1)  # (B, H, Dh) each
    t = cache.len
    cache.kt[..., t] = k
    cache.v[:, :, t] = v
    cache.len = t = t + 1
    att = torch.bmm(q.reshape(b * h, 1, dh) * block.scale,
                    cache.kt[..., :t].reshape(b * h, dh, t)).view(b, h, t)
    att = (att + bias).softmax(-1)
    y = torch.bmm(att.view(b * h, 1, t), cache.v[:, :, :t].reshape(b * h, t, dh))
    x = x + block.proj(y.view(b, 1, d))
    return x + block.mlp(block.ln2(x))


def length_buckets(lengths: list[int], overhead: int = BUCKET_OVERHEAD,
                   max_buckets: int = MAX_BUCKETS) -> list[int]:
    """Cut points over lengths sorted ascending: bucket j holds sorted rows
    ``[cuts[j-1], cuts[j])`` padded to its last row's length. Minimises padded tokens
    + ``overhead`` per bucket (exact DP over at most ``max_buckets`` buckets)."""
    n = len(lengths)
    if n == 0:
        return []
    # after round b, best[i] / cuts[i]: the cheapest split of the first i rows into at
    # most b buckets, cut only where the length changes
    inf = float("inf")
    best = [0.0] + [inf] * n
    cuts: list[list[int]] = [[]] + [[] for _ in range(n)]
    ends = [i for i in range(1, n + 1) if i == n or lengths[i] != lengths[i - 1]]
    starts = [0] + ends[:-1]
    for _ in range(max_buckets):
        new, new_cuts = list(best), [list(c) for c in cuts]
        for i in ends:
            for j in starts:
                if j >= i or best[j] == inf:
                    continue
                c = best[j] + (i - j) * lengths[i - 1] + overhead
                if c < new[i]:
                    new[i], new_cuts[i] = c, cuts[j] + [i]
        best, cuts = new, new_cuts
    return cuts[n]


def response_logprobs(model: TinyGPT, prompt_ids: Tensor, prompt_mask: Tensor,
                      tokens: Tensor, mask: Tensor, group_size: int = 1) -> Tensor:
    """As ``trainers.local.model.response_logprobs`` (with grad): log-probs (N, L) of the
    response tokens; rows ``i*group_size ..`` share a prompt."""
    n, L = tokens.shape
    uids, umask, index = unique_prompts(prompt_ids, prompt_mask, group_size)
    h_last, kv = _prefill(model, uids, umask)
    first = torch.log_softmax((h_last @ model.tok.weight.T).float(), -1)[index]  # (N, V)
    logp0 = first.gather(-1, tokens[:, :1])  # (N, 1)
    if L == 1:
        return logp0 * mask
    lengths = mask.sum(-1).long()
    order = torch.argsort(lengths, stable=True)
    sorted_len = lengths[order].tolist()
    plen = prompt_mask.long().sum(-1)
    pieces, lo = [], 0
    for hi in length_buckets([max(x, 1) for x in sorted_len]):
        rows = order[lo:hi]
        lb = max(sorted_len[hi - 1], 1)
        lo = hi
        if lb <= 1:  # a response of one token has only logp0
            pieces.append(tokens.new_zeros(len(rows), L - 1, dtype=logp0.dtype))
            continue
        inp = tokens[rows, :lb - 1]  # (R, lb-1): tokens 0..lb-2 predict 1..lb-1
        pos = (plen[rows, None] + torch.arange(lb - 1, device=tokens.device)).clamp(
            max=model.cfg.max_seq - 1)
        x = model.tok(inp) + model.pos(pos)
        pi = index[rows]
        causal = torch.ones(lb - 1, lb - 1, dtype=torch.bool, device=tokens.device).tril()
        attn = torch.cat([umask[pi][:, None, :].expand(-1, lb - 1, -1),
                          causal.expand(len(rows), -1, -1)], -1).unsqueeze(1)
        for block, (k, v) in zip(model.blocks, kv):
            x, _, _ = _attend(block, x, k[pi], v[pi], attn)
        lp = torch.log_softmax((model.ln_f(x) @ model.tok.weight.T).float(), -1)
        lp = lp.gather(-1, tokens[rows, 1:lb].unsqueeze(-1)).squeeze(-1)  # (R, lb-1)
        pieces.append(F.pad(lp, (0, L - lb)))
    rest = torch.cat(pieces, 0)[torch.argsort(order)]  # back to row order
    return torch.cat([logp0, rest], 1) * mask
