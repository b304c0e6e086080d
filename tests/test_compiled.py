"""The compiled engine: its AOT-compiled decode step computes the fast engine's decode
(same tokens, same draws, log-probs and entropies to float rounding), is built once per
home and model shape and loaded without a rebuild, runs inside the sandbox (loaded by the
trusted setup, before the guard), and falls back to the eager decode, saying why, where
it cannot be built."""
from dataclasses import asdict

import pytest
import torch

from evals.tasks import BOS, encode, heldout_set
from trainers.baselines import baseline_source
from trainers.local import compiled
from trainers.local import engine as fast
from trainers.local import engines
from trainers.local.jobs import Job, run_jobs
from trainers.local.model import TinyGPT, left_pad


@pytest.fixture(scope="module")
def built(tiny_warm):
    """The tiny warm start's decode step, built in this machine's cache: ~25 s of wall
    the first time."""
    cfg, home, model = tiny_warm
    assert compiled.prepare(cfg.model) is None, compiled.fallbacks()
    return model.eval(), home


def _prompts(group: int = 1):
    rows = [[BOS] + encode(p.prompt) for f in ("add2", "add3", "add5")
            for p in heldout_set(f, "val", 8)]
    return left_pad([r for r in rows for _ in range(group)])


def test_the_package_is_built_once_per_machine_and_shape_and_reloaded(built):
    model, _ = built
    path = compiled.package_path(model.cfg)
    assert path.is_file() and path.parent == compiled.package_dir()
    stamp = path.stat().st_mtime_ns
    compiled._RUNNERS.clear()  # a new process: load, do not rebuild
    assert compiled.prepare(model.cfg, build_missing=False) is None
    assert compiled.ready(model) and path.stat().st_mtime_ns == stamp
    other = type(model.cfg)(**{**model.cfg.as_dict(), "d_model": model.cfg.d_model * 2})
    assert compiled.package_key(other) != compiled.package_key(model.cfg)


@pytest.mark.parametrize("temperature,group", [(0.0, 1), (1.0, 4), (0.7, 1)])
def test_the_compiled_decode_is_the_fast_engine_s_decode(built, temperature, group):
    model, _ = built
    ids, mask = _prompts(group)
    a = fast.generate(model, ids, mask, 40, temperature,
                      torch.Generator().manual_seed(5), group_size=group)
    b = compiled.generate(model, ids, mask, 40, temperature,
                          torch.Generator().manual_seed(5), group_size=group)
    assert len(set(a.mask.sum(-1).tolist())) >= 2  # rows end apart: the batch compacts
    # the same draws: a token can differ only where float rounding moves a CDF boundary
    # past the row's uniform, which these rows never hit
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    assert torch.equal(a.terminated, b.terminated)
    torch.testing.assert_close(b.logp, a.logp, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.entropy, a.entropy, atol=1e-4, rtol=1e-4)


def test_without_a_package_the_eager_decode_runs(tiny_warm):
    cfg, _, _ = tiny_warm
    odd = type(cfg.model)(**{**cfg.model.as_dict(), "n_head": 1})  # never built
    m = TinyGPT(odd).eval()
    ids, mask = _prompts()
    a = compiled.generate(m, ids, mask, 10, 0.0)
    b = fast.generate(m, ids, mask, 10, 0.0)
    assert torch.equal(a.tokens, b.tokens)
    assert "prepare() was not called" in engines.compiled_fallback(m)


def test_a_sandboxed_job_loads_the_compiled_step(built, tiny_warm, tiny_train_config):
    cfg, home, _ = tiny_warm
    tc = tiny_train_config.as_dict() | {"engine": "compiled"}
    r, = run_jobs([Job("grpo.compiled", baseline_source("grpo"), 0, str(home), tc, asdict(cfg))],
                  workers=1, quiet=True)
    assert r["status"] == "ok", r["error"]
    assert "engine_fallback" not in r  # the compiled step ran
    assert r["steps_done"] == tiny_train_config.steps and r["final"]["overall"] >= 0


def test_where_it_cannot_be_built_the_job_decodes_eagerly_and_says_why(
        tiny_warm, tiny_train_config, tmp_path, monkeypatch):
    cfg, home, _ = tiny_warm
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("the library has nowhere to go")
    monkeypatch.setenv("POISE_COMPILED_DIR", str(blocked))  # the parent's and the job's
    monkeypatch.setattr(compiled, "_RUNNERS", {})           # this process loaded nothing
    tc = tiny_train_config.as_dict() | {"engine": "compiled"}
    r, = run_jobs([Job("grpo.compiled", baseline_source("grpo"), 0, str(home), tc,
                       asdict(cfg))], workers=1, quiet=True)
    assert r["status"] == "ok", r["error"]
    assert r["engine_fallback"].startswith(("FileExistsError", "NotADirectoryError",
                                            "FileNotFoundError")), r["engine_fallback"]
