"""The judges suite: how often each condition's replies pass the user's probes, with Wilson intervals."""
from __future__ import annotations

from .conditions import CONDITIONS, answers
from .probes import ProbeFile
from .stats import rate

DEFAULT_SAMPLES = 8
DEFAULT_MAX_NEW_TOKENS = 64


def judges_suite(baked, probes: ProbeFile, samples: int | None = None, temperature: float | None = None,
                 seed: int = 0) -> dict:
    """Sample every probe `samples` times under the four conditions and judge each reply with the probe's check.

    Settings: the argument if given, else the probe file's, else 8 samples at the bake's sampling temperature.
    Returns {"samples_per_probe", "temperature", "max_new_tokens", "probe_file", "conditions": {condition: rate
    over all probes}, "probes": [{"name", "question", "check", "conditions": {condition: rate + "samples"}}]}.
    """
    samples = samples or probes.samples or DEFAULT_SAMPLES
    temperature = temperature if temperature is not None else probes.temperature
    if temperature is None:
        temperature = baked.config.sample.sampling_temperature
    max_new_tokens = probes.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    questions = [p.question for p in probes.probes]
    rows = [{"name": p.name, "question": p.question, "check": str(p.check), "conditions": {}} for p in probes.probes]
    overall = {}
    for condition in CONDITIONS:
        replies = answers(baked, condition, questions, samples, temperature, max_new_tokens, seed)
        passed_all = 0
        for probe, row, texts in zip(probes.probes, rows, replies):
            passed = sum(probe.check(t) for t in texts)
            passed_all += passed
            row["conditions"][condition.name] = {**rate(passed, len(texts)), "samples": texts}
        overall[condition.name] = rate(passed_all, samples * len(questions))
    return {"probe_file": probes.source, "samples_per_probe": samples, "temperature": temperature,
            "max_new_tokens": max_new_tokens, "conditions": overall, "probes": rows}
