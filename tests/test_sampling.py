"""Sampling with the teacher prompts' shared prefix computed once equals sampling each prompt in full."""
import pytest
import torch

from conftest import PERSONA, QUESTIONS
from promptbake import data, sampling
from promptbake.config import SampleConfig
from promptbake.prompts import stop_token_ids, teacher_prompt_ids


def test_shared_prefix_length_leaves_every_prompt_a_token_of_its_own(monkeypatch):
    monkeypatch.setattr(data, "MIN_SAVED_TOKENS", 0)
    head = list(range(100, 110))
    assert data.shared_prefix_length([head + [1, 2], head + [3]]) == 10
    assert data.shared_prefix_length([head, head]) == 9                   # one token of its own each
    assert data.shared_prefix_length([head[:5] + [1, 2], head[:5] + [3]]) == 0   # too short to be worth it
    assert data.shared_prefix_length([head + [1]]) == 0                   # a single prompt shares nothing


def test_shared_prefix_is_kept_only_when_it_saves_enough_tokens(monkeypatch):
    monkeypatch.setattr(data, "MIN_SAVED_TOKENS", 96)
    head = list(range(100, 124))                                          # 24 tokens, like SmolLM2's template
    assert data.shared_prefix_length([head + [i] for i in range(2)]) == 0  # 24 saved: a second pass costs more
    assert data.shared_prefix_length([head + [i] for i in range(4)]) == 0  # 72 saved
    assert data.shared_prefix_length([head + [i] for i in range(5)]) == 24  # 96 saved


def test_shared_prefix_sampling_matches_full_prompts(tiny, monkeypatch):
    monkeypatch.setattr(data, "MIN_SAVED_TOKENS", 0)                       # share even between these few prompts
    model, tokenizer = tiny
    prompts = [teacher_prompt_ids(tokenizer, q, PERSONA) for q in QUESTIONS + ["Why?"]]
    assert data.shared_prefix_length(prompts) >= data.MIN_SHARED_PREFIX
    stop = stop_token_ids(tokenizer, model.generation_config)
    greedy = sampling.generation_config(SampleConfig(sampling_temperature=0, max_new_tokens=10), stop,
                                        tokenizer.pad_token_id)
    full_kept = [0] * len(prompts)
    shared, shared_logits = sampling.generate_batch(model, prompts, greedy, tokenizer.pad_token_id, stop, full_kept)
    monkeypatch.setattr(data, "MIN_SHARED_PREFIX", 10**9)          # the plain left-padded path
    full, full_logits = sampling.generate_batch(model, prompts, greedy, tokenizer.pad_token_id, stop, full_kept)
    assert shared == full
    for a, b in zip(shared_logits, full_logits):
        assert torch.allclose(a, b, atol=1e-4)
    alone, alone_logits = sampling.generate_batch(model, prompts[-1:], greedy, tokenizer.pad_token_id, stop, [0])
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


def _sampler(tiny):
    """(generate, n): generate(rows=None, **kwargs) samples 8 new tokens for the persona prompts of QUESTIONS (or
    the rows listed) with sampling.generate_batch; n is the number of prompts."""
    model, tokenizer = tiny
    prompts = [teacher_prompt_ids(tokenizer, q, PERSONA) for q in QUESTIONS]
    stop = stop_token_ids(tokenizer, model.generation_config)
    gen = sampling.generation_config(SampleConfig(max_new_tokens=8), stop, tokenizer.pad_token_id)

    def generate(rows=None, **kwargs):
        chosen = [prompts[i] for i in rows] if rows is not None else prompts
        return sampling.generate_batch(model, chosen, gen, tokenizer.pad_token_id, stop, **kwargs)

    return generate, len(prompts)


