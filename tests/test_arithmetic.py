import json
import re

import pytest

from promptbake.eval.arithmetic import (TEMPLATES, cot_suite, ends_with_answer_line, extract_answer, generate_problems,
                                        is_correct, problems_questions, question_split)
from promptbake.eval.conditions import CONDITION_NAMES

STEP = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")


def test_same_seed_same_problems_other_seed_other_problems():
    assert generate_problems(50, 3) == generate_problems(50, 3)
    assert generate_problems(50, 3, "eval") == generate_problems(50, 3, "eval")
    other = {p.question for p in generate_problems(50, 4)}
    assert len(other & {p.question for p in generate_problems(50, 3)}) < 5
    # a longer draw starts with the shorter one, so growing the pool keeps the questions already used
    assert generate_problems(80, 3)[:50] == generate_problems(50, 3)


def test_no_duplicates_and_every_template_used():
    problems = generate_problems(600, 0)
    assert len({p.question for p in problems}) == 600
    assert {p.template for p in problems} == set(TEMPLATES)
    assert problems_questions(30, 2) == [p.question for p in generate_problems(30, 2)]


@pytest.mark.parametrize("split", ["train", "eval"])
def test_steps_recompute_to_an_exact_small_answer(split):
    for problem in generate_problems(400, 7, split):
        assert 2 <= len(problem.steps) <= 3, problem
        results = {}
        for line in problem.steps:
            a, op, b, claimed = STEP.match(line).groups()
            a, b, claimed = int(a), int(b), int(claimed)
            if op == "/":
                assert a % b == 0, problem  # divisions are exact
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else None}[op]
            assert value == claimed, problem
            results[line] = value
        assert results[problem.steps[-1]] == problem.answer
        assert isinstance(problem.answer, int) and 0 <= problem.answer < 1000
        # the problem states every number the first step uses (chain-of-thought has something to start from)
        first_a, _, first_b, _ = STEP.match(problem.steps[0]).groups()
        numbers = re.findall(r"\d+", problem.question)
        assert first_a in numbers and first_b in numbers, problem


def test_train_and_eval_never_share_a_question():
    train = {p.question for seed in (0, 1) for p in generate_problems(400, seed, "train")}
    evaluation = {p.question for seed in (0, 1) for p in generate_problems(400, seed, "eval")}
    assert not train & evaluation
    assert {question_split(q) for q in train} == {"train"}
    assert {question_split(q) for q in evaluation} == {"eval"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        generate_problems(3, 0, "test")
    with pytest.raises(ValueError, match="n must be"):
        generate_problems(-1, 0)
    assert generate_problems(0, 0) == []


@pytest.mark.parametrize("reply, expected", [
    ("3 * 4 = 12\n20 - 12 = 8\nThe answer is 8.", 8),
    ("The answer is 8. That is 4 less than 12.", 8),           # the explicit answer beats a later number
    ("Answer: 42", 42),
    ("**Answer:** 17 apples", 17),
    ("The final answer is: 256", 256),
    ("The answer is **63**.", 63),
    ("So the answer = 5", 5),
    ("#### 1,200", 1200),
    ("Total cost: 4 * 300 = 1,200 dollars.", 1200),
    ("She pays $45.", 45),
    ("The answer is $1,050.00.", 1050),
    ("It drops to -3 degrees.", -3),
    ("The answer is -12.", -12),
    ("12 - 5 = 7", 7),                                         # a minus between numbers is not a sign
    ("12-5=7", 7),
    ("So she has 12 - 5", 5),
    ("3 - 8 = -5", -5),
    ("She pays -$4?", -4),
    ("It costs $ 12", 12),
    ("3,4 and 5", 5),
    ("First 5 + 7 = 12. Then 12 / 4 = 3.", 3),
    ("He has 30 left.\n", 30),
    ("We get \\boxed{96}.", 96),
    ("Each friend gets 2.5 sweets.", None),                    # not an integer answer
    ("I am not sure how to solve this.", None),
    ("", None),
    ("The answer is 7 and the steps were 3 + 4", 7),
    ("There are 3, 4 and 5 apples, so 12 in all.", 12),
    ("In 2023 she read 15 books.", 15),
])
def test_extract_answer(reply, expected):
    assert extract_answer(reply) == expected


def test_is_correct():
    assert is_correct("The answer is 1,200.", 1200)
    assert not is_correct("The answer is 1,200.", 120)
    assert not is_correct("no idea", 0)


@pytest.mark.parametrize("reply, expected", [
    ("3 * 4 = 12\n20 - 12 = 8\nThe answer is 8.", True),
    ("The answer is 1,200\n\n", True),
    ("#### 8\nThe answer is: 8", False),       # SmolLM2's trained habit, not the prompt's format
    ("the answer is -3", True),
    ("The answer is 8. Then 3 more.", False),   # the answer line must come last
    ("#### 8\nThe answer is 8 apples.", False),  # not the requested form
    ("#### 8", False),
    ("", False),
])
def test_ends_with_answer_line(reply, expected):
    assert ends_with_answer_line(reply) is expected


def test_cot_suite_on_tiny_bake(tiny_bake):
    from promptbake.baked import load_baked

    baked = load_baked(tiny_bake)
    result = cot_suite(baked, problems=4, seed=1, max_new_tokens=8)
    json.dumps(result)
    assert (result["problems"], result["seed"], result["max_new_tokens"]) == (4, 1, 8)
    assert tuple(result["conditions"]) == CONDITION_NAMES
    for record in result["conditions"].values():
        assert record["n"] == 4 and 0 <= record["passed"] <= 4
        assert record["ci95"][0] <= record["ci95"][1]
        assert record["mean_reply_words"] >= 0
        assert record["answer_line"]["n"] == 4 and 0 <= record["answer_line"]["passed"] <= 4
    questions = [p.question for p in generate_problems(4, 1, "eval")]
    assert [e["question"] for e in result["examples"]] == questions[:3]
    assert all(set(e) == {"question", "answer", *CONDITION_NAMES} for e in result["examples"])
    # each condition answered with its own flags: replay one condition's call and compare the kept replies
    conversations = [[{"role": "user", "content": q}] for q in questions]
    replayed = baked.respond(conversations, reprompt=True, adapter=False, temperature=0.0, max_new_tokens=8, seed=1)
    assert [e["base+prompt"] for e in result["examples"]] == replayed[:3]
    # ... and that replay can tell conditions apart on this model
    assert [e["base+prompt"] for e in result["examples"]] != [e["base"] for e in result["examples"]]
    assert [e["answer"] for e in result["examples"]] == [p.answer for p in generate_problems(3, 1, "eval")]
