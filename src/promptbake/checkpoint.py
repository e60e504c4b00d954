"""Training checkpoints that a killed bake resumes from: the adapter plus everything the loop needs to go on.

checkpoints/step-N/ holds the adapter (PEFT format, as before) and, for resuming,
    training_state.safetensors   optimizer moments and step counts, the torch RNG state
    training_state.json          step, optimizer hyper-parameters, scheduler state
No pickle anywhere: tensors go through safetensors, everything else through JSON. The data order needs no state:
it is a seeded permutation per epoch, replayed on resume. The folder is written atomically, so a checkpoint either
exists whole or not at all; a kill mid-write leaves only a hidden temporary folder, which resume removes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import runfolder

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


def save_checkpoint(model, optimizer, scheduler, step: int, folder: Path) -> None:
    """Write the adapter and the training state of `step` into `folder`, atomically."""
    tensors, meta = {"rng": torch.get_rng_state()}, {"step": step, "scheduler": scheduler.state_dict(), "state": {}}
    state = optimizer.state_dict()
    meta["param_groups"] = state["param_groups"]
    for index, values in state["state"].items():
        meta["state"][str(index)] = sorted(values)
        for key, value in values.items():
            tensors[f"state.{index}.{key}"] = value.detach().cpu().clone().contiguous()
    meta["scheduler"].pop("lr_lambdas", None)   # functions: rebuilt from the config, not stored

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps(meta), encoding="utf-8")

    runfolder.atomic_save_dir(folder, write)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint with a training state, after removing temporary folders of killed writes."""
    folder = Path(run_dir) / runfolder.CHECKPOINTS
    if not folder.is_dir():
        return None
    for stale in folder.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    complete = [p for p in folder.glob("step-*") if (p / STATE_JSON).is_file() and (p / STATE_TENSORS).is_file()
                and (p / "adapter_model.safetensors").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def load_checkpoint(model, optimizer, scheduler, folder: Path) -> int:
    """Restore adapter weights, optimizer, scheduler and RNG from `folder` into the fresh ones; returns its step."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    meta = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / STATE_TENSORS))
    state = {int(index): {key: tensors[f"state.{index}.{key}"] for key in keys} for index, keys in meta["state"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
    torch.set_rng_state(tensors["rng"])
    return int(meta["step"])
