"""Task families (generators, splits, scoring), the accuracy suite, and the family as a question source."""
import json
import re

import pytest

from promptbake.errors import UserError
from promptbake.eval.accuracy import accuracy_suite, suite_items
from promptbake.eval.conditions import CONDITION_NAMES
from promptbake.eval.task_families import (FAMILIES, NEGATIVE, POSITIVE, UNITS, family, family_questions,
                                           generate_items)
from promptbake.questions import load_questions


def _recomputed(name: str, question: str) -> str:
    """The answer worked out again from the question text alone, independently of the generator."""
    numbers = [int(n) for n in re.findall(r"\d+", question)]
    if name == "addition":
        return str(numbers[0] + numbers[1])
    if name == "subtraction":
        return str(numbers[0] - numbers[1])
    if name == "comparison":
        return str(max(numbers))
    if name == "sequence":
        steps = {b - a for a, b in zip(numbers, numbers[1:])}
        assert len(steps) == 1, question
        return str(numbers[-1] + steps.pop())
    if name == "conversion":
        factor = next(f for source, target, f in UNITS if f" {source}" in question and f" {target} " in question
                      or f"{source} to {target}" in question)
        return str(numbers[0] * factor)
    words = set(re.findall(r"[a-z]+", question.split('"')[1].lower()))
    assert len(words & set(POSITIVE + NEGATIVE)) == 1, question
    return "positive" if words & set(POSITIVE) else "negative"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_problem_has_the_answer_its_question_implies(name):
    for split in ("train", "eval"):
        items = generate_items(name, 200, 3, split)
        assert len({i.question for i in items}) == 200
        for item in items:
            assert item.answer == _recomputed(name, item.question), item
            if not FAMILIES[name].labels:
                assert 0 <= int(item.answer) < 1000   # no thousands separators for the scorer to trip on


@pytest.mark.parametrize("name", list(FAMILIES))
def test_sides_are_disjoint_and_seeded(name):
    assert generate_items(name, 60, 1) == generate_items(name, 60, 1)
    assert generate_items(name, 60, 1) != generate_items(name, 60, 2)
    assert generate_items(name, 90, 1)[:60] == generate_items(name, 60, 1)  # growing keeps what was drawn
    pool = family_questions(name)
    assert len(pool) >= 300 and len(set(pool)) == len(pool)
    assert not set(pool) & {i.question for i in generate_items(name, 300, 0, "eval")}
    assert load_questions(name) == pool   # --questions NAME bakes on the train side


def test_both_families_of_the_examples_have_room_for_a_default_bake_and_the_suite():
    for name in FAMILIES:
        assert len(family_questions(name)) >= 192 + 16
        assert len(generate_items(name, 250, 0, "eval")) == 250


@pytest.mark.parametrize("name, reply, expected", [
    ("addition", "To add 38 and 36: 38 + 36 = 74.", "74"),
    ("addition", "30 + 10 = 40. 8 + 6 = 14. 40 + 14 = 54. The answer is 54.", "54"),
    ("addition", "The sum is -3", "-3"),
    ("addition", "I cannot tell.", None),
    ("comparison", "83 is larger than 38", "38"),       # the last number, as the harness filter reads it too
    ("sentiment", "The sentiment is Positive.", "positive"),
    ("sentiment", "Not positive: the answer is negative", "negative"),
    ("sentiment", "positively awful", None),             # a whole word, not a prefix
])
def test_extract_takes_the_last_answer_shaped_span(name, reply, expected):
    assert family(name).extract(reply) == expected


def test_unknown_family_names_the_known_ones():
    with pytest.raises(UserError, match="unknown task family 'multiply'; available: addition, subtraction"):
        family("multiply")


def test_suite_problems_leave_out_the_prompts_own_examples():
    items = generate_items("addition", 10, 0)
    prompt = f"Q: {items[2].question}\nA: {items[2].answer}\nQ: {items[5].question}\nA: {items[5].answer}"
    kept = suite_items("addition", 10, 0, prompt)
    assert len(kept) == 10 and items[2] not in kept and items[5] not in kept
    assert kept[:8] == [i for k, i in enumerate(items) if k not in (2, 5)]


def test_accuracy_suite_on_tiny_bake(tiny_bake):
    from promptbake.baked import load_baked

    baked = load_baked(tiny_bake)
    result = accuracy_suite(baked, "sentiment", problems=5, seed=2, max_new_tokens=6)
    json.dumps(result, allow_nan=False)
    assert (result["task"], result["problems"], result["seed"], result["max_new_tokens"]) == ("sentiment", 5, 2, 6)
    assert tuple(result["conditions"]) == CONDITION_NAMES
    items = suite_items("sentiment", 5, 2, baked.system_prompt)
    conversations = [[{"role": "user", "content": i.question}] for i in items]
    for cond, (reprompt, adapter) in zip(CONDITION_NAMES, [(False, False), (True, False), (False, True),
                                                           (True, True)]):
        record = result["conditions"][cond]
        replies = baked.respond(conversations, reprompt=reprompt, adapter=adapter, temperature=0.0,
                                max_new_tokens=6, seed=2)
        assert record["correct"] == [int(family("sentiment").is_correct(r, i.answer)) for r, i in zip(replies, items)]
        assert record["passed"] == sum(record["correct"]) and record["n"] == 5
        assert [e[cond] for e in result["examples"]] == replies[:3]
    assert [e["answer"] for e in result["examples"]] == [i.answer for i in items[:3]]
