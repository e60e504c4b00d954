"""llama.cpp through llama-cpp-python (the optional extra promptbake[llamacpp]): next-token log-probabilities of a
GGUF model, with or without an exported LoRA adapter, to check an export against promptbake's own model.

Build note: llama-cpp-python 0.3.36 compiled with its default native flags on a CPU with AMX crashed on every prompt
batch longer than one token; the Makefile's LLAMA_CMAKE_ARGS (no -march=native, AVX2 kernels) run batched prompts
on both the Intel and the AMD machines of this project. `make install-llamacpp` builds with them.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np


def load_llama(model: str | Path, lora: str | Path | None = None, lora_scale: float = 1.0, n_ctx: int = 1024,
               n_batch: int = 512):
    """A llama_cpp.Llama over `model` (a GGUF), with the adapter GGUF `lora` at `lora_scale`; every position's
    logits are kept (logits_all), so one eval gives the log-probabilities of a whole sequence."""
    from llama_cpp import Llama

    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        return Llama(model_path=str(model), lora_path=str(lora) if lora else None, lora_scale=lora_scale,
                     n_ctx=n_ctx, n_batch=n_batch, logits_all=True, verbose=False, seed=0)


def sequence_logprobs(llama, ids: list[int]) -> np.ndarray:
    """log-softmax of llama.cpp's logits at every position of `ids` (one prompt batch). Returns [len(ids), vocab]."""
    llama.reset()
    llama.eval(ids)
    logits = np.asarray(llama.scores[: len(ids)], dtype=np.float64)
    logits -= logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    """Mean per-token KL(reference ‖ other) and the top-1 agreement of two [T, V] log-probability arrays."""
    p = np.exp(reference)
    kl = (p * (reference - other)).sum(-1)
    return {"kl": float(kl.mean()), "top1": float((reference.argmax(-1) == other.argmax(-1)).mean()),
            "tokens": int(reference.shape[0])}


def _positions(trajectory) -> tuple[list[int], slice]:
    """The unprompted sequence (student prompt + completion) and the positions that predict the completion."""
    ids = list(trajectory.student_prompt_ids) + list(trajectory.completion_ids)
    return ids, slice(len(trajectory.student_prompt_ids) - 1, len(ids) - 1)


def compare(baked, llama, trajectories, adapter: bool = True) -> dict:
    """KL(promptbake ‖ llama.cpp) per completion token and top-1 agreement over `trajectories`, unprompted.

    Args:
        baked: a BakedModel at its current strength; `adapter=False` compares its base model instead.
        llama: a llama_cpp.Llama from load_llama.
    Returns:
        {"kl": mean per-token KL, "top1": fraction of tokens whose argmax agrees, "tokens": count}.
    """
    import torch

    from .logits import adapter_disabled

    kl_sum, agree, tokens = 0.0, 0, 0
    with torch.no_grad(), (contextlib.nullcontext() if adapter else adapter_disabled(baked.model)):
        for trajectory in trajectories:
            ids, where = _positions(trajectory)
            ours = torch.log_softmax(baked.model(torch.tensor([ids])).logits[0, where].double(), -1).numpy()
            result = agreement(ours, sequence_logprobs(llama, ids)[where])
            kl_sum += result["kl"] * result["tokens"]
            agree += round(result["top1"] * result["tokens"])
            tokens += result["tokens"]
    return {"kl": kl_sum / tokens, "top1": agree / tokens, "tokens": tokens}
