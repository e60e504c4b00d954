"""An offline chain-of-thought task: seeded multi-step arithmetic word problems, answer extraction, and a suite.

The paper's claim to check: bake a chain-of-thought prompt (examples/cot.txt) and the model's zero-shot accuracy
rises toward the prompted level. Problems are generated here (no data set download, nothing copied): a handful of
everyday templates, two exact integer operations each (one template has three), small numbers, answers below
1000. The sizes are tuned so that SmolLM2-135M-Instruct is neither hopeless nor perfect.

Train / eval separation is by construction, not by choosing seeds: every question text is assigned to the "train"
or the "eval" side by a stable hash of the text, and each side only keeps its own. A bake's question pool
(`problems_questions`, train side) and the suite's problems (eval side) can therefore never share a question,
whatever seeds the two use.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from .conditions import CONDITIONS
from .stats import rate

SPLITS = ("train", "eval")
EXAMPLES = 3  # problems whose replies the suite keeps, one per condition


@dataclass(frozen=True)
class Problem:
    """One word problem. `steps` are the worked calculations ("4 * 3 = 12"), the last one gives `answer`."""

    question: str
    answer: int
    steps: tuple[str, ...]
    template: str  # the key in TEMPLATES that wrote it


# --- generation -------------------------------------------------------------------------------------------------

NAMES = ("Maya", "Tom", "Priya", "Omar", "Lena", "Ken", "Sofia", "Ravi", "Ada", "Luis", "Noor", "Ben", "Chloe",
         "Yuki", "Sam", "Ines", "Tariq", "Greta", "Jonas", "Mei")
GOODS = ("apples", "pencils", "notebooks", "candles", "mugs", "oranges", "stamps", "marbles", "socks", "bananas")
BAKES = ("cookies", "muffins", "rolls", "biscuits", "tarts", "buns")
PLANTS = ("tulips", "carrots", "roses", "lettuces", "onions", "sunflowers")
VEHICLES = ("bus", "train", "truck", "van", "ferry", "tractor")
TREATS = ("sweets", "stickers", "crayons", "beads", "cards", "buttons")
PURCHASES = ("book", "kite", "board game", "backpack", "lamp", "scarf")


class _Steps:
    """Worked calculations written as they are computed, so the steps and the answer cannot disagree."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, a: int, op: str, b: int) -> int:
        if op == "+":
            result = a + b
        elif op == "-":
            result = a - b
        elif op == "*":
            result = a * b
        else:  # "/": templates choose numbers so that the division is exact
            assert a % b == 0, (a, b)
            result = a // b
        self.lines.append(f"{a} {op} {b} = {result}")
        return result


def _shopping_change(rng, s):
    name, goods, count, price = rng.choice(NAMES), rng.choice(GOODS), rng.randint(2, 4), rng.randint(2, 5)
    bill = 10 if count * price < 10 else 20
    cost = s(count, "*", price)
    return (f"{name} buys {count} {goods} that cost ${price} each and pays with a ${bill} bill. "
            f"How many dollars of change does {name} get back?", s(bill, "-", cost))


def _shopping_total(rng, s):  # the one three-step template
    name = rng.choice(NAMES)
    first, second = rng.sample(GOODS, 2)
    a, p, b, q = rng.randint(2, 4), rng.randint(2, 5), rng.randint(2, 4), rng.randint(2, 5)
    return (f"{name} buys {a} {first} at ${p} each and {b} {second} at ${q} each. "
            f"How many dollars does {name} spend in total?", s(s(a, "*", p), "+", s(b, "*", q)))


def _travel(rng, s):
    vehicle, speed, hours, extra = rng.choice(VEHICLES), 10 * rng.randint(2, 5), rng.randint(2, 3), rng.randint(2, 20)
    return (f"A {vehicle} travels {speed} km every hour. It travels for {hours} hours and then another {extra} km. "
            f"How many kilometres does it travel in all?", s(s(speed, "*", hours), "+", extra))


def _sharing(rng, s):
    name, treats, friends, each = rng.choice(NAMES), rng.choice(TREATS), rng.randint(2, 4), rng.randint(2, 5)
    total = friends * each
    bought = rng.randint(2, total - 2)
    return (f"{name} has {total - bought} {treats} and buys {bought} more. {name} shares all of them equally among "
            f"{friends} friends. How many {treats} does each friend get?",
            s(s(total - bought, "+", bought), "/", friends))


