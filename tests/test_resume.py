"""Kill a real bake with SIGKILL at several moments, resume it, and compare with a bake that was never killed.

The bake runs in a child process; a wrapper around one library function sends the process SIGKILL at a chosen
call (nothing is mocked: the bake up to that moment is the real one). Tolerance: a resumed run recomputes the
teacher's logits with one forward pass, where the uninterrupted run kept them from sampling (incremental decoding
with a KV cache); the two agree to float32 rounding, so the adapters agree to 1e-5, not bit for bit. Everything
else (trajectories, data order, optimizer state, RNG) is restored exactly.
"""
import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from conftest import PERSONA
from promptbake.cli import main

FLAGS = ["--train-questions", "4", "--heldout-questions", "2", "--trajectories-per-question", "2",
         "--heldout-trajectories-per-question", "1", "--max-new-tokens", "6", "--quiet", "--compare", "0",
         "--sample-batch-size", "2", "--batch-size", "2", "--epochs", "2", "--checkpoint-every", "2"]
TOLERANCE = 1e-5

# Each scenario: (module, function, call number, what happens at that call, checkpoint the resume starts from).
# 8 training + 2 held-out trajectories sampled in 5 batches of 2; the 4 answers to the 2 questions aimed at the prompt
# are trained twice an epoch (--targeted-passes 2, the default), so 12 rows an epoch: 12 steps of 2 (2 epochs),
# checkpoints every 2.
SCENARIOS = {
    "between sampling batches": ("promptbake.sample_stage", "append_sampled", 3, "kill", None),
    "mid-write of a sampled batch": ("promptbake.sample_stage", "append_sampled", 3, "torn", None),
    "mid-epoch": ("promptbake.train", "_step_loss", 5, "kill", "step-4"),
    "while writing a checkpoint": ("promptbake.checkpoint", "save_file", 2, "kill", "step-2"),
    "after the last step": ("promptbake.bake", "save_adapter", 1, "kill", "step-12"),
}

ORIGINAL_COMMAND = ("mid-epoch", "after the last step")

