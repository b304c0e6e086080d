"""Where the embedded testbed trains: device resolution, CUDA set-up and the GPU preset.

    resolve_device("auto")   # "cuda" when torch.cuda.is_available(), else "cpu"
    resolve_device("cuda:1") # checked: CUDA present and that index exists, else DeviceError
    gpu_preset()             # {"warm_config": {...}, "train_overrides": {...}}

One place decides the device for every entry point (``python -m graph.run --device``,
``trainers.local.compare --device``, ``trainers.local.bench --device``): ``auto`` (the
default of the commands) is ``cuda`` when torch sees a CUDA device, else ``cpu``;
``cpu``, ``cuda`` and ``cuda:N`` are taken as given, and asking for CUDA where there is
none is a ``DeviceError`` (the commands print it as one line and exit with code 2 before
anything is written).

On CPU nothing changes: the same ops in the same order, so the reference engine's
results are those of the code before devices existed (tests/test_golden_run.py). On CUDA:

- ``setup_cuda`` asks torch for deterministic kernels (``use_deterministic_algorithms``
  with ``warn_only``: an op without a deterministic CUDA kernel warns instead of
  failing the candidate), full-precision float32 matmuls (no TF32) and cuBLAS's
  deterministic workspace (``CUBLAS_WORKSPACE_CONFIG``); a GPU run is still not
  bit-identical to a CPU run, and whether two GPU runs of one seed agree bit for bit on
  this testbed has not been measured (no GPU was available where this was written);
- ``warm_up`` runs a forward, a backward, an Adam step and a sampled token on the device
  once, in trusted code before the sandbox's guard: CUDA opens its device files
  read-write and loads cuBLAS on first use, which Landlock and seccomp would refuse
  once the guard is up (trainers/sandbox/child.py);
- ``gpu_preset`` is a wider, deeper model and a bigger batch (below), chosen by the
  commands when the device is CUDA unless the model config is given explicitly (a
  ``warm_config``); it is recorded in the run config and in ``compare.json``.

GPU preset sizes: 6 layers, 8 heads, d_model 256 (4.8M parameters, vs the CPU
testbed's 3 layers, 4 heads, d_model 96: 0.35M); SFT batch 64 over 83,200 examples
(1300 steps, lr 1e-3); RL 64 prompts x 8 samples a step in 4 minibatches (CPU: 16 x 8
in 2), lr 1e-4. None of it has been run on a GPU yet: the sizes are a starting point,
not a tuned testbed (whether this warm start leaves GRPO as much to learn as the CPU
one is unmeasured).
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Iterator

GPU_PRESET_NAME = "gpu"
_GPU_MODEL = {"n_layer": 6, "n_head": 8, "d_model": 256}
_GPU_WARM = {"model": _GPU_MODEL, "examples": 83_200, "steps": 1300, "batch_size": 64,
             "lr": 1e-3}
_GPU_TRAIN = {"prompts_per_step": 64, "group_size": 8, "minibatches": 4, "lr": 1e-4}
_SPEC = re.compile(r"cuda(?::(\d+))?")


class DeviceError(ValueError):
    """The requested device does not exist here (one line for the person)."""


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(spec: str | None = "auto") -> str:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> the device string to train on.
    Raises DeviceError for an unknown spec or CUDA that is not there."""
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return "cuda" if cuda_available() else "cpu"
    if text == "cpu":
        return "cpu"
    m = _SPEC.fullmatch(text)
    if m is None:
        raise DeviceError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(f"--device {spec}: no CUDA device here (torch {torch.__version__}"
                          " sees none); use --device cpu, or auto to take a GPU only "
                          "where there is one")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise DeviceError(f"--device {spec}: this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s), numbered from 0")
    return text


def is_cuda(device) -> bool:
    """True for a CUDA device (string or torch.device); no torch import for strings."""
    return str(device).startswith("cuda")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block, the caller's setting
    restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def device_kind(device) -> str:
    """``cpu`` or ``cuda`` (the index dropped): what changes a build's numerics."""
    return "cuda" if is_cuda(device) else "cpu"


def gpu_preset() -> dict:
    """The GPU preset as Context-style overrides: ``warm_config`` (WarmStartConfig
    fields; the model size) and ``train_overrides`` (TrainConfig fields; the batch)."""
    return {"warm_config": {**_GPU_WARM, "model": dict(_GPU_MODEL)},
            "train_overrides": dict(_GPU_TRAIN)}


def with_preset(device: str, warm_config: dict | None, train_overrides: dict | None
                ) -> tuple[dict | None, dict, str | None]:
    """(warm_config, train_overrides, preset name or None) to train with on ``device``:
    on CUDA without an explicit ``warm_config``, the GPU preset's model and batch, the
    caller's train overrides winning over the preset's; otherwise what was given."""
    train_overrides = dict(train_overrides or {})
    if not is_cuda(device) or warm_config is not None:
        return warm_config, train_overrides, None
    preset = gpu_preset()
    return (preset["warm_config"], {**preset["train_overrides"], **train_overrides},
            GPU_PRESET_NAME)


