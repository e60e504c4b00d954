"""Forward passes that return the logits predicting completion tokens, for the teacher or the student side."""
from __future__ import annotations

import contextlib

import torch

from .data import collate, micro_batches


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


class TeacherCache:
    """The teacher's logits for every completion token, one [n_i, V] float32 tensor per trajectory.

    The teacher's distribution is fixed during a bake, so it is computed once (or kept from sampling, which
    already produced it) instead of a second forward pass at every training step.
    """

    def __init__(self, logits: list[torch.Tensor]):
        self.logits = logits

    @staticmethod
    def fits(model, tokens: int, budget_gb: float) -> bool:
        """Whether `tokens` positions of the model's full-vocabulary float32 logits fit in `budget_gb`."""
        vocab_size = model.get_output_embeddings().weight.shape[0]
        return tokens * vocab_size * 4 <= budget_gb * 2**30

    @classmethod
    @torch.no_grad()
    def compute(cls, model, trajectories, pad_id: int, token_budget: int) -> "TeacherCache":
        logits: list[torch.Tensor | None] = [None] * len(trajectories)
        for group in micro_batches(trajectories, token_budget):
            batch = collate([trajectories[i] for i in group], pad_id)
            full = teacher_logits(model, batch)                                  # [B, C, V]
            for row, i in enumerate(group):
                logits[i] = full[row, : len(trajectories[i].completion_ids)].clone()
        return cls(logits)

    def batch(self, indices: list[int], width_c: int) -> torch.Tensor:
        """Stack the cached logits of `indices`, zero-padded to width_c: [B, C, V] (padding is masked out)."""
        first = self.logits[indices[0]]
        out = first.new_zeros(len(indices), width_c, first.shape[-1])
        for row, i in enumerate(indices):
            out[row, : self.logits[i].shape[0]] = self.logits[i]
        return out
