"""Multi-turn baking (`--turns N`): training questions continued as dialogues with a simulated user.

A prompt recedes as a dialogue grows (prompt forgetting), so single answers teach the student nothing about later
turns. Here each training question's first answer (an ordinary trajectory) is followed by a user message from a
simulator (the base model, no adapter, told to play a user) and the teacher's next answer, for N assistant turns.
Every assistant turn is a trajectory: the teacher's prompt is the system prompt plus the dialogue so far, the
student's is the same dialogue without it, so the student learns the later turns too.

The prompted teacher forgets too: deep in a dialogue its system prompt recedes, and a student of that teacher learns
the fading (measured: docs/prompt-content.md, "Drift"). So by default (`turn_prompt` "repeated") the teacher of
turns 2..N also sees the system prompt again at the start of the user's latest message, separated by a blank line
(as prompts.conversation folds a system prompt for templates without a system role); the dialogue itself, which
later turns and the student see, keeps the user's message as it was.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .config import SampleConfig
from .data import Trajectory
from .logits import adapter_disabled
from .prompts import FOLD_SEPARATOR, prompt_ids, stop_token_ids
from .sampling import batches_of, generate_batch, generation_config, sample_trajectories, stream_seed

USER_PROMPT = ("Play the user in this chat. You asked the assistant: \"{question}\". Reply to its last message the "
               "way a person would: one or two short sentences, often a follow-up question. Write only the user's "
               "message.")
USER_OPENING = "Hi, I'm ready to play the user."
USER_TOKENS = 32


def user_view(question: str, dialogue: list[dict]) -> list[dict]:
    """The dialogue as the simulated user sees it: its instructions, then the turns with the roles swapped (its own
    messages as the assistant's), the assistant's latest answer last."""
    swapped = [{"role": "assistant" if m["role"] == "user" else "user", "content": m["content"]} for m in dialogue]
    return [{"role": "system", "content": USER_PROMPT.format(question=question)},
            {"role": "user", "content": USER_OPENING}, *swapped]


@torch.no_grad()
def user_replies(model, tokenizer, views: list[list[dict]], cfg: SampleConfig, seeds: list[int]) -> list[str]:
    stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    gen = generation_config(cfg, stops, tokenizer.pad_token_id, max_new_tokens=USER_TOKENS)
    prompts = [prompt_ids(tokenizer, view[1:], view[0]["content"]) for view in views]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies = [""] * len(prompts)
    with adapter_disabled(model):
        for batch in batches_of(order, cfg.sample_batch_size):
            out, _ = generate_batch(model, [prompts[i] for i in batch], gen, tokenizer.pad_token_id, stops,
                                    seeds=[seeds[i] for i in batch])
            for i, (ids, _) in zip(batch, out):
                replies[i] = tokenizer.decode(ids, skip_special_tokens=True).strip() or "Tell me more."
    return replies


def reminded(dialogue: list[dict], system_prompt: str) -> list[dict]:
    """The dialogue with the system prompt again at the start of its last user message (the teacher's view)."""
    last = max(i for i, m in enumerate(dialogue) if m["role"] == "user")
    return [{**m, "content": system_prompt + FOLD_SEPARATOR + m["content"]} if i == last else m
            for i, m in enumerate(dialogue)]


def continue_dialogues(model, tokenizer, first: list[Trajectory], system_prompt: str, cfg: SampleConfig, seed: int,
                       turns: int, progress: bool = True) -> list[Trajectory]:
    """Assistant turns 2..`turns` of the dialogues that `first` (turn-1 trajectories) open.

    Returns the new trajectories, turn by turn; each turn's sample_index is `turn × len(first) + row`, so every
    trajectory has its own seeded random stream (sampling.stream_seed), and the run repeats.
    """
    dialogues = [[{"role": "user", "content": t.question}, {"role": "assistant", "content": t.text.strip()}]
                 for t in first]
    out: list[Trajectory] = []
    bar = tqdm(total=turns - 1, desc="dialogues", unit="turn", disable=not progress)
    for turn in range(1, turns):
        views = [user_view(t.question, d) for t, d in zip(first, dialogues)]
        seeds = [stream_seed(seed, "user", t.question, t.sample_index, turn) for t in first]
        for dialogue, message in zip(dialogues, user_replies(model, tokenizer, views, cfg, seeds)):
            dialogue.append({"role": "user", "content": message})
        jobs = [{"question": t.question, "split": t.split, "sample_index": turn * len(first) + row,
                 "teacher_prompt_ids": prompt_ids(tokenizer, reminded(d, system_prompt) if cfg.turn_prompt == "repeated"
                                                  else d, system_prompt),
                 "student_prompt_ids": prompt_ids(tokenizer, d, None)} for row, (t, d) in enumerate(zip(first, dialogues))]
        sampled, _ = sample_trajectories(model, tokenizer, jobs, cfg, seed, progress=False)
        for dialogue, trajectory in zip(dialogues, sampled):
            dialogue.append({"role": "assistant", "content": trajectory.text.strip()})
        out += sampled
        bar.update(1)
    bar.close()
    return out
