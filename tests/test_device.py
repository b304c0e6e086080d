"""``--device`` (trainers/local/device.py) and the GPU preset, checked on the CPU.

This machine has no GPU, so these tests cover what can be covered without one: device
resolution (auto is cpu here; CUDA asked for where there is none is one line and exit
code 2 from graph.run, compare and bench, with nothing written), ``--device cpu`` giving
exactly the default's results, the device and preset in the run config, the payloads
that carry a CUDA device to the sandbox, the GPU preset's config building a model, the
warm-start file names per device, the bench's "no GPU here" note, and the sandbox's
CUDA memory limit (the RSS watchdog that replaces RLIMIT_AS) on a CPU job. The CUDA path
itself (kernels on a GPU, the warm-up before the guard) has not been run.
"""
import hashlib
import json
from dataclasses import asdict

import pytest
import torch

from run_checks import TINY
from trainers.baselines import baseline_source
from trainers.local.device import (GPU_PRESET_NAME, DeviceError, describe, gpu_preset,
                                   kept_device, resolve_device, run_fields, with_preset)

NO_CUDA = not torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")


def _tiny_configs():
    from evals.tasks import VOCAB_SIZE
    from trainers.local.trainer import train_config_from_dict
    from trainers.local.warmstart import warm_config_from_dict

    ctx = json.loads(TINY.read_text())
    warm = dict(ctx["warm_config"])
    warm["model"] = {"vocab_size": VOCAB_SIZE, **warm["model"]}
    return train_config_from_dict(ctx["train_overrides"]), warm_config_from_dict(warm)


# ----------------------------------------------------------------------------- resolution

def test_auto_is_cuda_only_where_there_is_cuda():
    assert resolve_device("auto") == ("cpu" if NO_CUDA else "cuda")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device(" CPU ") == "cpu"


