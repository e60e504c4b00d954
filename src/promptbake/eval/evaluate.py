"""`promptbake eval`: run evaluation suites on a run folder and merge their results into DIR/eval.json.

Suites (each compares the four conditions of conditions.py where that makes sense):
    kl          held-out KL(teacher ‖ condition), closure, per-position KL
    samples     side-by-side replies to a few held-out questions
    judges      pass rates of the user's probes (--probes FILE), with Wilson intervals
    knowledge   fact accuracy (--knowledge FILE) and the locality control (general facts must survive)
    drift       persona probe after every turn of a self-chat with a simulated user (--probes FILE)
    cot         exact-match accuracy on seeded arithmetic word problems (chain-of-thought prompts)
    accuracy    exact-match accuracy on a seeded task family (--task addition, ...; few-shot and CoT prompts)
    benchmarks  lm-evaluation-harness tasks (--tasks ...; needs promptbake[benchmarks])
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .. import runfolder
from ..baked import load_baked
from ..config import EvalConfig
from ..data import read_trajectories
from ..errors import UserError
from .conditions import CONDITIONS, answers
from .kl import HeldoutKL, closure

EVAL_JSON = "eval.json"
SUITES = ("kl", "samples", "judges", "knowledge", "drift", "cot", "accuracy", "benchmarks")
DEFAULT_SUITES = "kl,samples"
HEAD = 8  # answer tokens counted as "the start" in the summary


def parse_suites(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SUITES]
    if unknown or not names:
        raise UserError(f"unknown suite {', '.join(unknown) or repr(text)}; available: {', '.join(SUITES)}")
    return list(dict.fromkeys(names))


def _heldout(baked) -> list:
    heldout = [t for t in read_trajectories(baked.run_dir / runfolder.TRAJECTORIES) if t.split == "heldout"]
    if not heldout:
        raise UserError(f"{baked.run_dir} has no held-out trajectories to measure KL on")
    return heldout


def kl_suite(baked, options: EvalConfig) -> dict:
    """KL(teacher ‖ ·) on the held-out trajectories for base, base + prompt (the teacher: 0), baked, baked + prompt."""
    heldout = _heldout(baked)
    measure = HeldoutKL(baked.model, heldout, baked.tokenizer.pad_token_id, baked.config.train.micro_batch_tokens)
    conditions = {}
    for name, adapter, side in (("base", False, "student"), ("baked", True, "student"),
                                ("baked+prompt", True, "teacher")):
        sums, counts = measure.per_position(baked.model, adapter, side)
        conditions[name] = {
            "kl": float(sums.sum() / counts.sum()),
            "kl_first_tokens": float(sums[:HEAD].sum() / counts[:HEAD].sum()),
            "kl_later_tokens": float(sums[HEAD:].sum() / counts[HEAD:].sum().clamp(min=1)),
            "per_position": [float(s / c) if c else None for s, c in zip(sums, counts)],
        }
    conditions["base+prompt"] = {"kl": 0.0, "note": "the teacher itself"}
    return {"conditions": conditions, "closure": closure(conditions["base"]["kl"], conditions["baked"]["kl"]),
            "heldout_trajectories": len(heldout), "heldout_tokens": measure.tokens, "first_tokens": HEAD}


def samples_suite(baked, options: EvalConfig) -> list[dict]:
    """One reply per condition to the first held-out questions (never trained on), at the bake's temperature."""
    questions = list(dict.fromkeys(t.question for t in _heldout(baked)))[:options.questions]
    replies = {c.name: [r[0] for r in answers(baked, c, questions, seed=options.seed)] for c in CONDITIONS}
    return [{"question": q, **{name: replies[name][i] for name in replies}} for i, q in enumerate(questions)]


def judges_suite(baked, options: EvalConfig) -> dict:
    from .judges import judges_suite as run
    from .probes import load_probes

    if not options.probes:
        raise UserError("the judges suite needs probes: pass --probes FILE (YAML; see examples/persona_probes.yaml)")
    return run(baked, load_probes(options.probes), options.samples, options.temperature, options.seed)


def knowledge_suite(baked, options: EvalConfig) -> dict:
    from .knowledge import knowledge_suite as run
    from .probes import builtin_locality, load_facts

    locality = {"builtin": builtin_locality, "none": lambda: None}.get(options.locality,
                                                                      lambda: load_facts(options.locality))()
    if not options.knowledge and locality is None:
        raise UserError("the knowledge suite needs --knowledge FILE (questions with expected answers; see "
                        "examples/news_knowledge.yaml) or a locality control (--locality builtin)")
    facts = load_facts(options.knowledge) if options.knowledge else None
    return run(baked, facts, locality, options.samples, options.temperature, options.seed)


