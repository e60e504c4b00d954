"""`accelerate launch` with two CPU processes (gloo) trains the same adapter as one process.

Tolerance: each process sums the gradient of its share of a step and the shares are added by all-reduce, so the
gradient equals the one-process gradient up to the order of float32 additions; after a few AdamW steps the adapters
agree to ~1e-7 (measured), and the test allows 1e-5.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import PERSONA
from promptbake.cli import main

TRAIN = ["--batch-size", "4", "--epochs", "2", "--checkpoint-every", "2", "--quiet"]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def sampled(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "sampled"
    assert main(["sample", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out),
                 "--train-questions", "8", "--heldout-questions", "2", "--trajectories-per-question", "2",
                 "--max-new-tokens", "8", "--quiet"]) == 0
    return out


def test_two_processes_train_the_one_process_adapter(sampled, tmp_path):
    one, two = shutil.copytree(sampled, tmp_path / "one"), shutil.copytree(sampled, tmp_path / "two")
    assert main(["train", str(one), *TRAIN]) == 0
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    # --multi_gpu picks accelerate's torchrun launcher; with no GPU, promptbake asks for the gloo (CPU) backend.
    run = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "promptbake.cli", "train",
                          str(two), *TRAIN], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("closure") == 1                       # only the main process reports
    a = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(two / "adapter" / "adapter_model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < TOLERANCE
    first, second = (json.loads((run_dir / "bake.json").read_text())["metrics"] for run_dir in (one, two))
    assert (first["processes"], second["processes"]) == (1, 2)
    assert second["closure"] == pytest.approx(first["closure"], abs=1e-5)
    metrics = (two / "metrics.jsonl").read_text().splitlines()
    # the trajectories aimed at the prompt are trained twice an epoch (the default second pass), 4 rows a step
    rows = second["train_trajectories"] + second["repeated_trajectories"]
    assert second["repeated_trajectories"] > 0 and second["steps"] == 2 * -(-rows // 4) == first["steps"]
    steps = [json.loads(line)["step"] for line in metrics]
    assert steps == list(range(second["steps"] + 1))                 # written once, by the main process


@pytest.mark.parametrize("backend", ["FSDP", "DEEPSPEED"])
def test_sharded_backends_are_refused_not_silently_ignored(sampled, tmp_path, monkeypatch, capsys, backend):
    run = shutil.copytree(sampled, tmp_path / "run")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(f"ACCELERATE_USE_{backend}", "true")
    assert main(["train", str(run), *TRAIN]) == 2
    err = capsys.readouterr().err
    assert "data parallelism only" in err and err.count("\n") == 1
    assert not (run / "adapter").exists()
