"""Forward passes that return the logits predicting completion tokens, for the teacher or the student side."""
from __future__ import annotations

import contextlib
import weakref

import torch

from .data import collate, micro_batches
from .decode import cache_fallback
from .losses import per_token_kl, per_token_kl_topk
from .precision import device_of


def adapter_disabled(model):
    """Context in which a PeftModel runs as its base model; a plain model is already the base."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def on_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def _forward(module, batch: dict[str, torch.Tensor], side: str, **kwargs):
    """`module` (the model, or its decoder) over one side of `batch`, the shared prefix run once (batch size 1) and
    its keys and values repeated for every row; gradients flow back through that cache into the prefix."""
    prefix = batch.get(f"{side}_prefix_ids")
    cache = None
    if prefix is not None and cache_fallback(module.config):
        raise ValueError(f"a shared prefix on a model whose {cache_fallback(module.config)}; batch with collate_for")
    if prefix is not None:
        cache = module(input_ids=prefix, use_cache=True).cache
        cache.batch_repeat_interleave(batch[f"{side}_input_ids"].shape[0])
    return module(input_ids=batch[f"{side}_input_ids"], attention_mask=batch[f"{side}_attention_mask"],
                  position_ids=batch[f"{side}_position_ids"], cache=cache, use_cache=cache is not None, **kwargs)


def collate_for(model, trajectories, pad_id: int) -> dict[str, torch.Tensor]:
    """data.collate for this model: the shared prompt prefix is held apart only where its KV cache keeps every
    position (decode.cache_fallback). A sliding window counts padding between a prefix and a row's own tokens as
    context, so sliding-window models get whole left-padded prompts."""
    return collate(trajectories, pad_id, share_prefix=cache_fallback(model.config) is None)


def completion_logits(model, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
    """Logits at the C positions that predict completion tokens: [B, C, V] (see data.collate for alignment).

    Runs on the model's device, in its precision (float32, or bf16-resident weights: precision.place); a shared
    prompt prefix runs once. The logits come back float32.
    """
    batch = on_device(batch, device_of(model))
    out = _forward(model, batch, side, logits_to_keep=batch["completion_mask"].shape[1])   # head on completions only
    return out.logits.float()


PLAIN_HEAD: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # model → whether plain_head holds


def _decoder(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model   # a PeftModel's own model
    return base.get_decoder()


def plain_head(model):
    """The LM head as a frozen nn.Linear when the model's logits are exactly head(decoder's last hidden state), else
    None (soft-capped, scaled or trained heads). Checked once per model on four tokens, then remembered."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.weight.requires_grad:
        return None
    if model not in PLAIN_HEAD:
        with torch.no_grad():
            ids = torch.arange(4, device=head.weight.device)[None]
            want = model(input_ids=ids).logits
            got = head(_decoder(model)(input_ids=ids).last_hidden_state)
        PLAIN_HEAD[model] = want.shape == got.shape and torch.allclose(want, got, atol=1e-4, rtol=1e-4)
    return head if PLAIN_HEAD[model] else None


