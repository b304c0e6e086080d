"""The fast engine computes the reference engine's functions: the same log-probs and
gradients, the same greedy decodes, samples from the same distributions; its length
buckets are optimal; the trainer runs on either engine."""
import itertools
import random

import pytest
import torch

from evals.tasks import BOS, EOS, PAD, VOCAB_SIZE, CorpusNoise, encode, heldout_set
from trainers.algorithm import load_algorithm
from trainers.local import engine
from trainers.local import model as reference
from trainers.local.evaluate import EvalConfig, evaluate
from trainers.local.model import ModelConfig, TinyGPT, left_pad
from trainers.local.trainer import TrainConfig, train
from trainers.local.warmstart import WarmStartConfig, load_or_build

CFG = ModelConfig(vocab_size=VOCAB_SIZE, n_layer=2, n_head=2, d_model=32, max_seq=64)
G = 4  # group size


def _model(seed=0):
    """A random model: its samples end (EOS) at varied lengths; its greedy decodes never do."""
    torch.manual_seed(seed)
    return TinyGPT(CFG).eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny warm start (~4 CPU-s): greedy decodes that end at different lengths."""
    return load_or_build(WarmStartConfig(model=CFG, examples=800, steps=200, batch_size=16,
                                         noise=CorpusNoise(max_filler=4)),
                         tmp_path_factory.mktemp("warm"))


def _grouped_prompts():
    """Three prompts of different lengths (so left padding varies), each G times."""
    prompts = [[BOS] + encode("00012+00034="), [BOS] + encode("5+7="), [BOS] + encode("99+1=")]
    return left_pad([p for p in prompts for _ in range(G)])


def _sampled(model, ids, mask, seed=0, max_new=20):
    return reference.generate(model, ids, mask, max_new,
                              generator=torch.Generator().manual_seed(seed))


def test_response_logprobs_and_gradients_match_the_reference():
    model = _model()
    ids, mask = _grouped_prompts()
    gen = _sampled(model, ids, mask)
    lengths = gen.mask.sum(-1)
    assert len(set(lengths.tolist())) >= 3, "test needs responses of varied lengths"
    ref = reference.response_logprobs(model, ids, mask, gen.tokens, gen.mask)
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    new = engine.response_logprobs(model, ids, mask, gen.tokens, gen.mask, group_size=G)
    torch.testing.assert_close(new, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(new == 0, gen.mask == 0)  # padding stays exactly zero
    new.sum().backward()
    for (name, p), g in zip(model.named_parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4, msg=name)
    # without prompt sharing (group_size 1) too
    torch.testing.assert_close(
        engine.response_logprobs(model, ids, mask, gen.tokens, gen.mask).detach(), ref.detach(),
        atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grouped", [True, False])
def test_greedy_decoding_matches_the_reference(trained, grouped):
    if grouped:
        ids, mask = _grouped_prompts()
    else:  # distinct prompts: rows finish at different steps (the batch is compacted)
        ids, mask = left_pad([[BOS] + encode(p.prompt) for f in ("add2", "add3", "add5")
                              for p in heldout_set(f, "val", 8)])
    a = reference.generate(trained, ids, mask, 40, temperature=0)
    b = engine.generate(trained, ids, mask, 40, temperature=0, group_size=G if grouped else 1)
    assert len(set(a.mask.sum(-1).tolist())) >= 2
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    assert torch.equal(a.terminated, b.terminated)
    torch.testing.assert_close(b.logp, a.logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.entropy, a.entropy, atol=1e-5, rtol=1e-5)


def test_sampling_is_consistent_seeded_and_stops_at_eos():
    model = _model(2)
    ids, mask = _grouped_prompts()
    a = engine.generate(model, ids, mask, 20, generator=torch.Generator().manual_seed(3),
                        group_size=G)
    b = engine.generate(model, ids, mask, 20, generator=torch.Generator().manual_seed(3),
                        group_size=G)
    c = engine.generate(model, ids, mask, 20, generator=torch.Generator().manual_seed(4),
                        group_size=G)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    # the sampler's log-probs are the model's log-probs of what it sampled
    with torch.no_grad():
        full = reference.response_logprobs(model, ids, mask, a.tokens, a.mask)
    torch.testing.assert_close(a.logp, full, atol=1e-4, rtol=1e-4)
    for row, m in zip(a.tokens, a.mask):
        hits = (row == EOS).nonzero()
        if len(hits):
            end = hits[0, 0] + 1
            assert m[:end].all() and m[end:].sum() == 0 and (row[end:] == PAD).all()
    assert torch.equal(a.terminated, (a.tokens == EOS).any(-1))
    assert 0 < int(a.terminated.sum()) < len(a.terminated)  # some rows ran to the cap
    assert (a.entropy >= 0).all() and (a.entropy[a.mask == 0] == 0).all()


def test_sampler_draws_from_the_distribution():
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).repeat(40_000, 1)
    tok = engine._sample(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(tok, minlength=4).float() / len(tok)
    torch.testing.assert_close(freq, probs[0], atol=0.01, rtol=0)
    assert freq[3] == 0  # a zero-probability token is never drawn


def test_length_buckets_are_optimal():
    rng = random.Random(0)

    def cost(lengths, cuts, overhead):
        lo, total = 0, 0
        for hi in cuts:
            total += (hi - lo) * lengths[hi - 1] + overhead
            lo = hi
        return total

    for _ in range(40):
        lengths = sorted(rng.randint(1, 30) for _ in range(rng.randint(1, 9)))
        overhead, k = rng.choice([0, 5, 40]), rng.randint(1, 4)
        cuts = engine.length_buckets(lengths, overhead, k)
        assert cuts[-1] == len(lengths) and len(cuts) <= k
        best = min(cost(lengths, list(c) + [len(lengths)], overhead)
                   for r in range(k) for c in itertools.combinations(range(1, len(lengths)), r))
        assert cost(lengths, cuts, overhead) == best


def test_a_group_that_does_not_share_its_prompt_is_refused():
    ids, mask = _grouped_prompts()
    with pytest.raises(ValueError, match="share"):
        engine.unique_prompts(ids, mask, G + 1 if len(ids) % (G + 1) == 0 else 3 * G // 2)
    ids = ids.clone()
    ids[1, -1] = encode("7")[0]
    with pytest.raises(ValueError, match="share"):
        engine.unique_prompts(ids, mask, G)


def test_evaluation_agrees_across_engines_on_greedy_metrics(trained):
    cfg = EvalConfig(size=12, pass_problems=3, n_samples=16, max_response=40)
    a, b = evaluate(trained, cfg, engine="reference"), evaluate(trained, cfg, engine="fast")
    for k in a:
        if "/pass@" not in k and "t1_" not in k and k != "overall":
            assert a[k] == pytest.approx(b[k]), k


@pytest.mark.parametrize("name", ["fast", "reference"])
def test_the_trainer_runs_on_either_engine(name):
    cfg = TrainConfig(steps=2, prompts_per_step=2, group_size=4, max_response=12,
                      eval_every=2, curve_eval=EvalConfig(size=4, pass_problems=2, n_samples=16,
                                                          max_response=12),
                      final_eval=EvalConfig(size=4, pass_problems=2, n_samples=16,
                                            max_response=12), engine=name)
    result = train(load_algorithm("grpo"), _model(4), seed=0, cfg=cfg)
    assert result.steps_done == 2 and len(result.curve) == 2
    assert all(torch.isfinite(torch.tensor(r["grad_norm"])) for r in result.curve)
    with pytest.raises(ValueError, match="unknown engine"):
        train(load_algorithm("grpo"), _model(4), seed=0,
              cfg=TrainConfig(steps=1, engine="turbo"))
