"""The base a bake starts from: a model as loaded, or (sequential baking) a previous bake merged into it."""
from __future__ import annotations

from pathlib import Path

from . import runfolder
from .config import BakeConfig, config_from_dict
from .errors import UserError
from .models import load_model
from .precision import place


def previous_bake(on: str) -> tuple[Path, BakeConfig]:
    """The finished run folder named by `model.on`, and its config."""
    run = Path(on).expanduser()
    record = runfolder.read_finished_bake(run, "--on")
    return run, config_from_dict(record["config"], where=str(run / runfolder.BAKE_JSON))


def load_base(config: BakeConfig):
    """(model, tokenizer, source) for `config`: the base model, with every earlier bake of the `--on` chain merged.

    Each bake in the chain must use the same base model; its adapter is merged into the weights (merge_and_unload),
    so the new adapter trains on top of a model that already holds the earlier prompts.
    """
    if not config.model.on:
        model, tokenizer, source = load_model(config.model.name, config.model.allow_download,
                                              config.model.trust_remote_code)
        return place(model, config.model.device, config.model.precision), tokenizer, source
    from peft import PeftModel

    run, previous = previous_bake(config.model.on)
    if previous.model.name != config.model.name:
        raise UserError(f"--on {run} was baked on model {previous.model.name!r}, not {config.model.name!r}; "
                        f"bake on top of it with --model {previous.model.name}")
    model, tokenizer, source = load_base(previous)
    merged = PeftModel.from_pretrained(model, str(run / runfolder.ADAPTER), use_safetensors=True).merge_and_unload()
    return place(merged, config.model.device, config.model.precision), tokenizer, source
