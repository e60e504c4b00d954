"""Device and precision: the CUDA path's choices where they run here, the 'auto' decision's branches, and bf16-resident
weights on the CPU (training matches float32 within a stated tolerance; closure is measured in float32)."""
import json

import pytest
import torch

from conftest import PERSONA, TINY_BAKE_FLAGS
from promptbake.cli import main
from promptbake.config import load_config


def test_a_cuda_device_without_cuda_is_one_line_that_names_the_fix(tiny_model_dir, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    assert main(["bake", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out), "--device", "cuda",
                 *TINY_BAKE_FLAGS]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("promptbake: error: --device cuda: this torch sees no CUDA GPU") and "--device cpu" in last


@pytest.mark.parametrize("flags, message", [(["--device", "gpu"], "model.device must be 'auto', 'cpu', 'cuda'"),
                                            (["--device", "cuda:x"], "model.device must be")])
def test_bad_device_names_are_refused_before_anything_is_written(tiny_model_dir, tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["bake", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out), *flags,
                 *TINY_BAKE_FLAGS]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_auto_is_the_cpu_without_cuda_and_a_forced_precision_is_kept(monkeypatch):
    from promptbake import precision

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert precision.resolve_device("auto") == torch.device("cpu")
    assert precision.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert precision.resolve_precision("float32", torch.device("cpu")) == "float32"
    assert precision.resolve_precision("auto", torch.device("cpu")) == "float32"   # conftest pins it
    monkeypatch.setenv("PROMPTBAKE_PRECISION", "bf16")
    assert precision.decide_precision("auto", torch.device("cpu"))["reason"] == "PROMPTBAKE_PRECISION=bf16 in the environment"


@pytest.fixture
def unpinned(monkeypatch, tmp_path):
    """'auto' decided here, with its cache in tmp_path and the CPU flags and matmul timings under the test's control."""
    from promptbake import precision

    monkeypatch.delenv("PROMPTBAKE_PRECISION")
    monkeypatch.setattr(precision, "DECISIONS", tmp_path / "precision.json")
    timed = []

    def setup(flags, fp32_gflops=100.0, bf16_gflops=400.0):
        monkeypatch.setattr(precision, "cpu_flags", lambda: ("Test CPU", set(flags)))

        def gflops(rows, inner, outer, dtype, seconds=0.25):
            timed.append(dtype)
            return bf16_gflops if dtype == torch.bfloat16 else fp32_gflops
        monkeypatch.setattr(precision, "matmul_gflops", gflops)
        return timed
    return setup


def test_auto_keeps_float32_on_a_cpu_without_bf16_units_without_timing(unpinned):
    from promptbake.precision import decide_precision

    timed = unpinned({"avx2", "avx512f"})
    decision = decide_precision("auto", torch.device("cpu"))
    assert decision["precision"] == "float32" and "no bf16 units" in decision["reason"] and timed == []


@pytest.mark.parametrize("bf16_gflops, want", [(400.0, "bf16"), (110.0, "float32")])
def test_auto_picks_bf16_only_where_a_timed_matmul_is_faster(unpinned, bf16_gflops, want):
    from promptbake.precision import decide_precision

    timed = unpinned({"amx_bf16", "avx512_bf16"}, 100.0, bf16_gflops)
    first = decide_precision("auto", torch.device("cpu"))
    assert first["precision"] == want and first["bf16_units"] == ["amx_bf16", "avx512_bf16"] and not first["cached"]
    assert f"{bf16_gflops / 100:.2f}x" in first["reason"] and len(timed) == 2
    again = decide_precision("auto", torch.device("cpu"))   # cached per machine and torch version: no new timing
    assert again["precision"] == want and again["cached"] and len(timed) == 2


def test_bf16_resident_weights_keep_their_float32_values():
    from promptbake.precision import float32_of, float32_weights, to_bf16_weights, to_float32_weights

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    for p in model.parameters():
        p.requires_grad_(False)
    model[2].weight.requires_grad_(True)   # a trainable weight (like LoRA's) stays float32
    original = [p.detach().clone() for p in model.parameters()]
    to_bf16_weights(model)
    assert [p.dtype for p in model.parameters()] == [torch.bfloat16] * 4 + [torch.float32, torch.bfloat16]
    assert torch.equal(float32_of(model[0].weight), original[0])
    with float32_weights(model):
        assert all(torch.equal(p, o) for p, o in zip(model.parameters(), original))
    assert model[0].weight.dtype == torch.bfloat16
    to_float32_weights(model)
    assert all(p.dtype == torch.float32 and torch.equal(p, o) for p, o in zip(model.parameters(), original))


def test_fused_lora_and_head_in_bf16_match_float32(tiny_model_dir):
    """One training micro-batch on bf16-resident weights: loss within 1 %, LoRA gradients at cosine > 0.99 of the
    float32 ones (the tolerance this project states for bf16 training)."""
    from conftest import make_trajectories
    from promptbake.config import TrainConfig
    from promptbake.logits import TeacherCache
    from promptbake.models import load_model
    from promptbake.precision import float32_weights, to_bf16_weights
    from promptbake.train import _step_loss, add_lora

    model, tokenizer, _ = load_model(str(tiny_model_dir))
    trajectories = make_trajectories(tokenizer)
    cache = TeacherCache.compute(model, trajectories, tokenizer.pad_token_id, 10**5, top_k=32)
    student = add_lora(model, TrainConfig(), seed=0)
    with torch.no_grad():
        for p in student.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    to_bf16_weights(student)
    results = {}
    for name in ("float32", "bf16"):
        with float32_weights(student) if name == "float32" else torch.enable_grad():
            loss, _ = _step_loss(student, trajectories, [0, 1, 2, 3], tokenizer.pad_token_id, "forward", 29, cache)
        grads = [p.grad.clone() for p in student.parameters() if p.requires_grad]
        assert all(g.dtype == torch.float32 for g in grads)
        results[name] = (loss, torch.cat([g.flatten() for g in grads]))
        student.zero_grad()
    assert results["bf16"][0] == pytest.approx(results["float32"][0], rel=0.01)
    assert torch.nn.functional.cosine_similarity(results["bf16"][1], results["float32"][1], dim=0) > 0.99


def test_a_bf16_bake_runs_end_to_end_and_measures_closure_in_float32(tiny_bake_dir, tiny_model_dir, tmp_path):
    """--precision bf16 on the CPU: sampling and training run on bf16 weights, the held-out KL on float32 ones, so
    the base model's held-out KL on the same trajectories is the float32 bake's; a merge writes float32 weights."""
    from promptbake.base import load_base
    from promptbake.config import BakeConfig, ModelConfig

    loaded, _, _ = load_base(BakeConfig(model=ModelConfig(name=str(tiny_model_dir), precision="bf16")))
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    out = tmp_path / "bf16"
    assert main(["bake", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out), "--compare", "0",
                 "--device", "cpu", "--precision", "bf16", *TINY_BAKE_FLAGS]) == 0
    bf16 = json.loads((out / "bake.json").read_text())
    float32 = json.loads((tiny_bake_dir / "bake.json").read_text())
    assert bf16["config"]["model"]["precision"] == "bf16" and bf16["status"] == "finished"
    assert bf16["precision"] == {"precision": "bf16", "asked": "bf16", "reason": "--precision bf16"}
    assert torch.isfinite(torch.tensor(bf16["metrics"]["closure"]))
    same_samples = [json.loads(line)["completion_ids"] for line in (out / "trajectories.jsonl").read_text().splitlines()]
    reference = [json.loads(line)["completion_ids"]
                 for line in (tiny_bake_dir / "trajectories.jsonl").read_text().splitlines()]
    if same_samples == reference:   # the same trajectories: the base's held-out KL is measured in float32 both times
        assert bf16["metrics"]["heldout_kl_before"] == pytest.approx(float32["metrics"]["heldout_kl_before"], rel=1e-5)
    merged = tmp_path / "merged"
    assert main(["merge", str(out), "--out", str(merged)]) == 0
    from safetensors.torch import load_file

    tensors = load_file(str(next(merged.glob("*.safetensors"))))
    assert {t.dtype for t in tensors.values()} == {torch.float32}


