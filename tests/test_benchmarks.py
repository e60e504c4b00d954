"""The benchmarks suite: lm-eval runs the tiny bake in memory on two local tasks under all four conditions."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from promptbake import load_baked  # noqa: E402
from promptbake.errors import UserError  # noqa: E402
from promptbake.eval.benchmarks import benchmark_suite  # noqa: E402
from promptbake.eval.conditions import CONDITION_NAMES, CONDITIONS  # noqa: E402
from promptbake.logits import adapter_disabled  # noqa: E402

TASK_SOURCES = Path(__file__).parent / "data" / "lm_eval_tasks"
CHOICE, ANSWER = "promptbake_tiny_choice", "promptbake_tiny_answer"
LIMIT = 5  # of the 8 documents in tiny_qa.jsonl: shows that limit reaches lm-eval


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """The task YAMLs with absolute data and cache paths, so they load from any working directory."""
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    cache = tmp_path_factory.mktemp("datasets-cache")
    for source in TASK_SOURCES.glob("*.yaml"):
        text = source.read_text().replace("DATA_DIR", str(TASK_SOURCES)).replace("CACHE_DIR", str(cache))
        (folder / source.name).write_text(text)
    return folder


@pytest.fixture(scope="module")
def baked(tiny_bake_dir):
    return load_baked(tiny_bake_dir)  # read only: the shared bake needs no private copy


@pytest.fixture(scope="module")
def run(baked, task_dir):
    """One suite run, with every lm-eval call recorded: its condition's arguments and per-sample logs."""
    from lm_eval import evaluator

    real = evaluator.simple_evaluate
    calls = []

    def spy(**kwargs):
        results = real(**{**kwargs, "log_samples": True})
        calls.append({"kwargs": kwargs, "samples": results["samples"]})
        return results

    probe = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        before = baked.model(probe).logits
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluator, "simple_evaluate", spy)
        patch.setattr(evaluator, "add_env_info", lambda results: None)  # `pip list` & co.: ~2 s per condition
        result = benchmark_suite(baked, [CHOICE, ANSWER], limit=LIMIT, include_path=str(task_dir), batch_size=4)
    with torch.no_grad():
        after = baked.model(probe).logits
        with adapter_disabled(baked.model):
            base = baked.model(probe).logits
    return {"result": result, "calls": dict(zip(CONDITION_NAMES, calls)), "logits": (before, after, base)}


def test_every_condition_reports_rates_for_every_task(run):
    result = run["result"]
    json.dumps(result, allow_nan=False)  # the dict goes into eval.json as it is
    assert result["tasks"] == [CHOICE, ANSWER] and result["limit"] == LIMIT and result["seconds"] > 0
    assert list(result["conditions"]) == list(CONDITION_NAMES)
    for metrics in result["conditions"].values():
        assert set(metrics) == {CHOICE, ANSWER}
        assert "acc,none" in metrics[CHOICE] and "exact_match,none" in metrics[ANSWER]
        for task_metrics in metrics.values():
            assert "alias" not in task_metrics
            assert all(0.0 <= value <= 1.0 for value in task_metrics.values())


def test_limit_sets_the_number_of_documents(run):
    assert run["result"]["samples_per_task"] == {CHOICE: LIMIT, ANSWER: LIMIT}
    for call in run["calls"].values():
        assert {task: len(samples) for task, samples in call["samples"].items()} == {CHOICE: LIMIT, ANSWER: LIMIT}


def test_prompts_are_chat_rendered_with_the_system_prompt_only_when_reprompting(run, baked):
    for condition in CONDITIONS:
        call = run["calls"][condition.name]
        assert call["kwargs"]["apply_chat_template"] is True
        for samples in call["samples"].values():
            for sample in samples:
                context = sample["arguments"][0][0]
                assert context.startswith("<|im_start|>system\n") and "<|im_start|>user\n" in context
                assert (baked.system_prompt in context) == condition.reprompt


