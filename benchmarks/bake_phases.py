"""Benchmark (not a test): where the time of the default `promptbake bake` goes, phase by phase.

Runs exactly `promptbake bake --prompt-file examples/persona.txt --out TMP --quiet` (the defaults, plus any
--bake-args; model load and the side-by-side comparison included) in this process, timing each phase by wrapping
the library function that does it, then reports per phase: wall seconds, tokens, tokens/s, GFLOP and achieved
GFLOP/s, plus the peak resident memory and the held-out closure.

FLOPs are counted as 2·P per token for a forward pass and 4·P per token for a training step (forward plus the
backward pass through the activations; the frozen base weights get no weight gradients, and LoRA's own weight
gradients are under 1 % of that), where P is the number of weights in matrix multiplications (every linear layer
and the LM head; SmolLM2-135M: 134.5 M). Attention scores (~5 % at these lengths) are not counted. Token counts: for
sampling the tokens actually computed (padding included, a shared prompt prefix once per batch when the sampler
computes it once); for training and evaluation the real tokens.

    .venv/bin/python benchmarks/bake_phases.py [--json out.json] [--naive 32]    (also: make bench)
    .venv/bin/python benchmarks/bake_phases.py --precisions float32 --bake-args "--batch-size 8 --learning-rate 2e-3"

By default it bakes twice, in float32 and in bf16 (`--precisions`), and reports the per-phase ratios and each
phase's achieved GFLOP/s as a share of this run's measured matmul peak for its precision.
"""
from __future__ import annotations

import argparse
import importlib
import json
import resource
import shlex
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from promptbake import cli
from promptbake.data import read_trajectories

# importlib, not `import promptbake.bake as ...`: the package exports the function `bake` under that name
bake_module = importlib.import_module("promptbake.bake")
stage_module = importlib.import_module("promptbake.sample_stage")
data_module = importlib.import_module("promptbake.data")
kl_module = importlib.import_module("promptbake.eval.kl")
logits_module = importlib.import_module("promptbake.logits")

PERSONA = Path(__file__).resolve().parent.parent / "examples" / "persona.txt"
sampling_module = importlib.import_module("promptbake.sampling")
SHARED_PREFIX = hasattr(data_module, "shared_prefix_length")   # this benchmark also times older code
ONE_STREAM = hasattr(sampling_module, "batches_of")
SECONDS: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)
PEAK_GB: dict[str, float] = defaultdict(float)   # the process's peak RSS when each phase last ended
TEACHER_TOKENS: list[int] = []   # teacher tokens of each TeacherCache.compute call (training cache, held-out)


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux → GiB


