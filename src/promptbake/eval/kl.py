"""Held-out KL between the teacher and a condition, and the closure metric of DESIGN.md."""
from __future__ import annotations

import torch

from ..data import Trajectory, collate, micro_batches
from ..logits import TeacherCache, adapter_disabled, completion_logits
from ..losses import masked_sum, per_token_kl


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
    def measure(self, model, adapter: bool = True) -> float:
        """Mean per-token forward KL over all held-out completion tokens; adapter=False measures the base."""
        was_training = model.training
        model.eval()
        total = 0.0
        for batch, teacher in zip(self.batches, self.teacher):
            if adapter:
                student = completion_logits(model, batch, "student")
            else:
                with adapter_disabled(model):
                    student = completion_logits(model, batch, "student")
            total += float(masked_sum(per_token_kl(teacher, student, "forward"), batch["completion_mask"]))
        model.train(was_training)
        return total / max(self.tokens, 1)
