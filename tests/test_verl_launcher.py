"""The VERL launcher on CPU: trainer config, overrides composed by verl's own Hydra
config, data prep read back by verl's RLHFDataset, the metrics tailer on files written
by verl's FileLogger, the evaluation record in the archive, and the dry-run CLI."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

from trainers.baselines import baseline_source
from trainers.verl import data as verl_data
from trainers.verl.adapter import Settings, register_candidate
from trainers.verl.config import ConfigError, VerlConfig, load_verl_config
from trainers.verl.launcher import (LaunchError, check_composed, compose, hydra_value,
                                    launch, plan_launch, preflight)
from trainers.verl.metrics import JsonlTail, MetricsTail, evaluation_metrics
from trainers.verl.reward import compute_score

DATA = Path(__file__).parent / "data" / "verl"


@pytest.fixture(scope="module")
def parquet_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("verl_data")
    train, _ = verl_data.prepare(DATA / "math_tiny.jsonl", out)
    val, _ = verl_data.prepare(DATA / "gsm8k_tiny.jsonl", out, source="gsm8k", split="test")
    return train, val


def small_config(train, val, **kw):
    return VerlConfig(model="/models/qwen2.5-math-1.5b", train_files=[str(train)],
                      val_files=[str(val)], n_gpus_per_node=4, nnodes=2, rollout_n=4,
                      train_batch_size=16, ppo_mini_batch_size=8, total_training_steps=30,
                      test_freq=10, val_n=8, max_response_length=2048, **kw)


# ----------------------------------------------------------------------------- config

def test_config_from_yaml_env_file_and_env_vars(tmp_path):
    yml = tmp_path / "verl.yaml"
    yml.write_text("verl:\n  model: /m\n  rollout_n: 16\n  train_files: [a.parquet]\n"
                   "  overall_weights: {aime24/pass@32: 1.0}\n")
    env = {"POISE_VERL_ROLLOUT_N": "4", "POISE_VERL_NNODES": "3"}
    cfg = load_verl_config(yml, env=env)
    assert (cfg.model, cfg.rollout_n, cfg.nnodes) == ("/m", 16, 3)  # the file beats env
    # relative data paths are resolved where POISE runs (the job's cwd is its run dir)
    assert cfg.train_files == [str(Path("a.parquet").resolve())]
    assert cfg.overall_weights == {"aime24/pass@32": 1.0}
    dotenv = tmp_path / "verl.env"
    dotenv.write_text("# cluster\nPOISE_VERL_RAY_ADDRESS=http://head:8265\n"
                      "OPENAI_API_KEY=unrelated\nPOISE_VERL_VAL_FILES=x.parquet,y.parquet\n")
    cfg = load_verl_config(None, env={"POISE_TRAINER_CONFIG": str(dotenv)})
    assert cfg.ray_address == "http://head:8265"
    assert cfg.val_files == [str(Path(f).resolve()) for f in ("x.parquet", "y.parquet")]
    example = Path(__file__).resolve().parents[1] / "trainers" / "verl" / "verl.example.yaml"
    assert load_verl_config(example, env={}).val_n == 32


@pytest.mark.parametrize("text, message", [
    ("verl: {modle: x}", "unknown keys"),
    ("verl: {rollout_n: many}", "rollout_n must be int"),
    ("verl: {rollout_n: 1}", "at least 2"),
    ("verl: {ray_address: head:8265}", "http://host:8265"),
    ("verl: [1, 2]", "must be a mapping"),
    ("verl: {overall_weights: {aime24/pass@32: 0.5}}", "sum to 1"),
])
def test_bad_configs_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_verl_config(path, env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_verl_config(tmp_path / "missing.yaml", env={})


def test_hydra_values_are_quoted_only_when_needed():
    assert hydra_value(["console", "file"]) == "[console,file]"
    assert hydra_value("/a b/c.parquet") == "'/a b/c.parquet'"
    assert hydra_value(["x=1.parquet"]) == "['x=1.parquet']"
    assert hydra_value("false") == "'false'" and hydra_value(False) == "False"


# ----------------------------------------------------------------------------- overrides

@pytest.fixture(scope="module")
def grpo_plan(parquet_files, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return plan_launch(baseline_source("grpo"), small_config(*parquet_files), home, "grpo", 3)


def test_overrides_compose_with_verls_hydra_config_and_take(grpo_plan, parquet_files):
    plan = grpo_plan
    composed = compose(plan.overrides)          # verl's config dir + validate_config
    check_composed(composed, plan.values)
    name = plan.plugin.name
    assert composed.algorithm.adv_estimator == name
    assert composed.actor_rollout_ref.actor.policy_loss.loss_mode == name
    assert composed.reward.custom_reward_function.path == str(plan.plugin.path)
    assert composed.reward.custom_reward_function.name == "compute_score"
    assert list(composed.trainer.logger) == ["console", "file"]
    assert composed.actor_rollout_ref.rollout.n == 4
    assert composed.actor_rollout_ref.model.path == "/models/qwen2.5-math-1.5b"
    assert list(composed.data.train_files) == [str(parquet_files[0])]
    assert (composed.trainer.n_gpus_per_node, composed.trainer.nnodes) == (4, 2)
    assert composed.trainer.test_freq == 10 and composed.actor_rollout_ref.rollout.val_kwargs.n == 8
    # GRPO's loss reads ref_logp: verl computes reference log-probs (use_kl_loss) and adds
    # no KL of its own (coefficient 0); the candidate's KL term is the one that trains
    assert composed.actor_rollout_ref.actor.use_kl_loss is True
    assert composed.actor_rollout_ref.actor.kl_loss_coef == 0.0
    assert composed.trainer.use_v1 is True
    env = composed.ray_kwargs.ray_init.runtime_env.env_vars
    # the plugin is self-contained: only its own directory on the workers' path
    assert env.PYTHONPATH == str(plan.plugin.path.parent)
    assert env.VERL_USE_EXTERNAL_MODULES == plan.plugin.module
    assert env.VERL_FILE_LOGGER_PATH == str(plan.metrics_path)
    assert plan.env["VERL_FILE_LOGGER_PATH"] == str(plan.metrics_path)
    # the workers build their configs from it with verl's own dataclass conversion
    from verl.utils.config import omega_conf_to_dataclass
    actor = omega_conf_to_dataclass(composed.actor_rollout_ref.actor)
    assert actor.policy_loss.loss_mode == name
    # and the plugin file holds the candidate's settings
    assert "max_length=2048, total_steps=30" in plan.plugin.path.read_text()


def test_a_candidate_without_kl_turns_verls_kl_loss_off(parquet_files, tmp_path):
    plan = plan_launch(baseline_source("dapo"), small_config(*parquet_files), tmp_path, "dapo")
    composed = compose(plan.overrides)
    assert composed.actor_rollout_ref.actor.use_kl_loss is False
    assert composed.actor_rollout_ref.actor.kl_loss_coef == 0.0


def test_a_loss_that_reads_groups_gets_whole_groups_per_micro_batch(parquet_files, tmp_path):
    """DAPO's loss filters zero-variance groups: its micro-batches must hold whole groups
    (rollout.n = 4 rows each); GRPO's reads no group and keeps verl's defaults."""
    cfg = small_config(*parquet_files)
    cfg.ppo_micro_batch_size_per_gpu = 6
    dapo = compose(plan_launch(baseline_source("dapo"), cfg, tmp_path, "dapo").overrides)
    assert dapo.trainer.balance_batch is False
    assert dapo.actor_rollout_ref.actor.shuffle is False
    assert dapo.actor_rollout_ref.actor.use_dynamic_bsz is False
    assert dapo.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu == 8  # 6 -> 2 x 4
    plan = plan_launch(baseline_source("dapo"), cfg, tmp_path, "dapo")
    assert any("whole groups" in w and "=8" in w for w in plan.warnings)
    grpo = compose(plan_launch(baseline_source("grpo"), cfg, tmp_path, "grpo").overrides)
    assert grpo.trainer.balance_batch is True
    assert grpo.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu == 6


def test_bad_overrides_and_configs_verl_refuses_are_one_line_errors(parquet_files, tmp_path):
    cfg = small_config(*parquet_files, overrides=["trainer.no_such_key=1"])
    with pytest.raises(LaunchError, match="refuses the overrides"):
        compose(plan_launch(baseline_source("grpo"), cfg, tmp_path).overrides)
    # 3 prompts x 2 samples cannot split over 4 x 2 GPUs: verl's validate_config says so
    cfg = small_config(*parquet_files)
    cfg.train_batch_size, cfg.ppo_mini_batch_size, cfg.rollout_n = 3, 3, 2
    with pytest.raises(LaunchError, match="validate_config"):
        compose(plan_launch(baseline_source("grpo"), cfg, tmp_path).overrides)


def test_a_ray_cluster_gets_a_job_submission(parquet_files, tmp_path):
    cfg = small_config(*parquet_files, ray_address="http://head:8265")
    plan = plan_launch(baseline_source("rloo"), cfg, tmp_path, "rloo")
    cmd = plan.command
    assert cmd[:5] == ["ray", "job", "submit", "--address", "http://head:8265"]
    runtime = json.loads(cmd[cmd.index("--runtime-env-json") + 1])
    assert runtime["working_dir"] == str(plan.plugin.path.parent)
    assert "py_modules" not in runtime  # the plugin is self-contained
    assert runtime["env_vars"]["VERL_USE_EXTERNAL_MODULES"] == plan.plugin.module
    entry = cmd[cmd.index("--") + 1:]
    assert entry[:3] == ["python3", "-m", "verl.trainer.main_ppo"]
    composed = compose(plan.overrides)
    assert composed.reward.custom_reward_function.path == plan.plugin.path.name  # in working_dir


def test_launch_runs_the_command_and_tails_its_metrics(grpo_plan, tmp_path):
    """verl cannot train here; a stand-in child writes verl's log format to the plan's
    VERL_FILE_LOGGER_PATH, as main_ppo would, and the launcher tails it to the end."""
    import dataclasses
    import sys

    writer = (
        "import json, os, time\n"
        "path = os.environ['VERL_FILE_LOGGER_PATH']\n"
        "os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "with open(path, 'wb', buffering=0) as fh:\n"
        "    for step in (1, 2, 3):\n"
        "        fh.write(json.dumps({'step': step, 'data': {'actor/entropy': 1.0 / step,"
        " 'val-core/gsm8k/acc/mean@8': 0.1 * step}}).encode() + b'\\n')\n"
        "        time.sleep(0.2)\n")
    plan = dataclasses.replace(grpo_plan, command=[sys.executable, "-c", writer])
    seen = []
    result = launch(plan, poll_s=0.1, on_poll=lambda t: seen.append(max(t.steps)))
    assert result["returncode"] == 0 and seen and seen[-1] <= 3
    assert result["curves"]["entropy"][-1] == [3, pytest.approx(1 / 3)]
    assert result["evaluation"]["metrics"]["val"]["gsm8k/acc@1"] == pytest.approx(30.0)
    hung = dataclasses.replace(grpo_plan, metrics_path=tmp_path / "none.jsonl",
                               step_log=tmp_path / "none2.jsonl",
                               command=[sys.executable, "-c", "import time; time.sleep(600)"])
    result = launch(hung, poll_s=0.1, timeout_s=1.0)
    assert result["timed_out"] and result["returncode"] != 0 and result["evaluation"] is None


def test_a_long_job_that_keeps_logging_outlives_the_stall_limit(grpo_plan, tmp_path):
    """The heartbeat: 3 s of work with a metric line every 0.3 s is never stopped by a
    1 s stall limit; a job silent for longer than it is."""
    writer = (
        "import json, os, time\n"
        "path = os.environ['VERL_FILE_LOGGER_PATH']\n"
        "os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "with open(path, 'wb', buffering=0) as fh:\n"
        "    for step in range(1, 11):\n"
        "        time.sleep(0.3)\n"
        "        fh.write(json.dumps({'step': step, 'data': {'actor/entropy': 1.0}}).encode()"
        " + b'\\n')\n")
    plan = dataclasses.replace(grpo_plan, command=[sys.executable, "-c", writer])
    result = launch(plan, poll_s=0.1, stall_s=1.0)
    assert result["returncode"] == 0 and not result["stalled"] and not result["timed_out"]
    assert result["wall_seconds"] > 2.5
    silent = dataclasses.replace(grpo_plan, metrics_path=tmp_path / "none.jsonl",
                                 step_log=tmp_path / "none2.jsonl",
                                 command=[sys.executable, "-c", "import time; time.sleep(600)"])
    result = launch(silent, poll_s=0.1, stall_s=1.0)
    assert result["stalled"] and result["returncode"] != 0 and result["wall_seconds"] < 60


def test_preflight_says_what_is_missing_here(parquet_files):
    problems = preflight(small_config(*parquet_files))
    if not torch.cuda.is_available():
        assert any("no CUDA GPU" in p for p in problems)
    cfg = VerlConfig(train_files=["/nope/train.parquet"])
    assert any("do not exist" in p for p in preflight(cfg))


# ----------------------------------------------------------------------------- data

def test_data_prep_round_trips_into_verls_dataset(parquet_files, tmp_path, monkeypatch):
    train, val = parquet_files
    rows = pq.read_table(train).to_pylist()
    assert [r["reward_model"]["ground_truth"] for r in rows] == \
        ["\\frac{1}{2}", "7", "6", "5\\sqrt{2}"]
    assert {r["data_source"] for r in rows} == {"math_tiny"}
    assert rows[0]["prompt"][0]["role"] == "user" and "\\boxed{}" in rows[0]["prompt"][0]["content"]
    gsm = pq.read_table(val).to_pylist()
    assert [r["reward_model"]["ground_truth"] for r in gsm] == ["52", "1200"]
    assert gsm[0]["extra_info"]["split"] == "test" and gsm[0]["data_source"] == "gsm8k"
    # verl's own dataset class reads it (a word-level tokenizer built here, no download)
    import datasets
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from verl.utils.dataset.rl_dataset import RLHFDataset

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "[PAD]": 1, "[EOS]": 2},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                 eos_token="[EOS]")
    hf.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    ds = RLHFDataset(data_files=[str(train)], tokenizer=hf, config=OmegaConf.create({
        "max_prompt_length": 256, "filter_overlong_prompts": True, "return_raw_chat": True,
        "cache_dir": str(tmp_path / "cache"), "filter_overlong_prompts_workers": 1}))
    assert len(ds) == 4
    item = ds[3]
    assert item["raw_prompt"][0]["content"].startswith("Simplify $\\sqrt{50}$.")
    assert item["data_source"] == "math_tiny"
    # the reward function grades the stored ground truth
    assert compute_score(item["data_source"], "so \\boxed{5\\sqrt 2}",
                         item["reward_model"]["ground_truth"])["acc"] == 1.0


def test_data_prep_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?"}\n')
    assert verl_data.main(["--input", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "record 1" in err and "\n" not in err
    assert verl_data.main(["--input", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------- reward

@pytest.mark.parametrize("response, truth, expected", [
    ("... so x = \\boxed{1/2}.", "0.5", (1.0, 1.0, 1.0)),
    ("\\boxed{0.5}", "\\frac{1}{2}", (1.0, 1.0, 1.0)),
    ("\\boxed{\\dfrac{3}{4}}", "3/4", (1.0, 1.0, 1.0)),
    ("first \\boxed{3}, finally \\boxed{4}", "4", (1.0, 1.0, 1.0)),   # the last box counts
    ("\\boxed{3}", "4", (0.0, 0.0, 1.0)),                               # wrong
    ("the answer is 0.5", "0.5", (-1.0, 0.0, 0.0)),                     # no box: invalid
    ("\\boxed{}", "4", (-1.0, 0.0, 0.0)),                               # empty box
    ("\\boxed{\\frac{1}{2}", "1/2", (-1.0, 0.0, 0.0)),                  # unbalanced
])
def test_reward_grades_real_format_answers(response, truth, expected):
    out = compute_score("math500", response, truth, {})
    assert (out["score"], out["acc"], out["valid"]) == expected
    assert out["length"] == len(response)


def test_reward_grades_off_the_main_thread_like_verls_reward_loop():
    import threading

    out = {}
    t = threading.Thread(target=lambda: out.update(
        compute_score("math", "\\boxed{\\frac{2}{4}}", "0.5")))
    t.start()
    t.join(60)
    assert out["acc"] == 1.0


def test_without_math_verify_the_fallback_compares_normalized_strings(monkeypatch):
    from trainers.verl import grading

    monkeypatch.setattr(grading, "GRADER", "string")
    assert compute_score("m", "\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}")["acc"] == 1.0
    assert compute_score("m", "\\boxed{ 7 }.", "7")["acc"] == 1.0
    assert compute_score("m", "\\boxed{0.5}", "1/2")["score"] == 0.0   # strict: documented
    assert compute_score("m", "no box", "7")["score"] == -1.0


# ----------------------------------------------------------------------------- metrics

def val_metrics(step_outputs):
    """Validation metrics named as verl's trainer names them: verl's own
    process_validation_metrics, then the val-core/val-aux rule of
    PPOTrainer._val_metrics_update (acc's mean/maj/best at the largest n are core)."""
    from verl.trainer.ppo.metric_utils import process_validation_metrics

    sources, uids, infos = [], [], {}
    for source, uid, response, truth in step_outputs:
        sources.append(source)
        uids.append(uid)
        for k, v in compute_score(source, response, truth).items():
            infos.setdefault(k, []).append(v)
    out = {}
    for source, var2 in process_validation_metrics(sources, uids, infos).items():
        for var, metric2 in var2.items():
            n_max = max(int(m.split("@")[-1].split("/")[0]) for m in metric2)
            for metric, value in metric2.items():
                core = var == "acc" and metric.split("@")[0] in ("mean", "maj", "best") \
                    and f"@{n_max}" in metric
                out[f"{'val-core' if core else 'val-aux'}/{source}/{var}/{metric}"] = value
    return out


def test_tailer_reads_verls_file_logger_into_curves_and_an_evaluation(tmp_path, monkeypatch):
    from verl.utils.tracking import FileLogger

    log_path, step_log = tmp_path / "verl.jsonl", tmp_path / "poise.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(log_path))
    logger = FileLogger("poise", "probe")
    tail = MetricsTail(log_path, step_log)
    assert tail.poll() == []                          # nothing written yet
    outputs = [("aime24", f"p{i}", "\\boxed{1/2}" if j < i else "\\boxed{7}", "0.5")
               for i in range(4) for j in range(4)]
    outputs += [("math500", "q", "no box", "3"), ("math500", "q", "\\boxed{3}", "3")]
    logger.log(val_metrics(outputs), step=0)          # val_before_train
    assert tail.poll() == [0]
    # a progress bar polled now must not show step 0: nothing has trained yet
    assert tail.last_training_step() is None
    for step in (1, 2):
        logger.log({"actor/entropy": 0.9 / step, "response_length/mean": 300.0 + step,
                    "critic/score/mean": 0.1, "actor/pg_clipfrac": 0.01, "perf/notes": "x"},
                   step=step)
    # the adapter's step log, written by the real estimator
    cand = register_candidate(baseline_source("grpo"), Settings(
        max_length=16, total_steps=2, run_token="tail", step_log=str(step_log)),
        name="poise_grpo_tailer_test")
    mask = torch.ones(4, 3)
    rewards = torch.zeros(4, 3)
    rewards[:, -1] = torch.tensor([1.0, 0.0, -1.0, 1.0])
    cand.estimate_advantages(rewards, mask, index=["u", "u", "v", "v"])
    assert tail.poll() == [1, 2]
    assert tail.last_training_step() == 2
    curves = tail.curves()
    assert curves["entropy"] == [[1, 0.9], [2, 0.45]]
    assert curves["response_length"] == [[1, 301.0], [2, 302.0]]
    assert curves["accuracy"] == [[1, 0.5]] and curves["validity"] == [[1, 0.75]]
    assert curves["reward"] == [[1, 0.5]]            # GRPO's shaped reward: correct
    # a partly written last line waits for the rest
    with open(log_path, "ab") as fh:
        fh.write(b'{"step": 3, "data": {"actor/entropy": 0.2, "response_len')
    assert tail.poll() == []
    with open(log_path, "ab") as fh:
        fh.write(b'gth/mean": 280.0}}\n')
    assert tail.poll() == [3] and tail.curves()["entropy"][-1] == [3, 0.2]
    record = tail.evaluation({"aime24/pass@4": 0.5, "math500/acc@1": 0.5})
    val = record["metrics"]["val"]
    assert record["step"] == 0 and record["backend"] == "verl"
    assert val["aime24/acc@1"] == pytest.approx(100 * 6 / 16)   # mean@4 of acc
    assert 0 < val["aime24/pass@4"] < 75.0     # verl's bootstrap: below the true 3 of 4
    assert record["pass_at_k"] == "verl's bootstrap best@k"
    assert val["math500/valid"] == 50.0 and val["math500/acc@1"] == 50.0
    assert val["overall"] == pytest.approx(0.5 * val["aime24/pass@4"] + 25.0)
    assert record["objectives"]["neg_length"] == -val["length"]
    logger.finish()
    # verl's per-sample validation dump (the fields PPOTrainer._write_generations writes)
    # gives the unbiased pass@k the local backend reports
    val_dir = tmp_path / "val_generations"
    val_dir.mkdir()
    with open(val_dir / "0.jsonl", "w") as fh:
        for j, (source, uid, response, truth) in enumerate(outputs):
            info = compute_score(source, response, truth)
            fh.write(json.dumps({"input": uid, "output": response, "gts": truth,
                                 "score": info["score"], "step": 0, **info,
                                 "uid": f"{uid}_0_{j}"}) + "\n")
    tail.val_dir = val_dir
    record = tail.evaluation()
    val = record["metrics"]["val"]
    assert record["pass_at_k"].startswith("unbiased")
    assert val["aime24/pass@4"] == pytest.approx(75.0)
    assert val["aime24/pass@2"] == pytest.approx(100 * (0 + 0.5 + 5 / 6 + 1) / 4)
    assert val["aime24/pass@1"] == pytest.approx(val["aime24/acc@1"])


def test_a_restarted_run_is_read_from_the_start(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "data": {"actor/entropy": 1.0}}\n'
                    '{"step": 2, "data": {"actor/entropy": 0.5}}\n')
    tail = MetricsTail(path)
    assert tail.poll() == [1, 2]
    path.write_text('{"step": 1, "data": {"actor/entropy": 2.0}}\n')  # verl reopens with "wb"
    assert tail.poll() == [1] and tail.curves()["entropy"] == [[1, 2.0]]
    path.write_text(path.read_text() + "not json\n")
    raw = JsonlTail(path)
    assert len(raw.poll()) == 1 and raw.bad_lines == 1


