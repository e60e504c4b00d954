"""The composite: sample → train → evaluate → save, as two stages that talk through the run folder.

`sample_run` writes system_prompt.txt, config.yaml, trajectories.jsonl and bake.json (status "sampled");
`train_run` reads them back, trains the adapter and finishes bake.json with the metrics. `bake` runs both
with one model load.
"""
from __future__ import annotations

import contextlib
import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__, runfolder
from .config import BakeConfig, load_config, override, save_config
from .checkpoint import latest_checkpoint
from .distributed import barrier, is_main, world
from .dialogues import continue_dialogues
from .onpolicy import student_rollouts
from .data import append_sampled, read_sampled, read_trajectories, write_trajectories
from .errors import UserError
from .eval.kl import HeldoutKL, closure
from .logits import TeacherCache
from .base import carries_prompts, chain_runs, load_base, merge_chain, teacher_system_prompt
from .precision import place
from .prompts import describe_framing, student_prompt_ids, teacher_prompt_ids
from .autoquestions import bake_questions, check_question_model
from .questions import ARITHMETIC, AUTO, BUILTIN, file_splits
from .sampling import sample_trajectories
from .train import add_lora, save_adapter, train_adapter


@dataclass
class BakeResult:
    out: Path
    metrics: dict
    heldout_curve: list = field(default_factory=list)

    @property
    def closure(self) -> float:
        return self.metrics["closure"]


