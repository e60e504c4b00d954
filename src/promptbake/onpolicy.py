"""On-policy baking (`--on-policy F`, GKD's mixing fraction λ): a share of the training steps trains on the student's
own rollouts instead of the teacher's samples.

At such a step the student (base + the adapter as trained so far, no system prompt) answers the step's questions
with the bake's sampling settings; the teacher (the base with the prompt, adapter off) scores those tokens and the
loss is the configured divergence on them (forward, reverse as in OPCD, or JSD). The teacher cache holds the
teacher's samples only, so these steps run the teacher's forward pass themselves. Which steps are on-policy and
what the student samples are seeded per step, so a resumed run replays them.
"""
from __future__ import annotations

import random
from dataclasses import replace

import torch

from .config import SampleConfig
from .data import Trajectory
from .prompts import stop_token_ids
from .sampling import generate_batch, generation_config, stream_seed


def is_on_policy(step: int, fraction: float, seed: int) -> bool:
    """Whether optimizer step `step` (0-based) trains on student rollouts; about `fraction` of the steps do."""
    return fraction > 0 and random.Random(stream_seed(seed, "on-policy-step", step)).random() < fraction


def student_rollouts(model, tokenizer, cfg: SampleConfig, seed: int):
    """A function (trajectories, step) → the same questions answered by the student now, as Trajectory records
    whose completion is the student's sample (the teacher and student prompts are kept)."""
    stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    pad = tokenizer.pad_token_id
    gen = generation_config(cfg, stops, pad)

    @torch.no_grad()
    def rollouts(trajectories: list[Trajectory], step: int) -> list[Trajectory]:
        was_training = model.training
        model.eval()
        out, _ = generate_batch(model, [t.student_prompt_ids for t in trajectories], gen, pad, stops,
                                seeds=[stream_seed(seed, "on-policy", step, row) for row in range(len(trajectories))])
        model.train(was_training)
        return [replace(t, completion_ids=ids, finished=finished, text="")
                for t, (ids, finished) in zip(trajectories, out)]

    return rollouts
