"""Batched trajectory sampling from the teacher (the base model prompted with the system prompt).

Prompts of similar length are batched together (left padding, a KV cache, the shared prompt prefix computed once)
and decoded by decode.py. Sampling settings are passed explicitly in a fresh GenerationConfig so nothing is
inherited from the checkpoint's generation_config (which may, for example, carry top_k=50).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from .config import SampleConfig
from .data import Trajectory, shared_prefix_length
from .decode import decode, roomy_cache
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
                   stop_ids: list[int], keep_logits: bool = False, top_k: int = 0, share_prefix: bool = True):
    """Generate one continuation per prompt (token-id lists).

    Teacher prompts share a long prefix (chat template + system prompt: 54 of 72 tokens for the example persona on
    SmolLM2), so its keys and values are computed once and the prompts are laid out as
    [shared prefix][left padding][own tokens], the padding masked out: prefill then costs only each prompt's own
    tokens. Positions come from the attention mask, so every prompt sees the positions it would have alone.

    Returns (results, logits): results holds (ids, finished) per prompt; logits (None unless `keep_logits`) holds the
    raw logits [n_i, V] that predicted each kept token: the model's own next-token distribution, before temperature
    or top_p touch it. With `top_k` > 0 each step is reduced at once to its top-k (ids, log-probs), so a batch's
    full-vocabulary logits are never held (B × V floats at a time instead of B × T × V). `share_prefix=False`
    computes every row's prompt in full: for rows whose weights differ (baked.per_row_adapter).
    """
    shared = shared_prefix_length(prompts) if share_prefix else 0
    own = [p[shared:] for p in prompts]
    width = max(len(p) for p in own)
    input_ids = torch.tensor([prompts[0][:shared] + [pad_id] * (width - len(p)) + p for p in own])
    attention_mask = torch.tensor([[1] * shared + [0] * (width - len(p)) + [1] * len(p) for p in own])
    cache = roomy_cache(model, prompts[0][:shared], len(prompts), shared + width + gen_config.max_new_tokens)
    temperature = gen_config.temperature if gen_config.do_sample else 0.0
    steps = []

    def keep(logits, top):   # the step's top-k log-probabilities (from the sampler's own topk), or its logits
        if not top_k:
            return steps.append(logits.cpu())
        log_z = torch.logsumexp(logits, -1, keepdim=True)
        steps.append((top.indices[:, :top_k].cpu(), (top.values[:, :top_k] - log_z).cpu()))

    tokens = decode(model, input_ids, attention_mask, cache, gen_config.max_new_tokens, temperature,
                    gen_config.top_p or 1.0, stop_ids, pad_id, keep if keep_logits else None,
                    top_k if keep_logits else 0)
    results = [cut_at_stop(row.tolist(), stop_ids) for row in tokens]
    if not keep_logits:
        return results, None
    if top_k:   # per row: ([n_i, k] ids, [n_i, k] log-probs)
        return results, [(torch.stack([ids[i] for ids, _ in steps[:len(r)]]),
                          torch.stack([lp[i] for _, lp in steps[:len(r)]])) for i, (r, _) in enumerate(results)]
    # steps: one [B, V] tensor per step; copy each row's kept steps so the batch-wide tensors can be freed
    return results, [torch.stack([step[i] for step in steps[:len(ids)]]) for i, (ids, _) in enumerate(results)]


def sample_trajectories(model, tokenizer, jobs: list[dict], cfg: SampleConfig, seed: int,
                        progress: bool = True, keep_logits: bool = False, desc: str = "sampling",
                        done: dict[int, Trajectory] | None = None, on_batch=None, top_k: int = 0):
    """Sample one trajectory per job.

    Args:
        jobs: dicts with question, split, sample_index, teacher_prompt_ids, student_prompt_ids.
        keep_logits: also return the teacher's logits for every sampled token (see generate_batch); with
            `top_k` > 0, as (ids, log-probs) of the k most likely tokens, converted batch by batch so the
            full-vocabulary logits of only one batch are ever held.
        done: trajectories already sampled, by job index (a resumed run): a batch whose jobs are all there is
            skipped; any other batch is sampled whole, so it gets exactly the tokens an uninterrupted run gets.
        on_batch: called with [(job index, Trajectory)] after each sampled batch (the resumable progress file).
    Returns:
        (trajectories, logits): trajectories in the order of `jobs` (each batch is seeded from (seed, batch index)
        so a run repeats); logits[i] is [len(completion_i), V] float32 with keep_logits, else logits is None.
        Logits of skipped batches are not known: pass keep_logits only when nothing is `done`.
    """
    stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    pad_id = tokenizer.pad_token_id
    gen_config = generation_config(cfg, stop_ids, pad_id)
    order = sorted(range(len(jobs)), key=lambda i: len(jobs[i]["teacher_prompt_ids"]))
    batches = [order[i:i + cfg.sample_batch_size] for i in range(0, len(order), cfg.sample_batch_size)]
    done = done or {}
    results: dict[int, Trajectory] = {}
    logits: dict[int, torch.Tensor] = {}
    bar = tqdm(total=len(jobs), desc=desc, unit="traj", disable=not progress)
    for number, batch in enumerate(batches):
        if all(i in done for i in batch):
            results.update((i, done[i]) for i in batch)
            bar.update(len(batch))
            continue
        torch.manual_seed(seed * 100_003 + number)
        prompts = [jobs[i]["teacher_prompt_ids"] for i in batch]
        out, kept = generate_batch(model, prompts, gen_config, pad_id, stop_ids, keep_logits, top_k)
        if kept is not None:
            logits.update(zip(batch, kept))
            del kept
        for i, (ids, finished) in zip(batch, out):
            results[i] = Trajectory(**jobs[i], completion_ids=ids, finished=finished,
                                    text=tokenizer.decode(ids, skip_special_tokens=True))
        if on_batch:
            on_batch([(i, results[i]) for i in batch])
        bar.update(len(batch))
    bar.close()
    trajectories = [results[i] for i in range(len(jobs))]
    return trajectories, ([logits[i] for i in range(len(jobs))] if keep_logits else None)
