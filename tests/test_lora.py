"""Invariants of the LoRA student and its teacher, on the tiny random model."""
import contextlib
import json
import math

import pytest
import torch

from promptbake.config import TrainConfig
from promptbake.data import collate
from promptbake.eval.kl import HeldoutKL
from promptbake.logits import completion_logits, teacher_logits
from promptbake.models import load_model
from promptbake.train import add_lora, save_adapter, train_adapter

from conftest import make_trajectories


def _perturb_lora(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def test_fresh_lora_and_empty_prompt_give_zero_kl(tiny):
    model, tokenizer = tiny
    model = add_lora(model, TrainConfig(), seed=0)
    trajectories = make_trajectories(tokenizer, system_prompt="")
    assert HeldoutKL(model, trajectories, tokenizer.pad_token_id, 4096).measure(model) == 0.0


def test_prompt_makes_a_difference_the_fresh_adapter_cannot_close(tiny):
    model, tokenizer = tiny
    model = add_lora(model, TrainConfig(), seed=0)
    heldout = HeldoutKL(model, make_trajectories(tokenizer), tokenizer.pad_token_id, 4096)
    assert heldout.measure(model) > 0
    assert heldout.measure(model) == heldout.measure(model, adapter=False)  # B = 0: adapter is a no-op


def test_disable_adapter_reproduces_base_logits(tiny):
    model, tokenizer = tiny
    batch = collate(make_trajectories(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        base = completion_logits(model, batch, "teacher")
    peft_model = add_lora(model, TrainConfig(), seed=0)
    _perturb_lora(peft_model)
    with torch.no_grad():
        adapted = completion_logits(peft_model, batch, "teacher")
    assert not torch.allclose(adapted, base, atol=1e-3)
    assert torch.equal(teacher_logits(peft_model, batch), base)


def test_save_then_load_gives_identical_logits(tiny, tiny_model_dir, tmp_path):
    from peft import PeftModel

    model, tokenizer = tiny
    batch = collate(make_trajectories(tokenizer), tokenizer.pad_token_id)
    peft_model = add_lora(model, TrainConfig(), seed=0)
    _perturb_lora(peft_model)
    save_adapter(peft_model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors"]
    fresh, _, _ = load_model(str(tiny_model_dir))
    loaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter"))
    with torch.no_grad():
        assert torch.equal(completion_logits(loaded, batch, "student"), completion_logits(peft_model, batch, "student"))


@pytest.mark.parametrize("head", ["plain", "fallback"])
@pytest.mark.parametrize("adapter, side", [(True, "student"), (False, "student"), (True, "teacher")])
def test_heldout_kl_equals_the_mean_per_token_kl_of_whole_batches(tiny, monkeypatch, head, adapter, side):
    """HeldoutKL works on real tokens only, in chunks, through the LM head where it is plain; it must give the mean
    per-token KL of the padded [B, C, V] computation at every position."""
    import promptbake.eval.kl as kl_module
    from promptbake.logits import adapter_disabled
    from promptbake.losses import per_token_kl

    model, tokenizer = tiny
    model = add_lora(model, TrainConfig(), seed=0)
    _perturb_lora(model, seed=3)
    trajectories = make_trajectories(tokenizer)
    if head == "fallback":
        monkeypatch.setattr(kl_module, "plain_head", lambda m: None)
    monkeypatch.setattr(kl_module.HeldoutKL, "ROWS", 7)   # chunks that cut through sequences
    heldout = HeldoutKL(model, trajectories, tokenizer.pad_token_id, 60)   # several micro-batches
    assert len(heldout.batches) > 1
    sums, counts = heldout.per_position(model, adapter, side)
    batch = collate(trajectories, tokenizer.pad_token_id)
    with torch.no_grad():
        teacher = teacher_logits(model, batch)
        with adapter_disabled(model) if not adapter else contextlib.nullcontext():
            condition = completion_logits(model, batch, side)
    mask = batch["completion_mask"].double()
    want = (per_token_kl(teacher, condition).double() * mask).sum(0)
    torch.testing.assert_close(counts, mask.sum(0))
    torch.testing.assert_close(sums, want, rtol=1e-4, atol=1e-6)
    assert heldout.tokens == int(mask.sum()) and float(want.sum()) > 0


def test_training_changes_only_lora_parameters_and_lowers_kl(tiny, tmp_path):
    model, tokenizer = tiny
    model = add_lora(model, TrainConfig(), seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trajectories = make_trajectories(tokenizer)
    heldout = HeldoutKL(model, trajectories, tokenizer.pad_token_id, 4096)
    kl_before = heldout.measure(model)
    cfg = TrainConfig(learning_rate=1e-2, epochs=8, batch_size=2, warmup_steps=0, checkpoint_every=4, eval_every=4)
    summary = train_adapter(model, trajectories, cfg, tokenizer.pad_token_id, seed=0, run_dir=tmp_path,
                            heldout=heldout, progress=False)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("lora_" in name for name in changed)
    assert any("lora_B" in name for name in changed)
    assert heldout.measure(model) < 0.5 * kl_before
    assert summary["steps"] == 16
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-12", "step-16", "step-4", "step-8"]
    assert [point["step"] for point in summary["heldout_curve"]] == [0, 4, 8, 12, 16]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records[1:4]] == [1e-2] * 3  # no warm-up: every step uses the peak rate


def test_training_is_reproducible_from_the_seed(tiny_model_dir, tmp_path):
    results = []
    for run in range(2):
        model, tokenizer, _ = load_model(str(tiny_model_dir))
        model = add_lora(model, TrainConfig(), seed=3)
        cfg = TrainConfig(epochs=2, batch_size=2, checkpoint_every=0)
        train_adapter(model, make_trajectories(tokenizer), cfg, tokenizer.pad_token_id, seed=3,
                      run_dir=tmp_path / str(run), progress=False)
        results.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n})
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])


