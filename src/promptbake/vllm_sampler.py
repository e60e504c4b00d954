"""Optional vLLM sampling backend: the same Trajectory records as `sampling.sample_trajectories`, sampled by vLLM.

vLLM is imported in one place, `_import_vllm`, which only `build_engine` and `sample_with_vllm` call, so
`import promptbake` and the CPU install never need it (`pip install 'promptbake[vllm]'` adds it).

Written against vLLM 0.10.1 – 0.11 (the V1 engine; the engine setting `logprobs_mode` has its current meaning
from 0.10.1). Facts this module relies on:
- Prompts go in as token ids (`vllm.inputs.TokensPrompt`, a TypedDict: `{"prompt_token_ids": [...]}`), so the
  chat template is rendered by promptbake, exactly as for the HF path; `LLM.generate` returns outputs in input order.
- `RequestOutput.outputs[0]` is a `CompletionOutput` with `token_ids`, `finish_reason` ("stop" | "length" |
  "abort") and `logprobs`: one `dict[token_id, Logprob(logprob, rank, decoded_token)]` per generated token, holding
  the sampled token first, then the top k (`logprobs=k`) by rank: k entries, or k + 1 when the sampled one ranks
  below them.
- A stop token (EOS or one of `stop_token_ids`) stays in `token_ids`; vLLM drops it only from the text.
- `logprobs_mode="raw_logprobs"` (an engine setting) returns log_softmax of the model's own logits, before
  temperature, top_p or any other logits processor: the teacher's distribution, the same one the HF path keeps.
- `top_k=0` disables top-k (vLLM >= 0.10 prefers 0 and quietly accepts -1).
"""
from __future__ import annotations

import torch

from .config import SampleConfig
from .data import Trajectory
from .errors import UserError
from .prompts import stop_token_ids
from .sampling import cut_at_stop

VLLM_MISSING = "the vLLM sampler needs vLLM on a CUDA machine: pip install 'promptbake[vllm]'"


def check_available() -> None:
    """Raise the one-line UserError now (before any model loads) when vLLM is not installed."""
    _import_vllm()


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{VLLM_MISSING} ({detail})") from None
    return vllm


def request_seed(seed: int, index: int) -> int:
    """Job `index`'s request seed: distinct for each job of a run (up to a million jobs), the same in a repeat."""
    return (seed * 1_000_003 + index) % 2**63


def sampling_params_kwargs(cfg: SampleConfig, stop_ids: list[int], seed: int, index: int,
                           top_k_logprobs: int = 0) -> dict:
    """Keyword arguments of `vllm.SamplingParams` for job `index`, every sampling setting explicit.

    Mirrors `sampling.generation_config`: temperature 0 is greedy (top_p then 1.0), top-k is off (the full
    vocabulary; top_p alone truncates), at most `max_new_tokens` tokens, stopping at `stop_ids`.
    """
    greedy = cfg.sampling_temperature == 0
    return {
        "n": 1,
        "temperature": 0.0 if greedy else cfg.sampling_temperature,
        "top_p": 1.0 if greedy else cfg.top_p,
        "top_k": 0,          # disabled (vLLM >= 0.10; -1 meant the same before)
        "min_p": 0.0,
        "max_tokens": cfg.max_new_tokens,
        "stop_token_ids": list(stop_ids),
        "seed": request_seed(seed, index),
        "logprobs": top_k_logprobs if top_k_logprobs > 0 else None,
        "detokenize": False,  # the text is decoded by promptbake's tokenizer, as in the HF path
    }