@pytest.mark.parametrize("spec", ["mps", "gpu", "cuda:", "cuda:x", "cpu:0"])
def test_an_unknown_device_is_refused(spec):
    with pytest.raises(DeviceError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


@needs_no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_where_there_is_none_is_refused(spec):
    with pytest.raises(DeviceError, match="no CUDA device here"):
        resolve_device(spec)


@needs_no_cuda
def test_a_resumed_run_keeps_its_device():
    assert kept_device("cpu") == "cpu"
    assert kept_device("cpu", "cpu") == "cpu"
    assert kept_device("cpu", "auto") == "cpu"       # auto is cpu here: the same device
    with pytest.raises(DeviceError, match="this run trains on cuda: .*no CUDA"):
        kept_device("cuda")                            # saved on a GPU machine


def _one_line_exit_2(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@needs_no_cuda
def test_graph_run_refuses_cuda_in_one_line_and_writes_nothing(tmp_path, capsys):
    from graph.run import main

    home = tmp_path / "home"
    for spec, message in (("cuda", "no CUDA device here"), ("tpu", "expected auto")):
        assert main(["--directive", "accurate", "--home", str(home), "--quiet",
                     "--config", str(TINY), "--device", spec]) == 2
        _one_line_exit_2(capsys.readouterr().err, f"--device {spec}", message)
        assert not home.exists()
    config = tmp_path / "ctx.json"   # the device is a flag, not a --config field
    config.write_text(json.dumps({**json.loads(TINY.read_text()), "device": "cuda"}))
    assert main(["--directive", "accurate", "--home", str(home), "--quiet",
                 "--config", str(config)]) == 2
    _one_line_exit_2(capsys.readouterr().err, "unknown keys ['device']")
    assert not home.exists()


@needs_no_cuda
def test_compare_and_bench_refuse_cuda_in_one_line_and_write_nothing(tmp_path, capsys):
    from trainers.local import bench, compare

    home, out = tmp_path / "home", tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        compare.main(["--algorithms", "grpo", "--seeds", "1", "--out", str(out),
                      "--home", str(home), "--device", "cuda"])
    assert stop.value.code == 2
    _one_line_exit_2(capsys.readouterr().err, "--device cuda", "no CUDA device here")
    with pytest.raises(SystemExit) as stop:
        bench.main(["--out", str(out), "--home", str(home), "--device", "cuda:1"])
    assert stop.value.code == 2
    _one_line_exit_2(capsys.readouterr().err, "--device cuda:1", "no CUDA device here")
    assert not home.exists() and not out.exists()


# ----------------------------------------------------------------------------- the preset

def test_the_gpu_preset_is_a_valid_larger_config_that_builds_on_cpu():
    from evals.tasks import BOS, encode
    from trainers.local.model import TinyGPT, left_pad, positions_for
    from trainers.local.trainer import TrainConfig, train_config_from_dict
    from trainers.local.warmstart import WarmStartConfig, warm_config_from_dict

    preset = gpu_preset()
    warm = warm_config_from_dict(preset["warm_config"])
    default = WarmStartConfig()
    assert warm.key() != default.key()  # its own warm-start checkpoint
    assert (warm.model.n_layer, warm.model.d_model) > (default.model.n_layer,
                                                       default.model.d_model)
    assert warm.examples >= warm.steps * warm.batch_size  # one pass, like the default
    cfg = train_config_from_dict(preset["train_overrides"])
    assert cfg.prompts_per_step > TrainConfig().prompts_per_step
    assert cfg.prompts_per_step % cfg.minibatches == 0   # group-aligned minibatches
    model = TinyGPT(warm.model)
    assert 4_000_000 < model.num_params() < 6_000_000
    ids, mask = left_pad([[BOS] + encode("12+34="), [BOS] + encode("5+6=")], device="cpu")
    logits = model(ids, mask, positions_for(mask))
    assert logits.shape == (2, ids.shape[1], warm.model.vocab_size)
    assert bool(torch.isfinite(logits).all())


def test_the_preset_is_chosen_on_cuda_unless_the_model_is_given():
    assert with_preset("cpu", None, {"steps": 4}) == (None, {"steps": 4}, None)
    warm, train, name = with_preset("cuda:0", None, {"steps": 4, "lr": 3e-4})
    assert name == GPU_PRESET_NAME and warm == gpu_preset()["warm_config"]
    assert train == {**gpu_preset()["train_overrides"], "steps": 4, "lr": 3e-4}
    mine = {"model": {"n_layer": 1, "n_head": 2, "d_model": 32}}
    assert with_preset("cuda", mine, None) == (mine, {}, None)
    fields = run_fields("cuda", "process", {})
    assert fields["device"] == "cuda" and fields["preset"] == GPU_PRESET_NAME
    assert run_fields("cuda", "verl", {})["preset"] is None      # verl trains its own model
    assert run_fields(None, "process", {"warm_config": mine}) == {
        "device": "cpu", "warm_config": mine, "train_overrides": {}, "preset": None}
    assert describe("cpu") == "cpu; model: the default testbed (3 layers, d_model 96)"
    assert describe("cpu", mine) == "cpu; model: 1 layers, d_model 32"
    corpus = {"seed": 1, "corpus": {"add2": {"sft_weight": 0.8}}}  # docs/direct-answers
    assert describe("cpu", corpus) == ("cpu; model: the testbed's (3 layers, d_model 96); "
                                       "warm start: corpus, seed from --config")
    assert describe("cpu", {**mine, **corpus}) == (
        "cpu; model: 1 layers, d_model 32; warm start: corpus, seed from --config")
    assert describe("cpu", gpu_preset()["warm_config"], GPU_PRESET_NAME) == (
        "cpu; GPU preset: 6 layers, d_model 256")


# ----------------------------------------------------------------------------- same results

def test_device_cpu_trains_exactly_as_the_default(tiny_warm, tiny_train_config):
    from trainers.algorithm import load_algorithm
    from trainers.local.trainer import train

    warm, home, model = tiny_warm
    runs = [train(load_algorithm("dapo"), model, 4, tiny_train_config, **kw).as_dict()
            for kw in ({}, {"device": "cpu"}, {"device": torch.device("cpu")})]
    for r in runs:
        r.pop("cpu_seconds"), r.pop("train_cpu_seconds"), r.pop("phase_cpu_seconds")
        for row in r["curve"]:
            row.pop("cpu_seconds")
    assert runs[0] == runs[1] == runs[2]
    assert runs[0]["steps_done"] == tiny_train_config.steps


def test_compare_with_device_cpu_gives_the_default_results_and_records_it(
        tiny_warm, tiny_train_config, tmp_path):
    from trainers.local import compare

    from dataclasses import replace

    warm, home, _ = tiny_warm
    train_config = replace(tiny_train_config, steps=2, eval_every=2)
    saved = []
    for i, extra in enumerate(([], ["--device", "cpu"])):
        out = tmp_path / f"cmp{i}"
        compare.main(["--algorithms", "grpo", "--seeds", "1", "--out", str(out), "--home",
                      str(home), "--workers", "1", "--quiet", *extra],
                     train_config=train_config, warm_config=warm)
        saved.append(json.loads((out / "compare.json").read_text()))
    for data in saved:
        assert data["device"] == "cpu" and data["preset"] is None
        assert data["model"] == asdict(warm.model)
    keep = ("algorithm", "seeds", "overall_mean", "families", "mean_length", "validity",
            "validity_auc", "pass@16", "auc_overall")
    assert [{k: r[k] for k in keep} for r in saved[0]["results"]] == \
        [{k: r[k] for k in keep} for r in saved[1]["results"]]


def test_the_run_config_records_the_device_and_preset(tmp_path):
    from graph.request import RunRequest
    from graph.runner import prepare

    for i, device in enumerate((None, "cpu", "auto")):
        home = tmp_path / f"home{i}"
        _, archive, run_id, _, ctx, _, config = prepare(RunRequest(
            directive="accurate", home=str(home), config=TINY, device=device))
        assert ctx.device == "cpu" and ctx.preset is None
        assert config["context"]["device"] == "cpu"
        assert archive.run(run_id).config["context"]["preset"] is None
        assert config["context"]["warm_config"] == json.loads(TINY.read_text())["warm_config"]


# ----------------------------------------------------------------------------- payloads

def test_the_trainer_node_and_the_smoke_run_carry_a_cuda_device(monkeypatch, tmp_path):
    from langgraph.runtime import Runtime

    import agents.verifier as verifier
    import graph.graph as loop
    from graph.context import Context
    from trainers.executors import JobOutcome
    from trainers.sandbox import SandboxResult

    sent = []

    class Fake:
        backend = "local"

        def train(self, payloads, *, timeout_s, on_progress=None, on_done=None):
            sent.extend(payloads)
            return [JobOutcome(SandboxResult(True, {}, "", "ok", "", 0.0), (0.0, 1.0))
                    for _ in payloads]

    monkeypatch.setattr(loop, "executor_for", lambda ctx: Fake())
    state = {"code": baseline_source("grpo"), "proposal": {"name": "grpo"},
             "run_id": 1, "round": 0, "slot": 0}
    for device in ("cpu", "cuda:1"):
        ctx = Context(home=str(tmp_path), seeds=2, device=device)
        out = loop.trainer(state, Runtime(context=ctx))
        assert len(out["results"]) == 2, out
    assert ["device" in p for p in sent] == [False, False, True, True]
    assert {p.get("device") for p in sent[2:]} == {"cuda:1"}

    calls = []

    def fake_sandbox(task, payload, **kw):
        calls.append((task, payload))
        return SandboxResult(True, {"steps_done": 1, "curve": [], "final": {}}, "", "ok",
                             "", 0.1)

    monkeypatch.setattr(verifier, "run_in_sandbox", fake_sandbox)
    for device in ("cpu", "cuda"):
        report = verifier.verify(baseline_source("grpo"), home=tmp_path, device=device)
        assert report.passed, report.feedback
    by_task = [(task, payload.get("device")) for task, payload in calls]
    assert by_task == [("check_hooks", None), ("smoke_train", None),
                       ("check_hooks", None), ("smoke_train", "cuda")]  # checks stay on CPU


def test_a_job_payload_and_its_cache_name_are_unchanged_on_cpu(monkeypatch):
    from pathlib import Path

    from evals.tasks import OVERALL_WEIGHTS, TRANSFER_WEIGHTS
    from trainers.local import jobs
    from trainers.local.jobs import Job, _result_path

    cpu = Job("grpo", "src", 0, "/h", {"steps": 2}, {"steps": 3})
    gpu = Job("grpo", "src", 0, "/h", {"steps": 2}, {"steps": 3}, "cuda")
    assert "device" not in cpu.payload() and gpu.payload()["device"] == "cuda"
    key = hashlib.sha256(json.dumps(
        ["src", {"steps": 2}, {"steps": 3},
         {"overall": OVERALL_WEIGHTS, "transfer": TRANSFER_WEIGHTS}],
        sort_keys=True).encode()).hexdigest()[:10]
    assert _result_path(Path("r"), cpu).name == f"grpo-seed0-{key}.json"
    assert _result_path(Path("r"), gpu) != _result_path(Path("r"), cpu)
    # a result scored by another Overall formula is another cache entry
    monkeypatch.setattr(jobs, "OVERALL_WEIGHTS", {**OVERALL_WEIGHTS, "add2/acc@1": 0.2})
    assert _result_path(Path("r"), cpu).name != f"grpo-seed0-{key}.json"


def test_a_hook_returning_a_tensor_on_another_device_is_a_contract_failure():
    from trainers.algorithm import CandidateError
    from trainers.local.trainer import _on_device

    here = torch.zeros(3)
    assert _on_device("shape_reward", here, torch.device("cpu")) is here
    with pytest.raises(CandidateError, match="shape_reward.*on meta, the batch is on cpu"):
        _on_device("shape_reward", torch.zeros(3, device="meta"), torch.device("cpu"))


# ----------------------------------------------------------------------------- warm start

def test_warm_start_files_per_device_and_loading_with_an_explicit_device(tiny_warm):
    from trainers.local.warmstart import checkpoint_path, load_checkpoint, load_or_build

    warm, home, model = tiny_warm
    cpu_path = checkpoint_path(warm, home)
    assert cpu_path.name == f"warmstart-{warm.key()}.pt"          # the name it always had
    assert checkpoint_path(warm, home, "cpu") == cpu_path
    assert checkpoint_path(warm, home, "cuda:1").name == f"warmstart-{warm.key()}-cuda.pt"
    blob = torch.load(cpu_path, map_location="cpu", weights_only=True)
    assert {t.device.type for t in blob["state_dict"].values()} == {"cpu"}
    again = load_checkpoint(cpu_path, warm, "cpu")
    built = load_or_build(warm, home, device="cpu")
    for a, b, c in zip(model.state_dict().values(), again.state_dict().values(),
                       built.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    # A CPU job never reads a CUDA-built file, even where one is present.
    gpu_file = checkpoint_path(warm, home, "cuda")
    gpu_file.write_bytes(b"not a checkpoint")
    try:
        load_or_build(warm, home, device="cpu")
    finally:
        gpu_file.unlink()


# ----------------------------------------------------------------------------- bench

@needs_no_cuda
def test_bench_says_plainly_that_no_gpu_speedup_was_measured(tiny_warm, tmp_path, capsys):
    from trainers.local import bench

    train_config, _ = _tiny_configs()
    warm, home, _ = tiny_warm
    out = tmp_path / "bench"
    report = bench.main(["--out", str(out), "--home", str(home)],
                        train_config=train_config, warm_config=warm)
    saved = json.loads((out / "bench.json").read_text())
    assert saved["gpu"] is None and report["gpu"] is None
    assert saved["gpu_note"] == "no GPU here: GPU speed-up not measured"
    assert saved["device"] == "cpu" and saved["wall_seconds_per_candidate_seed"] > 0
    assert not any("speedup" in k for k in saved)        # no number made up
    assert "no GPU here: GPU speed-up not measured" in capsys.readouterr().out
    # the sandboxed run's CPU by phase, summing to its CPU-s per candidate-seed
    from trainers.local.trainer import PHASES
    assert sum(saved[f"{k}_cpu_seconds"] for k in PHASES) == pytest.approx(
        saved["cpu_seconds_per_candidate_seed"], rel=1e-9)


# ----------------------------------------------------------------------------- sandbox

def test_a_cuda_job_gets_an_rss_watchdog_instead_of_the_address_space_limit():
    """Payload device cuda: no RLIMIT_AS (CUDA could not initialise under it), the same
    memory_mb enforced on resident memory. Run here with a CPU task (check_hooks ignores
    the device), so it shows the limit, not CUDA."""
    from trainers.sandbox import run_in_sandbox

    grpo = baseline_source("grpo")
    plain = run_in_sandbox("check_hooks", {"source": grpo}, timeout_s=60)
    assert plain.ok, plain.error
    assert plain.isolation["memory_limit"] == "address space"
    fine = run_in_sandbox("check_hooks", {"source": grpo, "device": "cuda"}, timeout_s=60)
    assert fine.ok, fine.error
    assert fine.isolation["memory_limit"] == "rss watchdog"
    assert fine.isolation["rss_watchdog"] is True
    bomb = grpo + "\nHOG = torch.ones(2**29)\nfor _ in range(3 * 10**7):\n    pass\n"
    hog = run_in_sandbox("check_hooks", {"source": bomb, "device": "cuda"}, timeout_s=60,
                         memory_mb=1024)
    assert hog.kind == "memory", (hog.kind, hog.error, hog.stdout_tail[-800:])
    assert "RSS watchdog" in hog.error and "memory limit of 1024 MB" in hog.error
    assert "\n" not in hog.error


def test_the_cuda_warm_up_touches_both_engines_and_leaves_the_model_alone(tiny_warm):
    """warm_up is a no-op on the CPU; the pass it makes on CUDA runs here on the CPU."""
    import torch

    from trainers.local.device import touch_kernels, warm_up

    _, _, model = tiny_warm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    warm_up(model, "cpu")
    touch_kernels(model, "cpu")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
