"""`promptbake combine`: one adapter from several bakes, by peft's weighted-adapter combination.

The "cat" combination stacks the LoRA factors, so the combined weight update is exactly Σ wᵢ · ΔWᵢ (rank Σ rᵢ);
peft's "linear" averages the factors, which is only an approximation. The result is an ordinary run folder
(no trajectories: it was never sampled), so generate, chat, eval --suite judges and merge all work on it.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

from . import runfolder
from .base import load_base
from .config import config_from_dict, save_config
from .errors import UserError


def parse_weights(text: str | None, count: int) -> list[float]:
    """'1,0.5' → [1.0, 0.5]; one finite number per run folder (default: 1 each)."""
    if text is None:
        return [1.0] * count
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--weights {text!r} must be comma-separated numbers, one per run folder") from None
    if len(weights) != count or not all(math.isfinite(w) for w in weights):
        raise UserError(f"--weights {text!r} needs {count} finite numbers, one per run folder, e.g. "
                        f"{','.join(['1'] * count)}")
    return weights


def _same_base(runs: list[Path], records: list[dict]) -> None:
    """Adapters are weight differences against one base: refuse runs on different models or `--on` chains."""
    def base_of(record):
        source = record["model"]
        on = record["config"]["model"].get("on") or ""     # older bakes recorded no `on`, newer ones ""
        return source.get("name"), on, source.get("folder"), source.get("gguf_file")

    first = base_of(records[0])
    for run, record in zip(runs[1:], records[1:]):
        other = base_of(record)
        if other != first:
            raise UserError(f"cannot combine {runs[0]} and {run}: they were baked on different base models "
                            f"({_describe(first)} vs {_describe(other)}); combine bakes of one base model")


def _describe(base: tuple) -> str:
    name, on, folder = base[:3]
    return f"{name!r}" + (f" at {folder}" if folder and folder != name else "") + (f" on top of {on}" if on else "")


def combine_runs(run_dirs: list[str | Path], out: str | Path, weights: list[float] | None = None,
                 overwrite: bool = False) -> Path:
    """Write a run folder whose adapter is Σ wᵢ · (adapter of run i), exact (peft "cat" combination).

    The combined system prompt (for re-prompting) is the runs' prompts joined by blank lines.
    """
    from peft import PeftModel

    runs = [Path(d) for d in run_dirs]
    if len(runs) < 2:
        raise UserError("combine needs at least two run folders")
    weights = weights or [1.0] * len(runs)
    out = Path(out)
    if any(out.resolve() == run.resolve() for run in runs):
        raise UserError("--out must be a new folder, not one of the run folders being combined")
    records = [runfolder.read_finished_bake(run) for run in runs]
    _same_base(runs, records)
    runfolder.check_out_dir(out, overwrite)
    config = config_from_dict(records[0]["config"], where=str(runs[0] / runfolder.BAKE_JSON))
    base, tokenizer, source = load_base(config)
    names = [f"run{i}" for i in range(len(runs))]
    model = PeftModel.from_pretrained(base, str(runs[0] / runfolder.ADAPTER), adapter_name=names[0],
                                      use_safetensors=True)
    for name, run in zip(names[1:], runs[1:]):
        model.load_adapter(str(run / runfolder.ADAPTER), adapter_name=name, use_safetensors=True)
    model.add_weighted_adapter(names, weights, adapter_name="default", combination_type="cat")
    model.set_adapter("default")
    for name in names:
        model.delete_adapter(name)
    system_prompt = "\n\n".join(r["system_prompt"] for r in records)
    with runfolder.run_lock(out):
        runfolder.prepare_out_dir(out, overwrite)
        runfolder.atomic_save_dir(out / runfolder.ADAPTER, lambda tmp: model.save_pretrained(tmp))
        runfolder.atomic_write_text(out / runfolder.SYSTEM_PROMPT, system_prompt)
        save_config(config, out / runfolder.CONFIG_YAML)
        runfolder.atomic_write_json(out / runfolder.BAKE_JSON, {
            "status": "finished", "kind": "combined",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": vars(source), "system_prompt": system_prompt, "seed": config.seed, "config": config.to_dict(),
            "combined_from": [{"run": str(run.resolve()), "weight": w, "system_prompt": r["system_prompt"],
                               "closure": r.get("metrics", {}).get("closure")}
                              for run, w, r in zip(runs, weights, records)],
            "questions": {"source": None, "train": [], "heldout": []}, "metrics": {}})
    return out
