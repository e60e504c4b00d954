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
