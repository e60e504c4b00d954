"""Benchmark (not a test): sampling and training throughput of the default batched path vs. a naive path.

The default path samples in length-sorted batches with a KV cache, keeps the teacher's logits from sampling (as
top-256 + tail, trained with the fused loss), and trains on micro-batches packed by token budget. The same batches
are also trained with the teacher recomputed at every step, for the speed-up the cache buys. The naive path handles one sequence at a time, the way the paper's
reference code does: it generates each trajectory alone, and runs each trajectory through teacher and student
alone (gradients accumulated to the same optimizer step). Both paths train on the same trajectories with the same
steps, so the ratios compare like with like. Training tokens/s counts student tokens (prompt + completion).

    .venv/bin/python benchmarks/bake_speed.py [--model smollm2-135m] [--trajectories 32] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from promptbake.bake import build_jobs
from promptbake.config import BakeConfig
from promptbake.logits import TeacherCache
from promptbake.models import load_model
from promptbake.questions import builtin_questions
from promptbake.sampling import sample_trajectories
from promptbake.train import add_lora, train_adapter

PERSONA = (Path(__file__).resolve().parent.parent / "examples" / "persona.txt").read_text().strip()


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def compare(model_name: str = "smollm2-135m", trajectories: int = 32) -> dict:
    """Tokens/s of the default batched path and of the naive one-sequence-at-a-time path, and their ratios."""
    config = BakeConfig()
    model, tokenizer, _ = load_model(model_name)
    jobs = build_jobs(tokenizer, PERSONA, builtin_questions()[:trajectories], "train", 1)
    # both paths use the default sampling settings; only the batch size differs

    (batched, kept), t_batched = _timed(
        lambda: sample_trajectories(model, tokenizer, jobs, config.sample, 0, False, keep={"train": 0}))
    naive_cfg = type(config.sample)(**{**vars(config.sample), "sample_batch_size": 1})
    (naive, _), t_naive = _timed(lambda: sample_trajectories(model, tokenizer, jobs, naive_cfg, 0, False))
    tokens_b = sum(len(t.completion_ids) for t in batched)
    tokens_n = sum(len(t.completion_ids) for t in naive)

    # Train one epoch over the same (batched) trajectories, both ways, from the same fresh adapter.
    peft_model = add_lora(model, config.train, seed=0)
    students = sum(len(t.student_prompt_ids) + len(t.completion_ids) for t in batched)
    rows, losses = {}, {}
    cached = TeacherCache.from_logits(kept, config.train.teacher_top_k)   # the default: top-256 + tail, fused loss
    for name, tokens_per_micro_batch, cache in (("batched", config.train.micro_batch_tokens, cached),
                                                ("recomputed", config.train.micro_batch_tokens, None),
                                                ("naive", 1, None)):
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.zero_()
        cfg = type(config.train)(**{**vars(config.train), "micro_batch_tokens": tokens_per_micro_batch,
                                    "epochs": 1, "checkpoint_every": 0})
        summary = train_adapter(peft_model, batched, cfg, tokenizer.pad_token_id, 0,
                                Path(tempfile.mkdtemp(prefix=f"bake_speed_{name}_")), progress=False, cache=cache)
        rows[name], losses[name] = students / summary["seconds"], summary["final_loss"]
    return {
        "model": model_name, "trajectories": trajectories, "threads": torch.get_num_threads(),
        "sampling_tokens_per_s": {"batched": tokens_b / t_batched, "naive": tokens_n / t_naive,
                                  "ratio": (tokens_b / t_batched) / (tokens_n / t_naive)},
        "training_tokens_per_s": {"batched": rows["batched"], "naive": rows["naive"],
                                  "ratio": rows["batched"] / rows["naive"]},
        # the same batches with the teacher run at every step instead of cached: speed and last-step loss
        "cached_vs_recomputed_teacher": {"cached_tokens_per_s": rows["batched"],
                                         "recomputed_tokens_per_s": rows["recomputed"],
                                         "speedup": rows["batched"] / rows["recomputed"],
                                         "last_loss_cached": losses["batched"],
                                         "last_loss_recomputed": losses["recomputed"]},
    }


def report(result: dict) -> None:
    sampling, training = result["sampling_tokens_per_s"], result["training_tokens_per_s"]
    print(f"sampling: batched {sampling['batched']:.0f} new tok/s, naive {sampling['naive']:.0f} new tok/s, "
          f"ratio {sampling['ratio']:.2f}x")
    print(f"training: batched {training['batched']:.0f} tok/s, naive {training['naive']:.0f} tok/s, "
          f"ratio {training['ratio']:.2f}x   (student tokens, teacher pass included)")
    cache = result["cached_vs_recomputed_teacher"]
    print(f"teacher cached (top-256) vs recomputed every step: {cache['speedup']:.2f}x the training tok/s; last-step "
          f"loss {cache['last_loss_cached']:.4f} vs {cache['last_loss_recomputed']:.4f} (full-vocabulary KL)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--trajectories", type=int, default=32, help="trajectories per path")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()
    result = compare(args.model, args.trajectories)
    report(result)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
