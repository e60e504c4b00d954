"""LoRA linear layers in one autograd node: y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ, the LoRA term added in place by addmm.

peft computes lora_B(lora_A(dropout(x))) * scaling and adds it to the base output: two more [N, out] tensors per
layer (the product and the sum), each with its own autograd node, and the same again in the backward pass. On
SmolLM2-135M's 210 LoRA layers that elementwise traffic was 13 % of a training step (torch.profiler: aten::mul and
aten::add 350 ms of a 2.7 s step). Here the forward is one matmul for the base, one for x·Aᵀ and one addmm, and the
backward is the frozen weight's grad-input matmul with the LoRA term added by one more addmm.

`fuse_lora(model)` swaps the forward of every peft LoRA Linear for one that takes this path when it applies (one
active plain-LoRA adapter, no dropout, a float scale, not merged, adapter on) and otherwise calls peft's own forward,
so disabling, re-scaling, per-row scales and loading more adapters keep working.
"""
from __future__ import annotations

import types

import torch


class _LoraLinear(torch.autograd.Function):
    """y = x·Wᵀ + b + scale·(x·Aᵀ)·Bᵀ for 2-D x [N, in]; W and b are frozen (no gradient).

    With bf16-resident base weights (x and W bf16) the float32 LoRA factors are cast to bf16 for the products, and
    their gradients come back float32 (the optimizer's precision)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale):
        ctx.factor_dtype = lora_a.dtype
        lora_a, lora_b = lora_a.to(x.dtype), lora_b.to(x.dtype)
        xa = x @ lora_a.t()                                                      # [N, r]
        y = torch.addmm(bias, x, weight.t()) if bias is not None else x @ weight.t()
        y.addmm_(xa, lora_b.t(), alpha=scale)
        ctx.save_for_backward(x, xa, weight, lora_a, lora_b)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, xa, weight, lora_a, lora_b = ctx.saved_tensors
        scale = ctx.scale
        grad_b_side = grad_y @ lora_b                                            # [N, r]
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_y @ weight).addmm_(grad_b_side, lora_a, alpha=scale)
        if ctx.needs_input_grad[3]:
            grad_a = (grad_b_side.t() @ x).to(ctx.factor_dtype).mul_(scale)
        if ctx.needs_input_grad[4]:
            grad_b = (grad_y.t() @ xa).to(ctx.factor_dtype).mul_(scale)
        return grad_x, None, None, grad_a, grad_b, None


def _fast_path(module, x, args, kwargs):
    """The adapter to fuse for this call, or None when peft's own forward must run."""
    if args or kwargs or module.disable_adapters or module.merged or len(module.active_adapters) != 1:
        return None
    name = module.active_adapters[0]
    if name not in module.lora_A or name in module.lora_variant or not isinstance(module.scaling[name], (int, float)):
        return None
    dropout = module.lora_dropout[name]
    if isinstance(dropout, torch.nn.Dropout) and dropout.training and dropout.p > 0:
        return None
    base = module.get_base_layer()
    if type(base) is not torch.nn.Linear or base.weight.requires_grad or (base.bias is not None and
                                                                          base.bias.requires_grad):
        return None
    a, b = module.lora_A[name].weight, module.lora_B[name].weight
    if not (x.dtype == base.weight.dtype and a.dtype == b.dtype) or torch.is_autocast_enabled(x.device.type):
        return None
    return name


def _forward(module, x, *args, **kwargs):
    name = _fast_path(module, x, args, kwargs)
    if name is None:
        return module._peft_forward(x, *args, **kwargs)
    base = module.get_base_layer()
    flat = x.reshape(-1, x.shape[-1])
    y = _LoraLinear.apply(flat, base.weight, base.bias, module.lora_A[name].weight, module.lora_B[name].weight,
                          float(module.scaling[name]))
    return y.view(*x.shape[:-1], y.shape[-1])


def fuse_lora(model):
    """Give every peft LoRA Linear of `model` the fused forward (idempotent); returns `model`."""
    from peft.tuners.lora import Linear

    for module in model.modules():
        if type(module) is Linear and not hasattr(module, "_peft_forward"):
            module._peft_forward = module.forward
            module.forward = types.MethodType(_forward, module)
    return model
