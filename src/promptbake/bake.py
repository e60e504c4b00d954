"""The composite: sample → train → evaluate → save, as two stages that talk through the run folder.

`sample_run` (sample_stage.py) writes the questions, the trajectories and bake.json (status "sampled");
`train_run` reads them back, trains the adapter and finishes bake.json with the metrics. `bake` runs both
with one model load.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import runfolder
from .autoquestions import TARGETED_SOURCES
from .base import carries_prompts, load_base
from .checkpoint import latest_checkpoint
from .config import BakeConfig, load_config, override, resolve_schedule, save_config
from .data import read_trajectories
from .distributed import barrier, is_main, world
from .errors import UserError
from .eval.kl import HeldoutKL, closure
from .logits import TeacherCache
from .onpolicy import student_rollouts
from .questions import file_sources
from .precision import float32_weights
from .sample_stage import build_jobs, sample_run  # noqa: F401 (build_jobs: API)
from .train import add_lora, save_adapter, train_adapter


@dataclass
class BakeResult:
    out: Path
    metrics: dict
    heldout_curve: list = field(default_factory=list)

    @property
    def closure(self) -> float:
        return self.metrics["closure"]


def _cut_metrics(path: Path, step: int) -> None:
    """Keep metrics.jsonl lines up to `step` (the checkpoint a resumed run continues from); drop a torn line."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    runfolder.atomic_write_text(path, "".join(kept))