CHILD = """
import os, signal, sys, importlib
from promptbake.cli import main
module = importlib.import_module({module!r})
original, calls = getattr(module, {function!r}), [0]

def wrapper(*args, **kwargs):
    calls[0] += 1
    if calls[0] == {when}:
        if {action!r} == "torn":   # half of the batch's bytes reach the disk, then the power goes
            path, batch = args
            import json, dataclasses
            text = "".join(json.dumps({{"job": i, **dataclasses.asdict(t)}}) + "\\n" for i, t in batch)
            with open(path, "a") as handle:
                handle.write(text[: len(text) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)

setattr(module, {function!r}, wrapper)
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    assert main(["bake", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out), *FLAGS]) == 0
    assert json.loads((out / "bake.json").read_text())["metrics"]["repeated_trajectories"] == 4   # the arithmetic above
    return out


def _adapter(run, name="adapter"):
    return load_file(str(run / name / "adapter_model.safetensors"))


def _max_difference(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_killed_bake_resumes_to_the_uninterrupted_result(scenario, uninterrupted, tiny_model_dir, tmp_path):
    module, function, when, action, resumed_from = SCENARIOS[scenario]
    out = tmp_path / "run"
    child = textwrap.dedent(CHILD.format(module=module, function=function, when=when, action=action))
    killed = subprocess.run([sys.executable, "-c", child, "bake", "--prompt", PERSONA, "--model", str(tiny_model_dir),
                             "--out", str(out), *FLAGS], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    record = json.loads((out / "bake.json").read_text())
    assert record["status"] == "running" and not (out / "adapter").exists()    # nothing looks finished

    # the original command line plus --resume (up-arrow), or --resume alone: both continue the run as configured
    again = ["--prompt", PERSONA, "--model", str(tiny_model_dir), *FLAGS] if scenario in ORIGINAL_COMMAND else ["--quiet", "--compare", "0"]
    assert main(["bake", "--out", str(out), "--resume", *again]) == 0
    whole, resumed = (json.loads((run / "bake.json").read_text()) for run in (uninterrupted, out))
    assert resumed["status"] == "finished" and resumed["resumed_from"] == resumed_from
    assert resumed["metrics"]["resumed_sampling_batches"] == (resumed_from is None)    # kept 2 sampled batches
    assert (out / "trajectories.jsonl").read_text() == (uninterrupted / "trajectories.jsonl").read_text()
    assert not (out / "trajectories.partial.jsonl").exists()
    difference = _max_difference(_adapter(out), _adapter(uninterrupted))
    print(f"\n{scenario}: max |adapter difference| {difference:.2e}; closure resumed "
          f"{resumed['metrics']['closure']:.6f}, uninterrupted {whole['metrics']['closure']:.6f}")   # for the notes
    assert difference < TOLERANCE
    assert resumed["metrics"]["closure"] == pytest.approx(whole["metrics"]["closure"], abs=1e-4)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(0, 13))                                  # each step recorded once, in order
    assert sorted((p.name for p in (out / "checkpoints").iterdir()), key=lambda n: int(n[5:])) == [
        f"step-{n}" for n in range(2, 13, 2)]


def test_resume_of_a_finished_or_foreign_folder_is_refused(uninterrupted, tmp_path, capsys):
    assert main(["bake", "--out", str(uninterrupted), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["bake", "--out", str(tmp_path), "--resume"]) == 2
    assert "not a promptbake run folder" in capsys.readouterr().err


def test_resume_refuses_a_setting_or_prompt_that_differs_from_the_run(uninterrupted, tiny_model_dir, tmp_path, capsys):
    import shutil

    run = shutil.copytree(uninterrupted, tmp_path / "run")
    record = json.loads((run / "bake.json").read_text())
    (run / "bake.json").write_text(json.dumps({**record, "status": "running"}))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    original = ["bake", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(run), *FLAGS, "--resume"]
    assert main([*original, "--learning-rate", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--learning-rate is 0.5 here but 0.001 in its config.yaml" in err and len(err.splitlines()) == 1
    assert main([*original, "--learning-rate", "0.5", "--seed", "7"]) == 2
    assert "(and 1 more: --seed)" in capsys.readouterr().err
    changed = [a if a != PERSONA else PERSONA + " Always rhyme." for a in original]
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "differs from" in err and "Always rhyme" in err
    assert main([*original, "--overwrite"]) == 2
    assert "not both" in capsys.readouterr().err
    assert before == {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}      # nothing written


def test_an_unfinished_bake_is_never_overwritten_without_asking(uninterrupted, tiny_model_dir, tmp_path, capsys):
    import shutil

    run = shutil.copytree(uninterrupted, tmp_path / "run")
    record = json.loads((run / "bake.json").read_text())
    (run / "bake.json").write_text(json.dumps({**record, "status": "running"}))
    assert main(["bake", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(run), *FLAGS]) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err


def test_checkpoint_restores_the_optimizer_exactly(tiny_model_dir, tmp_path):
    from promptbake.checkpoint import load_checkpoint, save_checkpoint
    from promptbake.config import TrainConfig
    from promptbake.models import load_model
    from promptbake.train import add_lora

    model = add_lora(load_model(str(tiny_model_dir))[0], TrainConfig(), 0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    for _ in range(3):
        sum((p ** 2).sum() for p in params).backward()
        optimizer.step(), scheduler.step(), optimizer.zero_grad()
    save_checkpoint(model, optimizer, scheduler, 3, tmp_path / "step-3")
    fresh = add_lora(load_model(str(tiny_model_dir))[0], TrainConfig(), 1)           # other initial A: must be overwritten
    fresh_params = [p for p in fresh.parameters() if p.requires_grad]
    fresh_opt = torch.optim.AdamW(fresh_params, lr=1e-2)
    fresh_sched = torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda step: 0.5 ** step)
    assert load_checkpoint(fresh, fresh_opt, fresh_sched, tmp_path / "step-3") == 3
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()
    for a, b in zip(params, fresh_params):
        assert torch.equal(a, b)
    for state, restored in zip(optimizer.state.values(), fresh_opt.state.values()):
        assert all(torch.equal(state[k], restored[k]) for k in state)
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))   # no pickle on disk


def test_a_nan_loss_stops_training_keeps_the_last_checkpoint_and_marks_the_run_failed(
        tiny_model_dir, tmp_path, monkeypatch, capsys):
    import promptbake.train as train

    original, calls = train._step_loss, [0]

    def poisoned(*args, **kwargs):   # from the 5th micro-batch (step 5) on, the summed KL is NaN
        calls[0] += 1
        kl, tokens = original(*args, **kwargs)
        return (kl * float("nan") if calls[0] >= 5 else kl), tokens

    monkeypatch.setattr(train, "_step_loss", poisoned)
    out = tmp_path / "run"
    assert main(["bake", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out), *FLAGS]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]                              # one line, after the loading bars
    assert last.startswith("promptbake: error: training loss became nan at step 5")
    assert f"{out / 'checkpoints' / 'step-4'}" in last
    record = json.loads((out / "bake.json").read_text())
    assert record["status"] == "failed" and "training" in record["error"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert not (out / "adapter").exists()
