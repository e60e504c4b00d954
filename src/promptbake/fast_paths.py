"""Which of promptbake's fast paths apply to a model, and why not where they do not (bake.json `fast_paths`).

Each path checks itself where it runs (decode.cache_fallback, logits.plain_head, lora_fused._fast_path) and falls
back to the plain transformers / peft computation; this module only reports the decisions once per bake.
"""
from __future__ import annotations

import torch

from .decode import cache_fallback
from .logits import plain_head

FAST = "fast"


def _experts_outside_lora(model) -> list[str]:
    """Mixture-of-experts weights that are plain parameters (no nn.Linear), so 'all-linear' LoRA cannot reach them."""
    names = set()
    for name, module in model.named_modules():
        if name.endswith("experts") and any(p.dim() >= 3 for p in module.parameters(recurse=False)):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def describe_fast_paths(model) -> dict[str, str]:
    """{path: "fast" or "fallback: reason"} for the base model of a bake (no adapter yet)."""
    cache = cache_fallback(model.config)
    head = model.get_output_embeddings()
    trainable = isinstance(head, torch.nn.Linear) and head.weight.requires_grad
    if trainable:   # frozen under the adapter; plain_head refuses a trainable head
        head.weight.requires_grad_(False)
    try:
        fused_head = plain_head(model) is not None
    finally:
        if trainable:
            head.weight.requires_grad_(True)
    paths = {
        "kv_cache": FAST + ": preallocated cache, shared prompt prefix computed once" if cache is None else
        f"fallback: transformers' own cache and whole prompts, because {cache}",
        "lm_head_loss": FAST + ": fused LM head + top-k KL on completion positions" if fused_head
        else "fallback: full logits, because the logits are not the plain LM head of the last hidden state "
             + ("(soft-capped or scaled)" if isinstance(head, torch.nn.Linear) else "(no linear LM head)"),
        "lora_layers": FAST + ": fused LoRA linear where peft's plain LoRA runs (float32, one adapter, no dropout)",
    }
    experts = _experts_outside_lora(model)
    if experts:
        paths["lora_targets"] = ("note: 'all-linear' LoRA reaches attention and router layers only; the "
                                 f"mixture-of-experts weights ({', '.join(experts)}) are fused tensors, not linear "
                                 "layers")
    return paths


def fallbacks(paths: dict[str, str]) -> list[str]:
    return [f"{name} {text}" for name, text in paths.items() if not text.startswith(FAST)]
