"""The training loop: LoRA student vs. the same model with the adapter disabled as teacher, per-token KL."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tqdm.auto import tqdm

from . import runfolder
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, layer_range
from .data import Trajectory, micro_batches
from .distributed import is_main, sum_gradients, sum_scalar, world
from .errors import UserError
from .eval.kl import HeldoutKL
from .logits import TeacherCache, collate_for, completion_hidden, completion_logits, plain_head, teacher_logits
from .lora_fused import fuse_lora
from .onpolicy import is_on_policy
from .precision import float32_of, training_kernels
from .losses import head_kl_topk, masked_sum, per_token_kl


def check_target_modules(model, cfg: TrainConfig) -> None:
    """Refuse --target-modules names that are not linear layers of this model's decoder, naming the ones it has."""
    if cfg.target_modules == "all-linear":
        return
    wanted = [name.strip() for name in cfg.target_modules.split(",") if name.strip()]
    available = _decoder_linear_names(model)
    missing = [name for name in wanted if name not in available]
    if missing:
        what = "is not a linear layer" if len(missing) == 1 else "are not linear layers"
        raise UserError(f"--target-modules {', '.join(missing)} {what} of this {model.config.model_type} model; its "
                        f"decoder's linear layers are "
                        f"{', '.join(available)} (or pass all-linear)")


def add_lora(model, cfg: TrainConfig, seed: int):
    """Wrap `model` in a fresh LoRA adapter (B = 0, so it starts as the base model); seeded A init.

    With `cfg.start_adapter`, the adapter saved there is loaded trainable instead (its own rank and targets)."""
    if cfg.start_adapter:
        return _start_from(model, Path(cfg.start_adapter))
    check_target_modules(model, cfg)
    targets = cfg.target_modules if cfg.target_modules == "all-linear" else [
        name.strip() for name in cfg.target_modules.split(",") if name.strip()]
    layers = layer_range(cfg.lora_layers)
    if layers != "all":
        count = model.config.num_hidden_layers
        if layers[1] >= count:
            raise UserError(f"--lora-layers {cfg.lora_layers} asks for layer {layers[1]}, but the model has {count} "
                            f"decoder layers (0-{count - 1})")
        if targets == "all-linear":   # peft takes a layer subset only with named modules
            targets = _decoder_linear_names(model)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM",
                      layers_to_transform=None if layers == "all" else list(range(layers[0], layers[1] + 1)))
    torch.manual_seed(seed)
    try:
        return fuse_lora(get_peft_model(model, lora))
    except ValueError as exc:
        raise UserError(f"cannot add LoRA with target_modules={cfg.target_modules!r}: {exc}") from None


def check_start_adapter(cfg: TrainConfig) -> None:
    """Refuse a train.start_adapter that holds no saved adapter (before sampling, not after)."""
    folder = Path(cfg.start_adapter).expanduser()
    if cfg.start_adapter and not (folder / "adapter_model.safetensors").is_file():
        raise UserError(f"--start-adapter {cfg.start_adapter} holds no adapter (no adapter_model.safetensors in it); "
                        f"give a saved adapter folder such as a run's adapter/, or leave it out to start from zero")


def _start_from(model, folder: Path):
    from peft import PeftModel

    check_start_adapter(TrainConfig(start_adapter=str(folder)))
    return fuse_lora(PeftModel.from_pretrained(model, str(folder), is_trainable=True, use_safetensors=True))


def _decoder_linear_names(model) -> list[str]:
    """Names of the linear layers other than the LM head (what peft's 'all-linear' picks): q_proj, ..., up_proj."""
    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head})


def save_adapter(model, folder: Path) -> None:
    """Write the adapter in PEFT format (adapter_config.json + adapter_model.safetensors), atomically."""
    runfolder.atomic_save_dir(folder, lambda tmp: model.save_pretrained(tmp, safe_serialization=True))


def _lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based): linear warm-up, then the schedule."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _step_loss(model, train: list[Trajectory], group: list[int], pad_id: int, direction: str, step_tokens: int,
               cache: TeacherCache | None) -> tuple[float, int]:
    """Forward + backward of one micro-batch; the loss is scaled so a step's gradients sum to a per-token mean."""
    with training_kernels(model):
        return _step_loss_in(model, train, group, pad_id, direction, step_tokens, cache)


def _step_loss_in(model, train: list[Trajectory], group: list[int], pad_id: int, direction: str, step_tokens: int,
                  cache: TeacherCache | None) -> tuple[float, int]:
    batch = collate_for(model, [train[i] for i in group], pad_id)
    head = plain_head(model) if cache is not None and cache.top_k and direction == "forward" else None
    if head is not None:                                          # LM head and KL fused, on real positions only
        hidden = completion_hidden(model, batch, "student")
        ids, log_probs = (x.to(hidden.device) for x in cache.rows(group))
        bias = None if head.bias is None else float32_of(head.bias)
        kl_sum = head_kl_topk(hidden, float32_of(head.weight), bias, ids, log_probs, grad_weight=head.weight).sum()
    else:
        student = completion_logits(model, batch, "student")    # [B, C, V]
        if cache is not None:                                     # full logits or top-k + tail, computed once
            kl = cache.per_token_kl(group, student, direction)
        else:                                                     # the model itself, adapter off, no graph
            kl = per_token_kl(teacher_logits(model, batch), student, direction)
        kl_sum = masked_sum(kl, batch["completion_mask"].to(kl.device))
    (kl_sum / step_tokens).backward()
    return float(kl_sum.detach()), int(batch["student_attention_mask"].sum())


