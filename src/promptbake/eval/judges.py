"""The judges suite: how often each condition's replies pass the user's probes, with Wilson intervals."""
from __future__ import annotations

from .conditions import CONDITIONS, answers
from .probes import Probe, ProbeFile
from .stats import rate

DEFAULT_SAMPLES = 8
DEFAULT_MAX_NEW_TOKENS = 64


def run_probes(baked, probes: list[Probe], samples: int, temperature: float, max_new_tokens: int,
               seed: int, conditions=CONDITIONS) -> tuple[dict, list[dict]]:
    """Sample every probe `samples` times under each condition (default: all four) and judge every reply.

    Returns (overall, rows): overall {condition: rate over all probes}; rows [{"name", "question", "check",
    "conditions": {condition: rate + "samples"}}] in probe order.
    """
    rows = [{"name": p.name, "question": p.question, "check": str(p.check), "conditions": {}} for p in probes]
    overall = {}
    for condition in conditions:
        replies = answers(baked, condition, [p.question for p in probes], samples, temperature, max_new_tokens, seed)
        passed_all = 0
        for probe, row, texts in zip(probes, rows, replies):
            passed = sum(probe.check(t) for t in texts)
            passed_all += passed
            row["conditions"][condition.name] = {**rate(passed, len(texts)), "samples": texts}
        overall[condition.name] = rate(passed_all, samples * len(probes))
    return overall, rows


def settings(baked, probes: ProbeFile, samples: int | None, temperature: float | None,
             default_samples: int, default_tokens: int) -> tuple[int, float, int]:
    """(samples, temperature, max_new_tokens): the argument if given, else the probe file's, else the default
    (temperature: the bake's sampling temperature)."""
    samples = samples or probes.samples or default_samples
    if temperature is None:
        temperature = probes.temperature if probes.temperature is not None else baked.config.sample.sampling_temperature
    return samples, temperature, probes.max_new_tokens or default_tokens


def judges_suite(baked, probes: ProbeFile, samples: int | None = None, temperature: float | None = None,
                 seed: int = 0) -> dict:
    """Pass rates of a probe file under the four conditions (8 samples at the bake's temperature by default).

    Returns {"probe_file", "samples_per_probe", "temperature", "max_new_tokens", "conditions", "probes"} with
    `conditions` and `probes` as in run_probes.
    """
    samples, temperature, max_new_tokens = settings(baked, probes, samples, temperature, DEFAULT_SAMPLES,
                                                    DEFAULT_MAX_NEW_TOKENS)
    overall, rows = run_probes(baked, probes.probes, samples, temperature, max_new_tokens, seed)
    return {"probe_file": probes.source, "samples_per_probe": samples, "temperature": temperature,
            "max_new_tokens": max_new_tokens, "conditions": overall, "probes": rows}
