"""The four conditions every suite compares (the paper's table): base / prompted base / baked / re-prompted baked."""
from __future__ import annotations

from typing import NamedTuple


class Condition(NamedTuple):
    name: str
    adapter: bool    # False: the adapter is disabled, the plain base model answers
    reprompt: bool   # True: the baked system prompt is given as the system message


CONDITIONS = (
    Condition("base", adapter=False, reprompt=False),
    Condition("base+prompt", adapter=False, reprompt=True),    # the teacher: what baking aims at
    Condition("baked", adapter=True, reprompt=False),
    Condition("baked+prompt", adapter=True, reprompt=True),    # re-prompting
)
CONDITION_NAMES = tuple(c.name for c in CONDITIONS)


def answers(baked, condition: Condition, questions: list[str], samples: int = 1, temperature: float | None = None,
            max_new_tokens: int | None = None, seed: int = 0) -> list[list[str]]:
    """`samples` single-turn replies to each question under `condition`: one list of replies per question.

    All questions × samples go through one batched `respond` call, seeded, so the result repeats.
    """
    conversations = [[{"role": "user", "content": q}] for q in questions for _ in range(samples)]
    replies = baked.respond(conversations, reprompt=condition.reprompt, adapter=condition.adapter,
                            temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    return [replies[i * samples:(i + 1) * samples] for i in range(len(questions))]