def test_top_k_kept_during_sampling_equals_top_k_of_the_full_logits(tiny):
    from promptbake.logits import top_k_log_probs

    generate, n = _sampler(tiny)
    seeds = list(range(10, 10 + n))
    full_out, full = generate(keep=[0] * n, seeds=seeds)
    top_out, top = generate(keep=[16] * n, seeds=seeds)
    mixed = [0, 16, None] * n
    mixed_out, kept = generate(keep=mixed[:n], seeds=seeds)
    assert top_out == full_out == mixed_out            # keeping logits does not change what is sampled
    for logits, (ids, log_probs) in zip(full, top):
        want_ids, want_log_probs = top_k_log_probs(logits, 16)
        assert torch.equal(ids, want_ids) and torch.allclose(log_probs, want_log_probs)
    for row, what in enumerate(mixed[:n]):           # each row kept as asked
        if what == 0:
            assert torch.equal(kept[row], full[row])
        elif what == 16:   # the same ids; log-probs to rounding (another batch shape may take another kernel path)
            assert torch.equal(kept[row][0], top[row][0]) and torch.allclose(kept[row][1], top[row][1], atol=1e-5)
        else:
            assert kept[row] is None


def test_a_trajectory_depends_on_its_own_seed_not_on_its_batch(tiny):
    generate, n = _sampler(tiny)
    seeds = list(range(20, 20 + n))
    together, _ = generate(seeds=seeds)
    torch.manual_seed(123)   # the global RNG plays no part
    alone = [generate(rows=[i], seeds=[s])[0][0] for i, s in enumerate(seeds)]
    assert together == alone
    other, _ = generate(seeds=[s + 1 for s in seeds])
    assert other != together


def test_batches_are_as_even_as_the_size_allows():
    assert [len(b) for b in sampling.batches_of(list(range(224)), 96)] == [75, 74, 75]
    assert [len(b) for b in sampling.batches_of(list(range(224)), 256)] == [224]
    assert sampling.batches_of(list(range(5)), 2) == [[0, 1], [2], [3, 4]]
    assert sampling.batches_of([], 4) == [[]]


def test_a_uniform_picks_its_token_by_the_inverse_cdf():
    from promptbake.decode import next_tokens

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    pick = [int(next_tokens(logits, 1.0, 0.9, uniforms=torch.tensor([u]))) for u in (0.0, 0.52, 0.53, 0.99, 1 - 1e-7)]
    assert pick == [0, 0, 1, 2, 2]     # 0.9 keeps the first three (0.5 + 0.3 < 0.9): cdf 0.5, 0.8, 0.95 of 0.95
    pick = [int(next_tokens(logits, 1.0, 1.0, uniforms=torch.tensor([u]))) for u in (0.79, 0.81, 0.96)]
    assert pick == [1, 2, 3]


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


@pytest.mark.parametrize("share_prefix", [True, False])
def test_a_repeated_prompt_is_prefilled_once_and_samples_as_if_it_were_not(tiny, monkeypatch, share_prefix):
    """Several samples of one question (held-out pairs, the eval suites' samples per probe) share one prefill row;
    each row still draws from its own stream, and tokens and kept logits equal those of prefilling every row."""
    from promptbake import decode

    model, tokenizer = tiny
    questions = ["What is your name?", "Where do you live?", "What is your name?", "Why?", "What is your name?"]
    prompts = [teacher_prompt_ids(tokenizer, q, PERSONA) for q in questions]
    stop = stop_token_ids(tokenizer, model.generation_config)
    gen = sampling.generation_config(SampleConfig(max_new_tokens=8), stop, tokenizer.pad_token_id)
    rows_seen = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: rows_seen.append(kwargs["input_ids"].shape), with_kwargs=True)

    def run():
        rows_seen.clear()
        return sampling.generate_batch(model, prompts, gen, tokenizer.pad_token_id, stop, keep=[0] * 5,
                                       seeds=list(range(5)), share_prefix=share_prefix)
    once, once_logits = run()
    prefill = [shape for shape in rows_seen if shape[1] > 1]
    # three distinct prompts among five rows; share_prefix=False (rows whose weights may differ) prefills every row
    assert prefill[-1][0] == (3 if share_prefix else 5)
    monkeypatch.setattr(decode, "DISTINCT_PREFILL", False)            # every row prefilled
    every, every_logits = run()
    hook.remove()
    assert [shape for shape in rows_seen if shape[1] > 1][-1][0] == 5
    assert once == every and once[0] != once[2]                       # the same question, its own draws
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(once_logits, every_logits))
