import math

import pytest
import torch
import torch.nn.functional as F

from promptbake.losses import masked_mean, masked_sum, per_token_kl, token_kl


def _logits(seed, shape=(3, 5, 11)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("direction", ["forward", "reverse", "jsd"])
def test_identical_logits_give_zero(direction):
    logits = _logits(0)
    assert per_token_kl(logits, logits, direction).abs().max() < 1e-6


def test_forward_and_reverse_match_f_kl_div():
    teacher, student = _logits(1), _logits(2)
    log_t, log_s = F.log_softmax(teacher, -1), F.log_softmax(student, -1)
    forward_ref = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)
    reverse_ref = F.kl_div(log_t, log_s, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(per_token_kl(teacher, student, "forward"), forward_ref, atol=1e-5)
    assert torch.allclose(per_token_kl(teacher, student, "reverse"), reverse_ref, atol=1e-5)
    assert not torch.allclose(forward_ref, reverse_ref)  # the directions really differ


def test_jsd_is_symmetric_and_bounded():
    teacher, student = _logits(3), _logits(4)
    jsd = per_token_kl(teacher, student, "jsd")
    assert torch.allclose(jsd, per_token_kl(student, teacher, "jsd"), atol=1e-6)
    assert (jsd > 0).all() and (jsd <= math.log(2) + 1e-6).all()


def test_masked_positions_do_not_matter_even_if_nan():
    teacher, student = _logits(5), _logits(6)
    mask = torch.ones(3, 5)
    mask[:, 3:] = 0
    poisoned = student.clone()
    poisoned[:, 3:] = float("nan")
    assert torch.allclose(token_kl(teacher, student, mask), token_kl(teacher, poisoned, mask))


def test_all_masked_gives_zero_not_nan():
    teacher, student = _logits(7), _logits(8)
    assert token_kl(teacher, student, torch.zeros(3, 5)).item() == 0.0


def test_zero_probability_teacher_tokens_give_finite_kl():
    teacher = _logits(9)
    teacher[..., 0] = float("-inf")  # a token the teacher never emits
    value = token_kl(teacher, _logits(10), torch.ones(3, 5))
    assert torch.isfinite(value)


@pytest.mark.parametrize("direction", ["forward", "reverse", "jsd"])
def test_without_a_graph_the_in_place_divergence_gives_the_same_values_and_leaves_its_inputs(direction):
    """Held-out KL runs without a graph, on in-place temporaries; values match the autograd path, -inf included."""
    teacher, student = _logits(11), _logits(12).requires_grad_(True)
    teacher[..., 0] = float("-inf")
    kept = teacher.clone(), student.detach().clone()
    with_graph = per_token_kl(teacher, student, direction)
    with torch.no_grad():
        without = per_token_kl(teacher, student, direction)
    assert torch.allclose(with_graph.detach(), without, atol=1e-6) and torch.isfinite(without).all()
    assert torch.equal(teacher, kept[0]) and torch.equal(student.detach(), kept[1])


def test_mean_is_independent_of_how_tokens_split_across_batches():
    teacher, student = _logits(11, (6, 4, 9)), _logits(12, (6, 4, 9))
    mask = (torch.rand(6, 4, generator=torch.Generator().manual_seed(0)) > 0.3).float()
    whole = token_kl(teacher, student, mask)
    parts = sum(masked_sum(per_token_kl(teacher[s], student[s]), mask[s]) for s in (slice(0, 2), slice(2, 6)))
    assert torch.allclose(whole, parts / mask.sum(), atol=1e-6)


def test_masked_mean_counts_only_selected():
    values = torch.tensor([[1.0, 2.0, 100.0]])
    assert masked_mean(values, torch.tensor([[1, 1, 0]])).item() == pytest.approx(1.5)


def test_unknown_direction_is_rejected():
    with pytest.raises(ValueError):
        per_token_kl(_logits(0), _logits(1), "sideways")


# --- top-k + tail teacher (the memory-light cache) ---

def _top(teacher, k):
    from promptbake.logits import top_k_log_probs

    ids, log_probs = top_k_log_probs(teacher.reshape(-1, teacher.shape[-1]), k)
    return ids.reshape(*teacher.shape[:-1], k), log_probs.reshape(*teacher.shape[:-1], k)


@pytest.mark.parametrize("direction", ["forward", "reverse", "jsd"])
def test_top_k_with_the_whole_vocabulary_is_the_full_divergence(direction):
    from promptbake.losses import per_token_kl_topk

    teacher, student = _logits(3), _logits(4)
    ids, log_probs = _top(teacher, teacher.shape[-1] - 1)        # every token but one: the tail is that one token
    exact = per_token_kl(teacher, student, direction)
    # The tail is 1 − Σ top-k in float32: a tail of ~1e-4 carries ~1e-3 relative error, which the reverse
    # direction weights by the student's (large) mass there.
    assert torch.allclose(per_token_kl_topk(ids, log_probs, student, direction), exact, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_top_k_divergence_is_a_true_kl_and_a_lower_bound(k):
    from promptbake.losses import per_token_kl_topk

    teacher, student = _logits(5), _logits(6)
    ids, log_probs = _top(teacher, k)
    coarse = per_token_kl_topk(ids, log_probs, student)
    assert (coarse >= -1e-6).all() and (coarse <= per_token_kl(teacher, student) + 1e-5).all()
    assert per_token_kl_topk(ids, log_probs, teacher).abs().max() < 1e-5      # 0 when the student is the teacher


def test_top_k_gradient_flows_only_through_the_student_and_is_finite():
    from promptbake.losses import per_token_kl_topk

    teacher, student = _logits(7), _logits(8).requires_grad_()
    ids, log_probs = _top(teacher, 4)
    per_token_kl_topk(ids, log_probs, student).sum().backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_cached_top_k_teacher_matches_the_recomputed_full_teacher_on_a_model(tiny):
    """The cache (top-k + tail) and a fresh teacher pass give the same loss when k covers the vocabulary, and a
    close lower bound with a small k."""
    from conftest import make_trajectories
    from promptbake.data import collate
    from promptbake.logits import TeacherCache, completion_logits, teacher_logits

    model, tokenizer = tiny
    trajectories = make_trajectories(tokenizer)
    batch = collate(trajectories, tokenizer.pad_token_id)
    mask = batch["completion_mask"]
    with torch.no_grad():
        student = completion_logits(model, batch, "student")
        recomputed = masked_sum(per_token_kl(teacher_logits(model, batch), student), mask)
        vocab = student.shape[-1]
        everything = TeacherCache.compute(model, trajectories, tokenizer.pad_token_id, 10_000, top_k=vocab)
        small = TeacherCache.compute(model, trajectories, tokenizer.pad_token_id, 10_000, top_k=64)
        index = list(range(len(trajectories)))
        assert masked_sum(everything.per_token_kl(index, student, "forward"), mask) == pytest.approx(
            float(recomputed), rel=1e-4)
        assert 0 < float(masked_sum(small.per_token_kl(index, student, "forward"), mask)) <= float(recomputed) + 1e-4


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_fused_head_kl_equals_top_k_kl_of_the_head_logits_with_its_gradient(chunk):
    """head_kl_topk (LM head + KL, gradient computed in closed form) gives per_token_kl_topk's values and gradient."""
    from promptbake.losses import head_kl_topk, per_token_kl_topk

    torch.manual_seed(3)
    weight, bias = torch.randn(50, 8) * 0.7, torch.randn(50) * 0.1
    ids, log_probs = _top(_logits(9, (6, 50)), 5)                              # [6, 5] each
    hidden = torch.randn(ids.shape[0], 8, requires_grad=True)
    fused = head_kl_topk(hidden, weight, bias, ids, log_probs, chunk)
    (fused * torch.arange(1.0, 7.0)).sum().backward()                           # unequal upstream gradients
    got = hidden.grad.clone()
    hidden.grad = None
    plain = per_token_kl_topk(ids[None], log_probs[None], torch.nn.functional.linear(hidden, weight, bias)[None])[0]
    (plain * torch.arange(1.0, 7.0)).sum().backward()
    assert torch.allclose(fused, plain, atol=1e-5) and torch.allclose(got, hidden.grad, atol=1e-5)
    assert got.abs().sum() > 0


def test_fused_head_kl_with_bf16_hidden_states_keeps_float32_logits_and_a_close_bf16_gradient():
    """Under bf16-resident weights the KL comes from float32 logits (exactly the float32 value for the same bf16
    hidden states), and the gradient, whose product with the head runs in bf16 (grad_weight), stays within bf16's
    rounding of the float32 one: relative error under 1 %."""
    from promptbake.losses import head_kl_topk

    torch.manual_seed(4)
    weight = torch.randn(300, 16) * 0.5
    ids, log_probs = _top(_logits(5, (12, 300)), 8)
    hidden = torch.randn(12, 16).bfloat16().requires_grad_(True)
    exact = hidden.detach().float().requires_grad_(True)
    want = head_kl_topk(exact, weight, None, ids, log_probs)
    want.sum().backward()
    got = head_kl_topk(hidden, weight, None, ids, log_probs, grad_weight=weight.bfloat16())
    got.sum().backward()
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-6)
    assert hidden.grad.dtype == torch.bfloat16
    error = (hidden.grad.float() - exact.grad).norm() / exact.grad.norm()
    assert 0 < error < 0.01


def test_fused_training_step_gives_the_same_loss_and_adapter_gradients_as_logits(tiny):
    """The fused path (decoder hidden states on real positions + head_kl_topk) and the logits path agree."""
    from conftest import make_trajectories
    from promptbake.config import TrainConfig
    from promptbake.logits import PLAIN_HEAD, TeacherCache, plain_head
    from promptbake.train import _step_loss, add_lora

    model, tokenizer = tiny
    trajectories = make_trajectories(tokenizer)
    cache = TeacherCache.compute(model, trajectories, tokenizer.pad_token_id, 10_000, top_k=16)
    model = add_lora(model, TrainConfig(), seed=0)
    with torch.no_grad():   # B = 0 at init: give the adapter an effect so its gradients are not trivial
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    assert plain_head(model) is not None
    grads = []
    for fused in (True, False):
        PLAIN_HEAD[model] = fused
        loss, _ = _step_loss(model, trajectories, [0, 1, 2, 3], tokenizer.pad_token_id, "forward", 29, cache)
        grads.append((loss, [p.grad.clone() for p in model.parameters() if p.requires_grad]))
        model.zero_grad()
    (loss_fused, grad_fused), (loss_plain, grad_plain) = grads
    assert loss_fused == pytest.approx(loss_plain, rel=1e-4)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-3) for a, b in zip(grad_fused, grad_plain))
