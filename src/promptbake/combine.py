"""`promptbake combine`: one adapter from several bakes of the same base, carrying every prompt.

Three ways, all ending in an ordinary run folder of the same base (generate, chat, eval, strength, merge and another
combine work on it):
- default ("on-first"): a bake whose teacher is the base model with all the prompts, in the order given, and whose
  student is the first bake merged into the base with a fresh adapter, trained on the runs' own questions: what
  `bake --on FIRST` with the other prompts does (base.py), which kept both prompts where distilling the sum lost the
  first (docs/prompt-content.md). The first bake's adapter and the new one are then saved as one (peft "cat").
- `from_sum` ("distilled"): the same bake, but its student starts at the exact sum of the adapters
  (train.start_adapter) and every factor of it trains.
- `exact`: the sum alone, no sampling, no training.
The exact sum: peft's "cat" combination stacks the LoRA factors, so the combined weight update is exactly
Σ wᵢ · ΔWᵢ (rank Σ rᵢ); peft's "linear" averages the factors, which is only an approximation. Adapters trained one at
a time interfere when summed: each learnt to move the base, not the other bake.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

from . import runfolder
from .autoquestions import TARGETED_SOURCES
from .base import PROMPT_SEPARATOR, load_base
from .config import BakeConfig, config_from_dict, override, save_config
from .errors import UserError
from .questions import run_questions
from .targeted import NEAR_DUPLICATE, similarity


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


def summed_adapter(config: BakeConfig, runs: list[Path], weights: list[float]):
    """(PeftModel whose "default" adapter is exactly Σ wᵢ · adapter of run i, source) on the base of `config`."""
    base, _, source = load_base(override(config, {"model.precision": "float32"}))   # the factors stay float32
    return stacked_adapters(base, [run / runfolder.ADAPTER for run in runs], weights), source


def stacked_adapters(base, folders: list[Path], weights: list[float]):
    """PeftModel on `base` whose only adapter, "default", is exactly Σ wᵢ · (the adapter saved in folder i)."""
    from peft import PeftModel

    names = [f"part{i}" for i in range(len(folders))]
    model = PeftModel.from_pretrained(base, str(folders[0]), adapter_name=names[0], use_safetensors=True)
    for name, folder in zip(names[1:], folders[1:]):
        model.load_adapter(str(folder), adapter_name=name, use_safetensors=True)
    model.add_weighted_adapter(names, weights, adapter_name="default", combination_type="cat")
    model.set_adapter("default")
    for name in names:
        model.delete_adapter(name)
    return model


def combined_questions(splits: list[tuple[list[dict], list[dict]]], n_train: int) -> list[dict]:
    """questions.jsonl records for the distillation: every run's held-out questions stay held out (so each prompt's
    closure is measured on its own held-out set), and training takes the runs' training questions in turn, up to
    `n_train` trajectories, leaving out any that repeats or nearly repeats a held-out one. Each run's questions
    aimed at its prompt come first: the sum loses each prompt's content more than its manner, and a distillation on
    the targeted questions kept more of both prompts than one on each run's mix (docs/prompt-content.md). Each
    keeps its run's source and samples (so its second pass, train.targeted_passes) and says which run it came
    from."""
    splits = [(sorted(train, key=lambda r: r.get("source") not in TARGETED_SOURCES), held) for train, held in splits]

    def keep(row: dict, split: str, i: int) -> dict:
        samples = row.get("samples", 1)
        return {"question": row["question"], "split": split, "source": row.get("source") or f"run{i}", "run": i,
                **({"samples": samples} if isinstance(samples, int) and samples > 1 else {})}

    heldout, records = [], []
    for i, (_, held) in enumerate(splits):
        for row in held:
            if row["question"] not in heldout:
                heldout.append(row["question"])
                records.append(keep(row, "heldout", i))
    taken = set(heldout)
    longest = max(len(train) for train, _ in splits)
    train_records, trajectories = [], 0
    for k in range(longest):
        for i, (train, _) in enumerate(splits):
            q = train[k]["question"] if k < len(train) else None
            if q is not None and trajectories < n_train and q not in taken and \
                    all(similarity(q, h) < NEAR_DUPLICATE for h in heldout):
                taken.add(q)
                train_records.append(keep(train[k], "train", i))
                trajectories += train_records[-1].get("samples", 1)
    if not train_records:
        raise UserError("the combined bakes share no training question that is not also held out; combine with "
                        "--exact, or bake them with other questions")
    return train_records + records


def combine_runs(run_dirs: list[str | Path], out: str | Path, weights: list[float] | None = None,
                 overwrite: bool = False, exact: bool = False, progress: bool = True, from_sum: bool = False) -> Path:
    """Write a run folder that carries every prompt of several finished bakes of one base.

    Its system prompt (for re-prompting, and the teacher) is the runs' prompts in the order given, joined by blank
    lines. By default the first bake is kept and a new adapter is baked on top of it toward the base model with that
    prompt; `from_sum` starts that bake at the exact sum Σ wᵢ · (adapter of run i) instead, and `exact` writes the
    sum alone (see the module docstring).
    """
    runs = [Path(d) for d in run_dirs]
    if len(runs) < 2:
        raise UserError("combine needs at least two run folders")
    if exact and from_sum:
        raise UserError("--exact and --from-sum are two ways of combining: pick one")
    if weights and not (exact or from_sum) and any(w != 1 for w in weights):
        raise UserError("--weights scales the summed adapters, so it needs --exact or --from-sum; the default keeps "
                        "the first bake and trains toward every prompt at full strength (`promptbake strength` "
                        "scales the result)")
    weights = weights or [1.0] * len(runs)
    out = Path(out)
    if any(out.resolve() == run.resolve() for run in runs):
        raise UserError("--out must be a new folder, not one of the run folders being combined")
    records = [runfolder.read_finished_bake(run) for run in runs]
    _same_base(runs, records)
    runfolder.check_out_dir(out, overwrite)
    config = config_from_dict(records[0]["config"], where=str(runs[0] / runfolder.BAKE_JSON))
    system_prompt = PROMPT_SEPARATOR.join(r["system_prompt"] for r in records)
    combined_from = [{"run": str(run.resolve()), "weight": w, "system_prompt": r["system_prompt"],
                      "closure": r.get("metrics", {}).get("closure")} for run, w, r in zip(runs, weights, records)]
    if not exact:   # read the questions before minutes of work: a problem with them stops here
        questions = combined_questions([run_questions(run, r) for run, r in zip(runs, records)],
                                       config.sample.train_questions)
    if not (exact or from_sum):
        return _bake_on_first(out, overwrite, runs, records, config, system_prompt, combined_from, questions,
                              progress)
    model, source = summed_adapter(config, runs, weights)
    if exact:
        _write_exact(out, overwrite, model, source, config, system_prompt, combined_from)
        return out
    return _distill(out, overwrite, model, source, config, system_prompt, combined_from, questions, progress)


def _write_exact(out: Path, overwrite: bool, model, source, config: BakeConfig, system_prompt: str,
                 combined_from: list[dict]) -> None:
    with runfolder.run_lock(out):
        runfolder.prepare_out_dir(out, overwrite)
        runfolder.atomic_save_dir(out / runfolder.ADAPTER, lambda tmp: model.save_pretrained(tmp))
        runfolder.atomic_write_text(out / runfolder.SYSTEM_PROMPT, system_prompt)
        save_config(config, out / runfolder.CONFIG_YAML)
        runfolder.atomic_write_json(out / runfolder.BAKE_JSON, {
            "status": "finished", "kind": "combined", "combine": "exact",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": vars(source), "system_prompt": system_prompt, "seed": config.seed, "config": config.to_dict(),
            "combined_from": combined_from, "questions": {"source": None, "train": [], "heldout": []},
            "metrics": {}})


def _write_questions(out: Path, questions: list[dict]) -> None:
    runfolder.atomic_write_text(out / runfolder.QUESTIONS, "".join(
        json.dumps(r, ensure_ascii=False) + "\n" for r in questions))


def _begin(out: Path, overwrite: bool, how: str, source: dict, config: BakeConfig, system_prompt: str,
           combined_from: list[dict], questions: list[dict], start=None) -> None:
    """Claim `out` for a combining bake: bake.json says "combining" until the bake takes over, so the folder reads as
    an unfinished run; the questions (and the adapter to start from, if any) are written for the bake to read."""
    with runfolder.run_lock(out):
        runfolder.prepare_out_dir(out, overwrite)
        runfolder.atomic_write_json(out / runfolder.BAKE_JSON, {
            "status": "running", "stage": "combining", "kind": "combined", "combine": how, "model": source,
            "system_prompt": system_prompt, "config": config.to_dict(), "combined_from": combined_from})
        if start is not None:
            runfolder.atomic_save_dir(out / runfolder.START_ADAPTER, lambda tmp: start.save_pretrained(tmp))
        _write_questions(out, questions)


def _bake_on_first(out: Path, overwrite: bool, runs: list[Path], records: list[dict], config: BakeConfig,
                   system_prompt: str, combined_from: list[dict], questions: list[dict], progress: bool) -> Path:
    """Bake the other runs' prompts `--on` the first run, carrying its prompt (the teacher is the base model with
    every prompt, the student the first bake merged), on out/questions.jsonl; then save the first adapter and the
    new one as one adapter of the base (_fold_first), so the folder is an ordinary bake of the runs' base."""
    from .bake import bake

    baking = override(config, {"model.on": str(runs[0].resolve()), "model.carry_prompts": True,
                               "train.start_adapter": "", "train.on_policy": 0.0,
                               "sample.general_teacher": "prompted",
                               "sample.questions": str((out / runfolder.QUESTIONS).resolve())})
    _begin(out, overwrite, "on-first", records[0]["model"], baking, system_prompt, combined_from, questions)
    if progress:
        n_train = sum(r["split"] == "train" for r in questions)
        print(f"promptbake: combine: baking a new adapter on top of {runs[0]} toward the base model with all "
              f"{len(combined_from)} prompts ({n_train} training questions from the runs; --from-sum starts from "
              f"the sum of the adapters instead, --exact writes the sum alone)", flush=True)
    bake(PROMPT_SEPARATOR.join(r["system_prompt"] for r in records[1:]), out, baking, overwrite=True,
         progress=progress)
    _write_questions(out, questions)   # the bake read them as a file: keep the origins
    _fold_first(out, runs[0], config)
    final = runfolder.absolute_paths(override(baking, {"model.on": config.model.on,
                                                       "model.carry_prompts": config.model.carry_prompts}))
    save_config(final, out / runfolder.CONFIG_YAML)
    runfolder.atomic_write_text(out / runfolder.SYSTEM_PROMPT, system_prompt)
    runfolder.update_status(out, kind="combined", combine="on-first", combined_from=combined_from,
                            system_prompt=system_prompt, config=final.to_dict())
    return out


