"""The knowledge suite: does the baked model know the prompt's facts, and does it still know everything else?

Facts: the user's probes with expected answers (a fact or news headline baked into the weights), sampled under
the four conditions. Locality: general questions unrelated to the prompt, answered greedily; only those the base
model gets right are kept, so the base scores 100 % on them by construction and every other condition's shortfall
is the damage baking (or prompting) did.
"""
from __future__ import annotations

from .conditions import CONDITIONS, answers
from .judges import run_probes, settings
from .probes import ProbeFile
from .stats import rate

DEFAULT_SAMPLES = 4
DEFAULT_MAX_NEW_TOKENS = 48
LOCALITY_MAX_NEW_TOKENS = 32


def _facts(baked, facts: ProbeFile, samples: int | None, temperature: float | None, seed: int) -> dict:
    samples, temperature, max_new_tokens = settings(baked, facts, samples, temperature, DEFAULT_SAMPLES,
                                                    DEFAULT_MAX_NEW_TOKENS)
    overall, rows = run_probes(baked, facts.probes, samples, temperature, max_new_tokens, seed)
    for probe, row in zip(facts.probes, rows):
        row["expected"] = probe.check.spec["contains"]
    return {"probe_file": facts.source, "samples_per_probe": samples, "temperature": temperature,
            "conditions": overall, "probes": rows}


def locality_answers(baked, locality: ProbeFile, condition, seed: int = 0) -> list[tuple[bool, str]]:
    """(correct, reply) per locality question under `condition`, answered greedily (one deterministic reply)."""
    questions = [p.question for p in locality.probes]
    replies = [r[0] for r in answers(baked, condition, questions, 1, 0.0, LOCALITY_MAX_NEW_TOKENS, seed)]
    return [(p.check(r), r) for p, r in zip(locality.probes, replies)]


def _locality(baked, locality: ProbeFile, seed: int) -> dict:
    questions = [p.question for p in locality.probes]
    judged = {condition.name: locality_answers(baked, locality, condition, seed) for condition in CONDITIONS}
    kept = [i for i, (ok, _) in enumerate(judged["base"]) if ok]
    conditions = {name: rate(sum(results[i][0] for i in kept), len(kept)) for name, results in judged.items()}
    lost = {name: [{"question": questions[i], "reply": results[i][1]} for i in kept if not results[i][0]][:5]
            for name, results in judged.items() if name != "base"}
    return {"source": locality.source, "questions": len(questions), "kept": len(kept), "conditions": conditions,
            "drop": {name: 1.0 - c["rate"] if kept else None for name, c in conditions.items()},
            "lost_examples": lost}


def knowledge_suite(baked, facts: ProbeFile | None, locality: ProbeFile | None, samples: int | None = None,
                    temperature: float | None = None, seed: int = 0) -> dict:
    """Fact accuracy and locality control under the four conditions; either part may be None (skipped).

    Returns {"conditions": {condition: rate}, "probes": [...], ..., "locality": {"questions", "kept",
    "conditions": {condition: rate on the kept questions}, "drop": {condition: 1 − rate}, "lost_examples"}}.
    """
    result = _facts(baked, facts, samples, temperature, seed) if facts else {}
    if locality:
        result["locality"] = _locality(baked, locality, seed)
    return result