def top_k_tensors(positions: list[dict], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's per-token logprob dicts → (ids LongTensor [n, k], logprobs FloatTensor [n, k]), best first.

    Each dict holds the top k tokens plus the sampled token when it ranks below them; the extra entry is dropped.
    """
    ids, values = [], []
    for number, position in enumerate(positions):
        if len(position) < k:
            raise ValueError(f"vLLM returned {len(position)} logprobs at token {number}, fewer than the {k} asked for")
        best = sorted(position.items(), key=lambda item: item[1].logprob, reverse=True)[:k]
        ids.append([token for token, _ in best])
        values.append([entry.logprob for _, entry in best])
    return (torch.tensor(ids, dtype=torch.long).reshape(-1, k),
            torch.tensor(values, dtype=torch.float32).reshape(-1, k))


def completion_from_output(output, stop_ids: list[int], top_k_logprobs: int = 0):
    """One vLLM RequestOutput → (completion_ids, finished, top-k or None).

    completion_ids end at the first stop token, which is kept (the baked model must learn to stop), exactly as
    `sampling.cut_at_stop` does; `finished` is False when max_tokens cut the answer off.
    """
    sample = output.outputs[0]
    if sample.finish_reason not in ("stop", "length"):
        raise ValueError(f"a vLLM request ended with finish_reason={sample.finish_reason!r}")
    ids, finished = cut_at_stop(list(sample.token_ids), stop_ids)
    if sample.finish_reason == "stop" and not finished:
        raise ValueError(f"vLLM stopped a request (stop_reason={sample.stop_reason!r}) but its token_ids hold none "
                         f"of the stop tokens {stop_ids}; promptbake needs the stop token kept (vLLM >= 0.10.1)")
    if not top_k_logprobs:
        return ids, finished, None
    if sample.logprobs is None or len(sample.logprobs) < len(ids):
        raise ValueError("vLLM returned no logprobs for some sampled tokens; was the request sent with logprobs=k?")
    return ids, finished, top_k_tensors(sample.logprobs[:len(ids)], top_k_logprobs)


def trajectory_from_output(job: dict, output, tokenizer, stop_ids: list[int], top_k_logprobs: int = 0):
    """(Trajectory, top-k or None) for one job, the record `sample_trajectories` would write for the same tokens."""
    ids, finished, top_k = completion_from_output(output, stop_ids, top_k_logprobs)
    trajectory = Trajectory(**job, completion_ids=ids, finished=finished,
                            text=tokenizer.decode(ids, skip_special_tokens=True))
    return trajectory, top_k


def _generation_config(model_folder: str):
    """The checkpoint's generation config (for its extra end-of-turn ids), as the HF path's model.generation_config."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_folder)
    except OSError:
        return None  # no generation_config.json: the tokenizer's EOS alone ends a turn


def build_engine(model_folder: str, seed: int = 0, top_k_logprobs: int = 0, dtype: str = "bfloat16", **engine_args):
    """A `vllm.LLM` on an ordinary HF model folder whose logprobs are the model's raw distribution.

    engine_args go to `vllm.LLM` as they are (gpu_memory_utilization, max_model_len, enforce_eager, ...).
    generation_config="vllm": no sampling default is taken from the checkpoint; every setting comes from the config.
    """
    vllm = _import_vllm()
    return vllm.LLM(model=model_folder, tokenizer=model_folder, dtype=dtype, seed=seed,
                    logprobs_mode="raw_logprobs", max_logprobs=max(20, top_k_logprobs),
                    generation_config="vllm", **engine_args)


def sample_with_vllm(model_folder: str, tokenizer, jobs: list[dict], cfg: SampleConfig, seed: int,
                     top_k_logprobs: int = 0, llm=None):
    """Sample one trajectory per job with vLLM (the teacher is the base model in `model_folder`).

    Args:
        jobs: dicts with question, split, sample_index, teacher_prompt_ids, student_prompt_ids (bake.build_jobs).
        seed: run seed; job i is sampled with its own seed `request_seed(seed, i)`, so a run repeats whatever
            the batching (up to the GPU's numerics). The tokens differ from the HF path's, which seeds per batch.
        top_k_logprobs: k > 0 also returns the teacher's top-k raw log-probabilities for every kept token.
        llm: an engine from `build_engine` (reused across calls); None builds one (minutes: model load, graphs).
    Returns:
        (trajectories, top_k): trajectories in the order of `jobs`; top_k[i] = (ids LongTensor [n_i, k],
        logprobs FloatTensor [n_i, k]) over the n_i tokens of completion i, best first, or top_k is None when k = 0.
    """
    vllm = _import_vllm()
    stop_ids = stop_token_ids(tokenizer, _generation_config(model_folder))
    try:  # SamplingParams validates on construction: bad settings fail here, before the engine loads
        params = [vllm.SamplingParams(**sampling_params_kwargs(cfg, stop_ids, seed, i, top_k_logprobs))
                  for i in range(len(jobs))]
    except ValueError as exc:
        raise UserError(f"vLLM refuses the sampling settings: {exc}") from None
    if llm is None:
        llm = build_engine(model_folder, seed, top_k_logprobs)
    prompts = [{"prompt_token_ids": list(job["teacher_prompt_ids"])} for job in jobs]  # vllm.inputs.TokensPrompt
    outputs = llm.generate(prompts, params, use_tqdm=True)
    pairs = [trajectory_from_output(job, output, tokenizer, stop_ids, top_k_logprobs)
             for job, output in zip(jobs, outputs, strict=True)]
    trajectories = [trajectory for trajectory, _ in pairs]
    return trajectories, ([top_k for _, top_k in pairs] if top_k_logprobs > 0 else None)