def _choice_loglikelihoods(call) -> list[float]:
    """Per document and choice: lm-eval's log P(choice | context), flattened."""
    return [resp[0][0] for sample in call["samples"][CHOICE] for resp in sample["resps"]]


def _contexts(call) -> list[str]:
    return [sample["arguments"][0][0] for samples in call["samples"].values() for sample in samples]


def test_adapter_and_system_prompt_each_change_the_loglikelihoods(run):
    calls = run["calls"]
    # same prompts, adapter on vs off: differences come from the adapter alone
    assert _contexts(calls["base"]) == _contexts(calls["baked"])
    assert _contexts(calls["base+prompt"]) == _contexts(calls["baked+prompt"])
    scores = {name: _choice_loglikelihoods(call) for name, call in calls.items()}
    for one, other in [("base", "baked"), ("base+prompt", "baked+prompt"), ("base", "base+prompt"),
                       ("baked", "baked+prompt")]:
        assert max(abs(a - b) for a, b in zip(scores[one], scores[other])) > 1e-3, (one, other)


def _loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context), split into tokens the way lm-eval does (trailing context space moves over)."""
    stripped = context.rstrip()
    whole = tokenizer(stripped + context[len(stripped):] + continuation, add_special_tokens=False).input_ids
    start = len(tokenizer(stripped, add_special_tokens=False).input_ids)
    with torch.no_grad():
        logprobs = model(torch.tensor([whole])).logits[0].log_softmax(-1)   # [T, V]
    return sum(float(logprobs[t - 1, whole[t]]) for t in range(start, len(whole)))


def test_base_conditions_are_the_model_with_its_adapter_off(run, baked):
    """Recompute one score per condition by hand: `base` must be the adapter-off model, `baked` the adapter-on one."""
    for condition in CONDITIONS:
        sample = run["calls"][condition.name]["samples"][CHOICE][0]
        context, continuation = sample["arguments"][0]
        if condition.adapter:
            expected = _loglikelihood(baked.model, baked.tokenizer, context, continuation)
        else:
            with adapter_disabled(baked.model):
                expected = _loglikelihood(baked.model, baked.tokenizer, context, continuation)
        assert sample["resps"][0][0][0] == pytest.approx(expected, abs=1e-3), condition.name


def test_adapter_is_on_again_afterwards(run):
    before, after, base = run["logits"]
    assert torch.equal(before, after)
    assert not torch.allclose(after, base)  # the probe can tell the two apart


def test_unknown_task_names_the_task_and_how_to_list_tasks(baked, task_dir):
    with pytest.raises(UserError, match=r"no_such_task.*lm-eval ls tasks"):
        benchmark_suite(baked, [CHOICE, "no_such_task"], include_path=str(task_dir))


@pytest.mark.parametrize("task", ["promptbake_tiny_unsafe", "mbpp"])
def test_code_running_tasks_need_the_explicit_opt_in(baked, task_dir, task):
    with pytest.raises(UserError, match=f"task {task} runs model-written code.*--allow-code-execution"):
        benchmark_suite(baked, [task], include_path=str(task_dir))


def test_allow_code_execution_confirms_unsafe_code_and_sets_hf_allow_code_eval(baked, task_dir, monkeypatch):
    from lm_eval import evaluator

    seen = []

    def fake(**kwargs):  # records what lm-eval would see; running it is the other tests' job
        seen.append((kwargs["confirm_run_unsafe_code"], os.environ.get("HF_ALLOW_CODE_EVAL")))
        return {"results": {"promptbake_tiny_unsafe": {"acc,none": 1.0}},
                "n-samples": {"promptbake_tiny_unsafe": {"original": 8, "effective": 8}}}

    monkeypatch.setattr(evaluator, "simple_evaluate", fake)
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    benchmark_suite(baked, ["promptbake_tiny_unsafe"], include_path=str(task_dir), allow_code_execution=True)
    assert seen == [(True, "1")] * len(CONDITIONS)
    assert "HF_ALLOW_CODE_EVAL" not in os.environ  # only for the duration of the suite


def test_missing_lm_eval_says_how_to_install_it(baked, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` meets when it is not installed
    with pytest.raises(UserError, match=r"pip install 'promptbake\[benchmarks\]'"):
        benchmark_suite(baked, ["arc_easy"])


# --- promptbake's task families as harness tasks ------------------------------------------------------------------

FAMILY_REPLIES = {
    "addition": ["30 + 19 = 49", "The answer is 125.", "I think 12, or maybe 13", "no idea", "-5"],
    "sentiment": ["positive", "It is Negative.", "not negative but positive", "positively", "neutral"],
}


@pytest.mark.parametrize("name", list(FAMILY_REPLIES))
def test_harness_filter_and_metric_score_a_reply_as_the_family_does(name, tmp_path):
    """The written task, loaded by lm-eval itself: its filter pipeline and exact_match agree with Family.is_correct
    on replies with no, one and several answer-shaped spans, for every document of the task."""
    from types import SimpleNamespace

    from lm_eval.tasks import TaskManager, get_task_dict

    from promptbake.eval.lm_eval_tasks import PREFIX, write_task
    from promptbake.eval.task_families import family

    task_name = PREFIX + name
    write_task(tmp_path, task_name, problems=6, seed=0, system_prompt="")
    task = get_task_dict([task_name], TaskManager(include_path=str(tmp_path), include_defaults=False))[task_name]
    docs = list(task.test_docs())
    assert len(docs) == 6
    fam = family(name)
    for doc in docs:
        replies = [*FAMILY_REPLIES[name], f"So: {doc['answer']}"]
        instances = [SimpleNamespace(resps=[reply], doc=doc, filtered_resps={}) for reply in replies]
        for ensemble in task._filters:
            ensemble.apply(instances)
        for reply, instance in zip(replies, instances):
            (filtered,) = instance.filtered_resps.values()
            harness = task.process_results(doc, [filtered])["exact_match"]
            assert bool(harness) == fam.is_correct(reply, doc["answer"]), (reply, doc)
        assert task.process_results(doc, [next(iter(instances[-1].filtered_resps.values()))])["exact_match"] == 1


def test_family_task_through_the_harness_matches_the_accuracy_suite_reply_for_reply(smol_bake_dir):
    """The same addition problems, four conditions, on the embedded model: lm-eval's own generation loop and chat
    templating give the same replies, and its filter and metric the same per-problem scores, as the accuracy suite."""
    from lm_eval import evaluator

    from promptbake.eval.accuracy import accuracy_suite

    baked = load_baked(smol_bake_dir)
    baked.system_prompt = (Path(__file__).parents[1] / "examples/tasks/addition_fewshot.txt").read_text().strip()
    ours = accuracy_suite(baked, "addition", problems=8, seed=0, max_new_tokens=24)
    real, calls = evaluator.simple_evaluate, []

    def spy(**kwargs):
        results = real(**kwargs)
        calls.append([s["resps"][0][0] for s in sorted(results["samples"]["promptbake_addition"],
                                                        key=lambda s: s["doc_id"])])
        return results

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluator, "simple_evaluate", spy)
        patch.setattr(evaluator, "add_env_info", lambda results: None)
        harness = benchmark_suite(baked, ["promptbake_addition"], problems=8, seed=0, max_new_tokens=24)
    for name, replies in zip(CONDITION_NAMES, calls):
        assert harness["correct"][name]["promptbake_addition"] == ours["conditions"][name]["correct"], name
        assert harness["conditions"][name]["promptbake_addition"]["exact_match,last-answer"] == pytest.approx(
            ours["conditions"][name]["rate"])
        assert [r.strip() for r in replies[:3]] == [e[name] for e in ours["examples"]], name
    assert any(sum(c["correct"]) for c in ours["conditions"].values())   # the scores are not all zero
