"""Held-out KL between the teacher and a condition, and the closure metric of DESIGN.md."""
from __future__ import annotations

import contextlib

import torch

from ..data import Trajectory, collate, micro_batches
from ..logits import TeacherCache, adapter_disabled, completion_logits
from ..losses import per_token_kl


def closure(kl_base: float, kl_baked: float) -> float:
    """1 − KL(teacher ‖ baked) / KL(teacher ‖ base): 1 is perfectly baked, 0 unbaked, < 0 worse than base."""
    return 1.0 - kl_baked / kl_base if kl_base > 0 else float("nan")


class HeldoutKL:
    """KL(teacher ‖ student-side condition) on fixed trajectories, with the teacher's logits computed once.

    Memory: B × C × V floats for all held-out trajectories (16 questions × 2 samples × 48 tokens × 49k vocab
    ≈ 300 MB for SmolLM2); that buys a teacher-free measurement at every checkpoint.
    """

    def __init__(self, model, trajectories: list[Trajectory], pad_id: int, token_budget: int,
                 teacher: TeacherCache | None = None):
        teacher = teacher or TeacherCache.compute(model, trajectories, pad_id, token_budget)
        groups = micro_batches(trajectories, token_budget)
        self.batches = [collate([trajectories[i] for i in group], pad_id) for group in groups]
        self.teacher = [teacher.batch(group, b["completion_mask"].shape[1]) for group, b in zip(groups, self.batches)]
        self.tokens = sum(int(b["completion_mask"].sum()) for b in self.batches)

    @torch.no_grad()
    def per_position(self, model, adapter: bool = True, side: str = "student") -> tuple[torch.Tensor, torch.Tensor]:
        """Summed KL(teacher ‖ condition) and token counts at each completion position: ([C_max], [C_max]).

        adapter=False is the base model; side="teacher" gives the condition its system prompt back (re-prompting).
        """
        was_training = model.training
        model.eval()
        width = max(b["completion_mask"].shape[1] for b in self.batches)
        sums, counts = torch.zeros(width, dtype=torch.float64), torch.zeros(width, dtype=torch.float64)
        for batch, teacher in zip(self.batches, self.teacher):
            with adapter_disabled(model) if not adapter else contextlib.nullcontext():
                logits = completion_logits(model, batch, side)
            mask = batch["completion_mask"].to(logits.device)
            kl = torch.where(mask.bool(), per_token_kl(teacher.to(logits.device), logits, "forward"),
                             torch.zeros((), device=logits.device))                                   # [B, C]
            sums[: mask.shape[1]] += kl.sum(0).double().cpu()
            counts[: mask.shape[1]] += mask.sum(0).double().cpu()
        model.train(was_training)
        return sums, counts

    def measure(self, model, adapter: bool = True, side: str = "student") -> float:
        """Mean per-token forward KL over all held-out completion tokens; adapter=False measures the base."""
        sums, counts = self.per_position(model, adapter, side)
        return float(sums.sum() / counts.sum().clamp(min=1))
