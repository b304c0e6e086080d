"""The compiled engine: the fast engine with its decode step compiled ahead of time.

A decode step of the fast engine (trainers/local/engine.py) is ~170 small eager ops for
one token of every live row: on this tiny model their dispatch costs about as much as
their arithmetic. Here the whole step (every layer for the new token, the KV-cache
writes, the next token's log-softmax, draw, log-prob and entropy) is one graph, exported
(``torch.export``, dynamic batch and length) and compiled by AOTInductor into a shared
library, built once per machine, model shape and torch version (under
``~/.cache/poise/compiled/``, by the trusted parent that starts the training jobs) and
loaded in each job's trusted setup, before the sandbox's guard: candidate code never
builds, writes or chooses it. A fresh process pays no
compile (``torch.compile`` cost ~5 CPU-s per process even with a warm cache, about what
an 80-step job saves).

The weights are inputs of the graph, not constants, so one library serves the policy as
it trains. Prefill and the trained forwards stay the fast engine's; so do the draws:
each step takes one uniform per live row from the same generator in the same order, so a
seed samples the same tokens as with the fast engine up to float rounding
(tests/test_compiled.py). Where the library cannot be built or loaded (no C++ compiler,
another device than the CPU, a batch of one row), the fast engine's eager decode runs
instead, and ``fallbacks()`` says why.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import inspect
import os
import platform
import pwd
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from evals.tasks import EOS
from trainers.local import engine as fast
from trainers.local.model import Generation, ModelConfig, TinyGPT

MIN_ROWS = 2          # the exported graph's smallest batch (export specialises 0 and 1)
MAX_ROWS = 1 << 16    # its largest batch
MAX_CAPACITY = 4096   # its largest KV cache (prompt + response tokens)
_RUNNERS: dict[str, object] = {}    # package key -> loaded AOTInductor model
_FALLBACKS: dict[str, str] = {}     # package key -> why the eager decode ran instead


class DecodeStep(torch.nn.Module):
    """One token per row through every layer; writes the token's key and value into the
    caches at slot ``t = len(tcar)`` and returns the next token (drawn by inverting the
    CDF with ``u``, or greedy), its mask, log-prob and entropy, the new alive flags and
    positions. ``W`` is ``flat_weights(model)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_layer, self.n_head, self.d = cfg.n_layer, cfg.n_head, cfg.d_model
        self.max_pos = cfg.max_seq - 1

    def forward(self, W: list[Tensor], tok: Tensor, alive: Tensor, pos: Tensor,
                bias: Tensor, tcar: Tensor, u: Tensor, greedy: Tensor, inv_temp: Tensor,
                kts: list[Tensor], vs: list[Tensor]):
        b, t, d, h = tok.shape[0], tcar.shape[0], self.d, self.n_head
        dh = d // h
        x = W[0][tok] + W[1][pos.clamp(max=self.max_pos)]
        for layer in range(self.n_layer):
            l1w, l1b, qw, qb, pw, pb, l2w, l2b, f1w, f1b, f2w, f2b = \
                W[2 + 12 * layer:14 + 12 * layer]
            q, k, v = F.linear(F.layer_norm(x, (d,), l1w, l1b), qw, qb).view(
                b, 3, h, dh).unbind(1)
            kts[layer].narrow(3, t, 1).copy_(k.unsqueeze(-1))
            vs[layer].narrow(2, t, 1).copy_(v.unsqueeze(2))
            att = torch.matmul((q * dh ** -0.5).unsqueeze(2),
                               kts[layer][..., :t + 1]).squeeze(2) + bias[..., :t + 1]
            y = torch.matmul(att.softmax(-1).unsqueeze(2),
                             vs[layer][:, :, :t + 1]).squeeze(2)
            x = x + F.linear(y.reshape(b, d), pw, pb)
            x = x + F.linear(F.gelu(F.linear(F.layer_norm(x, (d,), l2w, l2b), f1w, f1b)),
                             f2w, f2b)
        logits = F.layer_norm(x, (d,), W[-2], W[-1]) @ W[0].T
        logprobs = torch.log_softmax(logits * inv_temp, -1)
        probs = logprobs.exp()
        nxt = torch.where(greedy, logprobs.argmax(-1), fast.invert_cdf(probs, u))
        nxt, af, lp, ent = fast.step_outputs(logprobs, probs, nxt, alive)
        return nxt, af, lp, ent, alive & (nxt != EOS), pos + 1


