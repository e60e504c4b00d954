"""Seeded task families with one right answer each, sized for the embedded 135M model: the accuracy suite's problems.

The paper's headline result is that a baked few-shot or chain-of-thought prompt lifts zero-shot accuracy toward
the prompted level. That shows only on tasks where the model is neither at its floor nor at its ceiling, with or
without the prompt; these families were chosen by measuring SmolLM2-135M-Instruct (docs/accuracy.md).

Every family writes (question, answer) pairs from a seeded generator; nothing is downloaded or copied. Train and
eval sides are separated by a stable hash of the question text (arithmetic.question_split), so a bake's question
pool (train side) and the suite's problems (eval side) never share a question, whatever seeds they use.

Scoring is exact match of the *last* answer-shaped span of the reply (the last integer, or the last label word):
one regular expression per family, which is also what the lm-evaluation-harness task of the same family uses
(eval/lm_eval_tasks.py), so the two scorers cannot disagree about what a reply says.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

from .arithmetic import SPLITS, question_split

INTEGER = r"(-?\d+)"


@dataclass(frozen=True)
class Family:
    """A task family: `write(rng)` gives one (question, answer); `pattern` finds answer spans in a reply."""

    name: str
    description: str
    write: Callable[[random.Random], tuple[str, str]]
    pattern: str = INTEGER
    labels: tuple[str, ...] = ()   # a fixed label set (classification), lower case; empty for numeric answers

    def extract(self, reply: str) -> str | None:
        """The last answer-shaped span of `reply`, normalised (lower case), or None if there is none."""
        found = re.findall(self.pattern, reply)
        return found[-1].strip().lower() if found else None

    def is_correct(self, reply: str, answer: str) -> bool:
        return self.extract(reply) == answer


@dataclass(frozen=True)
class Item:
    question: str
    answer: str


# --- the families -----------------------------------------------------------------------------------------------

def _addition(rng):   # both below 50: with 10-99 the prompt's gain was 7 points, too small to measure a bake on
    a, b = rng.randint(10, 49), rng.randint(10, 49)
    return f"What is {a} + {b}?", str(a + b)


def _subtraction(rng):
    a = rng.randint(20, 99)
    b = rng.randint(10, a - 1)
    return f"What is {a} - {b}?", str(a - b)


def _comparison(rng):
    a, b = rng.sample(range(10, 100), 2)
    return f"Which number is larger, {a} or {b}?", str(max(a, b))


def _sequence(rng):
    start, step, shown = rng.randint(1, 40), rng.randint(2, 12), rng.randint(4, 5)
    terms = [start + step * i for i in range(shown)]
    return (f"What number comes next in the sequence {', '.join(map(str, terms))}?",
            str(start + step * shown))


# (from, to, factor); quantities stay small enough that answers stay below 1000 (no thousands separators)
UNITS = (("metres", "centimetres", 100), ("hours", "minutes", 60), ("minutes", "seconds", 60),
         ("days", "hours", 24), ("weeks", "days", 7), ("years", "months", 12), ("feet", "inches", 12),
         ("centimetres", "millimetres", 10), ("decades", "years", 10), ("yards", "feet", 3),
         ("pounds", "pence", 100), ("euros", "cents", 100))


def _conversion(rng):
    source, target, factor = rng.choice(UNITS)
    quantity = rng.randint(2, min(40, 999 // factor))
    frame = rng.choice(("How many {target} are in {quantity} {source}?", "Convert {quantity} {source} to {target}."))
    return frame.format(target=target, quantity=quantity, source=source), str(quantity * factor)


SENTIMENT_NOUNS = ("soup", "film", "hotel room", "concert", "book", "haircut", "train ride", "new phone", "pizza",
                   "lecture", "garden", "coffee", "museum tour", "video game", "sofa", "wedding cake", "hike",
                   "podcast", "bakery", "holiday")
POSITIVE = ("wonderful", "delightful", "excellent", "lovely", "fantastic", "charming", "superb", "pleasant",
            "brilliant", "amazing", "perfect", "relaxing")
NEGATIVE = ("awful", "terrible", "disappointing", "boring", "dreadful", "horrible", "unpleasant", "dirty",
            "miserable", "annoying", "useless", "painful")
FRAMES = ("The {noun} was {adjective}.", "I thought the {noun} was {adjective}.",
          "Honestly, the {noun} was {adjective}.", "Our {noun} turned out {adjective}.",
          "Everyone agreed the {noun} was {adjective}.")


def _sentiment(rng):
    label = rng.choice(("positive", "negative"))
    adjective = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
    sentence = rng.choice(FRAMES).format(noun=rng.choice(SENTIMENT_NOUNS), adjective=adjective)
    return f'Is the sentiment of this sentence positive or negative? "{sentence}"', label


FAMILIES = {family.name: family for family in (
    Family("addition", "addition of two numbers from 10 to 49: 'What is 30 + 19?'", _addition),
    Family("subtraction", "two-digit subtraction with a positive result", _subtraction),
    Family("comparison", "the larger of two two-digit numbers", _comparison),
    Family("sequence", "the next term of an arithmetic sequence", _sequence),
    Family("conversion", "one-step unit conversion: 'How many minutes are in 3 hours?'", _conversion),
    Family("sentiment", "positive or negative, of a short sentence", _sentiment,
           pattern=r"(?i)\b(positive|negative)\b", labels=("positive", "negative")),
)}


def family(name: str) -> Family:
    from ..errors import UserError

    if name not in FAMILIES:
        raise UserError(f"unknown task family {name!r}; available: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def generate_items(name: str, n: int, seed: int, split: str = "eval") -> list[Item]:
    """`n` distinct problems of family `name`, the same for the same (seed, split); the sides never share one."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    write = family(name).write
    rng = random.Random(f"promptbake-family:{name}:{split}:{seed}")  # str seeds hash with sha512: stable
    items: list[Item] = []
    seen: set[str] = set()
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > 200 * n + 2000:
            raise RuntimeError(f"family {name} has fewer than {n} distinct {split}-side problems")
        question, answer = write(rng)
        if question in seen or question_split(question) != split:
            continue
        seen.add(question)
        items.append(Item(question, answer))
    return items


def family_questions(name: str, limit: int = 2000, seed: int = 0, split: str = "train") -> list[str]:
    """Up to `limit` distinct question texts of one side of a family: a bake's question pool (the train side, which
    the accuracy suite never scores). Smaller families give all they have (sequence: about 450)."""
    write = family(name).write
    rng = random.Random(f"promptbake-family-pool:{name}:{split}:{seed}")
    found: dict[str, None] = {}
    misses = 0
    while len(found) < limit and misses < 5000:   # 5000 draws in a row without a new question: the side is spent
        question, _ = write(rng)
        if question_split(question) == split and question not in found:
            found[question] = None
            misses = 0
        else:
            misses += 1
    return list(found)
