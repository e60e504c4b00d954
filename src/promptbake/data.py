"""Trajectory records, their JSONL file, and collation into aligned teacher / student batches.

Alignment (the scheme TRL's SDFT code uses): prompts are left-padded to a common length P and the same
completion ids are appended, right-padded to C. The input stops one token short of the end, so the last C logits
are exactly the positions that predict completion tokens 0..C-1: every completion token, the first included,
is supervised once, and teacher and student select identical targets whatever their prompt lengths.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from .errors import UserError
from .runfolder import atomic_write_text


@dataclass
class Trajectory:
    question: str
    split: str                      # "train" or "heldout"
    sample_index: int               # which of the question's samples this is
    teacher_prompt_ids: list[int]   # chat template with the system prompt, generation prompt included
    student_prompt_ids: list[int]   # the same conversation without the system prompt
    completion_ids: list[int]       # sampled answer; ends with the end-of-turn token when `finished`
    text: str                       # decoded completion (special tokens removed), for people
    finished: bool                  # False when max_new_tokens cut the answer off


def write_trajectories(path: Path, trajectories: list[Trajectory]) -> None:
    atomic_write_text(path, "".join(json.dumps(asdict(t), ensure_ascii=False) + "\n" for t in trajectories))


def append_sampled(path: Path, batch: list[tuple[int, Trajectory]]) -> None:
    """Append one sampled batch to the progress file of a running bake, as one write, flushed to disk."""
    lines = "".join(json.dumps({"job": i, **asdict(t)}, ensure_ascii=False) + "\n" for i, t in batch)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())


def read_sampled(path: Path) -> dict[int, Trajectory]:
    """The trajectories in a progress file, by job index; a torn line (a kill mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return {}
    done = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            job = record.pop("job")
            done[job] = Trajectory(**record)
        except (ValueError, TypeError, KeyError):
            continue   # only the last line of a killed write can be torn; its batch is sampled again
    return done


def read_trajectories(path: Path) -> list[Trajectory]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; run `promptbake sample` first")
    names = {f.name for f in fields(Trajectory)}
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if set(record) != names:
                raise ValueError(f"fields {sorted(record)} are not {sorted(names)}")
            out.append(Trajectory(**record))
        except (ValueError, TypeError) as exc:
            if number == len(lines) and not text.endswith("\n"):   # a write cut off mid-line (power cut)
                print(f"promptbake: warning: {path}:{number} is truncated; dropping that trajectory", file=sys.stderr)
                continue
            raise UserError(f"{path}:{number} is not a trajectory record ({exc})") from None
    if not out:
        raise UserError(f"{path} holds no trajectories")
    return out


MIN_SHARED_PREFIX = 8   # tokens; a shorter common prefix is not worth a separate forward pass
# (rows - 1) x prefix tokens: the tokens sharing saves must pay for the prefix's own pass. Measured on a training step
# of SmolLM2-135M on 2 cores with its 24-token chat-template prefix: 2 rows (24 saved) ran 1.21-1.29x slower shared,
# 4 rows (72 saved) 1.01-1.07x slower; sampling batches (dozens of rows) save thousands.
MIN_SAVED_TOKENS = 96


def shared_prefix_length(prompts: list[list[int]]) -> int:
    """Length of the longest token prefix common to every prompt, leaving each at least one token of its own.

    Prompts rendered by one chat template share their opening (and the teacher's, the system prompt): computing it
    once per batch instead of once per row saves that much of every forward pass. 0 when the prefix is shorter than
    MIN_SHARED_PREFIX or would save fewer than MIN_SAVED_TOKENS tokens in all: then one pass over the padded rows is
    faster than two.
    """
    if len(prompts) < 2:
        return 0
    shortest = min(len(p) for p in prompts)
    n = 0
    while n < shortest - 1 and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n if n >= MIN_SHARED_PREFIX and (len(prompts) - 1) * n >= MIN_SAVED_TOKENS else 0


def _left_pad_rows(prompts: list[list[int]], completions: list[list[int]], pad_id: int, shared: int = 0):
    """Rows [pad.. own prompt][completion ..pad] of length P + C - 1 after a `shared` prompt prefix held apart.

    Returns (ids [B, L], mask [B, shared + L], positions [B, L]): the mask covers the shared prefix too (it is
    attended through the prefix's cache), and positions count real tokens, prefix included, so every row sees the
    positions of its unpadded self.
    """
    own = [p[shared:] for p in prompts]
    width_p = max(len(p) for p in own)
    width_c = max(len(c) for c in completions)
    ids, mask = [], []
    for prompt, completion in zip(own, completions):
        left = width_p - len(prompt)
        right = width_c - len(completion)
        row = [pad_id] * left + prompt + completion + [pad_id] * right
        keep = [1] * shared + [0] * left + [1] * (len(prompt) + len(completion)) + [0] * right
        ids.append(row[:-1])   # the last token predicts nothing
        mask.append(keep[:-1])
    ids_t = torch.tensor(ids, dtype=torch.long)
    mask_t = torch.tensor(mask, dtype=torch.long)
    positions = (mask_t.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    return ids_t, mask_t, positions


def collate(trajectories: list[Trajectory], pad_id: int, share_prefix: bool = True) -> dict[str, torch.Tensor]:
    """Aligned batch: teacher_* / student_* inputs [B, L], completion_ids and completion_mask [B, C].

    Where a side's prompts share a prefix (shared_prefix_length), it is held apart as `{side}_prefix_ids` [1, S]
    and `{side}_input_ids` holds the rest; `{side}_attention_mask` is [B, S + L] (see logits.completion_logits).
    share_prefix=False (logits.collate_for, for sliding-window models) keeps every prompt whole and left-padded.
    """
    completions = [t.completion_ids for t in trajectories]
    width_c = max(len(c) for c in completions)
    batch = {}
    for side in ("teacher", "student"):
        prompts = [getattr(t, f"{side}_prompt_ids") for t in trajectories]
        shared = shared_prefix_length(prompts) if share_prefix else 0
        if shared:
            batch[f"{side}_prefix_ids"] = torch.tensor([prompts[0][:shared]])
        ids, mask, positions = _left_pad_rows(prompts, completions, pad_id, shared)
        batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"], batch[f"{side}_position_ids"] = ids, mask, positions
    batch["completion_ids"] = torch.tensor([c + [pad_id] * (width_c - len(c)) for c in completions])
    batch["completion_mask"] = torch.tensor([[1] * len(c) + [0] * (width_c - len(c)) for c in completions])
    return batch


def padded_tokens(trajectories: list[Trajectory]) -> int:
    """Size of the larger (teacher or student) padded batch these trajectories collate into."""
    width_c = max(len(t.completion_ids) for t in trajectories)
    width_p = max(max(len(t.teacher_prompt_ids), len(t.student_prompt_ids)) for t in trajectories)
    return len(trajectories) * (width_p + width_c)


def micro_batches(trajectories: list[Trajectory], token_budget: int) -> list[list[int]]:
    """Split into index groups whose padded size stays within `token_budget` (a lone long one gets its own group).

    Sorting by length first keeps padding small; order inside a step does not change its summed gradient.
    """
    order = sorted(range(len(trajectories)),
                   key=lambda i: len(trajectories[i].teacher_prompt_ids) + len(trajectories[i].completion_ids))
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and padded_tokens([trajectories[j] for j in current + [i]]) > token_budget:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups
