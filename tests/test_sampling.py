"""Sampling with the teacher prompts' shared prefix computed once equals sampling each prompt in full."""
import pytest
import torch

from conftest import PERSONA, QUESTIONS
from promptbake import data, sampling
from promptbake.config import SampleConfig
from promptbake.prompts import stop_token_ids, teacher_prompt_ids


def test_shared_prefix_length_leaves_every_prompt_a_token_of_its_own():
    head = list(range(100, 110))
    assert data.shared_prefix_length([head + [1, 2], head + [3]]) == 10
    assert data.shared_prefix_length([head, head]) == 9                   # one token of its own each
    assert data.shared_prefix_length([head[:5] + [1, 2], head[:5] + [3]]) == 0   # too short to be worth it
    assert data.shared_prefix_length([head + [1]]) == 0                   # a single prompt shares nothing


def test_shared_prefix_sampling_matches_full_prompts(tiny, monkeypatch):
    model, tokenizer = tiny
    prompts = [teacher_prompt_ids(tokenizer, q, PERSONA) for q in QUESTIONS + ["Why?"]]
    assert data.shared_prefix_length(prompts) >= data.MIN_SHARED_PREFIX
    stop = stop_token_ids(tokenizer, model.generation_config)
    greedy = sampling.generation_config(SampleConfig(sampling_temperature=0, max_new_tokens=10), stop,
                                        tokenizer.pad_token_id)
    shared, shared_logits = sampling.generate_batch(model, prompts, greedy, tokenizer.pad_token_id, stop, True)
    monkeypatch.setattr(data, "MIN_SHARED_PREFIX", 10**9)          # the plain left-padded path
    full, full_logits = sampling.generate_batch(model, prompts, greedy, tokenizer.pad_token_id, stop, True)
    assert shared == full
    for a, b in zip(shared_logits, full_logits):
        assert torch.allclose(a, b, atol=1e-4)
    alone, alone_logits = sampling.generate_batch(model, prompts[-1:], greedy, tokenizer.pad_token_id, stop, True)
    assert alone[0] == full[-1] and torch.allclose(alone_logits[0], full_logits[-1], atol=1e-4)


def test_nucleus_sampling_keeps_exactly_transformers_top_p_set():
    from transformers.generation.logits_process import TopPLogitsWarper

    from promptbake.decode import nucleus_mask

    logits = torch.randn(6, 500, generator=torch.Generator().manual_seed(0)) * 3
    for top_p in (0.3, 0.9, 0.99):
        warped = TopPLogitsWarper(top_p)(None, logits.clone())
        assert torch.equal(nucleus_mask(logits, 1.0, top_p), warped > float("-inf")), top_p


@pytest.mark.parametrize("candidates", [4, 1024])   # 4: most rows need the full-sort fallback
def test_next_tokens_draw_only_from_the_nucleus_and_follow_its_probabilities(candidates):
    from promptbake.decode import next_tokens, nucleus_mask

    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(1)) * 2
    allowed = nucleus_mask(logits, 1.0, 0.8)[0]
    torch.manual_seed(0)
    draws = torch.stack([next_tokens(logits, 1.0, 0.8, candidates) for _ in range(3000)]).flatten()
    assert allowed[draws].all()
    probs = torch.softmax(logits[0], -1) * allowed
    expected = probs / probs.sum()
    observed = torch.bincount(draws, minlength=50).float() / len(draws)
    assert (observed - expected).abs().max() < 0.03


def test_greedy_decoding_equals_transformers_generate(tiny):
    model, tokenizer = tiny
    prompts = [teacher_prompt_ids(tokenizer, q, PERSONA) for q in QUESTIONS]
    stop = stop_token_ids(tokenizer, model.generation_config)
    greedy = sampling.generation_config(SampleConfig(sampling_temperature=0, max_new_tokens=12), stop,
                                        tokenizer.pad_token_id)
    ours, _ = sampling.generate_batch(model, prompts, greedy, tokenizer.pad_token_id, stop)
    for prompt, (ids, finished) in zip(prompts, ours):
        reference = model.generate(input_ids=torch.tensor([prompt]), generation_config=greedy)[0, len(prompt):]
        assert ids == sampling.cut_at_stop(reference.tolist(), stop)[0]


def test_top_k_kept_during_sampling_equals_top_k_of_the_full_logits(tiny):
    from promptbake.logits import top_k_log_probs

    model, tokenizer = tiny
    prompts = [teacher_prompt_ids(tokenizer, q, PERSONA) for q in QUESTIONS]
    stop = stop_token_ids(tokenizer, model.generation_config)
    gen = sampling.generation_config(SampleConfig(max_new_tokens=8), stop, tokenizer.pad_token_id)
    torch.manual_seed(3)
    full_out, full = sampling.generate_batch(model, prompts, gen, tokenizer.pad_token_id, stop, True)
    torch.manual_seed(3)
    top_out, top = sampling.generate_batch(model, prompts, gen, tokenizer.pad_token_id, stop, True, top_k=16)
    assert top_out == full_out
    for logits, (ids, log_probs) in zip(full, top):
        want_ids, want_log_probs = top_k_log_probs(logits, 16)
        assert torch.equal(ids, want_ids) and torch.allclose(log_probs, want_log_probs)


def test_roomy_cache_gives_the_logits_of_a_growing_cache_and_refuses_to_overflow(tiny):
    from promptbake.decode import roomy_cache

    model, tokenizer = tiny
    prefix, rest = [5, 6, 7, 8], torch.tensor([[9, 10], [11, 12]])
    want = model(input_ids=torch.cat([torch.tensor([prefix] * 2), rest], 1)).logits[:, -2:]
    cache = roomy_cache(model, prefix, rows=2, room=7)
    got = model(input_ids=rest, position_ids=torch.tensor([[4, 5]] * 2), cache=cache, use_cache=True).logits
    assert torch.allclose(want, got, atol=1e-5)
    step = model(input_ids=rest[:, :1], position_ids=torch.tensor([[6]] * 2), cache=cache, use_cache=True)
    assert step.cache.get_seq_length() == 7
    with pytest.raises(RuntimeError, match="holds 7 positions"):
        model(input_ids=rest[:, :1], position_ids=torch.tensor([[7]] * 2), cache=cache, use_cache=True)
