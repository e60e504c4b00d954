"""Batched trajectory sampling from the teacher (the base model prompted with the system prompt).

Prompts of similar length are batched together (left padding, a KV cache, the shared prompt prefix computed once)
and decoded by decode.py. Sampling settings are passed explicitly in a fresh GenerationConfig so nothing is
inherited from the checkpoint's generation_config (which may, for example, carry top_k=50).
"""
from __future__ import annotations

import hashlib
import math

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from .config import SampleConfig
from .data import Trajectory, shared_prefix_length
from .decode import cache_fallback, decode, roomy_cache
from .prompts import stop_token_ids


def generation_config(cfg: SampleConfig, stop_ids: list[int], pad_id: int, max_new_tokens: int | None = None):
    greedy = cfg.sampling_temperature == 0
    return GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else cfg.sampling_temperature,
        top_p=None if greedy else cfg.top_p,
        top_k=None,  # the full vocabulary; top_p alone truncates
        max_new_tokens=max_new_tokens or cfg.max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
    )


def cut_at_stop(ids: list[int], stop_ids: list[int]) -> tuple[list[int], bool]:
    """Keep tokens up to and including the first stop token; (ids, finished)."""
    for i, token in enumerate(ids):
        if token in stop_ids:
            return ids[: i + 1], True
    return ids, False


@torch.no_grad()
def generate_batch(model, prompts: list[list[int]], gen_config: GenerationConfig, pad_id: int,
                   stop_ids: list[int], keep: list[int | None] | None = None, seeds: list[int] | None = None,
                   share_prefix: bool = True):
    """Generate one continuation per prompt (token-id lists).

    Teacher prompts share a long prefix (chat template + system prompt: 54 of 72 tokens for the example persona on
    SmolLM2), so its keys and values are computed once and the prompts are laid out as
    [shared prefix][left padding][own tokens], the padding masked out: prefill then costs only each prompt's own
    tokens. Positions come from the attention mask, so every prompt sees the positions it would have alone.

    Args:
        keep: per prompt, which teacher distribution to keep for its sampled tokens: None (nothing), 0 (the raw
            logits [n_i, V] that predicted each token: the model's own distribution, before temperature or top_p
            touch it) or k > 0 (its top-k as ([n_i, k] ids, [n_i, k] log-probs), reduced at every step, so only
            B × V floats are held at a time). All top-k prompts of a batch share one k.
        seeds: per prompt, the seed of its own random stream (decode's generators); None: torch's global RNG.
        share_prefix: False computes every row's prompt in full, for rows whose weights differ
            (baked.per_row_adapter): no shared prefix, and no shared prefill of a repeated prompt.
    Returns (results, kept): results holds (ids, finished) per prompt; kept holds what `keep` asked for, per
    prompt (None where nothing was kept); kept is None without `keep`.
    """
    plain_cache = cache_fallback(model.config) is None   # else transformers' own cache, prompts run whole
    shared = shared_prefix_length(prompts) if share_prefix and plain_cache else 0
    own = [p[shared:] for p in prompts]
    width = max(len(p) for p in own)
    input_ids = torch.tensor([prompts[0][:shared] + [pad_id] * (width - len(p)) + p for p in own])
    attention_mask = torch.tensor([[1] * shared + [0] * (width - len(p)) + [1] * len(p) for p in own])
    cache = roomy_cache(model, prompts[0][:shared], len(prompts), shared + width + gen_config.max_new_tokens
                        ) if plain_cache else None
    temperature = gen_config.temperature if gen_config.do_sample else 0.0
    generators = [torch.Generator().manual_seed(seed) for seed in seeds] if seeds is not None else None
    keep = keep if keep is not None and any(k is not None for k in keep) else None
    full = [i for i, k in enumerate(keep or []) if k == 0]
    top = [i for i, k in enumerate(keep or []) if k]
    top_k = {keep[i] for i in top}
    if len(top_k) > 1:
        raise ValueError(f"one top-k per batch, not {sorted(top_k)}")
    top_k = top_k.pop() if top_k else 0
    steps = []

    def on_step(logits, best):   # this step's full logits of `full` rows, top-k log-probs of `top` rows
        kept_top = None
        if top:
            log_z = torch.logsumexp(logits[top], -1, keepdim=True)
            kept_top = (best.indices[top, :top_k].cpu(), (best.values[top, :top_k] - log_z).cpu())
        steps.append((logits[full].cpu() if full else None, kept_top))

    tokens = decode(model, input_ids, attention_mask, cache, gen_config.max_new_tokens, temperature,
                    gen_config.top_p or 1.0, stop_ids, pad_id, on_step if keep else None, top_k, generators,
                    same_weights=share_prefix)
    results = [cut_at_stop(row.tolist(), stop_ids) for row in tokens]
    if keep is None:
        return results, None
    kept: list = [None] * len(prompts)
    for j, i in enumerate(full):   # copy each row's own steps, so the batch-wide tensors can be freed
        kept[i] = torch.stack([step[0][j] for step in steps[:len(results[i][0])]])
    for j, i in enumerate(top):
        n = len(results[i][0])
        kept[i] = tuple(torch.stack([step[1][part][j] for step in steps[:n]]) for part in (0, 1))
    return results, kept