def completion_hidden(model, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
    """The decoder's last hidden states at the real completion positions of `batch`: [N, H], rows in (sequence,
    position) order. With plain_head, the LM head can then run on exactly these N rows (no padding)."""
    batch = on_device(batch, device_of(model))
    hidden = _forward(_decoder(model), batch, side).last_hidden_state
    return hidden[:, -batch["completion_mask"].shape[1]:][batch["completion_mask"].bool()]


@torch.no_grad()
def teacher_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The prompted base model: teacher prompt, adapter off, no graph. [B, C, V]."""
    with adapter_disabled(model):
        return completion_logits(model, batch, "teacher")


def top_k_log_probs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, V] logits → the k most likely tokens and their full-softmax log-probabilities: ([n, k] int, [n, k] float)."""
    log_probs, ids = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return ids, log_probs


class TeacherCache:
    """The teacher's distribution at every completion token, per trajectory, computed once.

    The teacher's distribution is fixed during a bake, so it is computed once (or kept from sampling, which
    already produced it) instead of a second forward pass at every training step. Two forms:
    full: one [n_i, V] float32 logits tensor per trajectory (V floats per token: 196 KB for SmolLM2);
    top-k: the k most likely token ids and log-probabilities ([n_i, k] each, 12·k bytes per token), trained
    against with per_token_kl_topk (k tokens + an exact tail bucket, still a true KL).
    """

    def __init__(self, logits: list[torch.Tensor] | None = None,
                 top: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.logits, self.top = logits, top

    @property
    def top_k(self) -> int:
        return self.top[0][0].shape[-1] if self.top else 0

    def __len__(self) -> int:
        return len(self.top if self.top is not None else self.logits)

    @staticmethod
    def fits(model, tokens: int, budget_gb: float, top_k: int = 0) -> bool:
        """Whether the cache for `tokens` positions fits in `budget_gb` (full logits, or top-k ids + log-probs)."""
        per_token = 12 * top_k if top_k else 4 * model.get_output_embeddings().weight.shape[0]
        return tokens * per_token <= budget_gb * 2**30

    @classmethod
    def from_logits(cls, logits: list[torch.Tensor], top_k: int = 0) -> "TeacherCache":
        """Full logits per trajectory → a cache of that form (top_k = 0) or of top-k log-probabilities."""
        if not top_k:
            return cls(logits=logits)
        return cls(top=[top_k_log_probs(x, min(top_k, x.shape[-1])) for x in logits])

    @classmethod
    @torch.no_grad()
    def compute(cls, model, trajectories, pad_id: int, token_budget: int, top_k: int = 0) -> "TeacherCache":
        """Run the teacher once over `trajectories` (micro-batches of `token_budget` tokens)."""
        kept: list = [None] * len(trajectories)
        for group in micro_batches(trajectories, token_budget):
            batch = collate_for(model, [trajectories[i] for i in group], pad_id)
            full = teacher_logits(model, batch)                                  # [B, C, V]
            for row, i in enumerate(group):
                rows = full[row, : len(trajectories[i].completion_ids)]
                kept[i] = (tuple(x.cpu() for x in top_k_log_probs(rows, min(top_k, rows.shape[-1]))) if top_k
                           else rows.cpu().clone())
        return cls(top=kept) if top_k else cls(logits=kept)

    def subset(self, indices: list[int]) -> "TeacherCache":
        if self.top is not None:
            return TeacherCache(top=[self.top[i] for i in indices])
        return TeacherCache(logits=[self.logits[i] for i in indices])

    def rows(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k cache of `indices`, their positions concatenated in order: ([N, k] ids, [N, k] log-probs)."""
        return torch.cat([self.top[i][0] for i in indices]), torch.cat([self.top[i][1] for i in indices])

    def batch(self, indices: list[int], width_c: int) -> torch.Tensor:
        """Stack the cached full logits of `indices`, zero-padded to width_c: [B, C, V] (padding is masked out)."""
        if self.logits is None:
            raise ValueError("a top-k teacher cache holds no full logits")
        return _stack([self.logits[i] for i in indices], width_c)

    def per_token_kl(self, indices: list[int], student_logits: torch.Tensor, direction: str) -> torch.Tensor:
        """Divergence of the student ([B, C, V]) from the cached teacher of `indices` at every position: [B, C]."""
        width_c, device = student_logits.shape[1], student_logits.device
        if self.top is None:
            return per_token_kl(self.batch(indices, width_c).to(device), student_logits, direction)
        ids = _stack([self.top[i][0] for i in indices], width_c).to(device)     # [B, C, k]; padding → token 0
        log_probs = _stack([self.top[i][1] for i in indices], width_c).to(device)   # padding rows: masked later
        return per_token_kl_topk(ids, log_probs, student_logits, direction)


def _stack(rows: list[torch.Tensor], width_c: int) -> torch.Tensor:
    """[n_i, D] tensors → [B, width_c, D], zero-padded at the end."""
    out = rows[0].new_zeros(len(rows), width_c, rows[0].shape[-1])
    for row, x in enumerate(rows):
        out[row, : x.shape[0]] = x
    return out
