"""Benchmark (not a test): what the fallbacks of the architecture matrix cost against the fast paths.

    .venv/bin/python benchmarks/fallback_cost.py [--family llama3] [--repeats 3]
    .venv/bin/python benchmarks/fallback_cost.py --model smollm2-135m --family smollm2

On a tiny random model of the family (tests/families.py), in one process, interleaved repetitions:
- sampling 32 persona prompts × 24 new tokens: preallocated cache + shared prefix vs transformers' cache and whole
  prompts (the sliding-window fallback, forced by making decode.cache_fallback give a reason);
- one training micro-batch of 32 trajectories, forward + backward: shared prefix + fused LM head / top-k KL vs whole
  prompts + full logits (the fallbacks for sliding windows and for soft-capped heads).
Prints the median seconds of each and the ratio fallback / fast.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import PERSONA, make_trajectories  # noqa: E402
from families import build_family  # noqa: E402

from promptbake import data, logits, sampling  # noqa: E402
from promptbake.config import SampleConfig, TrainConfig  # noqa: E402
from promptbake.logits import PLAIN_HEAD, TeacherCache  # noqa: E402
from promptbake.models import load_model  # noqa: E402
from promptbake.prompts import stop_token_ids, teacher_prompt_ids  # noqa: E402
from promptbake.train import _step_loss, add_lora  # noqa: E402

QUESTIONS = [f"Question number {i}: what would you tell a friend about topic {i}?" for i in range(32)]


def _forced(fallback: bool):
    reason = "forced for the benchmark" if fallback else None
    sampling.cache_fallback = logits.cache_fallback = (lambda config: reason)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="llama3")
    parser.add_argument("--model", default=None, help="a real model instead (e.g. smollm2-135m); --family is then "
                                                      "only its label")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer, _ = load_model(args.model or str(build_family(args.family, Path(tempfile.mkdtemp()))))
    prompts = [teacher_prompt_ids(tokenizer, q, PERSONA) for q in QUESTIONS]
    stop = stop_token_ids(tokenizer, model.generation_config)
    gen = sampling.generation_config(SampleConfig(max_new_tokens=24), stop, tokenizer.pad_token_id)
    data.MIN_SAVED_TOKENS = 0
    trajectories = make_trajectories(tokenizer, questions=QUESTIONS, lengths=[24] * len(QUESTIONS))
    cache = TeacherCache.compute(model, trajectories, tokenizer.pad_token_id, 10**6, top_k=64)
    student = add_lora(model, TrainConfig(), seed=0)
    times = {key: [] for key in ("sample fast", "sample fallback", "train fast", "train fallback")}
    for _ in range(args.repeats):
        for fallback in (False, True):
            _forced(fallback)
            name = "fallback" if fallback else "fast"
            start = time.perf_counter()
            sampling.generate_batch(model, prompts, gen, tokenizer.pad_token_id, stop, seeds=list(range(32)))
            times[f"sample {name}"].append(time.perf_counter() - start)
            PLAIN_HEAD[student] = not fallback
            start = time.perf_counter()
            _step_loss(student, trajectories, list(range(32)), tokenizer.pad_token_id, "forward", 32 * 24, cache)
            times[f"train {name}"].append(time.perf_counter() - start)
            student.zero_grad()
    median = {k: statistics.median(v) for k, v in times.items()}
    for what in ("sample", "train"):
        fast, slow = median[f"{what} fast"], median[f"{what} fallback"]
        print(f"{args.family} {what}: fast {fast:.3f} s, fallback {slow:.3f} s, fallback / fast {slow / fast:.2f}")


if __name__ == "__main__":
    main()
