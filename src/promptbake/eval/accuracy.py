"""The `accuracy` suite: exact-match accuracy on a task family (task_families.py) under the four conditions.

For a bake of a few-shot or chain-of-thought prompt written for one family (examples/tasks/), it answers the
paper's question: does the baked model, without the prompt, solve as many problems as the prompted base model?
"""
from __future__ import annotations

from .conditions import CONDITIONS
from .stats import rate
from .task_families import family, generate_items

EXAMPLES = 3  # problems whose replies the suite keeps, one per condition
MAX_NEW_TOKENS = 96  # a worked two-step answer of the examples/tasks prompts takes 30-50 tokens


def suite_items(task: str, problems: int, seed: int, system_prompt: str) -> list:
    """The eval-side problems, without any that the prompt itself shows as an example: copying an example's answer
    out of the prompt is not solving it. The same list feeds the harness task (lm_eval_tasks.py)."""
    items = generate_items(task, problems + 50, seed, "eval")
    return [item for item in items if item.question not in system_prompt][:problems]


def score_conditions(baked, task: str, items: list, conditions, max_new_tokens: int = MAX_NEW_TOKENS,
                     temperature: float = 0.0, seed: int = 0) -> tuple[dict, dict]:
    """({condition: rate record + mean_reply_words + correct}, {condition: replies}) for `items` of family `task`."""
    fam = family(task)
    conversations = [[{"role": "user", "content": item.question}] for item in items]
    records, replies = {}, {}
    for cond in conditions:
        replies[cond.name] = baked.respond(conversations, reprompt=cond.reprompt, adapter=cond.adapter,
                                           temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        correct = [int(fam.is_correct(reply, item.answer)) for reply, item in zip(replies[cond.name], items)]
        words = [len(reply.split()) for reply in replies[cond.name]]
        records[cond.name] = {**rate(sum(correct), len(items)), "mean_reply_words": sum(words) / len(words),
                              "correct": correct}
    return records, replies


def accuracy_suite(baked, task: str, problems: int = 200, seed: int = 0, max_new_tokens: int = MAX_NEW_TOKENS,
                   temperature: float = 0.0) -> dict:
    """Exact-match accuracy of the four conditions on `problems` eval-side problems of family `task`.

    Args:
        baked: a BakedModel; its system prompt should be written for the family (examples/tasks/).
        temperature: 0 is greedy decoding (the default: one right answer, and the harness task is greedy too).
    Returns:
        JSON-ready dict: settings; per condition the stats.rate record, mean_reply_words and `correct` (0/1 per
        problem, in order, to compare item by item with another scorer); the replies of the first EXAMPLES problems.
    """
    items = suite_items(task, problems, seed, baked.system_prompt)
    conditions, replies = score_conditions(baked, task, items, CONDITIONS, max_new_tokens, temperature, seed)
    examples = [{"question": item.question, "answer": item.answer, **{name: replies[name][i] for name in replies}}
                for i, item in enumerate(items[:EXAMPLES])]
    return {"task": task, "problems": len(items), "seed": seed, "max_new_tokens": max_new_tokens,
            "temperature": temperature, "conditions": conditions, "examples": examples}
