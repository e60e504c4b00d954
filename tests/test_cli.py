"""The command line on the tiny model: the run-folder contract, the other verbs, and bad input → exit 2."""
import json

import pytest

from promptbake.cli import main

from conftest import PERSONA

SMALL = ["--train-questions", "4", "--heldout-questions", "2", "--trajectories-per-question", "2",
         "--heldout-trajectories-per-question", "1", "--max-new-tokens", "6", "--quiet"]
TRAIN_SMALL = ["--epochs", "1", "--batch-size", "4", "--checkpoint-every", "1", "--eval-every", "1",
               "--targeted-passes", "1"]   # one pass over every trajectory: the step counts below


@pytest.fixture(scope="module")
def baked_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["bake", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out), "--compare", "1",
                 *SMALL, *TRAIN_SMALL])
    assert code == 0
    return out


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bake_writes_the_run_folder_contract(baked_run):
    names = {p.name for p in baked_run.iterdir()}
    assert names == {"bake.json", "system_prompt.txt", "config.yaml", "questions.jsonl", "trajectories.jsonl",
                     "adapter", "checkpoints", "metrics.jsonl"}
    questions = [json.loads(line) for line in (baked_run / "questions.jsonl").read_text().splitlines()]
    assert {q["question"] for q in questions if q["split"] == "train"} == set(
        json.loads((baked_run / "bake.json").read_text())["questions"]["train"])
    assert (baked_run / "system_prompt.txt").read_text() == PERSONA
    assert {p.name for p in (baked_run / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert sorted(p.name for p in (baked_run / "checkpoints").iterdir()) == ["step-1", "step-2"]
    record = json.loads((baked_run / "bake.json").read_text())
    assert record["status"] == "finished" and record["system_prompt"] == PERSONA
    assert record["framing"]["kind"] == "chat_template" and PERSONA in record["framing"]["teacher_example"]
    assert PERSONA not in record["framing"]["student_example"]
    assert set(record["versions"]) >= {"promptbake", "torch", "transformers", "peft"}
    metrics = record["metrics"]
    assert metrics["closure"] == pytest.approx(1 - metrics["heldout_kl_after"] / metrics["heldout_kl_before"])
    assert metrics["sampling_seconds"] > 0 and metrics["training_seconds"] > 0
    assert not set(record["questions"]["train"]) & set(record["questions"]["heldout"])


def test_trajectories_and_metrics_files(baked_run):
    records = [json.loads(line) for line in (baked_run / "trajectories.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records].count("train") == 8 and [r["split"] for r in records].count("heldout") == 2
    for r in records:
        assert 1 <= len(r["completion_ids"]) <= 6
        assert r["finished"] == (r["completion_ids"][-1] == 2)  # SmolLM2's <|im_end|> ends and belongs to y
    metrics = [json.loads(line) for line in (baked_run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0] == {"step": 0, "heldout_kl": pytest.approx(metrics[0]["heldout_kl"])}
    assert [m["step"] for m in metrics[1:]] == [1, 2]
    assert all({"loss", "lr", "tokens_per_s", "heldout_kl"} <= set(m) for m in metrics[1:])


def test_bake_prints_closure_and_side_by_side(tiny_model_dir, tmp_path, capsys):
    assert main(["bake", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(tmp_path / "r"),
                 "--compare", "1", *SMALL, *TRAIN_SMALL]) == 0
    out = capsys.readouterr().out
    assert "closure" in out and "base, no prompt:" in out and "base + prompt:" in out and "baked, no prompt:" in out


def test_generate_and_chat(baked_run, capsys, monkeypatch):
    assert main(["generate", str(baked_run), "--question", "Who are you?", "--samples", "2", "--json"]) == 0
    replies = json.loads(capsys.readouterr().out)["replies"]
    assert len(replies) == 2
    assert main(["generate", str(baked_run), "--question", "Hi", "--reprompt", "--checkpoint", "step-1"]) == 0
    lines = iter(["hello", "and again?", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", str(baked_run)]) == 0
    assert capsys.readouterr().out.count("model> ") == 2


def test_sample_then_train_equals_bake(baked_run, tiny_model_dir, tmp_path):
    out = tmp_path / "staged"
    assert main(["sample", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out), *SMALL]) == 0
    record = json.loads((out / "bake.json").read_text())
    assert (record["status"], record["stage"]) == ("running", "sampled")
    assert (out / "trajectories.jsonl").read_bytes() == (baked_run / "trajectories.jsonl").read_bytes()
    assert main(["train", str(out), "--quiet", *TRAIN_SMALL]) == 0
    staged, whole = (json.loads((d / "bake.json").read_text())["metrics"] for d in (out, baked_run))
    assert staged["heldout_kl_after"] == pytest.approx(whole["heldout_kl_after"], rel=1e-5)


def _bad_inputs(tmp, tiny, run):
    (tmp / "bad.yaml").write_text("train:\n  epochs: [\n")
    (tmp / "empty.txt").write_text("")
    (tmp / "five.txt").write_text("a?\nb?\nc?\nd?\ne?\n")
    (tmp / "blank_prompt.txt").write_text("  \n")
    base = ["--model", str(tiny), "--out", str(tmp / "new"), *SMALL]
    return {
        "empty prompt": (["bake", "--prompt", "   ", *base], "prompt is empty"),
        "missing prompt file": (["bake", "--prompt-file", str(tmp / "none.txt"), *base], "does not exist"),
        "blank prompt file": (["bake", "--prompt-file", str(tmp / "blank_prompt.txt"), *base], "prompt is empty"),
        "unknown model": (["bake", "--prompt", "x", *base, "--model", "no-such-org/no-such-model"],
                          "not found: tried a local folder"),
        "empty question file": (["bake", "--prompt", "x", *base, "--questions", str(tmp / "empty.txt")],
                                "holds no questions"),
        "question file is a folder": (["bake", "--prompt", "x", *base, "--questions", str(tmp)], "is a folder"),
        "too few questions": (["bake", "--prompt", "x", *base, "--questions", str(tmp / "five.txt")],
                              "the split needs 6"),
        "finished bake in out": (["bake", "--prompt", "x", *base, "--out", str(run)], "already holds a finished bake"),
        "prompt longer than context": (["bake", "--prompt", "word " * 300, *base], "the prompt is too long"),
        "malformed yaml": (["bake", "--prompt", "x", *base, "--config", str(tmp / "bad.yaml")], "not valid YAML"),
        "negative epochs": (["bake", "--prompt", "x", *base, "--epochs", "-1"], "train.epochs must be >= 1"),
        "not a run folder": (["generate", str(tmp), "--question", "hi"], "not a promptbake run folder"),
        "missing checkpoint": (["generate", str(run), "--question", "hi", "--checkpoint", "step-99"],
                               "no checkpoint 'step-99'"),
        "train a finished bake": (["train", str(run)], "already holds a finished bake"),
    }


def test_bad_input_gets_one_line_and_exit_2_and_changes_nothing(baked_run, tiny_model_dir, tmp_path, capsys):
    before = _snapshot(baked_run)
    for name, (argv, message) in _bad_inputs(tmp_path, tiny_model_dir, baked_run).items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if line.startswith("promptbake: error:")]
        assert len(errors) == 1 and message in errors[0], (name, err)
        assert "Traceback" not in "\n".join(err), name
        assert not (tmp_path / "new").exists(), name
    assert _snapshot(baked_run) == before


def test_overwrite_replaces_a_finished_bake(baked_run, tiny_model_dir, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(baked_run, out)
    assert main(["bake", "--prompt", "You are Quill.", "--model", str(tiny_model_dir), "--out", str(out),
                 "--overwrite", "--compare", "0", *SMALL, *TRAIN_SMALL]) == 0
    assert (out / "system_prompt.txt").read_text() == "You are Quill."


def test_non_run_folder_with_files_is_never_used(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["bake", "--prompt", "x", "--model", str(tiny_model_dir), "--out", str(tmp_path), *SMALL]) == 2
    assert "not a promptbake run" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_heldout_trajectories_do_not_depend_on_the_training_budget(baked_run, tiny_model_dir, tmp_path):
    out = tmp_path / "fewer"
    argv = ["sample", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out), *SMALL]
    assert main([*argv, "--train-questions", "3", "--trajectories-per-question", "1"]) == 0
    heldout = [line for line in (out / "trajectories.jsonl").read_text().splitlines() if '"heldout"' in line]
    assert heldout and heldout == [line for line in (baked_run / "trajectories.jsonl").read_text().splitlines()
                                   if '"heldout"' in line]


def test_strength_scales_the_adapter_from_base_to_bake(baked_run):
    import torch

    from promptbake import load_baked
    from promptbake.data import collate, read_trajectories
    from promptbake.logits import adapter_disabled, completion_logits

    baked = load_baked(baked_run)
    batch = collate(read_trajectories(baked_run / "trajectories.jsonl")[:3], baked.tokenizer.pad_token_id)
    with torch.no_grad():
        full = completion_logits(baked.model, batch, "student")
        with adapter_disabled(baked.model):
            base = completion_logits(baked.model, batch, "student")
        half = completion_logits(baked.with_strength(0.5).model, batch, "student")
        zero = completion_logits(baked.with_strength(0).model, batch, "student")
        again = completion_logits(baked.with_strength(1).model, batch, "student")
    assert torch.allclose(zero, base, atol=1e-5) and torch.equal(again, full)
    assert not torch.allclose(half, full, atol=1e-4) and not torch.allclose(half, base, atol=1e-4)
    assert (half - base).abs().mean() < (full - base).abs().mean()


def test_merged_model_loads_with_plain_transformers_and_matches_the_bake(baked_run, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    from promptbake import load_baked
    from promptbake.data import collate, read_trajectories
    from promptbake.logits import completion_logits

    out = tmp_path / "merged"
    assert main(["merge", str(baked_run), "--out", str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "promptbake_merge.json"} <= {
        p.name for p in out.iterdir()}
    merged = AutoModelForCausalLM.from_pretrained(out)
    baked = load_baked(baked_run)
    batch = collate(read_trajectories(baked_run / "trajectories.jsonl")[:3], baked.tokenizer.pad_token_id)
    with torch.no_grad():
        difference = (completion_logits(merged, batch, "student")
                      - completion_logits(baked.model, batch, "student")).abs().max()
    assert difference < 1e-4
    assert main(["merge", str(baked_run), "--out", str(out)]) == 2
    assert "already holds a merged model" in capsys.readouterr().err
    assert main(["merge", str(baked_run), "--out", str(out), "--overwrite", "--strength", "0.5"]) == 0


@pytest.mark.parametrize("strength, message", [("-1", "finite number >= 0"), ("abc", "must be a number"),
                                               ("nan", "finite number >= 0")])
def test_bad_strength_is_one_line_exit_2(baked_run, capsys, strength, message):
    assert main(["generate", str(baked_run), "--question", "hi", "--strength", strength]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_merge_never_replaces_a_folder_it_did_not_write(baked_run, tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["merge", str(baked_run), "--out", str(tmp_path), "--overwrite"]) == 2
    assert "not a merged model from promptbake" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_config_file_with_flag_overrides_is_saved_resolved(tiny_model_dir, tmp_path):
    import yaml

    (tmp_path / "c.yaml").write_text("train:\n  epochs: 3\n  learning_rate: 0.005\nsample:\n  max_new_tokens: 5\n")
    out = tmp_path / "run"
    assert main(["bake", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out), "--compare", "0",
                 "--config", str(tmp_path / "c.yaml"), *SMALL, "--epochs", "1", "--batch-size", "4"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["train"]["learning_rate"] == 0.005   # flag wins, file kept
    assert saved["sample"]["max_new_tokens"] == 6                                          # SMALL's flag wins
    assert json.loads((out / "bake.json").read_text())["config"] == saved


def test_bake_a_base_model_without_chat_template(tiny_model_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    model_dir = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(model_dir)
    assert AutoTokenizer.from_pretrained(model_dir).chat_template is None
    out = tmp_path / "run"
    assert main(["bake", "--prompt", PERSONA, "--model", str(model_dir), "--out", str(out), "--compare", "1",
                 *SMALL, *TRAIN_SMALL]) == 0
    record = json.loads((out / "bake.json").read_text())
    assert record["framing"]["kind"] == "plain_prefix" and record["framing"]["teacher_example"].startswith(PERSONA)


def test_eval_kl_reports_four_conditions_consistent_with_the_bake(baked_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(baked_run, run)
    assert main(["eval", str(run), "--suite", "kl"]) == 0
    assert main(["eval", str(run), "--checkpoint", "step-1", "--strength", "0.5"]) == 0
    record = json.loads((run / "eval.json").read_text())
    assert sorted(record) == ["final@strength=1", "step-1@strength=0.5"]
    kl = record["final@strength=1"]["kl"]
    metrics = json.loads((run / "bake.json").read_text())["metrics"]
    assert kl["conditions"]["base"]["kl"] == pytest.approx(metrics["heldout_kl_before"], rel=1e-4)
    assert kl["conditions"]["baked"]["kl"] == pytest.approx(metrics["heldout_kl_after"], rel=1e-4)
    assert kl["closure"] == pytest.approx(metrics["closure"], rel=1e-3)
    assert kl["conditions"]["base+prompt"]["kl"] == 0.0
    assert kl["conditions"]["baked+prompt"]["kl"] > 0
    per_position = kl["conditions"]["base"]["per_position"]
    assert len(per_position) == 6 and all(v is None or v >= 0 for v in per_position)
    assert "baked+prompt" in capsys.readouterr().out


def test_eval_bad_input(baked_run, tmp_path, capsys):
    import shutil

    no_adapter = tmp_path / "no-adapter"
    shutil.copytree(baked_run, no_adapter)
    shutil.rmtree(no_adapter / "adapter")
    for argv, message in ((["eval", str(baked_run), "--suite", "kl,vibes"], "unknown suite vibes"),
                          (["eval", str(baked_run), "--checkpoint", "step-7"], "no checkpoint 'step-7'"),
                          (["eval", str(no_adapter)], "has no adapter"),
                          (["eval", str(tmp_path)], "not a promptbake run folder")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len([line for line in err if "promptbake: error" in line]) == 1 and message in err[-1], (argv, err)


def test_a_live_lock_stops_a_second_writer_and_a_stale_one_is_taken_over(tiny_model_dir, tmp_path, capsys):
    import os

    out = tmp_path / "locked"
    out.mkdir()
    (out / ".lock").write_text(str(os.getppid()))      # a live process holds it
    argv = ["sample", "--prompt", PERSONA, "--model", str(tiny_model_dir), "--out", str(out), *SMALL]
    assert main(argv) == 2
    assert f"another promptbake process (pid {os.getppid()})" in capsys.readouterr().err
    (out / ".lock").write_text("999999999")            # its writer is gone
    assert main(argv) == 0
    assert not (out / ".lock").exists() and (out / "trajectories.jsonl").is_file()


def test_a_truncated_last_trajectory_line_is_dropped_with_a_warning(baked_run, tmp_path, capsys):
    from promptbake.data import read_trajectories

    text = (baked_run / "trajectories.jsonl").read_text()
    (tmp_path / "t.jsonl").write_text(text[:-20])
    assert len(read_trajectories(tmp_path / "t.jsonl")) == len(text.splitlines()) - 1
    assert "is truncated; dropping" in capsys.readouterr().err
    (tmp_path / "m.jsonl").write_text(text.replace("\n", "\n{broken\n", 1))
    with pytest.raises(Exception, match="m.jsonl:2 is not a trajectory record"):
        read_trajectories(tmp_path / "m.jsonl")


def test_sequential_bake_on_a_previous_bake(baked_run, tiny_model_dir, tmp_path, capsys):
    import torch
    from peft import PeftModel

    from promptbake import load_baked
    from promptbake.data import collate, read_trajectories
    from promptbake.logits import completion_logits
    from promptbake.models import load_model

    second = tmp_path / "second"
    assert main(["bake", "--prompt", "You only answer in French.", "--on", str(baked_run), "--out", str(second),
                 "--compare", "0", *SMALL, *TRAIN_SMALL]) == 0
    record = json.loads((second / "bake.json").read_text())
    assert record["config"]["model"]["on"] == str(baked_run.resolve())
    assert record["config"]["model"]["name"] == str(tiny_model_dir)      # inherited from the first bake
    # The reloaded sequential bake is: base, first adapter merged, second adapter on top.
    base, tokenizer, _ = load_model(str(tiny_model_dir))
    first = PeftModel.from_pretrained(base, str(baked_run / "adapter")).merge_and_unload()
    manual = PeftModel.from_pretrained(first, str(second / "adapter"))
    batch = collate(read_trajectories(second / "trajectories.jsonl")[:3], tokenizer.pad_token_id)
    with torch.no_grad():
        expected = completion_logits(manual, batch, "student")
        assert torch.allclose(completion_logits(load_baked(second).model, batch, "student"), expected, atol=1e-5)
    # Bad input: an unfinished or missing previous bake, and a different base model.
    assert main(["bake", "--prompt", "x", "--on", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not a promptbake run folder" in capsys.readouterr().err
    assert main(["bake", "--prompt", "x", "--on", str(baked_run), "--model", "smollm2-135m",
                 "--out", str(tmp_path / "o"), *SMALL]) == 2
    assert "was baked on model" in capsys.readouterr().err
