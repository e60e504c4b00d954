"""The task families as lm-evaluation-harness tasks, in the harness's own YAML format, written on demand.

`--suite benchmarks --tasks promptbake_addition` runs the same problems as `--suite accuracy --task addition`
through the real harness path: its chat templating, its generation loop (greedy, stopping at end of turn), its
`regex` filter (the family's pattern, last match) and its `exact_match` metric. Nothing of promptbake's own
scorer is used on that path, so agreement between the two suites is a check, not a tautology.
"""
from __future__ import annotations

import json
from pathlib import Path

from .accuracy import MAX_NEW_TOKENS, suite_items
from .task_families import FAMILIES

PREFIX = "promptbake_"


def family_of(task: str) -> str | None:
    """The family behind a harness task name ("promptbake_addition" → "addition"), or None."""
    name = task[len(PREFIX):] if task.startswith(PREFIX) else None
    return name if name in FAMILIES else None


def _quoted(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid YAML scalar, whatever the text holds


def write_task(folder: Path, task: str, problems: int, seed: int, system_prompt: str,
               max_new_tokens: int = MAX_NEW_TOKENS) -> Path:
    """Write `<folder>/<task>.yaml` and its data (`<task>.jsonl`): the accuracy suite's problems for these settings.

    Returns the YAML's path. The data sits beside it; the datasets cache goes under `folder/cache`, not ~/.cache.
    """
    name = family_of(task)
    assert name is not None, task
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{task}.jsonl"
    items = suite_items(name, problems, seed, system_prompt)
    data.write_text("".join(json.dumps({"question": i.question, "answer": i.answer}) + "\n" for i in items),
                    encoding="utf-8")
    yaml = folder / f"{task}.yaml"
    yaml.write_text("\n".join([
        f"# written by promptbake: {len(items)} eval-side problems of the {name} family (seed {seed})",
        f"task: {task}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {_quoted(str(data))}",
        f"  cache_dir: {_quoted(str(folder / 'cache'))}",
        "output_type: generate_until",
        "test_split: test",
        'doc_to_text: "{{question}}"',
        'doc_to_target: "{{answer}}"',
        "generation_kwargs:",
        "  until: []",                     # the harness adds the end-of-turn token: stop there, as the suite does
        f"  max_gen_toks: {max_new_tokens}",
        "  do_sample: false",
        "filter_list:",
        "  - name: last-answer",
        "    filter:",
        "      - function: regex",
        f"        regex_pattern: {_quoted(FAMILIES[name].pattern)}",
        "        group_select: -1",
        "      - function: take_first",
        "metric_list:",
        "  - metric: exact_match",
        "    aggregation: mean",
        "    higher_is_better: true",
        "    ignore_case: true",
        "metadata:",
        "  version: 1.0",
        ""]), encoding="utf-8")
    return yaml