def flat_weights(model: TinyGPT) -> list[Tensor]:
    """The weights in ``DecodeStep``'s order (detached views: no copy)."""
    w = [model.tok.weight, model.pos.weight]
    for blk in model.blocks:
        w += [blk.ln1.weight, blk.ln1.bias, blk.qkv.weight, blk.qkv.bias, blk.proj.weight,
              blk.proj.bias, blk.ln2.weight, blk.ln2.bias, blk.mlp[0].weight,
              blk.mlp[0].bias, blk.mlp[2].weight, blk.mlp[2].bias]
    return [p.detach() for p in w + [model.ln_f.weight, model.ln_f.bias]]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


_CPU = f"{platform.machine()} {_cpu_flags()}"  # read on import: trusted setup imports this


@functools.lru_cache(maxsize=None)
def package_key(cfg: ModelConfig) -> str:
    """What the library depends on: the graph's code, the model's shapes, torch, the CPU."""
    code = (DecodeStep, build, fast.invert_cdf, fast.step_outputs)  # what it traces
    blob = "|".join([*map(inspect.getsource, code), repr(sorted(cfg.as_dict().items())),
                     torch.__version__, _CPU])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def package_dir() -> Path:
    """Where the libraries live: ``$POISE_COMPILED_DIR`` (the sandbox passes it on to its
    jobs), else one place per machine and user whatever the POISE home (a library
    depends on torch, the CPU and the model's shapes, not on a run): the account's home
    directory from the password database, not ``$HOME``, which in a sandboxed job is its
    scratch directory."""
    if os.environ.get("POISE_COMPILED_DIR"):
        return Path(os.environ["POISE_COMPILED_DIR"])
    return Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "poise" / "compiled"


def package_path(cfg: ModelConfig) -> Path:
    return package_dir() / f"decode-{package_key(cfg)}.pt2"


def _example(cfg: ModelConfig) -> tuple:
    b, cap, t = 8, 40, 12
    h, dh = cfg.n_head, cfg.d_model // cfg.n_head
    model = TinyGPT(cfg)
    return (flat_weights(model), torch.zeros(b, dtype=torch.long),
            torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.long),
            torch.zeros(b, 1, cap), torch.empty(t), torch.rand(b, 1), torch.tensor(False),
            torch.tensor(1.0), [torch.zeros(b, h, dh, cap) for _ in range(cfg.n_layer)],
            [torch.zeros(b, h, cap, dh) for _ in range(cfg.n_layer)])


