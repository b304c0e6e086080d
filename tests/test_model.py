"""The tiny transformer: KV-cache sampling agrees with a full forward; padding is inert;
the warm start is cached and deterministic."""
import torch

from evals.tasks import BOS, EOS, VOCAB_SIZE, encode
from trainers.local.model import (ModelConfig, TinyGPT, generate, left_pad,
                                  response_logprobs)
from trainers.local.warmstart import WarmStartConfig, checkpoint_path, load_or_build

CFG = ModelConfig(vocab_size=VOCAB_SIZE, n_layer=2, n_head=2, d_model=32, max_seq=48)


def _model(seed=0):
    torch.manual_seed(seed)
    return TinyGPT(CFG).eval()


def _prompts():
    return [[BOS] + encode("00012+00034="), [BOS] + encode("5+7="), [BOS] + encode("99+1=")]


def test_kv_cache_logprobs_match_full_forward():
    model = _model()
    ids, mask = left_pad(_prompts())
    gen = generate(model, ids, mask, max_new=12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = response_logprobs(model, ids, mask, gen.tokens, gen.mask)
    torch.testing.assert_close(full, gen.logp, atol=1e-4, rtol=1e-4)
    assert gen.tokens.shape == gen.mask.shape == gen.logp.shape
    # after EOS nothing is generated
    for row, m in zip(gen.tokens, gen.mask):
        hits = (row == EOS).nonzero()
        if len(hits):
            assert m[hits[0, 0] + 1:].sum() == 0 and m[:hits[0, 0] + 1].all()


def test_left_padding_does_not_change_a_row():
    model = _model()
    prompts = _prompts()
    ids, mask = left_pad(prompts)
    alone_ids, alone_mask = left_pad(prompts[1:2])
    g_batch = generate(model, ids, mask, max_new=10, temperature=0)
    g_alone = generate(model, alone_ids, alone_mask, max_new=10, temperature=0)
    n = g_alone.tokens.shape[1]
    assert torch.equal(g_batch.tokens[1, :n], g_alone.tokens[0])
    torch.testing.assert_close(g_batch.logp[1, :n], g_alone.logp[0], atol=1e-5, rtol=1e-5)


def test_sampling_is_seeded():
    model = _model()
    ids, mask = left_pad(_prompts())
    a = generate(model, ids, mask, 10, generator=torch.Generator().manual_seed(5))
    b = generate(model, ids, mask, 10, generator=torch.Generator().manual_seed(5))
    c = generate(model, ids, mask, 10, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert (a.entropy >= 0).all()


def test_response_logprobs_has_gradient():
    model = _model().train()
    ids, mask = left_pad(_prompts())
    gen = generate(model, ids, mask, 8, generator=torch.Generator().manual_seed(1))
    logp = response_logprobs(model, ids, mask, gen.tokens, gen.mask)
    (-(logp.sum())).backward()
    assert model.tok.weight.grad is not None and model.tok.weight.grad.abs().sum() > 0


def test_warm_start_is_cached_and_deterministic(tmp_path):
    cfg = WarmStartConfig(model=CFG, examples=300, steps=15, batch_size=16)
    a = load_or_build(cfg, tmp_path / "a")
    path = checkpoint_path(cfg, tmp_path / "a")
    assert path.is_file()
    mtime = path.stat().st_mtime_ns
    again = load_or_build(cfg, tmp_path / "a")  # from the cache, not rebuilt
    assert path.stat().st_mtime_ns == mtime
    b = load_or_build(cfg, tmp_path / "b")  # rebuilt elsewhere: identical weights
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(),
                               again.state_dict().values()):
        assert torch.equal(va, vb) and torch.equal(va, vc), k
    other = WarmStartConfig(model=CFG, examples=300, steps=16, batch_size=16)
    assert checkpoint_path(other, tmp_path) != checkpoint_path(cfg, tmp_path)


def test_a_corpus_override_is_a_warm_start_of_its_own_and_the_default_key_holds(tmp_path):
    """An empty corpus override is the default mix under the key it always had (so
    cached warm starts stay valid); an override builds other weights under another key."""
    import hashlib
    import json
    from dataclasses import asdict

    base = WarmStartConfig(model=CFG, examples=300, steps=15, batch_size=16)
    blob = {k: v for k, v in asdict(base).items() if k != "corpus"}
    assert base.key() == hashlib.sha256(json.dumps(blob, sort_keys=True).encode()
                                        ).hexdigest()[:12]
    variant = WarmStartConfig(model=CFG, examples=300, steps=15, batch_size=16,
                              corpus={"add2": {"sft_weight": 2.0, "scratch_prob": 0.0}})
    assert variant.key() != base.key()
    a, b = load_or_build(base, tmp_path), load_or_build(variant, tmp_path)
    assert checkpoint_path(variant, tmp_path).is_file()
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                     b.state_dict().values()))


def test_warm_start_build_ignores_the_callers_thread_count(tmp_path):
    """compare and the campaign build the warm start in their main process, where torch
    runs two threads; the build trains on one thread (restored after), so every
    entry point gets the weights that testbed.py's one-thread build gets."""
    cfg = WarmStartConfig(examples=400, steps=8, batch_size=32)  # the default model size
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        multi = load_or_build(cfg, tmp_path / "multi")
        assert torch.get_num_threads() == 4  # the caller's setting is restored
        torch.set_num_threads(1)
        single = load_or_build(cfg, tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    for (k, va), vb in zip(multi.state_dict().items(), single.state_dict().values()):
        assert torch.equal(va, vb), k