def _fold_first(out: Path, first: Path, config: BakeConfig) -> None:
    """Rewrite out's adapter and checkpoints, each trained on top of `first` merged into the base, as adapters of the
    base itself: the first adapter and the new one stacked (peft "cat", exact). A checkpoint keeps its adapter and
    loses its training state: a finished bake is not resumed."""
    base, _, _ = load_base(override(config, {"model.precision": "float32"}))
    folders = [out / runfolder.ADAPTER] + [out / runfolder.CHECKPOINTS / name
                                           for name in runfolder.checkpoint_names(out)]
    for folder in folders:
        model = stacked_adapters(base, [first / runfolder.ADAPTER, folder], [1.0, 1.0])
        runfolder.atomic_save_dir(folder, lambda tmp: model.save_pretrained(tmp))
        base = model.unload()


def _distill(out: Path, overwrite: bool, model, source, config: BakeConfig, system_prompt: str,
             combined_from: list[dict], questions: list[dict], progress: bool) -> Path:
    """Save the exact sum as out/start_adapter and the questions as out/questions.jsonl, then bake the joined prompt
    from there."""
    from .bake import bake

    lora = model.peft_config["default"]
    config = override(config, {"train.start_adapter": str((out / runfolder.START_ADAPTER).resolve()),
                               "train.lora_r": int(lora.r), "train.lora_alpha": float(lora.lora_alpha),
                               "sample.questions": str((out / runfolder.QUESTIONS).resolve())})
    _begin(out, overwrite, "distilled", vars(source), config, system_prompt, combined_from, questions, start=model)
    del model
    if progress:
        n_train = sum(r["split"] == "train" for r in questions)
        print(f"promptbake: combine: distilling the exact sum toward the base model with all {len(combined_from)} "
              f"prompts ({n_train} training questions from the runs)", flush=True)
    bake(system_prompt, out, config, overwrite=True, progress=progress)
    _write_questions(out, questions)   # the bake read them as a file: keep the origins
    runfolder.update_status(out, kind="combined", combine="distilled", combined_from=combined_from)
    return out