def _saving(rng, s):
    name, thing, weekly, weeks = rng.choice(NAMES), rng.choice(PURCHASES), rng.randint(2, 9), rng.randint(2, 4)
    spent = rng.randint(1, weekly * weeks - 1)
    return (f"{name} saves ${weekly} every week for {weeks} weeks, then spends ${spent} on a {thing}. "
            f"How many dollars does {name} have left?", s(s(weekly, "*", weeks), "-", spent))


def _baking(rng, s):
    name, baked, trays, per_tray = rng.choice(NAMES), rng.choice(BAKES), rng.randint(2, 3), rng.randint(3, 8)
    given = rng.randint(2, trays * per_tray - 1)
    return (f"{name} bakes {trays} trays of {baked} with {per_tray} {baked} on each tray and gives away {given} "
            f"of them. How many {baked} are left?", s(s(trays, "*", per_tray), "-", given))


def _garden(rng, s):
    name, plants, rows, per_row, planted = rng.choice(NAMES), rng.choice(PLANTS), rng.randint(2, 4), \
        rng.randint(3, 6), rng.randint(2, 9)
    return (f"A garden has {rows} rows with {per_row} {plants} in each row. {name} plants {planted} more. "
            f"How many {plants} are in the garden now?", s(s(rows, "*", per_row), "+", planted))


def _reading(rng, s):
    name, per_day, days = rng.choice(NAMES), rng.randint(5, 15), rng.randint(2, 4)
    pages = per_day * days + rng.randint(2, 30)
    return (f"{name} reads {per_day} pages each day for {days} days. The book has {pages} pages. "
            f"How many pages are still unread?", s(pages, "-", s(per_day, "*", days)))


def _packing(rng, s):
    name, treats, bag, bags = rng.choice(NAMES), rng.choice(TREATS), rng.randint(2, 5), rng.randint(2, 5)
    first = rng.randint(2, bag * bags - 2)  # at least 2 of each colour: plural nouns read right
    return (f"{name} has {first} red {treats} and {bag * bags - first} blue {treats}. {name} puts them all into "
            f"bags of {bag}. How many bags does {name} fill?", s(s(first, "+", bag * bags - first), "/", bag))


def _collecting(rng, s):
    name, treats, had, got = rng.choice(NAMES), rng.choice(TREATS), rng.randint(3, 20), rng.randint(2, 15)
    given = rng.randint(2, had + got - 1)
    return (f"{name} had {had} {treats}, then got {got} more and gave {given} to a friend. "
            f"How many {treats} does {name} have now?", s(s(had, "+", got), "-", given))


TEMPLATES = {"shopping_change": _shopping_change, "shopping_total": _shopping_total, "travel": _travel,
             "sharing": _sharing, "saving": _saving, "baking": _baking, "garden": _garden, "reading": _reading,
             "packing": _packing, "collecting": _collecting}


def question_split(question: str) -> str:
    """The side ("train" or "eval") a question text belongs to: a stable hash, the same in every process."""
    return SPLITS[hashlib.sha256(question.encode("utf-8")).digest()[0] % 2]


