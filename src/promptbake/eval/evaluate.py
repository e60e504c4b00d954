"""`promptbake eval`: run evaluation suites on a run folder and merge their results into DIR/eval.json.

Only the `kl` suite exists so far: held-out KL(teacher ‖ condition) for the four conditions, per position too.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import runfolder
from ..baked import load_baked
from ..data import read_trajectories
from ..errors import UserError
from .kl import HeldoutKL, closure

EVAL_JSON = "eval.json"
SUITES = ("kl",)
HEAD = 8  # answer tokens counted as "the start" in the summary


def parse_suites(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SUITES]
    if unknown or not names:
        raise UserError(f"unknown suite {', '.join(unknown) or repr(text)}; available: {', '.join(SUITES)}")
    return names


def kl_suite(baked) -> dict:
    """KL(teacher ‖ ·) on the held-out trajectories for base, base + prompt (the teacher: 0), baked, baked + prompt."""
    heldout = [t for t in read_trajectories(baked.run_dir / runfolder.TRAJECTORIES) if t.split == "heldout"]
    if not heldout:
        raise UserError(f"{baked.run_dir} has no held-out trajectories to measure KL on")
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


def evaluate(run_dir: str | Path, suites: list[str], strength: float = 1.0, checkpoint: str | None = None) -> dict:
    """Run `suites` on the bake in `run_dir` (its final adapter or a checkpoint, at a strength); update eval.json."""
    baked = load_baked(run_dir, checkpoint, strength)
    results = {"kl": kl_suite}
    found = {name: results[name](baked) for name in suites}
    key = f"{checkpoint or 'final'}@strength={baked.strength:g}"
    path = Path(run_dir) / EVAL_JSON
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    record.setdefault(key, {}).update(found)
    runfolder.atomic_write_json(path, record)
    return {key: found}
