"""Data parallelism under `accelerate launch`: which process this is, gradient averaging, main-process-only writes.

Outside `accelerate launch` (no WORLD_SIZE > 1 in the environment) every function here is a no-op for one process,
and torch.distributed is never initialised. Under it, accelerate's PartialState sets up the process group. Training
reduces over gloo on the CPU (a GPU's gradients make the round trip: LoRA's are small); each process places its
model on its own device (precision.resolve_device: cuda:LOCAL_RANK when CUDA is there).
Each process holds the whole model: this is data parallelism, not FSDP or DeepSpeed sharding, and an accelerate
config that asks for those is refused rather than silently ignored.

Each process takes its share of every optimizer step's trajectories; the summed KL of its share is divided by the
token count of the whole step, so summing the processes' gradients gives exactly the one-process gradient.
"""
from __future__ import annotations

import os

import torch

from .errors import UserError


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> tuple[int, int]:
    """(rank, number of processes); (0, 1) when not launched by accelerate / torchrun."""
    if not _launched():
        return 0, 1
    from accelerate import PartialState

    for name in ("FSDP", "DEEPSPEED"):
        if os.environ.get(f"ACCELERATE_USE_{name}", "").lower() in ("1", "true"):
            raise UserError(f"promptbake trains with data parallelism only (every process holds the whole model and "
                            f"the LoRA gradients are summed); {name.title()} is not supported yet: launch with "
                            f"`accelerate launch --multi_gpu --num_processes N` and no {name.lower()} config")
    state = PartialState(cpu=True)
    return state.process_index, state.num_processes


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if world()[1] > 1:
        torch.distributed.barrier()


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Sum every parameter's gradient over the processes, in place (one flat all-reduce)."""
    if world()[1] == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    device = flat.device
    flat = flat.cpu()                       # the gloo process group reduces CPU tensors
    torch.distributed.all_reduce(flat)
    flat = flat.to(device)
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def sum_scalar(value: float) -> float:
    """A float summed over the processes (the step's loss for the log)."""
    if world()[1] == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return float(tensor)
