"""The architecture matrix: promptbake's fast paths on tiny random models of every family in tests/families.py.

Per family: the decoding loop's greedy tokens equal `generate`'s (past the sliding window too); logits kept while
sampling equal a teacher forward pass; a shared-prefix batch gives the padded batch's logits and LoRA gradients;
the fused LoRA layer and the fused head loss give the plain path's logits, loss and gradients (or step aside);
a fresh adapter gives KL 0; save → load and merge reproduce the logits; and teacher and student are framed as
bake.json says.
"""
from __future__ import annotations

import pytest
import torch

from promptbake import data, sampling
from promptbake.config import SampleConfig, TrainConfig
from promptbake.data import collate
from promptbake.decode import cache_fallback
from promptbake.logits import PLAIN_HEAD, TeacherCache, collate_for, completion_logits, plain_head
from promptbake.models import load_model
from promptbake.prompts import describe_framing, stop_token_ids, student_prompt_ids, teacher_prompt_ids
from promptbake.train import _step_loss, add_lora

from conftest import PERSONA, QUESTIONS, make_trajectories
from families import FAMILIES, build_family

pytestmark = pytest.mark.parametrize("family", list(FAMILIES))
HEAD_NOT_PLAIN = {"gemma2"}   # final_logit_softcapping
SLIDING = {"gemma2", "gemma3", "mistral"}   # KV caches with sliding-window layers


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    return {}


@pytest.fixture
def model_of(family_dirs, tmp_path_factory):
    def load(family):
        if family not in family_dirs:
            family_dirs[family] = build_family(family, tmp_path_factory.mktemp(family))
        model, tokenizer, _ = load_model(str(family_dirs[family]))
        return model, tokenizer
    load.dirs = family_dirs
    return load


def _with_adapter(model, seed=0, scale=0.1):
    model = add_lora(model, TrainConfig(), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return model


@pytest.mark.parametrize("share", [False, True], ids=["whole", "shared-prefix"])
def test_greedy_decoding_equals_generate(family, model_of, share, monkeypatch):
    if share:   # let even these four prompts share their prefix, where the model's cache allows it
        monkeypatch.setattr(data, "MIN_SAVED_TOKENS", 0)
    model, tokenizer = model_of(family)
    prompts = [teacher_prompt_ids(tokenizer, q, PERSONA) for q in QUESTIONS]
    stop = stop_token_ids(tokenizer, model.generation_config)
    greedy = sampling.generation_config(SampleConfig(sampling_temperature=0, max_new_tokens=12), stop,
                                        tokenizer.pad_token_id)
    ours, _ = sampling.generate_batch(model, prompts, greedy, tokenizer.pad_token_id, stop)
    for prompt, (ids, _) in zip(prompts, ours):
        reference = model.generate(input_ids=torch.tensor([prompt]), generation_config=greedy)[0, len(prompt):]
        assert ids == sampling.cut_at_stop(reference.tolist(), stop)[0]


def test_logits_kept_while_sampling_equal_a_teacher_pass(family, model_of):
    model, tokenizer = model_of(family)
    jobs = [{k: getattr(t, k) for k in ("question", "split", "sample_index", "teacher_prompt_ids",
                                         "student_prompt_ids")} for t in make_trajectories(tokenizer)]
    cfg = SampleConfig(max_new_tokens=9, sample_batch_size=3)
    trajectories, kept = sampling.sample_trajectories(model, tokenizer, jobs, cfg, seed=0, progress=False,
                                                      keep={"train": 0})
    recomputed = TeacherCache.compute(model, trajectories, tokenizer.pad_token_id, token_budget=10_000).logits
    for a, b in zip(kept, recomputed):
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_shared_prefix_batch_equals_the_padded_batch(family, model_of, monkeypatch):
    model, tokenizer = model_of(family)
    monkeypatch.setattr(data, "MIN_SAVED_TOKENS", 0)
    model = _with_adapter(model)
    trajectories = make_trajectories(tokenizer)
    shared = collate_for(model, trajectories, tokenizer.pad_token_id)
    if family in SLIDING:   # fallback: prompts stay whole (a window would count the padding after a held-apart prefix)
        assert cache_fallback(model.config) and not any(k.endswith("prefix_ids") for k in shared)
        with pytest.raises(ValueError, match="collate_for"):
            completion_logits(model, collate(trajectories, tokenizer.pad_token_id), "teacher")
        return
    assert cache_fallback(model.config) is None
    side = "student" if "student_prefix_ids" in shared else "teacher"   # the side whose prompts share a prefix
    assert f"{side}_prefix_ids" in shared
    monkeypatch.setattr(data, "MIN_SHARED_PREFIX", 10**9)
    plain = collate(trajectories, tokenizer.pad_token_id)
    results = []
    for batch in (shared, plain):
        model.zero_grad()
        logits = completion_logits(model, batch, side)
        (logits * batch["completion_mask"][..., None]).square().mean().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (logits_a, grads_a), (logits_b, grads_b) = results
    assert torch.allclose(logits_a, logits_b, atol=1e-4), (logits_a - logits_b).abs().max()
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-3), name