def drift_suite(baked, options: EvalConfig) -> dict:
    from .drift import drift_suite as run
    from .probes import load_probes

    if not options.probes:
        raise UserError("the drift suite needs a persona probe: pass --probes FILE (its drift_probe, else its first)")
    return run(baked, load_probes(options.probes), options.turns, options.dialogues, temperature=options.temperature,
               seed=options.seed, progress=lambda line: print(line, file=sys.stderr, flush=True))


def cot_suite(baked, options: EvalConfig) -> dict:
    from .arithmetic import cot_suite as run

    return run(baked, problems=options.problems, seed=options.seed)


def accuracy_suite(baked, options: EvalConfig) -> dict:
    from .accuracy import MAX_NEW_TOKENS, accuracy_suite as run
    from .task_families import FAMILIES, family

    if not options.task:
        raise UserError(f"the accuracy suite needs a task family: pass --task NAME ({', '.join(FAMILIES)}); "
                        f"see docs/accuracy.md")
    family(options.task)   # an unknown name fails here, with the list
    if baked is None:
        return {}
    return run(baked, options.task, problems=options.problems, seed=options.seed,
               max_new_tokens=options.max_new_tokens or MAX_NEW_TOKENS)


def benchmarks_suite(baked, options: EvalConfig) -> dict:
    from .benchmarks import benchmark_suite as run

    tasks = [t.strip() for t in options.tasks.split(",") if t.strip()]
    if not tasks:
        raise UserError("the benchmarks suite needs --tasks (comma-separated lm-eval task names, e.g. "
                        "arc_easy,gsm8k); see docs/benchmarks.md")
    return run(baked, tasks, limit=options.limit, include_path=options.include_path, seed=options.seed,
               allow_code_execution=options.allow_code_execution, problems=options.problems,
               max_new_tokens=options.max_new_tokens)


RUNNERS = {"kl": kl_suite, "samples": samples_suite, "judges": judges_suite, "knowledge": knowledge_suite,
           "drift": drift_suite, "cot": cot_suite, "accuracy": accuracy_suite, "benchmarks": benchmarks_suite}


def check_inputs(suites: list[str], options: EvalConfig) -> None:
    """Fail on missing or bad inputs before minutes of model loading (the suites check the same things again)."""
    from .probes import load_facts, load_probes

    for name in ("judges", "drift"):
        if name in suites and not options.probes:
            RUNNERS[name](None, options)         # raises the suite's own "needs --probes" message
    if {"judges", "drift"} & set(suites):
        load_probes(options.probes)
    if "knowledge" in suites:
        if not options.knowledge and options.locality == "none":
            knowledge_suite(None, options)
        if options.knowledge:
            load_facts(options.knowledge)
        if options.locality not in ("builtin", "none"):
            load_facts(options.locality)
    if "accuracy" in suites:
        accuracy_suite(None, options)
    if "benchmarks" in suites and not options.tasks.strip():
        benchmarks_suite(None, options)


def evaluate(run_dir: str | Path, suites: list[str], strength: float = 1.0, checkpoint: str | None = None,
             options: EvalConfig | None = None, on_suite=None) -> dict:
    """Run `suites` on the bake in `run_dir` (its final adapter or a checkpoint, at a strength); update eval.json.

    Results are merged under the key "<checkpoint or final>@strength=<A>"; each suite's wall time is recorded in
    "seconds". `on_suite(name, result)` is called as each suite finishes (the CLI prints tables from it).
    """
    options = options or EvalConfig()
    check_inputs(suites, options)
    baked = load_baked(run_dir, checkpoint, strength)
    key = f"{checkpoint or 'final'}@strength={baked.strength:g}"
    path = Path(run_dir) / EVAL_JSON
    found = {}
    for name in suites:
        start = time.perf_counter()
        found[name] = RUNNERS[name](baked, options)
        found.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 2)
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        entry = record.setdefault(key, {})
        entry.update({name: found[name]})
        entry.setdefault("seconds", {}).update({name: found["seconds"][name]})
        runfolder.atomic_write_json(path, record)   # after every suite: a long eval keeps what it finished
        if on_suite:
            on_suite(name, found[name])
    return {key: found}