def test_the_evaluation_record_lands_in_the_archive(tmp_path):
    from memory.archive import Archive

    flat = evaluation_metrics({"val-core/math500/acc/mean@1": 0.4,
                               "val-aux/math500/valid/mean@1": 0.9,
                               "val-aux/math500/length/mean@1": 812.0})
    assert flat == {"math500/acc@1": 40.0, "math500/valid": 90.0, "math500/length": 812.0,
                    "acc@1": 40.0, "valid": 90.0, "length": 812.0}
    arch = Archive(tmp_path, index=False)
    run = arch.start_run("accurate", {})
    cid = arch.add_candidate(run, "grpo", 0, "seed", baseline_source("grpo"))
    arch.add_evaluation(cid, 0, "verl", metrics={"val": flat}, fitness=40.0,
                        curves={"entropy": [[1, 0.9]]},
                        objectives={"neg_length": -flat["length"]})
    (ev,) = arch.evaluations(cid)
    assert ev.backend == "verl" and ev.metrics["val"]["math500/acc@1"] == 40.0


# ----------------------------------------------------------------------------- CLI

def test_dry_run_cli_prints_the_command_and_exits_0(parquet_files, tmp_path, capsys):
    from graph.run import main

    cfg = tmp_path / "verl.yaml"
    cfg.write_text(f"verl:\n  train_files: ['{parquet_files[0]}']\n"
                   f"  val_files: ['{parquet_files[1]}']\n  n_gpus_per_node: 2\n")
    code = main(["--trainer", "verl", "--dry-run", "--trainer-config", str(cfg),
                 "--home", str(tmp_path / "home"), "--directive", "accurate and concise"])
    out = capsys.readouterr().out
    assert code == 0
    assert "-m verl.trainer.main_ppo" in out and "algorithm.adv_estimator=poise_grpo_" in out
    assert "trainer.logger=[console,file]" in out and "VERL_USE_EXTERNAL_MODULES=poise_grpo_" in out
    assert "trainer.n_gpus_per_node = 2" in out


