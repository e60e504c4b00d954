"""Merge a baked adapter into the base weights: a full model folder that plain transformers loads."""
from __future__ import annotations

import json
from pathlib import Path

from . import runfolder
from .baked import load_baked
from .errors import UserError
from .precision import to_float32_weights

MERGE_RECORD = "promptbake_merge.json"


def merge_run(run_dir: str | Path, out: str | Path, checkpoint: str | None = None, strength: float = 1.0,
              overwrite: bool = False) -> Path:
    """Write base + strength · adapter as safetensors + config + tokenizer (chat template included) into `out`.

    The result needs no promptbake or peft: `AutoModelForCausalLM.from_pretrained(out)`. For a GGUF base the
    export is the dequantised float32 model in Hugging Face format, not a GGUF file.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / MERGE_RECORD).is_file():
            raise UserError(f"--out {out} exists and is not a merged model from promptbake; choose a new folder")
        if not overwrite:
            raise UserError(f"--out {out} already holds a merged model; choose another --out or pass --overwrite")
    if out.resolve() == Path(run_dir).resolve():
        raise UserError("--out must not be the run folder itself; choose another folder")
    baked = load_baked(run_dir, checkpoint, strength)
    merged = to_float32_weights(baked.model).merge_and_unload()   # the float32 weights, not their bf16 copies
    record = {"run": str(Path(run_dir).resolve()), "checkpoint": checkpoint or "final", "strength": baked.strength,
              "system_prompt": baked.system_prompt, "base_model": baked.record["model"]}

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)
        baked.tokenizer.save_pretrained(tmp)
        (tmp / MERGE_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    runfolder.atomic_save_dir(out, write)
    return out
