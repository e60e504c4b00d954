"""Held-out KL between the teacher and a condition, and the closure metric of DESIGN.md."""
from __future__ import annotations

import contextlib

import torch

from ..data import Trajectory, micro_batches
from ..logits import TeacherCache, adapter_disabled, collate_for, completion_hidden, completion_logits, plain_head
from ..losses import per_token_kl
from ..precision import float32_weights


def closure(kl_base: float, kl_baked: float) -> float:
    """1 − KL(teacher ‖ baked) / KL(teacher ‖ base): 1 is perfectly baked, 0 unbaked, < 0 worse than base."""
    return 1.0 - kl_baked / kl_base if kl_base > 0 else float("nan")


class HeldoutKL:
    """KL(teacher ‖ student-side condition) on fixed trajectories, with the teacher's logits computed once.

    Both sides run on float32 weights, also for a bf16-resident model (precision.float32_weights), so closure
    means the same in either precision.

    Memory: V floats per held-out completion token (16 questions × 2 samples × ≤ 48 tokens × 49k vocab ≈ 280 MB for
    SmolLM2), kept at the real tokens only; that buys a teacher-free measurement at every checkpoint. The condition's
    logits are computed ROWS tokens at a time (through the LM head on exactly those tokens where the
    head is plain, logits.plain_head), so no batch × length × vocabulary tensor is built.
    """

    ROWS = 128   # the divergence holds 4 [ROWS, V] float32 temporaries: 100 MB for SmolLM2 here, twice that at 256,
                 # and 128 rows were no slower

    def __init__(self, model, trajectories: list[Trajectory], pad_id: int, token_budget: int,
                 teacher: TeacherCache | None = None):
        with float32_weights(model):   # closure is always measured against the float32 teacher
            teacher = teacher or TeacherCache.compute(model, trajectories, pad_id, token_budget)
        groups = micro_batches(trajectories, token_budget)
        self.batches = [collate_for(model, [trajectories[i] for i in group], pad_id) for group in groups]
        # per group: the teacher's logits at its real completion tokens [N, V], in (sequence, position) order,
        # and each token's position in its completion [N]
        self.teacher = [torch.cat([teacher.logits[i] for i in group]).float() for group in groups]
        self.positions = [b["completion_mask"].cumsum(-1)[b["completion_mask"].bool()] - 1 for b in self.batches]
        self.tokens = sum(len(p) for p in self.positions)

    @torch.no_grad()
    def per_position(self, model, adapter: bool = True, side: str = "student") -> tuple[torch.Tensor, torch.Tensor]:
        """Summed KL(teacher ‖ condition) and token counts at each completion position: ([C_max], [C_max]).

        adapter=False is the base model; side="teacher" gives the condition its system prompt back (re-prompting).
        """
        was_training = model.training
        model.eval()
        width = max(b["completion_mask"].shape[1] for b in self.batches)
        sums, counts = torch.zeros(width, dtype=torch.float64), torch.zeros(width, dtype=torch.float64)
        with float32_weights(model):
            head = plain_head(model)
            for batch, teacher, positions in zip(self.batches, self.teacher, self.positions):
                with adapter_disabled(model) if not adapter else contextlib.nullcontext():
                    if head is not None:
                        hidden = completion_hidden(model, batch, side)                           # [N, H]
                    else:
                        logits = completion_logits(model, batch, side)
                        hidden = logits[batch["completion_mask"].to(logits.device).bool()]      # [N, V]
                for start in range(0, len(positions), self.ROWS):
                    rows = slice(start, start + self.ROWS)
                    student = hidden[rows] if head is None else head(hidden[rows])
                    kl = per_token_kl(teacher[rows].to(student.device), student, "forward")
                    sums.index_add_(0, positions[rows], kl.double().cpu())
                counts += torch.bincount(positions, minlength=width).double()
        model.train(was_training)
        return sums, counts

    def measure(self, model, adapter: bool = True, side: str = "student") -> float:
        """Mean per-token forward KL over all held-out completion tokens; adapter=False measures the base."""
        sums, counts = self.per_position(model, adapter, side)
        return float(sums.sum() / counts.sum().clamp(min=1))