def test_dry_run_of_a_runs_candidates(tmp_path, capsys):
    from graph.run import main
    from memory.archive import Archive

    home = tmp_path / "home"
    arch = Archive(home, index=False)
    run = arch.start_run("accurate", {})
    arch.add_candidate(run, "dr-grpo", 0, "seed", baseline_source("dr_grpo"))
    arch.add_candidate(run, "broken", 1, "x", "import os\nNAME = 'broken'\n")
    assert main(["--trainer", "verl", "--dry-run", "--resume", str(run),
                 "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "poise_dr_grpo_" in out and "# broken: skipped:" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without GPUs")
def test_training_without_gpus_is_one_line_and_exit_2(tmp_path, capsys):
    from graph.run import main

    code = main(["--trainer", "verl", "--directive", "accurate",
                 "--home", str(tmp_path / "home")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: cannot train with verl here")
    assert "no CUDA GPU" in err and len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "home" / "verl")   # nothing planned or written


def test_dry_run_from_a_fresh_clone_prints_a_complete_command(tmp_path):
    """No trainer config, another cwd: the defaults use the sample data shipped in
    data/verl/sample/ (train, its held-out validation split, a test set), and the
    printed command names files that exist."""
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("POISE_", "OPENAI_"))}
    env["PYTHONPATH"] = str(repo)
    proc = subprocess.run([sys.executable, "-m", "graph.run", "--trainer", "verl",
                           "--dry-run", "--home", str(tmp_path / "home"), "--directive",
                           "accurate and concise"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    sample = repo / "data" / "verl" / "sample"
    train, val, test = (sample / f for f in ("math_sample.parquet",
                                             "math_sample_val.parquet",
                                             "gsm8k_sample.parquet"))
    assert all(f.is_file() for f in (train, val, test))
    assert f"data.train_files=['{train}']" in out or f"data.train_files=[{train}]" in out
    assert str(val) in out and str(test) in out and "-m verl.trainer.main_ppo" in out
    assert "is empty" not in out + proc.stderr
    assert "fewer than train_batch_size" not in out + proc.stderr   # 140 >= 128 prompts


def test_too_little_training_data_for_a_batch_is_said(parquet_files):
    from trainers.verl.launcher import data_warnings

    cfg = small_config(*parquet_files)            # 4 prompts, train_batch_size 16
    assert any("hold 4 prompts, fewer than train_batch_size 16" in w
               for w in data_warnings(cfg))


def test_the_shipped_sample_is_what_the_recipe_makes(tmp_path):
    """data/verl/sample/*.parquet are trainers.verl.data's output for the shipped JSONL
    (140 train / 20 held-out validation, seed 0; the test set whole), so they cannot
    drift from the recipe."""
    sample = Path(__file__).resolve().parents[1] / "data" / "verl" / "sample"
    (train, n_train), (val, n_val) = verl_data.prepare_with_validation(
        sample / "math_sample.jsonl", tmp_path, 0.125)
    test, n_test = verl_data.prepare(sample / "gsm8k_sample.jsonl", tmp_path, split="test")
    assert (n_train, n_val, n_test) == (140, 20, 16)
    for made in (train, val, test):
        assert pq.read_table(made).to_pylist() == pq.read_table(sample / made.name).to_pylist()
    assert verl_data.sources_of(val) == ["math_sample_val"]
    held = {r["extra_info"]["question"] for r in pq.read_table(val).to_pylist()}
    kept = {r["extra_info"]["question"] for r in pq.read_table(train).to_pylist()}
    assert not held & kept


def test_a_file_in_both_val_and_test_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="selection would read benchmark numbers"):
        VerlConfig(val_files=["a.parquet"], test_files=["a.parquet"])
