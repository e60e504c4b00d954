"""`promptbake export`: the adapter GGUF's layout, scale and rank stacking on the tiny model; the merged GGUF of an
embedded-model bake read back by transformers' own GGUF loader (which undoes llama.cpp's rotary row order) gives the
baked model's logits; and the refusals. llama.cpp itself loads both files in tests/test_llamacpp.py."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from promptbake.cli import main
from promptbake.export_gguf import read_adapter, rope_rows, stack

from conftest import PERSONA


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("promptbake: error: ") and err.count("\n") == 1, err
    return err


def _tensors(path) -> dict[str, np.ndarray]:
    reader = gguf.GGUFReader(path)
    return {t.name: np.array(t.data) for t in reader.tensors}, reader


def test_rope_rows_is_llama_cpp_interleaving():
    """Within a head, HF row i (first half) and i + d/2 (second half) become llama.cpp rows 2i and 2i + 1."""
    heads, dim = 2, 6
    rows = np.arange(heads * dim, dtype=np.float32)[:, None]
    out = rope_rows(rows, heads)[:, 0]
    assert out.tolist() == [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]


def test_adapter_gguf_reproduces_the_adapter(tiny_bake, tmp_path, capsys):
    out = tmp_path / "adapter.gguf"
    assert main(["export", str(tiny_bake), "--format", "gguf-lora", "--out", str(out), "--strength", "0.5"]) == 0
    tensors, reader = _tensors(out)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama"
    record = json.loads(fields["promptbake.export"])
    assert record["strength"] == 0.5 and record["system_prompt"] == PERSONA
    rank = 8
    assert fields["adapter.lora.alpha"] == rank     # llama.cpp's alpha / rank is 1: the scale sits in lora_b
    pairs, config = read_adapter(tiny_bake / "adapter")
    config_json = json.loads((tiny_bake / "bake.json").read_text())["config"]
    heads, kv_heads = 4, 2   # the tiny model of conftest
    assert config_json and len(tensors) == 2 * len(pairs)
    for module, pair in pairs.items():
        layer = module.split(".")[2]
        short = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}[module.split(".", 3)[3]]
        a, b = tensors[f"blk.{layer}.{short}.weight.lora_a"], tensors[f"blk.{layer}.{short}.weight.lora_b"]
        expected_b = pair.b * 0.5      # read_adapter folds lora_alpha / r = 2 in; the file adds the strength
        if short == "attn_q":
            expected_b = rope_rows(expected_b, heads)
        if short == "attn_k":
            expected_b = rope_rows(expected_b, kv_heads)
        np.testing.assert_array_equal(a, pair.a)
        np.testing.assert_allclose(b, expected_b, rtol=1e-6)
        assert np.abs(b).max() > 0          # a trained adapter, not the B = 0 start


def test_stacked_pairs_sum_the_updates():
    rng = np.random.default_rng(0)
    from promptbake.export_gguf import LoraPair

    one = {"m": LoraPair(rng.normal(size=(2, 5)).astype(np.float32), rng.normal(size=(3, 2)).astype(np.float32))}
    two = {"m": LoraPair(rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32))}
    both = stack([one, two])["m"]
    assert both.a.shape == (6, 5) and both.b.shape == (3, 6)
    np.testing.assert_allclose(both.b @ both.a, one["m"].b @ one["m"].a + two["m"].b @ two["m"].a, rtol=1e-5)


def test_export_refusals(tiny_bake, tmp_path, capsys):
    out = tmp_path / "a.gguf"
    err = _one_line_error(capsys, ["export", str(tiny_bake), "--format", "gguf", "--out", str(out)])
    assert "GGUF base" in err and "gguf-lora" in err           # a Hugging Face base has no source GGUF to merge into
    assert "invalid choice" in _one_line_error(capsys, ["export", str(tiny_bake), "--format", "gguf-lora",
                                                        "--out", str(out), "--quant", "q3_k"])
    assert "does not fit --format gguf-lora" in _one_line_error(
        capsys, ["export", str(tiny_bake), "--format", "gguf-lora", "--out", str(out), "--quant", "q4_1"])
    assert "ending in .gguf" in _one_line_error(
        capsys, ["export", str(tiny_bake), "--format", "gguf-lora", "--out", str(tmp_path / "a.bin")])
    out.write_bytes(b"keep me")
    assert "--overwrite" in _one_line_error(capsys, ["export", str(tiny_bake), "--format", "gguf-lora",
                                                     "--out", str(out)])
    assert out.read_bytes() == b"keep me"
    (tiny_bake / "adapter" / "adapter_model.safetensors").unlink()
    assert "not a finished bake" in _one_line_error(capsys, ["export", str(tiny_bake), "--format", "gguf-lora",
                                                             "--out", str(tmp_path / "b.gguf")])
    assert not (tmp_path / "b.gguf").exists() and not list(tmp_path.glob(".*.tmp"))


def test_export_refuses_an_architecture_it_does_not_lay_out(tiny_bake, tmp_path, capsys):
    """A base whose model_type has no GGUF layout here (say a Gemma 2 model) is refused before anything is written."""
    record = json.loads((tiny_bake / "bake.json").read_text())
    model_dir = tmp_path / "gemma-like"
    import shutil

    shutil.copytree(record["config"]["model"]["name"], model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["model_type"] = "gemma2"
    (model_dir / "config.json").write_text(json.dumps(config))
    record["config"]["model"]["name"] = str(model_dir)
    (tiny_bake / "bake.json").write_text(json.dumps(record))
    err = _one_line_error(capsys, ["export", str(tiny_bake), "--format", "gguf-lora",
                                   "--out", str(tmp_path / "q.gguf")])
    assert "'gemma2'" in err and "llama, qwen2" in err


@pytest.mark.slow
def test_merged_gguf_reads_back_as_the_baked_model(smol_bake_dir, tmp_path, capsys):
    """transformers loads the merged f32 GGUF (undoing llama.cpp's q/k row order) into the baked model's logits.

    The adapter is exported at strength 8, so a wrong row order or scale would move the logits far more than the
    tolerance; the base logits differ from the baked ones by far more than it too.
    """
    from transformers import AutoModelForCausalLM

    from promptbake.baked import load_baked
    from promptbake.logits import adapter_disabled

    out = tmp_path / "merged.gguf"
    assert main(["export", str(smol_bake_dir), "--format", "gguf", "--out", str(out), "--quant", "f32",
                 "--strength", "8"]) == 0
    assert "gguf written to" in capsys.readouterr().out
    reader = gguf.GGUFReader(out)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    assert fields["general.architecture"] == "llama" and "tokenizer.chat_template" in fields
    assert {t.tensor_type.name for t in reader.tensors} == {"F32"}
    merged = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, dtype=torch.float32).eval()
    baked = load_baked(smol_bake_dir, strength=8)
    ids = baked.tokenizer("Where do you live? Tell me about your home.", return_tensors="pt").input_ids
    with torch.no_grad():
        got = merged(ids).logits
        want = baked.model(ids).logits
        with adapter_disabled(baked.model):
            base = baked.model(ids).logits
    assert (want - base).abs().max() > 1.0
    assert (got - want).abs().max() < 1e-2, (got - want).abs().max()


@pytest.mark.slow
def test_merged_gguf_says_how_much_of_the_bake_its_quantisation_keeps(smol_bake_dir, tmp_path, capsys):
    """Re-quantising to the source's 4-bit type rounds most of a small bake's weight change away, q8_0 keeps it;
    the export says so (the share is measured on the written tensors)."""
    kept = {}
    for quant in ("source", "q8_0"):
        assert main(["export", str(smol_bake_dir), "--format", "gguf", "--out", str(tmp_path / f"{quant}.gguf"),
                     "--quant", quant]) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        kept[quant] = float(line.split("keep ")[1].split("%")[0]) / 100
        assert ("rounded away" in line) == (kept[quant] <= 0.9), line
    reader = gguf.GGUFReader(tmp_path / "source.gguf")
    assert {t.tensor_type.name for t in reader.tensors} == {"Q4_1", "Q8_0", "F32"}   # the source file's own types
    assert kept["source"] < 0.5 < 0.95 < kept["q8_0"], kept
