"""Teacher and student batches select the same completion tokens, and padding changes nothing."""
import torch

from promptbake.data import collate, micro_batches, padded_tokens
from promptbake.logits import completion_logits

from conftest import make_trajectories


def test_prompts_in_one_batch_have_different_lengths(tiny):
    _, tokenizer = tiny
    trajectories = make_trajectories(tokenizer)
    assert len({len(t.teacher_prompt_ids) for t in trajectories}) > 1
    assert all(len(t.teacher_prompt_ids) != len(t.student_prompt_ids) for t in trajectories)


def test_teacher_and_student_target_identical_completion_ids(tiny):
    _, tokenizer = tiny
    trajectories = make_trajectories(tokenizer)
    batch = collate(trajectories, tokenizer.pad_token_id)
    width_c = batch["completion_mask"].shape[1]
    for side in ("teacher", "student"):
        ids, mask = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
        for row, trajectory in enumerate(trajectories):
            n = len(trajectory.completion_ids)
            # the input holds all completion tokens but the last; the targets are the completion, first included
            start = ids.shape[1] - width_c + 1
            assert ids[row, start:start + n - 1].tolist() == trajectory.completion_ids[:-1]
            assert batch["completion_ids"][row, :n].tolist() == trajectory.completion_ids
            assert batch["completion_mask"][row].sum() == n
            assert mask[row].sum() == len(getattr(trajectory, f"{side}_prompt_ids")) + n - (n == width_c)


def test_batched_logits_equal_unpadded_single_example_logits(tiny):
    model, tokenizer = tiny
    trajectories = make_trajectories(tokenizer)
    batch = collate(trajectories, tokenizer.pad_token_id)
    with torch.no_grad():
        for side in ("teacher", "student"):
            batched = completion_logits(model, batch, side)                    # [B, C, V]
            for row, trajectory in enumerate(trajectories):
                prompt = getattr(trajectory, f"{side}_prompt_ids")
                sequence = torch.tensor([prompt + trajectory.completion_ids])
                single = model(input_ids=sequence).logits[0]                   # [T, V]
                n = len(trajectory.completion_ids)
                # logits at position t-1 predict token t: the first completion token is predicted by the prompt's last
                expected = single[len(prompt) - 1: len(prompt) - 1 + n]
                assert torch.allclose(batched[row, :n], expected, atol=1e-4), (side, row)


def test_micro_batches_respect_the_token_budget_and_keep_every_trajectory(tiny):
    _, tokenizer = tiny
    trajectories = make_trajectories(tokenizer) * 3
    budget = padded_tokens(trajectories[:2]) + 1
    groups = micro_batches(trajectories, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(trajectories)))
    assert all(padded_tokens([trajectories[i] for i in g]) <= budget or len(g) == 1 for g in groups)
    assert len(groups) > 1


def test_logits_kept_from_sampling_equal_a_teacher_forward_pass(tiny):
    from promptbake.config import SampleConfig
    from promptbake.logits import TeacherCache
    from promptbake.sampling import sample_trajectories

    model, tokenizer = tiny
    jobs = [{k: getattr(t, k) for k in ("question", "split", "sample_index", "teacher_prompt_ids",
                                         "student_prompt_ids")} for t in make_trajectories(tokenizer)]
    cfg = SampleConfig(max_new_tokens=7, sample_batch_size=3)
    trajectories, kept = sample_trajectories(model, tokenizer, jobs, cfg, seed=0, progress=False, keep={"train": 0})
    assert (trajectories, None) == sample_trajectories(model, tokenizer, jobs, cfg, seed=0, progress=False)
    recomputed = TeacherCache.compute(model, trajectories, tokenizer.pad_token_id, token_budget=10_000).logits
    for trajectory, a, b in zip(trajectories, kept, recomputed):
        assert a.shape == b.shape == (len(trajectory.completion_ids), model.config.vocab_size)
        assert torch.allclose(a, b, atol=1e-4)


def test_shared_prefix_batches_give_the_same_logits_and_gradients(tiny, monkeypatch):
    """The prompt prefix common to a batch runs once and is repeated through its cache; logits and LoRA
    gradients equal those of the plain left-padded batch."""
    from promptbake import data
    from promptbake.config import TrainConfig
    from promptbake.train import add_lora

    model, tokenizer = tiny
    monkeypatch.setattr(data, "MIN_SAVED_TOKENS", 0)                       # share even between these few rows
    model = add_lora(model, TrainConfig(), 0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)     # a trained-looking adapter, so the prefix's LoRA path matters
    trajectories = make_trajectories(tokenizer)
    shared_batch = collate(trajectories, tokenizer.pad_token_id)
    assert "student_prefix_ids" in shared_batch and "teacher_prefix_ids" in shared_batch
    monkeypatch.setattr(data, "MIN_SHARED_PREFIX", 10**9)
    plain_batch = collate(trajectories, tokenizer.pad_token_id)
    assert "student_prefix_ids" not in plain_batch
    grads = []
    for batch in (shared_batch, plain_batch):
        model.zero_grad()
        logits = completion_logits(model, batch, "student")
        (logits * batch["completion_mask"][..., None]).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        grads[-1]["logits"] = logits.detach()
    assert torch.allclose(grads[0].pop("logits"), grads[1].pop("logits"), atol=1e-4)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-3), name
