"""Where the model runs and in which precision: the device a bake asks for, and bf16 weights where they pay.

Under bf16 the frozen base weights are resident in bfloat16 (cast once when the model is placed, not per call), so
matrix multiplications, attention and the elementwise work between them run in bf16 on CPUs with AMX / AVX512-BF16
units and on GPUs. The LoRA parameters, the optimizer and the divergences stay float32, and the float32 weights are
kept: `float32_weights(model)` puts them back for what must be exact, the held-out KL behind the closure metric.

'auto' decides per machine: bf16 on a CUDA GPU that supports it; on a CPU, bf16 only where its flags show bf16 units
and a timed matmul of the model's shapes runs faster in bf16 than in float32. The decision is cached per machine,
torch version and thread count (~/.cache/promptbake/precision.json) and recorded in bake.json; the environment
variable PROMPTBAKE_PRECISION=float32|bf16 pins it instead.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from .errors import UserError

DEVICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"
PRECISIONS = ("auto", "float32", "bf16")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")   # /proc/cpuinfo flags of CPUs with bf16 matrix units
BF16_MARGIN = 1.3   # bf16 must beat float32 matmuls by this much: norms, softmax and casts do not speed up
PIN = "PROMPTBAKE_PRECISION"   # float32 or bf16: what 'auto' gives on this machine, without measuring (tests pin it)
DECISIONS = Path(os.environ.get("PROMPTBAKE_CACHE", Path.home() / ".cache" / "promptbake")) / "precision.json"


def valid_device(name: str) -> bool:
    head, _, index = str(name).partition(":")
    return name in ("auto", "cpu", "cuda") or (head == "cuda" and index.isdigit())


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' is CUDA when available (this process's LOCAL_RANK under accelerate / torchrun), else the CPU."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: this torch sees no CUDA GPU (torch {torch.__version__}, "
                            f"cuda {torch.version.cuda}); use --device cpu, or install a CUDA build of torch")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device(name)


def cpu_flags() -> tuple[str, set[str]]:
    """(CPU model name, flags) from /proc/cpuinfo; ('', set()) where there is none (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor(), set()
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return name, flags


def matmul_gflops(rows: int, inner: int, outer: int, dtype: torch.dtype, seconds: float = 0.25) -> float:
    """Achieved GFLOP/s of F.linear([rows, inner] × [outer, inner]ᵀ) in `dtype` on this CPU (after a warm-up)."""
    x = torch.randn(rows, inner).to(dtype)
    w = torch.randn(outer, inner).to(dtype)
    torch.nn.functional.linear(x, w)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.nn.functional.linear(x, w)
        calls += 1
    return 2 * rows * inner * outer * calls / (time.perf_counter() - start) / 1e9


def _decide_cpu(inner: int, outer: int) -> dict:
    name, flags = cpu_flags()
    units = sorted(flags & set(BF16_FLAGS))
    if not units:
        return {"precision": "float32", "reason": "no bf16 units in the CPU flags (amx_bf16, avx512_bf16)",
                "cpu": name, "bf16_units": []}
    fp32 = matmul_gflops(512, inner, outer, torch.float32)
    bf16 = matmul_gflops(512, inner, outer, torch.bfloat16)
    faster = bf16 >= BF16_MARGIN * fp32
    return {"precision": "bf16" if faster else "float32",
            "reason": f"a 512x{inner}x{outer} matmul ran {bf16 / fp32:.2f}x as fast in bf16 as in float32 "
                      f"({bf16:.0f} vs {fp32:.0f} GFLOP/s; bf16 needs {BF16_MARGIN}x)",
            "cpu": name, "bf16_units": units, "bf16_gflops": round(bf16, 1), "float32_gflops": round(fp32, 1)}


def cpu_decision(inner: int = 576, outer: int = 1536) -> dict:
    """The 'auto' precision for this CPU at the model's shapes (hidden → intermediate), measured once and cached."""
    name, flags = cpu_flags()
    key = (f"{name}|{','.join(sorted(flags & set(BF16_FLAGS)))}|torch {torch.__version__}|"
           f"threads {torch.get_num_threads()}|{inner}x{outer}")
    try:
        cached = json.loads(DECISIONS.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    if isinstance(cached.get(key), dict) and cached[key].get("precision") in ("float32", "bf16"):
        return {**cached[key], "cached": True}
    decision = _decide_cpu(inner, outer)
    cached[key] = decision
    try:
        from .runfolder import atomic_write_json

        DECISIONS.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(DECISIONS, cached)
    except OSError:   # a read-only home: decide again next time
        pass
    return {**decision, "cached": False}


def _model_shape(model) -> tuple[int, int]:
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None) or 576
    return hidden, getattr(config, "intermediate_size", None) or 4 * hidden


def decide_precision(precision: str, device: torch.device, model=None) -> dict:
    """{"precision": 'float32' | 'bf16', "asked": precision, "reason": ...} for `device` (and `model`'s shapes)."""
    if precision != "auto":
        return {"precision": precision, "asked": precision, "reason": f"--precision {precision}"}
    pinned = os.environ.get(PIN, "")
    if pinned in ("float32", "bf16"):
        return {"precision": pinned, "asked": "auto", "reason": f"{PIN}={pinned} in the environment"}
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return {"precision": "bf16" if bf16 else "float32", "asked": "auto",
                "reason": "CUDA with bf16 support" if bf16 else "this GPU has no bf16 support"}
    if device.type != "cpu":
        return {"precision": "float32", "asked": "auto", "reason": f"float32 on {device.type}"}
    return {**cpu_decision(*_model_shape(model)), "asked": "auto"}


def resolve_precision(precision: str, device: torch.device, model=None) -> str:
    return decide_precision(precision, device, model)["precision"]


def to_bf16_weights(model):
    """Make `model`'s frozen float32 parameters bfloat16 in place, each keeping its float32 values (as
    `_promptbake_float32`); idempotent. Trainable parameters (LoRA) and anything added later stay as they are, and a
    tied weight is cast once."""
    for p in {id(p): p for p in model.parameters()}.values():
        if not p.requires_grad and p.dtype == torch.float32 and not hasattr(p, "_promptbake_float32"):
            p._promptbake_float32 = p.data
            p.data = p.data.to(torch.bfloat16)
    return model


def to_float32_weights(model):
    """Undo to_bf16_weights for good (before merging an adapter into the weights, or saving them); returns `model`."""
    for p in {id(p): p for p in model.parameters()}.values():
        if hasattr(p, "_promptbake_float32"):
            p.data = p._promptbake_float32
            del p._promptbake_float32
    model.promptbake_precision = "float32"
    return model


def float32_of(weight: torch.Tensor) -> torch.Tensor:
    """The float32 values of a bf16-resident frozen weight (the tensor itself when it is float32 already)."""
    return weight if weight.dtype == torch.float32 else getattr(weight, "_promptbake_float32", weight).float()


@contextlib.contextmanager
def float32_weights(model):
    """Within this context a bf16-resident model (to_bf16_weights) runs on its float32 weights; a no-op otherwise
    (and when nested)."""
    kept = [p for p in {id(p): p for p in model.parameters()}.values()
            if hasattr(p, "_promptbake_float32") and p.dtype == torch.bfloat16]
    bf16 = [p.data for p in kept]
    try:
        for p in kept:
            p.data = p._promptbake_float32
        yield model
    finally:
        for p, data in zip(kept, bf16):
            p.data = data


def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:])