def _timed(owner, name: str, phase: str, inside: str | None = None) -> None:
    """Wrap owner.name so its wall time adds to `phase` (and is taken out of `inside`, the phase that calls it)."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent = time.perf_counter() - start
            SECONDS[phase] += spent
            CALLS[phase] += 1
            PEAK_GB[phase] = max(PEAK_GB[phase], _peak_gb())
            if inside:
                SECONDS[inside] -= spent

    setattr(owner, name, staticmethod(wrapper) if isinstance(owner.__dict__.get(name), staticmethod) else wrapper)


def _instrument() -> None:
    _timed(stage_module, "load_base", "load")
    _timed(stage_module, "bake_questions", "questions")
    _timed(stage_module, "sample_trajectories", "sampling")
    _timed(bake_module, "train_adapter", "training")
    _timed(kl_module.HeldoutKL, "measure", "evaluation", inside="training")
    _timed(cli, "_compare", "side-by-side")
    compute = logits_module.TeacherCache.compute.__func__

    def teacher(cls, model, trajectories, *args, **kwargs):
        TEACHER_TOKENS.append(sum(len(t.teacher_prompt_ids) + len(t.completion_ids) for t in trajectories))
        start = time.perf_counter()
        try:
            return compute(cls, model, trajectories, *args, **kwargs)
        finally:
            SECONDS["teacher pass"] += time.perf_counter() - start

    logits_module.TeacherCache.compute = classmethod(teacher)


def _matmul_weights(model_name: str) -> int:
    from promptbake.models import load_model

    model, _, _ = load_model(model_name)
    return sum(m.weight.numel() for m in model.modules() if m.__class__.__name__ == "Linear")


def _sampling_batches(trajectories, batch_size: int) -> list[list]:
    """The sampler's batches: one length-sorted stream of both splits in even batches (older code: each split in
    batches of exactly batch_size)."""
    if ONE_STREAM:
        jobs = sorted(trajectories, key=lambda t: len(t.teacher_prompt_ids))
        return [[jobs[i] for i in batch] for batch in sampling_module.batches_of(list(range(len(jobs))), batch_size)]
    out = []
    for split in ("train", "heldout"):
        jobs = sorted((t for t in trajectories if t.split == split), key=lambda t: len(t.teacher_prompt_ids))
        out += [jobs[start:start + batch_size] for start in range(0, len(jobs), batch_size)]
    return out


def _sampling_tokens(trajectories, batch_size: int) -> int:
    """Tokens the sampler computes: prefill (shared prefix once per batch where it is shared) + decode steps."""
    total = 0
    for batch in _sampling_batches(trajectories, batch_size):
        prompts = [t.teacher_prompt_ids for t in batch]
        shared = data_module.shared_prefix_length(prompts) if SHARED_PREFIX else 0
        width = max(len(p) - shared for p in prompts)
        steps = max(len(t.completion_ids) for t in batch)
        total += shared + len(batch) * (width + steps)
    return total


def _bake(bake_args: str) -> dict:
    """One default bake in this process, its phases timed: the result row of `main` for one precision."""
    SECONDS.clear(), CALLS.clear(), PEAK_GB.clear(), TEACHER_TOKENS.clear()
    out = Path(tempfile.mkdtemp(prefix="bake_phases_")) / "run"
    start = time.perf_counter()
    assert cli.main(["bake", "--prompt-file", str(PERSONA), "--out", str(out), "--quiet",
                     *shlex.split(bake_args)]) == 0
    wall = time.perf_counter() - start
    record = json.loads((out / "bake.json").read_text())
    trajectories = read_trajectories(out / "trajectories.jsonl")
    train = [t for t in trajectories if t.split == "train"]
    heldout = [t for t in trajectories if t.split == "heldout"]
    weights = _matmul_weights(record["config"]["model"]["name"])
    student = lambda ts: sum(len(t.student_prompt_ids) + len(t.completion_ids) for t in ts)   # noqa: E731
    epochs = record["config"]["train"]["epochs"]
    tokens = {
        "sampling": _sampling_tokens(trajectories, record["config"]["sample"]["sample_batch_size"]),
        "teacher pass": sum(TEACHER_TOKENS),
        "training": epochs * student(train),
        # held-out: the student at step 0 and every checkpoint (its teacher pass, if any, is under "teacher pass")
        "evaluation": CALLS["evaluation"] * student(heldout),
    }
    flops_per_token = {"sampling": 2, "teacher pass": 2, "training": 4, "evaluation": 2}
    rows = {}
    for phase in ("load", "questions", "sampling", "teacher pass", "training", "evaluation", "side-by-side"):
        seconds = SECONDS[phase]
        row = {"seconds": round(seconds, 1), **({"peak_rss_gb": round(PEAK_GB[phase], 2)} if phase in PEAK_GB else {})}
        if phase in tokens and seconds > 0:
            gflop = flops_per_token[phase] * weights * tokens[phase] / 1e9
            row.update(tokens=tokens[phase], tokens_per_s=round(tokens[phase] / seconds),
                       gflop=round(gflop), gflop_per_s=round(gflop / seconds, 1))
        rows[phase] = row
    rows["other (writing, setup)"] = {"seconds": round(wall - sum(SECONDS[p] for p in rows if p in SECONDS), 1)}
    return {"bake_args": bake_args, "precision": record.get("precision"), "wall_seconds": round(wall, 1),
            "peak_rss_gb": round(_peak_gb(), 2), "closure": record["metrics"]["closure"],
            "steps": record["metrics"]["steps"], "matmul_weights": weights, "phases": rows, "run": str(out)}


def _print_run(result: dict, peaks: dict) -> None:
    print(f"\n{result['precision']['precision']} ({result['precision']['reason']}): {result['wall_seconds']} s wall, "
          f"closure {result['closure']:.3f}, peak RSS {result['peak_rss_gb']} GB (the process's, so far)")
    peak = peaks[result["precision"]["precision"]]
    print(f"{'phase':<24}{'seconds':>9}{'tokens':>9}{'tok/s':>8}{'GFLOP':>8}{'GFLOP/s':>9}{'of peak':>9}"
          f"{'peak RSS after':>16}")
    for phase, row in result["phases"].items():
        share = f"{row['gflop_per_s'] / peak:.0%}" if "gflop_per_s" in row else ""
        print(f"{phase:<24}{row['seconds']:>9}{row.get('tokens', ''):>9}{row.get('tokens_per_s', ''):>8}"
              f"{row.get('gflop', ''):>8}{row.get('gflop_per_s', ''):>9}{share:>9}{row.get('peak_rss_gb', ''):>16}")


def main() -> None:
    from promptbake.precision import matmul_gflops

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--naive", type=int, default=0, metavar="N",
                        help="then time the naive one-sequence-at-a-time path on N trajectories (0: skip)")
    parser.add_argument("--bake-args", default="", metavar="FLAGS",
                        help="more `promptbake bake` flags, in one string (e.g. another schedule to compare)")
    parser.add_argument("--precisions", default="float32,bf16", metavar="P,Q",
                        help="bake once per precision, in this order, and report their ratios (default float32,bf16)")
    args = parser.parse_args()
    _instrument()
    import torch

    peaks = {"float32": matmul_gflops(512, 576, 1536, torch.float32),
             "bf16": matmul_gflops(512, 576, 1536, torch.bfloat16)}
    print(f"matmul peaks of this run (F.linear 512 x 576 -> 1536, {torch.get_num_threads()} threads): "
          f"float32 {peaks['float32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s")
    runs = {}
    for precision in args.precisions.split(","):
        runs[precision] = _bake(f"--precision {precision} {args.bake_args}")
        _print_run(runs[precision], peaks)
    result = {"bake_args": args.bake_args, "matmul_peak_gflops": peaks, "runs": runs}
    if len(runs) == 2:
        first, second = runs.values()
        names = list(runs)
        ratios = {phase: round(first["phases"][phase]["seconds"] / second["phases"][phase]["seconds"], 2)
                  for phase in first["phases"] if second["phases"][phase]["seconds"] > 0}
        ratios["wall"] = round(first["wall_seconds"] / second["wall_seconds"], 2)
        # the auto schedule differs between precisions (two teacher samples per question in bf16): tokens per second
        # compare the precisions on equal work, seconds compare the two defaults
        throughput = {phase: round(second["phases"][phase]["tokens_per_s"] / first["phases"][phase]["tokens_per_s"], 2)
                      for phase in first["phases"]
                      if first["phases"][phase].get("tokens_per_s") and second["phases"][phase].get("tokens_per_s")}
        result.update(speedup=ratios, throughput_ratio=throughput,
                      closure_difference=round(second["closure"] - first["closure"], 4))
        print(f"\n{names[0]} seconds / {names[1]} seconds, per phase: "
              + ", ".join(f"{phase} {ratio}x" for phase, ratio in ratios.items()))
        print(f"{names[1]} tokens/s / {names[0]} tokens/s (equal work): "
              + ", ".join(f"{phase} {ratio}x" for phase, ratio in throughput.items()))
        print(f"closure {names[1]} - {names[0]}: {result['closure_difference']:+.4f} (each on its own samples)")
    if args.naive:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bake_speed import compare, report

        name = next(iter(runs.values()))
        result["naive_comparison"] = compare(json.loads((Path(name["run"]) / "bake.json").read_text())[
            "config"]["model"]["name"], args.naive)
        print(f"\nthe same code, batched vs the naive one-sequence-at-a-time path ({args.naive} trajectories):")
        report(result["naive_comparison"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
