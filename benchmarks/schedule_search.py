"""Benchmark (not a test): held-out closure against training time for training schedules, on one fixed pool.

Samples a pool once (the default persona bake's questions, PER trajectories per training question, the default
held-out split), caches the teacher once (top-256 for training, full logits for held-out), then trains a fresh
LoRA per variant on a subset of the pool and reports the closure curve (held-out KL every --eval-every steps) and
the training seconds without evaluation. Variants are JSON objects of TrainConfig fields (e.g. "learning_rate",
"batch_size", "epochs", "lora_layers": "12-29") plus "name", "questions" (how many training questions) and "per"
(trajectories per question, at most --per).

    .venv/bin/python benchmarks/schedule_search.py --pool /tmp/pool '[{"name": "default"}, {"name": "bs4",
        "batch_size": 4}, {"name": "per2", "questions": 96, "per": 2}]'
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from promptbake.bake import build_jobs
from promptbake.base import load_base
from promptbake.config import BakeConfig, SampleConfig, TrainConfig
from promptbake.data import read_trajectories, write_trajectories
from promptbake.eval.kl import HeldoutKL, closure
from promptbake.logits import TeacherCache
from promptbake.questions import load_questions, split_questions
from promptbake.sampling import sample_trajectories
from promptbake.train import add_lora, train_adapter

PERSONA = Path(__file__).resolve().parent.parent / "examples" / "persona.txt"


def pool(folder: Path, config: BakeConfig, per: int):
    """(model, tokenizer, training questions, train pool, held-out, train cache, held-out cache), sampled once."""
    model, tokenizer, _ = load_base(config)
    train_q, heldout_q = split_questions(load_questions(config.sample.questions), config.sample.train_questions,
                                         config.sample.heldout_questions, config.seed)
    file = folder / "pool.jsonl"
    if not file.is_file():
        prompt = PERSONA.read_text(encoding="utf-8").strip()
        jobs = (build_jobs(tokenizer, prompt, train_q, "train", per)
                + build_jobs(tokenizer, prompt, heldout_q, "heldout", config.sample.heldout_trajectories_per_question))
        sampled, kept = sample_trajectories(model, tokenizer, jobs, config.sample, config.seed,
                                            keep={"train": 256, "heldout": 0})
        count = len(train_q) * per
        train, held, train_top, held_full = sampled[:count], sampled[count:], kept[:count], kept[count:]
        write_trajectories(file, train + held)
        torch.save({"train": train_top, "heldout": held_full}, folder / "teacher.pt")
    trajectories = read_trajectories(file)
    kept = torch.load(folder / "teacher.pt")
    train = [t for t in trajectories if t.split == "train"]
    held = [t for t in trajectories if t.split == "heldout"]
    return model, tokenizer, train_q, train, held, TeacherCache(top=kept["train"]), TeacherCache(logits=kept["heldout"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", help="JSON list of variants (see the module docstring)")
    parser.add_argument("--pool", type=Path, required=True, help="folder for the sampled pool (reused if there)")
    parser.add_argument("--per", type=int, default=2, help="trajectories per training question in the pool")
    parser.add_argument("--train-questions", type=int, default=192, help="training questions in the pool")
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="append one JSON line per variant here")
    args = parser.parse_args()
    args.pool.mkdir(parents=True, exist_ok=True)
    config = BakeConfig(sample=SampleConfig(train_questions=args.train_questions))
    model, tokenizer, train_q, train, held, train_cache, held_cache = pool(args.pool, config, args.per)
    pad = tokenizer.pad_token_id
    for variant in json.loads(args.variants):
        variant = dict(variant)
        name, questions, per = variant.pop("name"), variant.pop("questions", len(train_q)), variant.pop("per", 1)
        chosen = [i for i, t in enumerate(train) if t.sample_index < per and train_q.index(t.question) < questions]
        cfg = TrainConfig(**{"checkpoint_every": 0, "eval_every": args.eval_every, **variant})
        student = add_lora(model, cfg, config.seed)
        heldout = HeldoutKL(student, held, pad, cfg.micro_batch_tokens, held_cache)
        spent, calls = [0.0], [0]
        measure = heldout.measure

        def timed(*a, **k):   # evaluations inside the training clock (train_adapter's step 0 comes before it)
            start = time.perf_counter()
            try:
                return measure(*a, **k)
            finally:
                calls[0] += 1
                spent[0] += (time.perf_counter() - start) if calls[0] > 1 else 0.0

        heldout.measure = timed
        with tempfile.TemporaryDirectory() as run:
            summary = train_adapter(student, [train[i] for i in chosen], cfg, pad, config.seed, Path(run), heldout,
                                    False, train_cache.subset(chosen))
        base = summary["heldout_curve"][0]["heldout_kl"]
        row = {"name": name, "trajectories": len(chosen), "steps": summary["steps"],
               "train_seconds": round(summary["seconds"] - spent[0], 1),
               "closure": [(p["step"], round(closure(base, p["heldout_kl"]), 3)) for p in summary["heldout_curve"]]}
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        model = student.unload()


if __name__ == "__main__":
    main()
