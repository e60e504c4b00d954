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
