"""The fused LoRA linear (lora_fused.py) computes what peft computes, and steps aside where it does not apply."""
import contextlib

import pytest
import torch
from peft.tuners.lora import Linear as LoraLinear

from promptbake.config import TrainConfig
from promptbake.data import collate
from promptbake.logits import completion_logits
from promptbake.lora_fused import _LoraLinear, _fast_path
from promptbake.train import add_lora

from conftest import make_trajectories


def _lora_layers(model):
    return [m for m in model.modules() if type(m) is LoraLinear]


@contextlib.contextmanager
def _peft_only(model):
    """peft's own forward on every LoRA layer, for comparison."""
    layers = _lora_layers(model)
    fused = [m.forward for m in layers]
    for m in layers:
        m.forward = m._peft_forward
    try:
        yield
    finally:
        for m, forward in zip(layers, fused):
            m.forward = forward


def _student(tiny, **cfg):
    model, tokenizer = tiny
    student = add_lora(model, TrainConfig(**cfg), seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return student, collate(make_trajectories(tokenizer), tokenizer.pad_token_id)


def _close(a, b):
    """Equal up to float32 rounding, relative to the tensor's largest entry."""
    return float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())


def _loss_and_grads(student, batch):
    student.zero_grad(set_to_none=True)
    logits = completion_logits(student, batch, "student")
    loss = (logits.log_softmax(-1)[..., :7] * batch["completion_mask"][..., None]).sum()
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}


def test_fused_layers_give_peft_logits_and_lora_gradients(tiny):
    student, batch = _student(tiny)
    student.train()
    assert all(_fast_path(m, torch.zeros(1, m.in_features), (), {}) == "default" for m in _lora_layers(student))
    fused_logits, fused_grads = _loss_and_grads(student, batch)
    with _peft_only(student):
        peft_logits, peft_grads = _loss_and_grads(student, batch)
    torch.testing.assert_close(fused_logits, peft_logits, rtol=1e-5, atol=1e-5)
    assert fused_grads.keys() == peft_grads.keys() and len(fused_grads) == 2 * len(_lora_layers(student))
    for name, grad in peft_grads.items():   # the lowest layers' gradients pass through every grad-input above
        assert _close(fused_grads[name], grad), name


def test_the_fused_function_passes_gradcheck_with_a_bias():
    generator = torch.Generator().manual_seed(0)

    def rand(*shape, grad=False):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_(grad)

    x, weight, bias = rand(5, 4, grad=True), rand(3, 4), rand(3)
    lora_a, lora_b = rand(2, 4, grad=True), rand(3, 2, grad=True)
    assert torch.autograd.gradcheck(lambda *t: _LoraLinear.apply(t[0], weight, bias, t[1], t[2], 1.5),
                                    (x, lora_a, lora_b))
    torch.testing.assert_close(_LoraLinear.apply(x, weight, bias, lora_a, lora_b, 1.5),
                               x @ weight.t() + bias + 1.5 * (x @ lora_a.t()) @ lora_b.t())


def test_peft_runs_where_fusing_does_not_apply(tiny):
    student, batch = _student(tiny, lora_dropout=0.5)
    layer = _lora_layers(student)[0]
    x = torch.zeros(1, layer.in_features)
    student.train()
    assert _fast_path(layer, x, (), {}) is None                   # dropout is random in training
    student.eval()
    assert _fast_path(layer, x, (), {}) == "default"              # and the identity in evaluation
    assert _fast_path(layer, x, (), {"adapter_names": ["default"]}) is None
    layer.scaling["default"] = torch.ones(1, 1, 1)                # a per-row scale (baked.per_row_adapter)
    assert _fast_path(layer, x, (), {}) is None
    layer.scaling["default"] = 2.0
    with student.disable_adapter():
        assert _fast_path(layer, x, (), {}) is None
        with torch.no_grad():
            off = completion_logits(student, batch, "student")
    with torch.no_grad(), _peft_only(student), student.disable_adapter():
        torch.testing.assert_close(off, completion_logits(student, batch, "student"), rtol=0, atol=0)


@pytest.mark.parametrize("bad", ["scale", "lora_term_of_grad_x"])
def test_a_broken_fused_backward_is_caught(tiny, monkeypatch, bad):
    """The comparison above fails for a wrong scale or a grad-input that forgets the LoRA term."""
    student, batch = _student(tiny)
    student.train()
    backward = _LoraLinear.backward

    def broken(ctx, grad_y):
        grads = list(backward(ctx, grad_y))
        if bad == "scale":
            grads[3] = grads[3] * 2
        else:
            x, xa, weight, lora_a, lora_b = ctx.saved_tensors
            grads[0] = grad_y @ weight
        return tuple(grads)

    monkeypatch.setattr(_LoraLinear, "backward", staticmethod(broken))
    _, fused_grads = _loss_and_grads(student, batch)
    with _peft_only(student):
        _, peft_grads = _loss_and_grads(student, batch)
    assert not all(_close(fused_grads[n], g) for n, g in peft_grads.items())