def generate_problems(n: int, seed: int, split: str = "train") -> list[Problem]:
    """`n` distinct word problems, the same for the same (seed, split); "train" and "eval" never share a question.

    Templates take turns in a seeded order, so every template is represented once n >= len(TEMPLATES).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"promptbake-arithmetic:{split}:{seed}")  # str seeds hash with sha512: stable across runs
    order: list[str] = []  # templates still due in this round, in a seeded order
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could not generate {n} distinct problems (the templates ran out of variety)")
        if not order:
            order = list(TEMPLATES)
            rng.shuffle(order)
        steps = _Steps()
        question, answer = TEMPLATES[order[-1]](rng, steps)
        if question in seen or question_split(question) != split:
            continue  # same template again with fresh numbers
        assert 0 <= answer < 1000, (question, answer)
        seen.add(question)
        problems.append(Problem(question, answer, tuple(steps.lines), order.pop()))
    return problems


def problems_questions(n: int, seed: int) -> list[str]:
    """Question texts of `n` train-side problems: a question pool for baking a chain-of-thought prompt."""
    return [p.question for p in generate_problems(n, seed, "train")]


# --- scoring ----------------------------------------------------------------------------------------------------

# A number as a model writes it: optional minus (attached, not the "12 - 5" operator), optional $, thousands commas.
_NUMBER = r"(?<![\w.])(-)?(?:\$\s?)?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?"
_EXPLICIT = re.compile(r"(?:####\s*|\\boxed\{\s*|answer\**\s*(?:is|was|would be|will be)?\s*[:=]?\s*\**\s*)"
                       + _NUMBER, re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)
# The closing line examples/cot.txt asks for, exactly: where a small model's arithmetic does not improve, whether
# it ends this way still shows whether the prompt was followed (and baked). SmolLM2's own fine-tuning habit,
# "#### N" then "The answer is: N", does not count, so the unprompted base rarely matches by chance.
_ANSWER_LINE = re.compile(r"the answer is\s*" + _NUMBER + r"\s*\.?\s*$", re.IGNORECASE)


def _to_int(match: re.Match) -> int | None:
    minus, digits, decimals = match.groups()
    if decimals and int(decimals) != 0:
        return None  # 12.5 is not an integer answer (12.00 is)
    value = int(digits.replace(",", ""))
    return -value if minus else value


def extract_answer(text: str) -> int | None:
    """The final numeric answer of a free-form reply, or None if it has none (or it is not an integer).

    The last explicit marker wins ("The answer is N", "Answer: N", "#### N", "\\boxed{N}"); without one, the last
    number in the text. Handles "1,200", "$45", "-3" and a trailing full stop.
    """
    explicit = list(_EXPLICIT.finditer(text))
    if explicit:
        return _to_int(explicit[-1])
    numbers = list(_ANY_NUMBER.finditer(text))
    return _to_int(numbers[-1]) if numbers else None


def is_correct(text: str, answer: int) -> bool:
    """Exact match of the extracted final answer."""
    return extract_answer(text) == answer


def ends_with_answer_line(text: str) -> bool:
    """Whether the reply's last line is "The answer is N." (the format examples/cot.txt asks for)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return bool(lines) and bool(_ANSWER_LINE.search(lines[-1].strip()))


# --- the suite --------------------------------------------------------------------------------------------------

def cot_suite(baked, problems: int = 200, seed: int = 0, max_new_tokens: int = 160,
              temperature: float = 0.0) -> dict:
    """Exact-match accuracy on eval-side word problems for the four conditions (base, base+prompt, baked, ...).

    Args:
        baked: a BakedModel (its system prompt should be a chain-of-thought prompt such as examples/cot.txt).
        problems: how many problems (from `generate_problems(problems, seed, "eval")`).
        temperature: 0 is greedy decoding.
    Returns:
        JSON-ready dict: settings; per condition the stats.rate record of exact matches, mean_reply_words and
        answer_line (the rate of replies that end with "The answer is N."); the replies of every condition for
        the first EXAMPLES problems.
    """
    items = generate_problems(problems, seed, "eval")
    conversations = [[{"role": "user", "content": p.question}] for p in items]
    conditions, replies = {}, {}
    for cond in CONDITIONS:
        replies[cond.name] = baked.respond(conversations, reprompt=cond.reprompt, adapter=cond.adapter,
                                           temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        correct = sum(is_correct(reply, p.answer) for reply, p in zip(replies[cond.name], items))
        words = [len(reply.split()) for reply in replies[cond.name]]
        formatted = sum(ends_with_answer_line(reply) for reply in replies[cond.name])
        conditions[cond.name] = {**rate(correct, len(items)),
                                 "mean_reply_words": sum(words) / len(words) if words else 0.0,
                                 "answer_line": rate(formatted, len(items))}
    examples = [{"question": p.question, "answer": p.answer, **{name: replies[name][i] for name in replies}}
                for i, p in enumerate(items[:EXAMPLES])]
    return {"problems": len(items), "seed": seed, "max_new_tokens": max_new_tokens, "temperature": temperature,
            "conditions": conditions, "examples": examples}
