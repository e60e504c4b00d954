"""Stage 1 of a bake: choose the questions, sample the teacher's trajectories into the run folder.

`sample_run` writes system_prompt.txt, config.yaml, questions.jsonl, trajectories.jsonl and bake.json (status
"sampled"); bake.py's `train_run` reads them back.
"""
from __future__ import annotations

import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from . import __version__, runfolder
from .autoquestions import bake_questions, check_question_model
from .base import carries_prompts, chain_runs, load_base, merge_chain, teacher_system_prompt
from .config import BakeConfig, resolve_schedule, save_config
from .data import append_sampled, read_sampled, write_trajectories
from .dialogues import continue_dialogues
from .errors import UserError
from .fast_paths import describe_fast_paths, fallbacks
from .logits import TeacherCache
from .precision import place, to_float32_weights
from .prompts import describe_framing, framing_kind, student_prompt_ids, teacher_prompt_ids
from .questions import AUTO, file_records, record_samples, record_sources, record_splits
from .sampling import sample_trajectories
from .train import check_start_adapter, check_target_modules


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


def build_jobs(tokenizer, system_prompt: str, questions: list[str], split: str, per_question: int,
               samples: dict[str, int] | None = None, unprompted: set[str] = frozenset()) -> list[dict]:
    """One sampling job per trajectory: `per_question` per question, times its `samples` (questions.jsonl; more for
    a targeted question whose answer uses a rare word of the prompt), each with its own sample_index (seed). The
    teacher of an `unprompted` question (sample.general_teacher base) sees what the student sees: no prompt."""
    jobs = []
    for question in questions:
        student = student_prompt_ids(tokenizer, question)
        teacher = student if question in unprompted else teacher_prompt_ids(tokenizer, question, system_prompt)
        jobs += [{"question": question, "split": split, "sample_index": k, "teacher_prompt_ids": teacher,
                  "student_prompt_ids": student} for k in range(per_question * (samples or {}).get(question, 1))]
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


