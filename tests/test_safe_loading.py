"""Safe loading: safetensors only (no pickle), and run-folder paths that survive a change of directory."""
import json
import shutil

import torch
from transformers import AutoModelForCausalLM

from conftest import PERSONA, TINY_BAKE_FLAGS
from promptbake.cli import main


def test_a_pickled_model_checkpoint_is_refused(tiny_model_dir, tmp_path, capsys):
    folder = tmp_path / "pickled"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    folder.mkdir()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")   # the weights as a pickle
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, folder / name)
    assert not list(folder.glob("*.safetensors"))
    capsys.readouterr()
    assert main(["bake", "--prompt", PERSONA, "--model", str(folder), "--out", str(tmp_path / "run"),
                 *TINY_BAKE_FLAGS]) == 2
    err = capsys.readouterr().err
    assert "has no safetensors weights" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_pickled_adapter_is_refused(tiny_bake, capsys):
    adapter = tiny_bake / "adapter"
    weights = adapter / "adapter_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), adapter / "adapter_model.bin")
    weights.unlink()
    assert main(["generate", str(tiny_bake), "--question", "Hi"]) == 2
    assert "has no adapter" in capsys.readouterr().err


def test_relative_paths_are_saved_absolute_and_resume_from_elsewhere(tiny_model_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "questions.txt").write_text("\n".join(f"Question number {i}?" for i in range(8)), encoding="utf-8")
    shutil.copytree(tiny_model_dir, work / "model")
    monkeypatch.chdir(work)
    assert main(["sample", "--prompt", PERSONA, "--model", "model", "--questions", "questions.txt", "--out", "run",
                 "--train-questions", "4", "--heldout-questions", "2", "--max-new-tokens", "6", "--quiet"]) == 0
    config = (work / "run" / "config.yaml").read_text()
    assert str(work / "questions.txt") in config and str(work / "model") in config
    record = json.loads((work / "run" / "bake.json").read_text())
    assert record["config"]["sample"]["questions"] == str(work / "questions.txt")
    monkeypatch.chdir(tmp_path)                                     # somewhere else entirely
    assert main(["bake", "--out", str(work / "run"), "--resume", "--quiet", "--compare", "0"]) == 0
    assert json.loads((work / "run" / "bake.json").read_text())["status"] == "finished"
