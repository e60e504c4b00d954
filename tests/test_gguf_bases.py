"""A GGUF base beyond llama: a tiny Qwen2 written as GGUF (tests/families.py) loads through transformers' GGUF
loader with the logits of the model it was written from, bakes, and exports."""
from __future__ import annotations

import json

import torch

from promptbake.cli import main
from promptbake.models import load_model

from conftest import PERSONA, TINY_BAKE_FLAGS
from families import build_family, write_qwen2_gguf


def test_a_qwen2_gguf_loads_and_bakes(tmp_path, capsys):
    folder = build_family("qwen2", tmp_path / "qwen2")
    path = write_qwen2_gguf(folder, tmp_path / "tiny-qwen2.gguf")
    from_gguf, tokenizer, source = load_model(str(path))
    from_folder, _, _ = load_model(str(folder))
    assert source.kind == "gguf" and type(from_gguf).__name__ == "Qwen2ForCausalLM"
    ids = torch.tensor([tokenizer("Where do you live?").input_ids])
    with torch.no_grad():
        assert torch.equal(from_gguf(ids).logits, from_folder(ids).logits)
    out = tmp_path / "run"
    assert main(["bake", "--prompt", PERSONA, "--model", str(path), "--out", str(out), "--compare", "0",
                 "--questions", "builtin", *TINY_BAKE_FLAGS]) == 0
    record = json.loads((out / "bake.json").read_text())
    assert record["status"] == "finished" and record["model"]["kind"] == "gguf"
    assert record["metrics"]["heldout_kl_before"] > 0
    # qwen2 has a GGUF layout in export (checked against llama.cpp in test_llamacpp.py).
    assert main(["export", str(out), "--format", "gguf-lora", "--out", str(tmp_path / "a.gguf")]) == 0