def stream_seed(*parts) -> int:
    """A 63-bit seed for one random stream, from `parts` (their str) only: stable across processes and platforms."""
    key = "\x1f".join(str(part) for part in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def batches_of(order: list[int], size: int) -> list[list[int]]:
    """`order` cut into as few batches of at most `size` as possible, of equal sizes (±1): no small last batch."""
    count = max(1, math.ceil(len(order) / size))
    bounds = [round(len(order) * b / count) for b in range(count + 1)]
    return [order[bounds[b]:bounds[b + 1]] for b in range(count)]


def sample_trajectories(model, tokenizer, jobs: list[dict], cfg: SampleConfig, seed: int,
                        progress: bool = True, keep: dict[str, int] | None = None, desc: str = "sampling",
                        done: dict[int, Trajectory] | None = None, on_batch=None):
    """Sample one trajectory per job, jobs of every split in one stream of length-sorted batches.

    Args:
        jobs: dicts with question, split, sample_index, teacher_prompt_ids, student_prompt_ids.
        keep: the splits whose teacher distribution to keep for every sampled token, and how: 0 for the full logits
            ([n_i, V] float32), k > 0 for the top-k (ids, log-probs), reduced at every step (generate_batch).
        done: trajectories already sampled, by job index (a resumed run): a batch whose jobs are all there is
            skipped; any other batch is sampled whole, so it gets exactly the tokens an uninterrupted run gets.
        on_batch: called with [(job index, Trajectory)] after each sampled batch (the resumable progress file).
    Returns:
        (trajectories, kept): trajectories in the order of `jobs`, each drawn from its own random stream, seeded
        from (seed, split, question, sample index): a run repeats, and a trajectory does not depend on which other
        jobs are sampled with it (up to float rounding, which batch shapes change); kept[i] is what
        `keep` asked for job i (None for other splits), or kept is None without `keep`. The kept distributions
        of skipped batches are not known: pass `keep` only when nothing is `done`.
    """
    stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    pad_id = tokenizer.pad_token_id
    gen_config = generation_config(cfg, stop_ids, pad_id)
    order = sorted(range(len(jobs)), key=lambda i: len(jobs[i]["teacher_prompt_ids"]))
    done = done or {}
    results: dict[int, Trajectory] = {}
    kept_by_job: dict[int, object] = {}
    bar = tqdm(total=len(jobs), desc=desc, unit="traj", disable=not progress)
    for batch in batches_of(order, cfg.sample_batch_size):
        if all(i in done for i in batch):
            results.update((i, done[i]) for i in batch)
            bar.update(len(batch))
            continue
        prompts = [jobs[i]["teacher_prompt_ids"] for i in batch]
        out, kept = generate_batch(model, prompts, gen_config, pad_id, stop_ids,
                                   [(keep or {}).get(jobs[i]["split"]) for i in batch],
                                   [stream_seed(seed, jobs[i]["split"], jobs[i]["question"], jobs[i]["sample_index"])
                                    for i in batch])
        if kept is not None:
            kept_by_job.update(zip(batch, kept))
            del kept
        for i, (ids, finished) in zip(batch, out):
            results[i] = Trajectory(**jobs[i], completion_ids=ids, finished=finished,
                                    text=tokenizer.decode(ids, skip_special_tokens=True))
        if on_batch:
            on_batch([(i, results[i]) for i in batch])
        bar.update(len(batch))
    bar.close()
    trajectories = [results[i] for i in range(len(jobs))]
    return trajectories, ([kept_by_job.get(i) for i in range(len(jobs))] if keep else None)