@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_sampling_keeps_the_held_out_teacher_logits_only_from_float32_weights(tiny_model_dir, tmp_path, precision):
    """Closure is measured against the float32 teacher: logits sampled on bf16 weights are not kept for it."""
    from promptbake.config import BakeConfig, ModelConfig, SampleConfig
    from promptbake.sample_stage import sample_run

    config = BakeConfig(model=ModelConfig(name=str(tiny_model_dir), precision=precision, device="cpu"),
                        sample=SampleConfig(questions="builtin", train_questions=4, heldout_questions=2,
                                            trajectories_per_question=1, heldout_trajectories_per_question=1,
                                            max_new_tokens=6))
    (model, _, _), teacher = sample_run(PERSONA, tmp_path / "run", config, progress=False, keep_logits=True)
    assert model.promptbake_precision == precision and "train" in teacher
    assert ("heldout" in teacher) == (precision == "float32")


def test_a_bf16_bake_with_the_auto_schedule_samples_twice_per_question_and_records_it(tiny_model_dir, tmp_path):
    """Without --trajectories-per-question and --batch-size, a bf16 bake samples 2 answers per training question
    and trains 4 per step; config.yaml keeps the resolved values (so `promptbake train` and --resume use them) and
    bake.json says why."""
    out = tmp_path / "auto"
    flags = list(TINY_BAKE_FLAGS)
    for name in ("--trajectories-per-question", "--batch-size"):
        del flags[flags.index(name):flags.index(name) + 2]
    assert main(["bake", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out), "--compare", "0",
                 "--device", "cpu", "--precision", "bf16", "--questions", "builtin", *flags]) == 0
    record = json.loads((out / "bake.json").read_text())
    assert "2 teacher sample(s) per training question, 4 trajectories per step (auto for bf16" in record["schedule"]
    assert (record["config"]["sample"]["trajectories_per_question"], record["config"]["train"]["batch_size"]) == (2, 4)
    config = load_config(out / "config.yaml")
    assert (config.sample.trajectories_per_question, config.train.batch_size) == (2, 4)
    train = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert len(train) == 8 and record["metrics"]["steps"] == 2      # 4 questions x 2 answers, 4 a step
