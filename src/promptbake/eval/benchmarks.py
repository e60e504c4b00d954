"""The `benchmarks` suite: EleutherAI lm-evaluation-harness tasks under the four conditions of conditions.py.

The baked PeftModel is handed to lm-eval in memory (its `HFLM` wrapper accepts a loaded model), so nothing is
downloaded but the task data. One wrapper serves all four conditions: the adapter is switched off around the
base runs, and the bake's system prompt goes in as lm-eval's `system_instruction` for the "+prompt" runs.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from ..logits import adapter_disabled
from .conditions import CONDITIONS
from .accuracy import MAX_NEW_TOKENS
from .lm_eval_tasks import PREFIX, family_of, write_task
from .task_families import FAMILIES

INSTALL_HINT = "the benchmarks suite needs lm-evaluation-harness: pip install 'promptbake[benchmarks]'"


def benchmark_suite(baked, tasks: list[str], limit: int | None = None, include_path: str | None = None,
                    batch_size: int = 8, seed: int = 0, allow_code_execution: bool = False, problems: int = 200,
                    max_new_tokens: int | None = None) -> dict:
    """Run lm-eval tasks on base, base+prompt, baked and baked+prompt.

    The chat template is always applied when the tokenizer has one: the baked model is a chat model, and the
    bake trained it on chat-rendered conversations (a template's default system prompt included).

    Args:
        baked: a BakedModel (`promptbake.load_baked`); its adapter is on again when this returns.
        tasks: lm-eval task, group or tag names, e.g. ["gsm8k", "arc_easy"].
        limit: evaluate only the first `limit` documents of each task (None: all of them).
        include_path: a folder of extra lm-eval task YAMLs, searched after lm-eval's own.
        batch_size: lm-eval's batch size for forward passes and generation.
        seed: python, numpy, torch and few-shot sampling seeds; the same seed gives the same prompts and results.
        allow_code_execution: let tasks that execute model-written code run (mbpp, humaneval): lm-eval's
            `confirm_run_unsafe_code`, plus HF_ALLOW_CODE_EVAL=1 for Hugging Face's code_eval metric.
        problems, max_new_tokens: for promptbake's own task families ("promptbake_addition", ...), written as
            harness tasks on the fly (lm_eval_tasks.py): the same problems the accuracy suite scores with the same
            `problems`, `seed` and prompt. Their per-problem exact matches are kept, in order, under "correct".

    Returns:
        {"tasks": tasks, "limit": limit, "conditions": {condition: {task: {metric: value}}},
         "samples_per_task": {task: documents evaluated}, "seconds": wall time}, plus
        "correct": {condition: {family task: [0/1 per problem]}} when a family task ran. Metric keys are
        lm-eval's own ("acc,none", "exact_match,strict-match", "acc_stderr,none"); only finite numbers are kept.
    """
    try:
        from lm_eval import evaluator
        from lm_eval.models.huggingface import HFLM
    except ModuleNotFoundError as error:
        if error.name != "lm_eval":
            raise
        raise UserError(INSTALL_HINT) from error

    start = time.perf_counter()
    families = [task for task in tasks if family_of(task)]
    with tempfile.TemporaryDirectory(prefix="promptbake-tasks-") if families else contextlib.nullcontext() as folder:
        for task in families:
            write_task(Path(folder), task, problems, seed, baked.system_prompt, max_new_tokens or MAX_NEW_TOKENS)
        paths = tuple(p for p in (include_path, folder) if p)
        result = _run(baked, tasks, limit, include_path, paths, batch_size, seed, allow_code_execution, families)
    return {**result, "seconds": time.perf_counter() - start}


def _run(baked, tasks, limit, include_path, paths, batch_size, seed, allow_code_execution, families) -> dict:
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    task_manager = _task_manager(tasks, paths)
    _check_tasks(task_manager, tasks, include_path, allow_code_execution)
    model = HFLM(pretrained=baked.model, tokenizer=baked.tokenizer, batch_size=batch_size)
    seeds = dict(random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)

    conditions, samples_per_task, correct = {}, {}, {}
    with _code_execution(allow_code_execution):
        for condition in CONDITIONS:
            with adapter_disabled(baked.model) if not condition.adapter else contextlib.nullcontext():
                results = evaluator.simple_evaluate(
                    model=model, tasks=list(tasks), limit=limit, task_manager=task_manager,
                    log_samples=bool(families),
                    system_instruction=baked.system_prompt if condition.reprompt else None,
                    apply_chat_template=bool(baked.tokenizer.chat_template),
                    confirm_run_unsafe_code=allow_code_execution, **seeds)
            conditions[condition.name] = {task: _numeric(metrics) for task, metrics in results["results"].items()}
            samples_per_task = {task: count["effective"] for task, count in results["n-samples"].items()}
            if families:
                correct[condition.name] = {task: [int(s["exact_match"]) for s in
                                                  sorted(results["samples"][task], key=lambda s: s["doc_id"])]
                                           for task in families}
    return {"tasks": list(tasks), "limit": limit, "conditions": conditions, "samples_per_task": samples_per_task,
            **({"correct": correct} if families else {})}


def _task_manager(tasks: list[str], paths: tuple[str, ...]):
    """lm-eval's task index. Indexing its own ~15k YAMLs takes 10-30 s, so when every requested name is a plain
    task of the extra folders (which would win over a built-in of the same name anyway) only those are indexed."""
    from lm_eval.tasks import TaskManager

    if paths:
        local = TaskManager(include_path=list(paths), include_defaults=False)
        if set(tasks) <= set(local.all_subtasks):  # groups and tags may name built-in tasks: those need the rest
            return local
    return _full_task_manager(paths)


@functools.lru_cache(maxsize=4)
def _full_task_manager(paths: tuple[str, ...]):
    """lm-eval's own tasks plus the extra folders, indexed once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths) or None)


def _check_tasks(task_manager, tasks: list[str], include_path: str | None, allow_code_execution: bool) -> None:
    """Fail before any model call: every name must be known, and code-running tasks need the explicit opt-in."""
    if not tasks:
        raise UserError("the benchmarks suite needs at least one task: pass --tasks, e.g. --tasks arc_easy,gsm8k")
    unknown = [name for name in tasks if name not in task_manager.all_tasks]
    if unknown:
        where = f" or {include_path}" if include_path else ""
        if any(name.startswith(PREFIX) for name in unknown):
            where += f" (promptbake's own task families: {', '.join(PREFIX + f for f in FAMILIES)})"
        raise UserError(f"unknown lm-eval task {', '.join(unknown)}: not in lm-eval{where}; list the known ones "
                        f"with `lm-eval ls tasks`, or point --include-path at a folder of your own task YAMLs")
    entries = [task_manager.task_index[name] for name in tasks]
    unsafe = [entry.name for entry in entries if entry.cfg and entry.cfg.get("unsafe_code")]
    if unsafe and not allow_code_execution:
        raise UserError(f"task {', '.join(unsafe)} runs model-written code: rerun with --allow-code-execution "
                        f"if you accept that (best inside a container or sandbox)")


@contextlib.contextmanager
def _code_execution(allowed: bool):
    """HF_ALLOW_CODE_EVAL=1 (code_eval's own opt-in) while the suite runs, if allowed; the old value afterwards."""
    old = os.environ.get("HF_ALLOW_CODE_EVAL")
    if allowed:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    try:
        yield
    finally:
        if allowed:
            os.environ.pop("HF_ALLOW_CODE_EVAL")
            if old is not None:
                os.environ["HF_ALLOW_CODE_EVAL"] = old


def _numeric(metrics: dict) -> dict[str, float]:
    """One task's metrics without "alias", "N/A" stderrs or NaN (not JSON), and "sample_len" (a count, not a metric)."""
    return {key: float(value) for key, value in metrics.items() if key != "sample_len"
            and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
