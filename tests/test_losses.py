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
