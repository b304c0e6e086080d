"""The TRL anchor: the testbed's model as a Hugging Face GPT-2 computes the same logits
and greedy decodes, the character tokenizer is the task's, TRL's GRPOTrainer trains it
on the CPU, and ``bench --trl`` reports both trainers side by side. Needs the optional
``trl`` extra (CI installs it); without it these tests skip and the command exits 2
(tests/test_cli_bad_input.py)."""
import json

import pytest
import torch

pytest.importorskip("trl")

from evals.tasks import BOS, EOS, PromptStream, decode, encode, heldout_set  # noqa: E402
from trainers.local import bench  # noqa: E402
from trainers.local import trl_anchor  # noqa: E402
from trainers.local.model import generate, left_pad, positions_for  # noqa: E402


def test_the_hf_model_computes_what_tinygpt_computes(tiny_warm):
    _, _, model = tiny_warm
    hf = trl_anchor.to_hf(model)
    probs = [p for f in ("add2", "add5") for p in heldout_set(f, "val", 3)]
    ids, mask = left_pad([[BOS] + encode(p.prompt) + encode("1;2") for p in probs])
    with torch.no_grad():
        ours = model(ids, mask, positions_for(mask))
        theirs = hf(input_ids=ids, attention_mask=mask.long(),
                    position_ids=positions_for(mask)).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    # greedy decoding through transformers' generate gives our tokens
    ids, mask = left_pad([[BOS] + encode(p.prompt) for p in probs])
    assert bool(mask.all()), "the task's prompts have one length (no padding in TRL)"
    mine = generate(model, ids, mask, 24, temperature=0)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=24,
                          do_sample=False, eos_token_id=EOS, pad_token_id=0)
    for row, ref in zip(out[:, ids.shape[1]:].tolist(), mine.tokens.tolist()):
        assert decode(row) == decode(ref)


def test_the_tokenizer_is_the_task_vocabulary():
    tok = trl_anchor.char_tokenizer()
    for p in PromptStream(3).next_batch(5):
        assert tok(p.prompt)["input_ids"] == [BOS] + encode(p.prompt)
    ids = encode("12+3=15") + [EOS]
    assert tok.decode(ids, skip_special_tokens=True) == "12+3=15"


def test_trl_grpo_trains_the_model_on_the_cpu(tiny_warm):
    _, _, model = tiny_warm
    r = trl_anchor.run_trl(model, seed=0, cycles=2, prompts_per_step=2, group_size=4,
                           max_response=12, minibatches=2)
    assert r["cycles"] == 2 and r["cpu_seconds_per_cycle"] > 0
    assert r["cpu_seconds_total"] > r["cpu_seconds_per_cycle"]


def test_bench_trl_reports_both_trainers_side_by_side(tiny_warm, tiny_train_config, tmp_path,
                                                      capsys):
    warm, home, _ = tiny_warm
    out = tmp_path / "trl"
    report = bench.main(["--out", str(out), "--home", str(home), "--trl", "--cycles", "3"],
                        train_config=tiny_train_config, warm_config=warm)
    saved = json.loads((out / "bench.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["mode"] == "trl" and saved["cycles"] == 3 and saved["measured_cycles"] == 2
    assert saved["batch"]["group_size"] == tiny_train_config.group_size
    for engine in ("reference", "fast", "compiled"):
        p = saved["poise"][engine]
        assert p["cpu_seconds_per_cycle"] > 0 and p["peak_rss_mb"] > 0
        assert saved["speedup_vs_trl"][engine] == pytest.approx(
            saved["trl"]["cpu_seconds_per_cycle"] / p["cpu_seconds_per_cycle"])
    assert saved["trl"]["peak_rss_mb"] > 0 and saved["trl"]["cycles"] == 3
    printed = capsys.readouterr().out
    assert "GRPOTrainer" in printed and "POISE (fast engine)" in printed
    assert "POISE (compiled engine)" in printed and saved["compiled_decode"]["error"] is None
