"""GPU check (not a test; needs CUDA and `pip install 'promptbake[vllm]'`): HF generate vs vLLM sampling speed.

Samples the same N teacher jobs (examples/persona.txt on the built-in questions) with HF generate (bf16, cuda) and
with vLLM (bf16), and prints sampled tokens/s of each and their ratio as JSON. It also checks that vLLM's top-k
log-probs are the model's raw distribution: for a few vLLM trajectories the HF model is run over prompt + completion,
and its log_softmax at vLLM's top-k ids is compared with vLLM's numbers: bf16 noise is small (~1e-2), while
processed logprobs (after top_p=0.9) would be -inf outside the nucleus and shifted by -log(mass) inside it.

    python benchmarks/gpu_check.py [--model smollm2-135m] [--jobs 128] [--top-k-logprobs 8] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from promptbake.bake import build_jobs
from promptbake.config import SampleConfig
from promptbake.models import load_model, resolve_model
from promptbake.questions import builtin_questions
from promptbake.sampling import sample_trajectories
from promptbake.vllm_sampler import build_engine, sample_with_vllm

PERSONA = (Path(__file__).resolve().parent.parent / "examples" / "persona.txt").read_text().strip()


@torch.no_grad()
def raw_logprob_error(model, trajectories, top_k, count: int = 8) -> float:
    """Largest |HF log_softmax - vLLM logprob| at vLLM's top-k ids, over the first `count` trajectories."""
    worst = 0.0
    for trajectory, (ids, logprobs) in list(zip(trajectories, top_k))[:count]:
        prompt, completion = trajectory.teacher_prompt_ids, trajectory.completion_ids
        sequence = torch.tensor([prompt + completion], device="cuda")
        logits = model(input_ids=sequence).logits[0, len(prompt) - 1: len(prompt) - 1 + len(completion)]  # [C, V]
        hf = torch.log_softmax(logits.float(), -1).gather(1, ids.cuda())                                  # [C, k]
        worst = max(worst, float((hf - logprobs.cuda()).abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--jobs", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--top-k-logprobs", type=int, default=8)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()

    cfg = SampleConfig(max_new_tokens=args.max_new_tokens, sample_batch_size=args.jobs)  # one HF batch: its best case
    model, tokenizer, _ = load_model(args.model)
    model.to("cuda", torch.bfloat16)
    questions = builtin_questions()
    jobs = build_jobs(tokenizer, PERSONA, (questions * (args.jobs // len(questions) + 1))[: args.jobs], "train", 1)

    sample_trajectories(model, tokenizer, jobs[:4], cfg, 0, progress=False)   # warm-up: CUDA context and kernels
    torch.cuda.synchronize()
    start = time.perf_counter()
    hf, _ = sample_trajectories(model, tokenizer, jobs, cfg, 0, progress=False)
    torch.cuda.synchronize()
    hf_seconds = time.perf_counter() - start

    folder = resolve_model(args.model).folder
    llm = build_engine(folder, 0, args.top_k_logprobs, gpu_memory_utilization=0.5)   # the HF model stays loaded
    sample_with_vllm(folder, tokenizer, jobs[:4], cfg, 0, args.top_k_logprobs, llm=llm)  # warm-up
    start = time.perf_counter()
    vllm, top_k = sample_with_vllm(folder, tokenizer, jobs, cfg, 0, args.top_k_logprobs, llm=llm)
    vllm_seconds = time.perf_counter() - start

    hf_rate = sum(len(t.completion_ids) for t in hf) / hf_seconds
    vllm_rate = sum(len(t.completion_ids) for t in vllm) / vllm_seconds
    result = {
        "model": args.model, "jobs": args.jobs, "max_new_tokens": args.max_new_tokens,
        "device": torch.cuda.get_device_name(),
        "hf_tokens_per_s": hf_rate, "vllm_tokens_per_s": vllm_rate, "ratio": vllm_rate / hf_rate,
        "finished": {"hf": sum(t.finished for t in hf) / len(hf), "vllm": sum(t.finished for t in vllm) / len(vllm)},
        "vllm_raw_logprob_max_abs_error": raw_logprob_error(model, vllm, top_k) if top_k else None,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