def train_run(out: Path, config: BakeConfig | None = None, overwrite: bool = False, progress: bool = True,
              loaded=None, teacher: dict[str, TeacherCache] | None = None, resume: bool = False) -> BakeResult:
    """Stage 2: train on `out/trajectories.jsonl`, save the adapter, record the held-out KL closure.

    `teacher` (from sample_run) holds the teacher's caches of the "train" and "heldout" trajectories; one that is
    missing is computed: the training one once when it fits `train.teacher_cache_gb` (else the teacher runs at
    every training step), the held-out one always.
    The held-out KL (the closure metric) is always measured against full-vocabulary teacher logits.
    With `resume`, training continues from the newest complete checkpoint (optimizer, scheduler, data order and
    RNG included) instead of starting over.
    """
    out = Path(out)
    record = runfolder.read_bake_json(out)
    if record.get("status") == "finished" and not overwrite:
        raise UserError(f"{out} already holds a finished bake; pass --overwrite to train it again")
    config = _as_sampled(out, config or load_config(out / runfolder.CONFIG_YAML))
    trajectories = read_trajectories(out / runfolder.TRAJECTORIES)
    train = [t for t in trajectories if t.split == "train"]
    heldout = [t for t in trajectories if t.split == "heldout"]
    if not train or not heldout:
        raise UserError(f"{out}/{runfolder.TRAJECTORIES} needs both train and held-out trajectories "
                        f"(has {len(train)} train, {len(heldout)} held-out); sample again")
    main = is_main()   # under `accelerate launch` only the main process writes the run folder
    with runfolder.run_lock(out) if main else contextlib.nullcontext():
        checkpoint = _prepare_training(out, config, resume) if main else None
        barrier()
        if not main and resume:
            checkpoint = latest_checkpoint(out)
        try:
            model, tokenizer, _ = loaded or load_base(config)
            model = add_lora(model, config.train, config.seed)
            pad_id = tokenizer.pad_token_id
            start = time.perf_counter()
            budget = config.train.micro_batch_tokens
            tokens = sum(len(t.completion_ids) for t in train)
            top_k = config.train.teacher_top_k
            teacher = teacher or {}   # emptied as it is used: HeldoutKL keeps its own copy of the held-out cache
            train_cache, heldout_cache = teacher.pop("train", None), teacher.pop("heldout", None)
            if carries_prompts(config):   # the teacher is the original base, not this model with its adapter off
                train_cache, heldout_cache = _root_teacher(config, train, heldout, pad_id, train_cache, heldout_cache)
            if train_cache is None and TeacherCache.fits(model, tokens, config.train.teacher_cache_gb, top_k):
                train_cache = TeacherCache.compute(model, train, pad_id, budget, top_k)
            heldout_kl = HeldoutKL(model, heldout, pad_id, budget, heldout_cache) if main else None
            del heldout_cache
            rollouts = student_rollouts(model, tokenizer, config.sample, config.seed) if config.train.on_policy else None
            passes = targeted_passes(out, train, config.train.targeted_passes)
            summary = train_adapter(model, train, config.train, pad_id, config.seed, out, heldout_kl, progress,
                                    train_cache, resume_from=checkpoint, rollouts=rollouts, passes=passes)
            if main:
                save_adapter(model, out / runfolder.ADAPTER)
                curve = summary["heldout_curve"]   # starts at step 0, the fresh adapter (B = 0): the base model
                kl_before = curve[0]["heldout_kl"]
                kl_after = (curve[-1]["heldout_kl"] if curve[-1]["step"] == summary["steps"]
                            else heldout_kl.measure(model))
            total = time.perf_counter() - start
        except BaseException as exc:
            if main:
                runfolder.update_status(out, status="failed", error=f"training: {exc!r}")
            raise
        if main:
            metrics = dict(record.get("metrics", {}))
            metrics.update({
                "heldout_kl_before": kl_before, "heldout_kl_after": kl_after, "closure": closure(kl_before, kl_after),
                "training_seconds": summary["seconds"], "train_and_eval_seconds": total, "steps": summary["steps"],
                "final_train_loss": summary["final_loss"],
                "on_policy_steps": summary["on_policy_steps"], "teacher_cached": train_cache is not None,
                "teacher_top_k": train_cache.top_k if train_cache else None,
                "train_trajectories": len(train), "heldout_trajectories": len(heldout),
                "targeted_passes": config.train.targeted_passes,
                "repeated_trajectories": sum(passes) - len(train),
                "heldout_tokens": heldout_kl.tokens, "processes": world()[1],
            })
            runfolder.update_status(out, status="finished", stage="finished", metrics=metrics,
                           finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        barrier()
        metrics = runfolder.read_bake_json(out)["metrics"]
        return BakeResult(out=out, metrics=metrics, heldout_curve=summary["heldout_curve"])


def _root_teacher(config: BakeConfig, train, heldout, pad_id: int, train_cache, heldout_cache):
    """The teacher caches of a bake that carries its chain's prompts, computed with the original base model where
    sampling did not keep them (a resumed run, `promptbake train`, several processes)."""
    if train_cache is not None and heldout_cache is not None:
        return train_cache, heldout_cache
    tokens = sum(len(t.completion_ids) for t in train)
    top_k = config.train.teacher_top_k
    root, _, _ = load_base(config, merged=False)
    if train_cache is None:
        if not TeacherCache.fits(root, tokens, config.train.teacher_cache_gb, top_k):
            raise UserError(f"carrying the --on chain's prompts needs the teacher's logits in memory, more than "
                            f"--teacher-cache-gb {config.train.teacher_cache_gb}; raise it, lower --teacher-top-k, "
                            f"or pass --no-carry-prompts")
        train_cache = TeacherCache.compute(root, train, pad_id, config.train.micro_batch_tokens, top_k)
    if heldout_cache is None:
        with float32_weights(root):   # closure is measured against the float32 teacher
            heldout_cache = TeacherCache.compute(root, heldout, pad_id, config.train.micro_batch_tokens)
    return train_cache, heldout_cache


def targeted_passes(out: Path, train: list, passes: int) -> list[int]:
    """Per training trajectory, how often an epoch trains it: `passes` for the questions --questions auto aimed at
    the prompt (questions.jsonl sources other than the general pool and files), 1 for the rest."""
    path = out / runfolder.QUESTIONS
    sources = file_sources(str(path)) if path.is_file() else {}
    return [passes if sources.get(t.question) in TARGETED_SOURCES else 1 for t in train]


def _as_sampled(out: Path, config: BakeConfig) -> BakeConfig:
    """`config` with an auto (0) trajectories_per_question as the sample stage resolved it (the run's config.yaml)
    and an auto batch size to match (config.resolve_schedule)."""
    if config.sample.trajectories_per_question and config.train.batch_size:
        return config
    per = config.sample.trajectories_per_question
    if not per:
        per = load_config(out / runfolder.CONFIG_YAML).sample.trajectories_per_question
    return resolve_schedule(override(config, {"sample.trajectories_per_question": per or 1}), "float32")[0]


def _prepare_training(out: Path, config: BakeConfig, resume: bool) -> Path | None:
    """Clear what training will write (or, resuming, cut it back to the last checkpoint); returns that checkpoint."""
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        _cut_metrics(out / runfolder.METRICS, int(checkpoint.name.split("-")[1]))
    else:
        (out / runfolder.METRICS).unlink(missing_ok=True)
        shutil.rmtree(out / runfolder.CHECKPOINTS, ignore_errors=True)
    shutil.rmtree(out / runfolder.ADAPTER, ignore_errors=True)
    save_config(runfolder.absolute_paths(config), out / runfolder.CONFIG_YAML)
    runfolder.update_status(out, status="running", stage="training", config=runfolder.absolute_paths(config).to_dict(),
                   resumed_from=checkpoint.name if checkpoint else None)
    return checkpoint


def resume_bake(out: str | Path, progress: bool = True) -> BakeResult:
    """Finish a bake that was killed: keep its sampled batches and continue training from its last checkpoint.

    The prompt and config are the run folder's own (system_prompt.txt, config.yaml).
    """
    out = Path(out)
    record = runfolder.read_bake_json(out)
    if record.get("status") == "finished":
        raise UserError(f"{out} already holds a finished bake; nothing to resume")
    for name in (runfolder.SYSTEM_PROMPT, runfolder.CONFIG_YAML):
        if not (out / name).is_file():
            raise UserError(f"{out} has no {name}: it cannot be resumed; bake again with --overwrite")
    system_prompt = (out / runfolder.SYSTEM_PROMPT).read_text(encoding="utf-8")
    config = load_config(out / runfolder.CONFIG_YAML)
    loaded = None
    if not (out / runfolder.TRAJECTORIES).is_file():
        loaded, _ = sample_run(system_prompt, out, config, progress=progress, resume=True)
    return train_run(out, config, overwrite=True, progress=progress, loaded=loaded, resume=True)


def bake(system_prompt: str, out: str | Path = "runs/bake", config: BakeConfig | None = None,
         overwrite: bool = False, progress: bool = True) -> BakeResult:
    """Bake `system_prompt` into a LoRA adapter: sample from the prompted model, train the unprompted student.

    Args:
        system_prompt: the prompt u to bake.
        out: run folder (DESIGN.md "The run folder"); refused if it holds a bake, unless `overwrite`.
        config: BakeConfig; defaults bake into the embedded SmolLM2-135M-Instruct.
    Returns:
        BakeResult with the run folder and metrics (held-out KL before/after, closure, seconds).
    """
    config = config or BakeConfig()
    loaded, teacher = None, None
    if is_main():   # under `accelerate launch` the main process samples; every process then trains on its share
        # Teacher logits kept from sampling exist only in this process: with several, each computes its own.
        loaded, teacher = sample_run(system_prompt, Path(out), config, overwrite, progress,
                                     keep_logits=world()[1] == 1)
    barrier()
    return train_run(Path(out), config, overwrite=True, progress=progress, loaded=loaded, teacher=teacher)