def _so_far(metrics_path: Path) -> tuple[list[dict], float]:
    """(held-out KL curve, last training loss) from the metrics.jsonl of a resumed run."""
    lines = metrics_path.read_text(encoding="utf-8").splitlines() if metrics_path.is_file() else []
    records = [json.loads(line) for line in lines if line.strip()]
    losses = [r["loss"] for r in records if "loss" in r]
    curve = [{"step": r["step"], "heldout_kl": r["heldout_kl"]} for r in records if "heldout_kl" in r]
    return curve, losses[-1] if losses else float("nan")


def train_adapter(model, train: list[Trajectory], cfg: TrainConfig, pad_id: int, seed: int, run_dir: Path,
                  heldout: HeldoutKL | None = None, progress: bool = True, cache: TeacherCache | None = None,
                  resume_from: Path | None = None, rollouts=None, passes: list[int] | None = None) -> dict:
    """Train the LoRA adapter of `model` (a PeftModel) in place; write metrics.jsonl and checkpoints/step-N.

    `cache` holds the teacher's logits for `train` (same order); without it the teacher runs at every step.
    `resume_from` is a checkpoint folder (checkpoint.latest_checkpoint): adapter, optimizer, scheduler and RNG are
    restored, the data order is replayed, and training goes on from the step after it; metrics.jsonl must already
    be cut back to that step.
    Under `accelerate launch` each process trains on its share of every step and the gradients are summed
    (distributed.py); only the main process measures `heldout` and writes metrics and checkpoints.

    `rollouts` (onpolicy.student_rollouts) makes the steps that onpolicy.is_on_policy picks (cfg.on_policy of them)
    train on the student's own answers, scored by the teacher at that step.
    `passes` (one per trajectory of `train`, default 1 each): how often each epoch trains it, in one shuffled order.

    Returns a summary: steps, final training loss, held-out KL curve, seconds, on-policy steps.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / runfolder.METRICS
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel for all 420 LoRA tensors instead of per-tensor bias-correction scalars (~25 ms a step on CPU)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)
    pool = [i for i, count in enumerate(passes or [1] * len(train)) for _ in range(count)]   # an epoch's rows
    steps_per_epoch = math.ceil(len(pool) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, cfg.warmup_steps, total_steps, cfg.lr_schedule))
    order_rng = torch.Generator().manual_seed(seed)
    resumed = load_checkpoint(model, optimizer, scheduler, resume_from) if resume_from else 0
    curve, loss = _so_far(metrics_path) if resume_from else ([], float("nan"))
    if heldout is not None and not resume_from and is_main():
        curve.append({"step": 0, "heldout_kl": heldout.measure(model)})
        runfolder.append_jsonl(metrics_path, curve[-1])

    rank, processes = world()
    main = rank == 0
    model.train()
    bar = tqdm(total=total_steps, initial=resumed, desc="training", unit="step", disable=not (progress and main))
    start, step, on_policy_steps = time.perf_counter(), 0, 0
    for epoch in range(cfg.epochs):
        order = [pool[j] for j in torch.randperm(len(pool), generator=order_rng).tolist()]   # resume replays it
        for first in range(0, len(order), cfg.batch_size):
            if step < resumed:
                step += 1
                continue
            step_start = time.perf_counter()
            chosen = order[first:first + cfg.batch_size]
            rows, step_cache = train, cache
            on_policy = rollouts is not None and is_on_policy(step, cfg.on_policy, seed)
            if on_policy:   # the student's own answers to this step's questions; the teacher scores them below
                rows, chosen, step_cache = rollouts([train[i] for i in chosen], step), list(range(len(chosen))), None
                on_policy_steps += 1
            step_tokens = sum(len(rows[i].completion_ids) for i in chosen)      # of the whole step, all processes
            share = chosen[rank::processes]
            kl_total, seen = 0.0, 0
            for group in micro_batches([rows[i] for i in share], cfg.micro_batch_tokens) if share else []:
                group = [share[j] for j in group]
                kl_sum, tokens = _step_loss(model, rows, group, pad_id, cfg.kl_direction, step_tokens, step_cache)
                kl_total += kl_sum
                seen += tokens
            sum_gradients(params)
            kl_total, seen = sum_scalar(kl_total), int(sum_scalar(seen))
            loss = kl_total / step_tokens
            if not math.isfinite(loss):
                last = latest_checkpoint(run_dir)
                kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
                raise UserError(f"training loss became {loss} at step {step + 1}; {kept}. Lower --learning-rate "
                                f"(now {cfg.learning_rate}) and bake again")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
            lr = scheduler.get_last_lr()[0]   # the rate this step uses
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seconds = time.perf_counter() - step_start
            record = {"step": step, "epoch": epoch + 1, "loss": loss, "lr": lr, "on_policy": on_policy,
                      "grad_norm": float(grad_norm), "tokens": seen, "tokens_per_s": seen / seconds}
            if main and cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == total_steps):
                save_checkpoint(model, optimizer, scheduler, step, run_dir / runfolder.CHECKPOINTS / f"step-{step}")
            if main and heldout is not None and (step == total_steps or cfg.eval_every and step % cfg.eval_every == 0):
                record["heldout_kl"] = heldout.measure(model)
                curve.append({"step": step, "heldout_kl": record["heldout_kl"]})
                model.train()
            if main:
                runfolder.append_jsonl(metrics_path, record)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
            bar.update(1)
    bar.close()
    model.eval()
    return {"steps": step, "final_loss": loss, "heldout_curve": curve, "seconds": time.perf_counter() - start,
            "on_policy_steps": on_policy_steps}