def test_fused_head_loss_equals_the_logits_path(family, model_of):
    model, tokenizer = model_of(family)
    trajectories = make_trajectories(tokenizer)
    cache = TeacherCache.compute(model, trajectories, tokenizer.pad_token_id, 10_000, top_k=16)
    model = _with_adapter(model)
    if plain_head(model) is None:   # logits are not head(hidden): training takes the logits path, nothing to fuse
        assert family in HEAD_NOT_PLAIN
        return
    assert family not in HEAD_NOT_PLAIN
    results = []
    for fused in (True, False):
        PLAIN_HEAD[model] = fused
        loss, _ = _step_loss(model, trajectories, [0, 1, 2, 3], tokenizer.pad_token_id, "forward", 29, cache)
        results.append((loss, [p.grad.clone() for p in model.parameters() if p.requires_grad]))
        model.zero_grad()
    (loss_fused, grad_fused), (loss_plain, grad_plain) = results
    assert loss_fused == pytest.approx(loss_plain, rel=1e-4)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-3) for a, b in zip(grad_fused, grad_plain))


def test_fresh_adapter_save_load_and_merge_keep_the_logits(family, model_of, tmp_path):
    from peft import PeftModel

    from promptbake.eval.kl import HeldoutKL
    from promptbake.train import save_adapter

    model, tokenizer = model_of(family)
    fresh = add_lora(model, TrainConfig(), seed=0)
    assert HeldoutKL(fresh, make_trajectories(tokenizer, system_prompt=""), tokenizer.pad_token_id,
                     4096).measure(fresh) == 0.0
    model, _ = model_of(family)
    adapted = _with_adapter(model, scale=0.5)
    batch = collate(make_trajectories(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():
        want = completion_logits(adapted, batch, "student")
    save_adapter(adapted, tmp_path / "adapter")
    base, _ = model_of(family)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    with torch.no_grad():
        assert torch.allclose(completion_logits(loaded, batch, "student"), want, atol=1e-5)
        merged = loaded.merge_and_unload()
        assert torch.allclose(completion_logits(merged, batch, "student"), want, atol=1e-4)


def test_teacher_and_student_are_framed_as_recorded(family, model_of):
    _, tokenizer = model_of(family)
    framing = describe_framing(tokenizer, PERSONA)
    assert PERSONA in framing["teacher_example"] and PERSONA not in framing["student_example"]
    teacher = tokenizer.decode(teacher_prompt_ids(tokenizer, "Where do you live?", PERSONA))
    student = tokenizer.decode(student_prompt_ids(tokenizer, "Where do you live?"))
    assert PERSONA in teacher and PERSONA not in student and "Where do you live?" in student


def test_fused_lora_layers_equal_peft(family, model_of):
    from peft.tuners.lora import Linear as LoraLinear

    model, tokenizer = model_of(family)
    model = _with_adapter(model)
    model.train()
    layers = [m for m in model.modules() if type(m) is LoraLinear]
    assert layers
    batch = collate_for(model, make_trajectories(tokenizer), tokenizer.pad_token_id)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        logits = completion_logits(model, batch, "student")
        (logits.log_softmax(-1)[..., :7] * batch["completion_mask"][..., None]).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    fused_logits, fused_grads = loss_and_grads()
    forwards = [m.forward for m in layers]
    for m in layers:
        m.forward = m._peft_forward
    try:
        peft_logits, peft_grads = loss_and_grads()
    finally:
        for m, forward in zip(layers, forwards):
            m.forward = forward
    torch.testing.assert_close(fused_logits, peft_logits, rtol=1e-5, atol=1e-5)
    for name, grad in peft_grads.items():
        assert float((fused_grads[name] - grad).abs().max()) <= 1e-4 * float(grad.abs().max()) + 1e-12, name


def test_bake_records_its_fast_paths_and_framing(family, model_of, tmp_path, capsys):
    """A real (tiny) bake per family: it runs, and bake.json says which paths it took and how it framed the prompt."""
    import json

    from promptbake.cli import main

    from conftest import TINY_BAKE_FLAGS

    model_of(family)   # builds the family's folder
    out = tmp_path / "run"
    flags = [f for f in TINY_BAKE_FLAGS if f != "--quiet"]
    assert main(["bake", "--prompt", PERSONA, "--model", str(model_of.dirs[family]), "--out", str(out),
                 "--compare", "0", "--questions", "builtin", *flags]) == 0
    record = json.loads((out / "bake.json").read_text())
    paths, framing = record["fast_paths"], record["framing"]
    printed = capsys.readouterr().out
    assert paths["kv_cache"].startswith("fallback") == (family in SLIDING)
    assert paths["lm_head_loss"].startswith("fallback") == (family in HEAD_NOT_PLAIN)
    assert ("lora_targets" in paths) == (family == "mixtral")
    for name, text in paths.items():
        assert (f"promptbake: {name} {text}" in printed) == (not text.startswith("fast")), name
    expected = {"gemma2": "system_folded", "gemma3": "system_folded", "gpt_neox": "plain_prefix"}
    assert framing["kind"] == expected.get(family, "chat_template")
    assert record["status"] == "finished"