def sample_run(system_prompt: str, out: Path, config: BakeConfig, overwrite: bool = False, progress: bool = True,
               keep_logits: bool = False, resume: bool = False):
    """Stage 1: split questions, sample teacher trajectories into `out`.

    Each sampled batch is appended to trajectories.partial.jsonl as it finishes; with `resume` (a run folder whose
    sampling was killed) the batches found there are kept and only the others are sampled, with the seeds they
    would have had, so the trajectories equal an uninterrupted run's. trajectories.jsonl appears only when all are
    sampled.

    Returns ((model, tokenizer, source), teacher): with `keep_logits`, teacher maps "train" to a TeacherCache of
    the training trajectories (top-k when train.teacher_top_k, else full logits) and "heldout" to the held-out
    trajectories' full logits (float32 weights only), each in the order of trajectories.jsonl and only where it fits
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
    check_start_adapter(config.train)
    # a question file is read (and its problems reported) before the model loads; auto questions need the model
    chosen = None if config.sample.questions == AUTO else bake_questions(config, None, None, system_prompt)
    if chosen:
        _unprompted(config, chosen[0], chosen[2])
    carry = carries_prompts(config)
    teacher_prompt = teacher_system_prompt(config, system_prompt)
    model, tokenizer, source = load_base(config, merged=not carry)   # carrying: the teacher is the original base
    precision = getattr(model, "promptbake_precision", "float32")
    config, schedule = resolve_schedule(config, precision)
    check_target_modules(model, config.train)   # before minutes of sampling, not after
    prompt_tokens = len(tokenizer(teacher_prompt, add_special_tokens=False)["input_ids"])
    # a prompt too long for any question is refused before the question phase spends time on it
    _check_context(model, [{"teacher_prompt_ids": teacher_prompt_ids(tokenizer, "?", teacher_prompt)}],
                   config.sample.max_new_tokens, prompt_tokens)
    if config.sample.turns > 1 and framing_kind(tokenizer) == "plain_prefix":
        raise UserError(f"--turns {config.sample.turns} needs a chat template to mark whose turn is whose, and this "
                        f"model's tokenizer has none; bake single-turn (--turns 1) or use a chat model")
    paths = describe_fast_paths(model)
    for line in fallbacks(paths) if progress else []:
        print(f"promptbake: {line}", flush=True)
    if progress:
        decision = model.promptbake_precision_decision
        print(f"promptbake: precision {decision['precision']} ({decision['reason']})", flush=True)
        if schedule:
            print(f"promptbake: {schedule}", flush=True)
    if resume and (out / runfolder.QUESTIONS).is_file():   # the questions the killed run chose, not new ones
        path = str(out / runfolder.QUESTIONS)
        records = file_records(path)
        chosen = (*record_splits(records, path), records, runfolder.read_bake_json(out)["questions"])
    question_start = time.perf_counter()
    train_q, heldout_q, question_records, question_summary = chosen or bake_questions(config, model, tokenizer,
                                                                                     system_prompt, progress)
    question_seconds = time.perf_counter() - question_start     # writing and ranking --questions auto's candidates
    samples = record_samples(question_records)
    train_jobs = build_jobs(tokenizer, teacher_prompt, train_q, "train", config.sample.trajectories_per_question,
                            samples, unprompted := _unprompted(config, train_q, question_records))
    heldout_jobs = build_jobs(tokenizer, teacher_prompt, heldout_q, "heldout",
                              config.sample.heldout_trajectories_per_question)
    jobs = train_jobs + heldout_jobs
    _check_context(model, jobs, config.sample.max_new_tokens, prompt_tokens)

    with runfolder.run_lock(out):
        progress_file = out / runfolder.SAMPLING_PROGRESS
        if resume:
            _terminate_torn_line(progress_file)
            runfolder.update_status(out, status="running", stage="sampling")
        else:
            runfolder.prepare_out_dir(out, overwrite)
            progress_file.unlink(missing_ok=True)
            runfolder.atomic_write_text(out / runfolder.SYSTEM_PROMPT, system_prompt)
            runfolder.atomic_write_text(out / runfolder.QUESTIONS, "".join(
                json.dumps(r, ensure_ascii=False) + "\n" for r in question_records))
            save_config(runfolder.absolute_paths(config), out / runfolder.CONFIG_YAML)
            runfolder.atomic_write_json(out / runfolder.BAKE_JSON, {
                "status": "running", "stage": "sampling",
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "model": vars(source),
                "system_prompt": system_prompt,
                "system_prompt_tokens": prompt_tokens,
                "framing": describe_framing(tokenizer, teacher_prompt),
                "precision": getattr(model, "promptbake_precision_decision", None),
                "schedule": schedule,
                "fast_paths": paths,
                "teacher": {"system_prompt": teacher_prompt, "carries_prompts": carry,
                            "model": "the original base model" if carry else "the base model with the --on chain "
                                                                              "merged" if config.model.on else
                            "the base model",
                            "chain": [{"run": str(run.resolve()), "system_prompt":
                                       (run / runfolder.SYSTEM_PROMPT).read_text(encoding="utf-8")}
                                      for run, _ in chain_runs(config)],
                            "general_questions": "the base model without the prompt" if unprompted else "the same",
                            "unprompted_train_questions": len(unprompted)},
                "seed": config.seed,
                "config": runfolder.absolute_paths(config).to_dict(),
                "questions": {"source": config.sample.questions, "train": train_q, "heldout": heldout_q,
                              "mix": question_summary},
                "versions": _versions(),
            })
        done = read_sampled(progress_file)   # by index into jobs (training jobs first)
        top_k = config.train.teacher_top_k
        # the training split's cache is top-k (train.teacher_top_k) or full; the held-out split's is always full, and
        # not kept from bf16 weights: closure is measured against the float32 teacher, whose logits HeldoutKL computes
        # when none are given (keeping the bf16 ones held ~280 MB for SmolLM2 through sampling, for nothing)
        splits = [("train", train_jobs, top_k)]
        if precision != "bf16":
            splits.append(("heldout", heldout_jobs, 0))
        keep = {split: k for split, split_jobs, k in splits
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
            runfolder.update_status(out, status="failed", error=f"sampling: {exc!r}")
            raise
        if carry:   # the teacher's distributions are kept (or train_run computes them); the student is the chain
            model = place(merge_chain(to_float32_weights(model), config), config.model.device, config.model.precision)
        new_tokens = sum(len(t.completion_ids) for t in trajectories)
        runfolder.update_status(out, status="running", stage="sampled", metrics={
            "questions_seconds": question_seconds, "sampling_seconds": seconds, "sampled_tokens": new_tokens,
            "sampling_tokens_per_s": new_tokens / seconds,
            "unfinished_trajectories": sum(not t.finished for t in trajectories),
            "resumed_sampling_batches": bool(done)})
        return (model, tokenizer, source), teacher


def _unprompted(config: BakeConfig, train: list[str], records: list[dict]) -> set[str]:
    """The training questions whose teacher is the unprompted base (sample.general_teacher base): the general pool's
    share of --questions auto, or the `builtin` lines of a run's questions.jsonl. A split that is all one kind
    would bake nothing, or nothing but the prompt: refused."""
    if config.sample.general_teacher != "base":
        return set()
    sources = record_sources(records)
    general = {q for q in train if sources.get(q) == "builtin"}
    if not general or general == set(train):
        raise UserError(f"--general-teacher base needs training questions of both kinds, aimed at the prompt and "
                        f"from the general pool, and these are {'all' if general else 'none'} from the general "
                        f"pool; use --questions auto (the default) or a run's questions.jsonl")
    return general


def _terminate_torn_line(path: Path) -> None:
    """A kill mid-write can leave the progress file without its last newline: end that line before appending."""
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "ab") as handle:
            handle.write(b"\n")
