"""Token-level divergences between teacher and student next-token distributions (pure tensor functions).

Shapes: logits are [B, C, V] for B sequences, C completion positions and a vocabulary of V; masks are [B, C]
with 1 where position c predicts a real completion token. All math runs in float32 over the full vocabulary.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DIRECTIONS = ("forward", "reverse", "jsd")


def _kl_from_logprobs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) summed over the last dim. A token with p = 0 (log p = -inf) contributes 0: clamping log p to a
    huge finite negative keeps 0 · (log p − log q) from becoming NaN, and is cheaper than a masked select."""
    log_p = log_p.clamp(min=-1e30)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def per_token_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                 direction: str = "forward") -> torch.Tensor:
    """Divergence at every position, [B, C, V] x2 → [B, C].

    forward: KL(teacher ‖ student) (mode-covering, the default); reverse: KL(student ‖ teacher);
    jsd: Jensen-Shannon divergence with equal weights (bounded by log 2).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    log_t = F.log_softmax(teacher_logits.float(), dim=-1)
    log_s = F.log_softmax(student_logits.float(), dim=-1)
    if direction == "forward":
        return _kl_from_logprobs(log_t, log_s)
    if direction == "reverse":
        return _kl_from_logprobs(log_s, log_t)
    log_m = torch.logaddexp(log_t, log_s) - torch.log(torch.tensor(2.0))
    return 0.5 * _kl_from_logprobs(log_t, log_m) + 0.5 * _kl_from_logprobs(log_s, log_m)


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of values where mask is 1 ([B, C] → scalar). Masked values never leak, even if they are NaN."""
    return torch.where(mask.bool(), values, torch.zeros_like(values)).sum()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over positions where mask is 1; 0 (not NaN) when nothing is selected."""
    return masked_sum(values, mask) / mask.sum().clamp(min=1)


def token_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor,
             direction: str = "forward") -> torch.Tensor:
    """Mean per-token divergence over completion tokens: [B, C, V] x2, [B, C] → scalar."""
    return masked_mean(per_token_kl(teacher_logits, student_logits, direction), mask)