def _versions() -> dict:
    import peft
    import torch
    import transformers

    return {"promptbake": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


def _check_prompt(system_prompt: str) -> str:
    if not isinstance(system_prompt, str) or not system_prompt.strip():
        raise UserError("the prompt is empty; pass --prompt TEXT or --prompt-file FILE with the text to bake")
    return system_prompt


def build_jobs(tokenizer, system_prompt: str, questions: list[str], split: str, per_question: int) -> list[dict]:
    jobs = []
    for question in questions:
        teacher = teacher_prompt_ids(tokenizer, question, system_prompt)
        student = student_prompt_ids(tokenizer, question)
        jobs += [{"question": question, "split": split, "sample_index": k, "teacher_prompt_ids": teacher,
                  "student_prompt_ids": student} for k in range(per_question)]
    return jobs


def _check_context(model, jobs: list[dict], max_new_tokens: int, system_prompt_tokens: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit:
        return
    longest = max(len(j["teacher_prompt_ids"]) for j in jobs) + max_new_tokens
    if longest > limit:
        raise UserError(f"the prompt is too long: the system prompt is {system_prompt_tokens} tokens, and with a "
                        f"question and max_new_tokens={max_new_tokens} a sequence needs {longest} tokens, more than "
                        f"the model's context of {limit}; shorten the prompt or lower --max-new-tokens")


def _update_status(run_dir: Path, **changes) -> dict:
    record = runfolder.read_bake_json(run_dir)
    record.update(changes)
    runfolder.atomic_write_json(run_dir / runfolder.BAKE_JSON, record)
    return record


def sample_run(system_prompt: str, out: Path, config: BakeConfig, overwrite: bool = False, progress: bool = True,
               keep_logits: bool = False, resume: bool = False):
    """Stage 1: split questions, sample teacher trajectories into `out`.

    Each sampled batch is appended to trajectories.partial.jsonl as it finishes; with `resume` (a run folder whose
    sampling was killed) the batches found there are kept and only the others are sampled, with the seeds they
    would have had, so the trajectories equal an uninterrupted run's. trajectories.jsonl appears only when all are
    sampled.

    Returns ((model, tokenizer, source), teacher): with `keep_logits`, teacher maps "train" to a TeacherCache of
    the training trajectories (top-k when train.teacher_top_k, else full logits) and "heldout" to the held-out
    trajectories' full logits, each in the order of trajectories.jsonl and only where it fits
    train.teacher_cache_gb; without, it is empty.
    """
    system_prompt = _check_prompt(system_prompt)
    out = Path(out)
    if not resume:
        runfolder.check_out_dir(out, overwrite)               # validate cheap inputs before loading or writing
    if config.sample.sampler == "vllm":
        from .vllm_sampler import check_available

        check_available()
    check_question_model(config)
    # a question file is read (and its problems reported) before the model loads; auto questions need the model
    chosen = None if config.sample.questions == AUTO else bake_questions(config, None, None, system_prompt)
    carry = carries_prompts(config)
    teacher_prompt = teacher_system_prompt(config, system_prompt)
    model, tokenizer, source = load_base(config, merged=not carry)   # carrying: the teacher is the original base
    if resume and (out / runfolder.QUESTIONS).is_file():   # the questions the killed run chose, not new ones
        chosen = (*file_splits(str(out / runfolder.QUESTIONS)), None, runfolder.read_bake_json(out)["questions"])
    train_q, heldout_q, question_records, question_summary = chosen or bake_questions(config, model, tokenizer,
                                                                                     system_prompt, progress)
    train_jobs = build_jobs(tokenizer, teacher_prompt, train_q, "train", config.sample.trajectories_per_question)
    heldout_jobs = build_jobs(tokenizer, teacher_prompt, heldout_q, "heldout",
                              config.sample.heldout_trajectories_per_question)
    jobs = train_jobs + heldout_jobs
    prompt_tokens = len(tokenizer(teacher_prompt, add_special_tokens=False)["input_ids"])
    _check_context(model, jobs, config.sample.max_new_tokens, prompt_tokens)

    with runfolder.run_lock(out):
        progress_file = out / runfolder.SAMPLING_PROGRESS
        if resume:
            _terminate_torn_line(progress_file)
            _update_status(out, status="running", stage="sampling")
        else:
            runfolder.prepare_out_dir(out, overwrite)
            progress_file.unlink(missing_ok=True)
            runfolder.atomic_write_text(out / runfolder.SYSTEM_PROMPT, system_prompt)
            runfolder.atomic_write_text(out / runfolder.QUESTIONS, "".join(
                json.dumps(r, ensure_ascii=False) + "\n" for r in question_records))
            save_config(_absolute_paths(config), out / runfolder.CONFIG_YAML)
            runfolder.atomic_write_json(out / runfolder.BAKE_JSON, {
                "status": "running", "stage": "sampling",
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "model": vars(source),
                "system_prompt": system_prompt,
                "system_prompt_tokens": prompt_tokens,
                "framing": describe_framing(tokenizer, teacher_prompt),
                "teacher": {"system_prompt": teacher_prompt, "carries_prompts": carry,
                            "model": "the original base model" if carry else "the base model with the --on chain "
                                                                              "merged" if config.model.on else
                            "the base model",
                            "chain": [{"run": str(run.resolve()), "system_prompt":
                                       (run / runfolder.SYSTEM_PROMPT).read_text(encoding="utf-8")}
                                      for run, _ in chain_runs(config)]},
                "seed": config.seed,
                "config": _absolute_paths(config).to_dict(),
                "questions": {"source": config.sample.questions, "train": train_q, "heldout": heldout_q,
                              "mix": question_summary},
                "versions": _versions(),
            })
        done = read_sampled(progress_file)   # by index into jobs (training jobs first)
        top_k = config.train.teacher_top_k
        # the training split's cache is top-k (train.teacher_top_k) or full; the held-out split's is always full
        keep = {split: k for split, split_jobs, k in (("train", train_jobs, top_k), ("heldout", heldout_jobs, 0))
                if keep_logits and not done and TeacherCache.fits(model, len(split_jobs) * config.sample.max_new_tokens,
                                                                  config.train.teacher_cache_gb, k)}
        try:
            start = time.perf_counter()
            teacher = {}
            if config.sample.sampler == "vllm":
                from .vllm_sampler import build_engine, sample_with_vllm

                streams, engine = [], build_engine(source.folder, config.seed, top_k)
                for split, split_jobs, seed, offset in (("train", train_jobs, 2 * config.seed + 1, 0),
                                                        ("heldout", heldout_jobs, 2 * config.seed, len(train_jobs))):
                    sampled, top = sample_with_vllm(source.folder, tokenizer, split_jobs, config.sample, seed, top_k,
                                                    engine)
                    append_sampled(progress_file, [(offset + i, t) for i, t in enumerate(sampled)])
                    streams.append(sampled)
                    if keep.get(split) and top is not None:   # vLLM gives top-k, never full logits
                        teacher[split] = TeacherCache(top=top)
            else:
                # Both splits in one stream of batches (fuller batches); every trajectory has its own random stream,
                # so the held-out trajectories depend only on the held-out questions and the seed, not on the
                # training budget: bakes stay comparable.
                sampled, kept = sample_trajectories(model, tokenizer, jobs, config.sample, config.seed, progress,
                                                    keep, "sampling", done,
                                                    lambda batch: append_sampled(progress_file, batch))
                streams = [sampled[:len(train_jobs)], sampled[len(train_jobs):]]
                if "train" in keep:
                    part = kept[:len(train_jobs)]
                    teacher["train"] = TeacherCache(top=part) if top_k else TeacherCache(logits=part)
                if "heldout" in keep:
                    teacher["heldout"] = TeacherCache(logits=kept[len(train_jobs):])
            train, heldout = streams
            if config.sample.turns > 1:   # later turns of the training dialogues; their teacher cache comes later
                train = train + continue_dialogues(model, tokenizer, train, teacher_prompt, config.sample,
                                                   config.seed, config.sample.turns, progress)
                teacher.pop("train", None)
            trajectories = train + heldout
            seconds = time.perf_counter() - start
            write_trajectories(out / runfolder.TRAJECTORIES, trajectories)
            progress_file.unlink(missing_ok=True)
        except BaseException as exc:
            _update_status(out, status="failed", error=f"sampling: {exc!r}")
            raise
        if carry:   # the teacher's distributions are kept (or train_run computes them); the student is the chain
            model = place(merge_chain(model, config), config.model.device, config.model.precision)
        new_tokens = sum(len(t.completion_ids) for t in trajectories)
        _update_status(out, status="running", stage="sampled", metrics={
            "sampling_seconds": seconds, "sampled_tokens": new_tokens, "sampling_tokens_per_s": new_tokens / seconds,
            "unfinished_trajectories": sum(not t.finished for t in trajectories),
            "resumed_sampling_batches": bool(done)})
        return (model, tokenizer, source), teacher


def _absolute_paths(config: BakeConfig) -> BakeConfig:
    """Paths in the config, made absolute for saving: config.yaml and bake.json then reload (resume, eval) from any
    directory. Messages about the paths keep the user's own spelling, so only what is saved is converted."""
    changes = {}
    if config.sample.questions not in (AUTO, BUILTIN, ARITHMETIC):
        changes["sample.questions"] = str(Path(config.sample.questions).expanduser().resolve())
    for key, name in (("model.name", config.model.name), ("sample.question_model", config.sample.question_model)):
        if name and Path(name).expanduser().exists():
            changes[key] = str(Path(name).expanduser().resolve())
    return override(config, changes) if changes else config


def _terminate_torn_line(path: Path) -> None:
    """A kill mid-write can leave the progress file without its last newline: end that line before appending."""
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "ab") as handle:
            handle.write(b"\n")


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
    config = config or load_config(out / runfolder.CONFIG_YAML)
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
            summary = train_adapter(model, train, config.train, pad_id, config.seed, out, heldout_kl, progress,
                                    train_cache, resume_from=checkpoint, rollouts=rollouts)
            if main:
                save_adapter(model, out / runfolder.ADAPTER)
                curve = summary["heldout_curve"]   # starts at step 0, the fresh adapter (B = 0): the base model
                kl_before = curve[0]["heldout_kl"]
                kl_after = (curve[-1]["heldout_kl"] if curve[-1]["step"] == summary["steps"]
                            else heldout_kl.measure(model))
            total = time.perf_counter() - start
        except BaseException as exc:
            if main:
                _update_status(out, status="failed", error=f"training: {exc!r}")
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
                "heldout_tokens": heldout_kl.tokens, "processes": world()[1],
            })
            _update_status(out, status="finished", stage="finished", metrics=metrics,
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
        heldout_cache = TeacherCache.compute(root, heldout, pad_id, config.train.micro_batch_tokens)
    return train_cache, heldout_cache


def _prepare_training(out: Path, config: BakeConfig, resume: bool) -> Path | None:
    """Clear what training will write (or, resuming, cut it back to the last checkpoint); returns that checkpoint."""
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        _cut_metrics(out / runfolder.METRICS, int(checkpoint.name.split("-")[1]))
    else:
        (out / runfolder.METRICS).unlink(missing_ok=True)
        shutil.rmtree(out / runfolder.CHECKPOINTS, ignore_errors=True)
    shutil.rmtree(out / runfolder.ADAPTER, ignore_errors=True)
    save_config(_absolute_paths(config), out / runfolder.CONFIG_YAML)
    _update_status(out, status="running", stage="training", config=_absolute_paths(config).to_dict(),
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