def kept_device(saved: str, requested: str | None = None) -> str:
    """A resumed (or replayed) run's device: the one it was started on, which must exist
    here; a ``requested`` device (--device) that resolves to another is refused."""
    try:
        device = resolve_device(saved)
    except DeviceError as e:
        raise DeviceError(f"this run trains on {saved}: {e}") from None
    if requested is not None and resolve_device(requested) != device:
        raise DeviceError(f"this run trains on {saved}: a resumed run keeps its device "
                          f"(drop --device {requested})")
    return device


def run_fields(device: str | None, executor: str, overrides: dict) -> dict:
    """A new loop run's Context fields ``device``, ``warm_config``, ``train_overrides``,
    ``preset``: ``device`` (resolved; None: cpu), and on CUDA the GPU preset unless
    ``overrides`` (--config) gives a warm_config. With the verl executor, which trains
    its own model, no preset (the device is then only the verifier's smoke run's)."""
    device = device or "cpu"
    warm, train, preset = with_preset(device, overrides.get("warm_config"),
                                      overrides.get("train_overrides"))
    if executor == "verl" and preset:  # the preset is for the local trainer only
        warm, train, preset = overrides.get("warm_config"), dict(
            overrides.get("train_overrides") or {}), None
    return {"device": device, "warm_config": warm, "train_overrides": train,
            "preset": preset}


def describe(device: str, warm_config: dict | None = None,
             preset: str | None = None) -> str:
    """The run header's device line, e.g. ``cuda (GPU preset: 6 layers, d_model 256)``."""
    if is_cuda(device):
        import torch

        idx = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        where = f"{device} ({torch.cuda.get_device_name(idx)})"
    else:
        where = "cpu"
    model = (warm_config or {}).get("model") if warm_config else None
    # a warm start other than the testbed's (another corpus mix, SFT length or seed)
    variant = sorted(k for k in (warm_config or {}) if k != "model"
                     ) if preset != GPU_PRESET_NAME else []
    extra = f"; warm start: {', '.join(variant)} from --config" if variant else ""
    if model:
        size = f"{model.get('n_layer', 3)} layers, d_model {model.get('d_model', 96)}"
        how = "GPU preset" if preset == GPU_PRESET_NAME else "model"
        return f"{where}; {how}: {size}{extra}"
    if variant:
        return f"{where}; model: the testbed's (3 layers, d_model 96){extra}"
    return f"{where}; model: the default testbed (3 layers, d_model 96)"


def setup_cuda(device) -> None:
    """Deterministic-leaning CUDA settings (see the module doc); a no-op on CPU."""
    if not is_cuda(device):
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read at cuBLAS init
    if torch.device(device).index is not None:  # set_device refuses a bare "cuda"
        torch.cuda.set_device(torch.device(device))
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False


def warm_up(model, device) -> None:
    """Touch every kind of kernel the trainer uses once on ``device`` (trusted code, before
    the sandbox guard): CUDA context, cuBLAS, sampling, autograd, Adam. A no-op on CPU."""
    if not is_cuda(device):
        return
    setup_cuda(device)
    touch_kernels(model, device)
    import torch

    torch.cuda.synchronize(torch.device(device))


def touch_kernels(model, device) -> None:
    """One tiny pass of everything training runs, on ``device``: both engines' sampling
    and trained forwards, backward, clipping, Adam (``model`` is copied, not changed)."""
    import copy

    import torch

    from evals.tasks import BOS, encode
    from trainers.local import engine
    from trainers.local.model import generate, left_pad, response_logprobs

    probe = copy.deepcopy(model).to(device).train()
    # two groups of two rows: the fast engine's shared prefill, compaction and buckets too
    ids, mask = left_pad([[BOS] + encode(p) for p in ("1+2=", "1+2=", "33+4=", "33+4=")],
                         device=device)
    gen = generate(probe, ids, mask, 2, 1.0, torch.Generator(device=device).manual_seed(0))
    logp = response_logprobs(probe, ids, mask, gen.tokens, gen.mask)
    fast = engine.generate(probe, ids, mask, 3, 1.0,
                           torch.Generator(device=device).manual_seed(0), group_size=2)
    logp = logp.sum() + engine.response_logprobs(probe, ids, mask, fast.tokens, fast.mask,
                                                 group_size=2).sum()
    opt = torch.optim.Adam(probe.parameters(), lr=0.0)
    (-logp).backward()
    torch.nn.utils.clip_grad_norm_(probe.parameters(), 1.0)
    opt.step()