def training_kernels(model):
    """The context a training step runs in: on a bf16 CPU model, SDPA's math kernel (its bf16 flash-attention
    backward took 4x the float32 one: 36 vs 9 ms a layer for 16 x 95 tokens on SmolLM2); else nothing."""
    if getattr(model, "promptbake_precision", "float32") != "bf16" or device_of(model).type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def place(model, device: str = "auto", precision: str = "auto"):
    """Freeze `model`, move it to its device and put it in its compute precision (decided here for 'auto'); the
    decision is kept as model.promptbake_precision (the precision) and model.promptbake_precision_decision (why)."""
    where = resolve_device(device)
    model.to(where)
    model.requires_grad_(False)   # the base is frozen: a bake trains only the adapter added on top of it
    decision = decide_precision(precision, where, model)
    if decision["precision"] == "bf16":
        to_bf16_weights(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and not getattr(head, "_promptbake_contiguous", False):
        # transformers slices the last positions out of the hidden states (logits_to_keep); a strided 3-D input
        # makes F.linear broadcast the head as a batched matmul, which in bf16 copied the whole head once per row
        # (4.3 s of an 8 s sampling run) and in float32 cost 0.14 s
        head.register_forward_pre_hook(_contiguous_input)
        head._promptbake_contiguous = True
    model.promptbake_precision = decision["precision"]
    model.promptbake_precision_decision = decision
    return model


def device_of(model) -> torch.device:
    return next(model.parameters()).device
