"""The base a bake starts from: a model as loaded, or (sequential baking) a previous bake merged into it.

Sequential baking (`--on DIR`) carries every prompt of the chain by default (`model.carry_prompts`): the teacher is
the original base model with all the chain's prompts, in the order they were baked, and the student is the
earlier bakes merged, without prompts. Without carrying, the teacher is the merged earlier bakes with the new prompt
alone, which Prompt Pursuit wants (its teacher is the previous round with the prompt).
"""
from __future__ import annotations

from pathlib import Path

from . import runfolder
from .config import BakeConfig, config_from_dict
from .errors import UserError
from .models import load_model
from .precision import place

PROMPT_SEPARATOR = "\n\n"


def previous_bake(on: str) -> tuple[Path, BakeConfig]:
    """The finished run folder named by `model.on`, and its config."""
    run = Path(on).expanduser()
    record = runfolder.read_finished_bake(run, "--on")
    return run, config_from_dict(record["config"], where=str(run / runfolder.BAKE_JSON))


def chain_runs(config: BakeConfig) -> list[tuple[Path, BakeConfig]]:
    """The `--on` chain below this bake, the first bake first: (run folder, its config) per link."""
    runs = []
    while config.model.on:
        run, config = previous_bake(config.model.on)
        runs.append((run, config))
    return runs[::-1]


def carries_prompts(config: BakeConfig) -> bool:
    return bool(config.model.on) and config.model.carry_prompts


def teacher_system_prompt(config: BakeConfig, system_prompt: str) -> str:
    """What the teacher is prompted with: this prompt, after every earlier prompt of the chain when carrying."""
    if not carries_prompts(config):
        return system_prompt
    earlier = [(run / runfolder.SYSTEM_PROMPT).read_text(encoding="utf-8") for run, _ in chain_runs(config)]
    return PROMPT_SEPARATOR.join(earlier + [system_prompt])


def merge_chain(model, config: BakeConfig):
    """`model` (the original base) with every adapter of the chain merged into its weights, in baking order."""
    from peft import PeftModel

    for run, previous in chain_runs(config):
        if previous.model.name != config.model.name:
            raise UserError(f"--on {run} was baked on model {previous.model.name!r}, not {config.model.name!r}; "
                            f"bake on top of it with --model {previous.model.name}")
        model = PeftModel.from_pretrained(model, str(run / runfolder.ADAPTER), use_safetensors=True).merge_and_unload()
    return model


def load_base(config: BakeConfig, merged: bool = True):
    """(model, tokenizer, source) for `config`: the base model, with every earlier bake of the `--on` chain merged
    (merge_and_unload) unless `merged` is False, so the new adapter trains on top of the earlier prompts."""
    model, tokenizer, source = load_model(config.model.name, config.model.allow_download,
                                          config.model.trust_remote_code)
    if merged and config.model.on:
        model = merge_chain(model, config)
    return place(model, config.model.device, config.model.precision), tokenizer, source