def build(cfg: ModelConfig, path: Path) -> None:
    """Export and compile the decode step for ``cfg`` into ``path`` (atomic; ``prepare``
    makes the directory and holds the lock)."""
    from torch import _inductor  # ~1 s to import: only where a library is built
    rows = torch.export.Dim("rows", min=MIN_ROWS, max=MAX_ROWS)
    cap = torch.export.Dim("capacity", min=4, max=MAX_CAPACITY)
    slot = torch.export.Dim("slot", min=2, max=MAX_CAPACITY - 2)
    n = cfg.n_layer
    shapes = ([None] * (2 + 12 * n + 2), {0: rows}, {0: rows}, {0: rows},
              {0: rows, 2: cap}, {0: slot}, {0: rows}, None, None,
              [{0: rows, 3: cap}] * n, [{0: rows, 2: cap}] * n)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.pt2")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)       # torch's own deprecations
            warnings.simplefilter("ignore", DeprecationWarning)  # inside export
            program = torch.export.export(DecodeStep(cfg), _example(cfg),
                                          dynamic_shapes=shapes)
            _inductor.aoti_compile_and_package(program, package_path=str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed build leaves nothing half-written


def prepare(cfg: ModelConfig, build_missing: bool = True) -> str | None:
    """Load (building first if missing and ``build_missing``) the decode step for
    ``cfg``; None when ready, else why not (the eager decode will run). Trusted code
    only, before any candidate code is loaded: the parents that start training jobs
    build (``trainers.executors``, ``bench``), a job's sandboxed setup only loads."""
    key = package_key(cfg)
    if key in _RUNNERS:
        return None
    path = package_path(cfg)
    try:
        if not path.is_file() and build_missing:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_suffix(".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one build per machine at a time
                if not path.is_file():
                    build(cfg, path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not built")
        _RUNNERS[key] = _load(path)
        _FALLBACKS.pop(key, None)
        return None
    except Exception as e:  # noqa: BLE001 - no compiler, a broken file: decode eagerly
        first = (str(e).strip().splitlines() or [""])[0][:300]
        _FALLBACKS[key] = f"{type(e).__name__}: {first}"
        return _FALLBACKS[key]


def _load(path: Path):
    """The package's runner. torch's own loader directly: ``aoti_load_package`` would
    first import ``torch._inductor`` (~1.2 CPU-s in every job); this takes ~3 ms. The
    loader unpacks the library into a fresh directory under ``$TMPDIR``; once loaded
    it is mapped and the directory goes (it would stay behind in /tmp otherwise)."""
    loader = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    unpack = tempfile.mkdtemp(prefix="poise-aoti-")
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = unpack
    try:
        if loader is not None:
            try:
                return loader(str(path), "model", False, 1, -1)
            except TypeError:  # another torch's signature
                pass
        from torch import _inductor
        return _inductor.aoti_load_package(str(path)).loader
    finally:
        if before is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before
        shutil.rmtree(unpack, ignore_errors=True)


def fallbacks() -> dict[str, str]:
    """Package key -> why the compiled decode was not available."""
    return dict(_FALLBACKS)


def ready(model: TinyGPT) -> bool:
    return package_key(model.cfg) in _RUNNERS


@torch.no_grad()
def generate(model: TinyGPT, prompt_ids: Tensor, prompt_mask: Tensor, max_new: int,
             temperature: float = 1.0, generator: torch.Generator | None = None,
             group_size: int = 1) -> Generation:
    """As ``trainers.local.engine.generate`` (same prefill, same draws), each decode
    step one call of the compiled graph."""
    n, p = prompt_ids.shape
    runner = _RUNNERS.get(package_key(model.cfg)) if prompt_ids.device.type == "cpu" else None
    if (runner is None or not MIN_ROWS <= n <= MAX_ROWS or p < 2
            or p + max_new > MAX_CAPACITY):  # not loaded, or outside the graph's shapes
        return fast.generate(model, prompt_ids, prompt_mask, max_new, temperature,
                             generator, group_size)
    weights = flat_weights(model)
    logits, caches, key_bias, pos = fast.start(model, prompt_ids, prompt_mask, max_new,
                                               group_size)
    rows = torch.arange(n)
    greedy = torch.tensor(temperature == 0)
    inv_temp = torch.tensor(1.0 / (temperature or 1.0))
    outs = fast.Outputs(n, max_new, prompt_ids.device)
    # the first token from the prefill's logits, exactly as the fast engine draws it
    first = fast.draw(logits, temperature, generator, torch.ones(n, dtype=torch.bool))
    outs.append(first)
    tok = first[0]
    alive = tok != EOS
    for step in range(1, max_new):
        live = int(alive.sum())
        if live == 0:
            break
        if live < fast.COMPACT_BELOW * alive.shape[0] and live >= MIN_ROWS:
            outs.flush(rows)
            keep = alive.nonzero().squeeze(-1)
            rows, tok, pos, key_bias, alive = (rows[keep], tok[keep], pos[keep],
                                               key_bias[keep], alive[keep])
            for c in caches:
                c.keep(keep)
        u = (torch.rand(tok.shape[0], 1, generator=generator) if temperature
             else torch.zeros(tok.shape[0], 1))
        tok, af, lp, ent, alive, pos = runner.run(
            [*weights, tok, alive, pos, key_bias, torch.empty(p + step - 1), u, greedy,
             inv_temp, *(c.kt for c in caches), *(c.v for c in caches)])
        outs.append((tok, af, lp, ent))
    return outs.generation(rows)
