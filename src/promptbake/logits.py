"""Forward passes that return the logits predicting completion tokens, for the teacher or the student side."""
from __future__ import annotations

import contextlib

import torch


def adapter_disabled(model):
    """Context in which a PeftModel runs as its base model; a plain model is already the base."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def completion_logits(model, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
    """Logits at the C positions that predict completion tokens: [B, C, V] (see data.collate for alignment)."""
    width_c = batch["completion_mask"].shape[1]
    out = model(
        input_ids=batch[f"{side}_input_ids"],
        attention_mask=batch[f"{side}_attention_mask"],
        position_ids=batch[f"{side}_position_ids"],
        logits_to_keep=width_c,  # the LM head runs on completion positions only
        use_cache=False,
    )
    return out.logits


@torch.no_grad()
def teacher_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The prompted base model: teacher prompt, adapter off, no graph. [B, C, V]."""
    with adapter_disabled(model):
        return completion_logits(model, batch, "teacher")