def test_cached_teacher_trains_the_same_adapter_as_a_teacher_pass_per_step(tiny_model_dir, tmp_path):
    from promptbake.logits import TeacherCache

    results = []
    for cached in (False, True):
        model, tokenizer, _ = load_model(str(tiny_model_dir))
        model = add_lora(model, TrainConfig(), seed=1)
        trajectories = make_trajectories(tokenizer)
        cache = TeacherCache.compute(model, trajectories, tokenizer.pad_token_id, 50) if cached else None
        cfg = TrainConfig(epochs=2, batch_size=2, checkpoint_every=0, micro_batch_tokens=200)
        train_adapter(model, trajectories, cfg, tokenizer.pad_token_id, seed=1, run_dir=tmp_path / str(cached),
                      progress=False, cache=cache)
        losses = [json.loads(line)["loss"] for line in (tmp_path / str(cached) / "metrics.jsonl").read_text().splitlines()]
        results.append((losses, {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}))
    (losses_a, weights_a), (losses_b, weights_b) = results
    assert losses_a == pytest.approx(losses_b, rel=1e-5)
    assert all(torch.allclose(weights_a[n], weights_b[n], atol=1e-6) for n in weights_a)


def test_learning_rate_warms_up_then_holds_or_decays():
    from promptbake.train import _lr_factor

    assert [_lr_factor(s, 4, 10, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = [_lr_factor(s, 2, 10, "cosine") for s in range(10)]
    assert cosine[:3] == [0.5, 1.0, 1.0] and cosine[-1] < 0.05
    assert all(a >= b for a, b in zip(cosine[1:], cosine[2:]))


def test_lora_on_a_layer_range_trains_only_those_layers_and_saves_them(tiny, tiny_model_dir, tmp_path):
    """--lora-layers 1-1: adapters only in decoder layer 1 (of 0-1); the saved adapter reloads with that range."""
    from peft import PeftModel

    from promptbake.train import add_lora, save_adapter

    model, _ = tiny
    peft_model = add_lora(model, TrainConfig(lora_layers="1-1"), seed=0)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in n for n in names)
    assert {n.split(".layers.1.")[1].split(".lora")[0] for n in names} >= {"self_attn.q_proj", "mlp.down_proj"}
    save_adapter(peft_model, tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_model(str(tiny_model_dir))[0], str(tmp_path / "adapter"))
    assert sorted(n for n, _ in reloaded.named_parameters() if "lora_" in n) == sorted(
        n for n, _ in peft_model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("layers, message", [("2-3", r"has 2 decoder layers \(0-1\)"), ("5", "FIRST-LAST"),
                                             ("3-1", "FIRST-LAST"), ("a-b", "FIRST-LAST")])
def test_bad_lora_layers_are_refused_with_the_fix(tiny, layers, message):
    from promptbake.config import BakeConfig
    from promptbake.errors import UserError
    from promptbake.train import add_lora

    with pytest.raises(UserError, match=message):
        add_lora(tiny[0], BakeConfig(train=TrainConfig(lora_layers=layers)).train, seed=0)


def test_passes_train_each_trajectory_that_often_per_epoch(tiny, tmp_path, monkeypatch):
    """`passes` (the targeted questions' second pass): every epoch trains trajectory i exactly passes[i] times, in
    one shuffled order, and the step count follows."""
    import promptbake.train as train_module

    model, tokenizer = tiny
    model = add_lora(model, TrainConfig(), seed=0)
    trajectories = make_trajectories(tokenizer)
    passes = [2] * 2 + [1] * (len(trajectories) - 2)
    seen: list[int] = []
    real = train_module._step_loss

    def recording(model, rows, group, *args):
        seen.extend(group)
        return real(model, rows, group, *args)

    monkeypatch.setattr(train_module, "_step_loss", recording)
    cfg = TrainConfig(epochs=2, batch_size=2, checkpoint_every=0, warmup_steps=0)
    summary = train_adapter(model, trajectories, cfg, tokenizer.pad_token_id, seed=0, run_dir=tmp_path,
                            progress=False, passes=passes)
    assert summary["steps"] == 2 * math.ceil(sum(passes) / 2)
    assert sorted(seen) == sorted(i for i, n in enumerate(passes) for _ in range(2 * n))
