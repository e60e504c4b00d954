"""Benchmark (not a test): float32 against bf16-resident weights on the embedded model, in one process.

    .venv/bin/python benchmarks/precision_check.py [--repeats 3] [--json out.json]

Interleaved repetitions, medians, on SmolLM2-135M with the default LoRA (fused layers, fused top-k LM head):
- sampling: 32 persona prompts × 32 new tokens (shared prefix, preallocated cache);
- training: one micro-batch of 16 trajectories × 48 tokens, forward + backward;
- the matmul peaks of this CPU (F.linear 512 × 576 → 1536 in each dtype), and each phase's achieved GFLOP/s;
- honesty: KL(float32 teacher ‖ bf16 teacher) per token on the same trajectories, and how far the bf16 step's loss
  and LoRA gradients are from float32's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import make_trajectories  # noqa: E402

from promptbake import sampling  # noqa: E402
from promptbake.config import SampleConfig, TrainConfig  # noqa: E402
from promptbake.data import collate  # noqa: E402
from promptbake.logits import TeacherCache, completion_logits  # noqa: E402
from promptbake.losses import per_token_kl  # noqa: E402
from promptbake.models import load_model  # noqa: E402
from promptbake.precision import cpu_flags, float32_weights, matmul_gflops, place  # noqa: E402
from promptbake.prompts import stop_token_ids, teacher_prompt_ids  # noqa: E402
from promptbake.train import _step_loss, add_lora  # noqa: E402

PERSONA = (Path(__file__).resolve().parents[1] / "examples" / "persona.txt").read_text(encoding="utf-8")
QUESTIONS = [f"Question number {i}: what would you tell a friend about topic {i}?" for i in range(32)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model, tokenizer, _ = load_model("smollm2-135m")
    place(model, "cpu", "bf16")   # bf16-resident weights; float32_weights gives the float32 side below
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    prompts = [teacher_prompt_ids(tokenizer, q, PERSONA) for q in QUESTIONS]
    stop = stop_token_ids(tokenizer, model.generation_config)
    gen = sampling.generation_config(SampleConfig(max_new_tokens=32), stop, tokenizer.pad_token_id)
    trajectories = make_trajectories(tokenizer, PERSONA, QUESTIONS[:16], [48] * 16)
    tokens = sum(len(t.student_prompt_ids) + len(t.completion_ids) for t in trajectories)
    with float32_weights(model):
        cache = TeacherCache.compute(model, trajectories, tokenizer.pad_token_id, 10**6, top_k=256)
    student = add_lora(model, TrainConfig(), seed=0)
    with torch.no_grad():   # a trained-looking adapter, so that gradients and the student differ from the base
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(hash(name) % 2**31))
    times = {f"{what} {dtype}": [] for what in ("sample", "train") for dtype in ("float32", "bf16")}
    grads, losses = {}, {}
    for _ in range(args.repeats):
        for dtype in ("float32", "bf16"):
            context = float32_weights(student) if dtype == "float32" else torch.enable_grad()
            with context:
                start = time.perf_counter()
                sampling.generate_batch(student, prompts, gen, tokenizer.pad_token_id, stop, seeds=list(range(32)))
                times[f"sample {dtype}"].append(time.perf_counter() - start)
                start = time.perf_counter()
                losses[dtype], _ = _step_loss(student, trajectories, list(range(16)), tokenizer.pad_token_id,
                                              "forward", 16 * 48, cache)
                times[f"train {dtype}"].append(time.perf_counter() - start)
                grads[dtype] = torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])
                student.zero_grad()
    batch = collate(trajectories, tokenizer.pad_token_id)
    with torch.no_grad(), student.disable_adapter():
        bf16_teacher = completion_logits(student, batch, "teacher")
        with float32_weights(student):
            fp32_teacher = completion_logits(student, batch, "teacher")
    mask = batch["completion_mask"].bool()
    teacher_kl = float(per_token_kl(fp32_teacher, bf16_teacher)[mask].mean())
    peaks = {dtype: matmul_gflops(512, 576, 1536, getattr(torch, "float32" if dtype == "float32" else "bfloat16"))
             for dtype in ("float32", "bf16")}
    median = {k: statistics.median(v) for k, v in times.items()}
    sample_tokens = 32 * (len(prompts[0]) + 32)   # an upper bound: the shared prefix is computed once
    result = {"cpu": cpu_flags()[0], "bf16_units": sorted(cpu_flags()[1] & {"amx_bf16", "avx512_bf16"}),
              "threads": torch.get_num_threads(), "median_seconds": median,
              "bf16_speedup": {w: median[f"{w} float32"] / median[f"{w} bf16"] for w in ("sample", "train")},
              "matmul_peak_gflops": peaks,
              "achieved_gflops": {f"{w} {d}": round(f * weights * n / median[f"{w} {d}"] / 1e9, 1)
                                  for w, f, n in (("sample", 2, sample_tokens), ("train", 4, tokens))
                                  for d in ("float32", "bf16")},
              "teacher_kl_fp32_vs_bf16": teacher_kl,
              "loss": losses, "loss_rel_diff": abs(losses["bf16"] - losses["float32"]) / losses["float32"],
              "grad_cosine": float(torch.nn.functional.cosine_similarity(grads["bf16"], grads["float32"], dim=0)),
              "grad_rel_norm_diff": float((grads["bf16"] - grads["float32"]).norm() / grads["float32"].norm())}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
