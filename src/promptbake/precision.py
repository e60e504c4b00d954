"""Where the model runs and in which precision: the device a bake asks for, and bf16 autocast on CUDA.

The weights stay float32 (LoRA's too); under bf16, forward passes run in torch.autocast, so matrix multiplications
and attention (SDPA, which picks flash / memory-efficient kernels on CUDA) run in bfloat16 while the divergences,
the LM head of the fused loss and the optimizer stay in float32.
"""
from __future__ import annotations

import contextlib
import os

import torch

from .errors import UserError

DEVICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"
PRECISIONS = ("auto", "float32", "bf16")


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' → 'bf16' on CUDA (when the GPU supports it), 'float32' elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"


def place(model, device: str = "auto", precision: str = "auto"):
    """Move `model` to its device and remember its compute precision (read back by `autocast`)."""
    where = resolve_device(device)
    model.to(where)
    model.promptbake_precision = resolve_precision(precision, where)
    return model


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def autocast(model):
    """The context forward passes of `model` run in: bf16 autocast when placed so, else nothing."""
    if getattr(model, "promptbake_precision", "float32") != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_of(model).type, dtype=torch.bfloat16)
