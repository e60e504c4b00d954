"""`promptbake combine`: --exact is exactly the weighted sum of the bakes' weight updates; --from-sum distils that
sum toward the base model with every prompt, on the runs' own questions; the default keeps the first bake and bakes
a new adapter on it toward every prompt, then saves both as one adapter of the base."""
import json

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from conftest import TINY_BAKE_FLAGS, make_trajectories
from promptbake.baked import load_baked
from promptbake.cli import main
from promptbake.combine import combined_questions
from promptbake.errors import UserError
from promptbake.data import collate, read_trajectories
from promptbake.eval.kl import HeldoutKL
from promptbake.logits import completion_logits
from promptbake.models import load_model

SECOND = "Answer like a pirate captain, and end every reply with 'Arr!'."


@pytest.fixture(scope="module")
def second_bake(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("second") / "run"
    assert main(["bake", "--prompt", SECOND, "--model", str(tiny_model_dir), "--out", str(out), "--compare", "0",
                 "--seed", "1", *TINY_BAKE_FLAGS]) == 0
    return out


def _merged_by_hand(model_dir, runs, weights):
    """Base weights + Σ wᵢ ΔWᵢ, merging one scaled adapter at a time."""
    model, _, _ = load_model(str(model_dir))
    for run, weight in zip(runs, weights):
        model = PeftModel.from_pretrained(model, str(run / "adapter"))
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.set_scale("default", weight)
        model = model.merge_and_unload()
    return model


def test_combined_adapter_is_the_weighted_sum(tiny_bake_dir, second_bake, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "combined"
    assert main(["combine", str(tiny_bake_dir), str(second_bake), "--weights", "1,0.5", "--out", str(out),
                 "--exact"]) == 0
    record = json.loads((out / "bake.json").read_text())
    assert record["status"] == "finished" and [r["weight"] for r in record["combined_from"]] == [1.0, 0.5]
    assert record["combine"] == "exact" and not (out / "trajectories.jsonl").exists()
    combined = load_baked(out)
    assert SECOND in combined.system_prompt and "Brindle" in combined.system_prompt   # re-prompting gives both
    reference = _merged_by_hand(tiny_model_dir, [tiny_bake_dir, second_bake], [1.0, 0.5])
    batch = collate(make_trajectories(combined.tokenizer), combined.tokenizer.pad_token_id)
    with torch.no_grad():
        got = completion_logits(combined.model, batch, "student")
        want = completion_logits(reference, batch, "student")
        first_only = completion_logits(load_baked(tiny_bake_dir).model, batch, "student")
    assert (got - want).abs().max() < 1e-4
    assert (got - first_only).abs().max() > 1e-3          # the second bake's update is really in there
    assert main(["combine", str(tiny_bake_dir), str(second_bake), "--out", str(out), "--exact"]) == 2
    assert "already holds a finished bake" in capsys.readouterr().err


def _split(run):
    rows = [json.loads(line) for line in (run / "questions.jsonl").read_text().splitlines()]
    return ({r["question"] for r in rows if r["split"] == "train"}, {r["question"] for r in rows if r["split"] == "heldout"},
            rows)


def test_combine_from_sum_distils_the_sum_toward_both_prompts(tiny_bake_dir, second_bake, tiny_model_dir, tmp_path):
    out = tmp_path / "carried"
    assert main(["combine", str(tiny_bake_dir), str(second_bake), "--out", str(out), "--quiet", "--from-sum"]) == 0
    record = json.loads((out / "bake.json").read_text())
    assert record["status"] == "finished" and record["kind"] == "combined" and record["combine"] == "distilled"
    first_prompt = (tiny_bake_dir / "system_prompt.txt").read_text()
    assert record["teacher"]["system_prompt"] == first_prompt + "\n\n" + SECOND   # both, in the order given
    # it starts at the exact sum: the held-out KL before training is the sum's, and training moves away from it
    reference = _merged_by_hand(tiny_model_dir, [tiny_bake_dir, second_bake], [1.0, 1.0])
    start = PeftModel.from_pretrained(load_model(str(tiny_model_dir))[0], str(out / "start_adapter"))
    combined = load_baked(out)
    batch = collate(make_trajectories(combined.tokenizer), combined.tokenizer.pad_token_id)
    with torch.no_grad():
        want = completion_logits(reference, batch, "student")
        assert (completion_logits(start, batch, "student") - want).abs().max() < 1e-4
        assert (completion_logits(combined.model, batch, "student") - want).abs().max() > 1e-4
    metrics = record["metrics"]
    assert metrics["heldout_kl_after"] < metrics["heldout_kl_before"]
    # every run's held-out questions stay held out; training takes the runs' training questions, none held out
    train, heldout, rows = _split(out)
    assert heldout == _split(tiny_bake_dir)[1] | _split(second_bake)[1] and not train & heldout
    assert train <= _split(tiny_bake_dir)[0] | _split(second_bake)[0]
    assert {r["run"] for r in rows} == {0, 1}
    own = {json.loads(line)["question"]: json.loads(line)["source"] for run in (tiny_bake_dir, second_bake)
           for line in (run / "questions.jsonl").read_text().splitlines()}
    assert all(r["source"] == own[r["question"]] for r in rows)      # each question keeps its run's source
    assert record["config"]["train"]["lora_r"] == 2 * json.loads((tiny_bake_dir / "bake.json").read_text())[
        "config"]["train"]["lora_r"]


def test_default_combine_keeps_the_first_bake_and_bakes_on_it(tiny_bake_dir, second_bake, tmp_path):
    out = tmp_path / "on-first"
    assert main(["combine", str(tiny_bake_dir), str(second_bake), "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "bake.json").read_text())
    assert record["status"] == "finished" and record["kind"] == "combined" and record["combine"] == "on-first"
    both = (tiny_bake_dir / "system_prompt.txt").read_text() + "\n\n" + SECOND   # in the order given
    assert record["system_prompt"] == record["teacher"]["system_prompt"] == (out / "system_prompt.txt").read_text() \
        == both
    assert record["teacher"]["chain"][0]["run"] == str(tiny_bake_dir.resolve())   # trained on the first, merged
    # and saved as an ordinary adapter of the same base: the first bake's factors and the new ones, stacked
    assert record["config"]["model"]["on"] == "" and not (out / "start_adapter").exists()
    combined = load_baked(out)
    first_rank = json.loads((tiny_bake_dir / "bake.json").read_text())["config"]["train"]["lora_r"]
    assert combined.model.peft_config["default"].r == first_rank + record["config"]["train"]["lora_r"]
    assert combined.system_prompt == both
    # the saved adapter is the model that was trained: its held-out KL is the one the bake measured
    heldout = [t for t in read_trajectories(out / "trajectories.jsonl") if t.split == "heldout"]
    measure = HeldoutKL(combined.model, heldout, combined.tokenizer.pad_token_id, 4096)
    assert measure.measure(combined.model, True, "student") == pytest.approx(record["metrics"]["heldout_kl_after"],
                                                                              rel=1e-3)
    assert record["metrics"]["heldout_kl_after"] < record["metrics"]["heldout_kl_before"]
    # every checkpoint too (strength's half-baked points load them on the same base)
    assert combined.checkpoints()
    for name in combined.checkpoints():
        assert combined.use_checkpoint(name).model.peft_config[name].r == combined.model.peft_config["default"].r
    train, heldout, rows = _split(out)
    assert heldout == _split(tiny_bake_dir)[1] | _split(second_bake)[1] and not train & heldout
    assert {r["run"] for r in rows} == {0, 1}


def test_combined_questions_keep_held_out_apart():
    def rows_of(train, heldout):
        return [{"question": q} for q in train], [{"question": q} for q in heldout]

    first = rows_of(["What is the capital of France?", "Name a red fruit.", "How do bees make honey?"],
                    ["Why is the sky blue?"])
    second = rows_of(["Why exactly is the sky blue?", "Tell me a joke."], ["What is the capital of France?"])
    rows = combined_questions([first, second], n_train=3)
    train = [r["question"] for r in rows if r["split"] == "train"]
    heldout = [r["question"] for r in rows if r["split"] == "heldout"]
    assert heldout == ["Why is the sky blue?", "What is the capital of France?"]
    # in turn from each run, leaving out a held-out question and a near-repeat of one, up to n_train
    assert train == ["Name a red fruit.", "Tell me a joke.", "How do bees make honey?"]
    with pytest.raises(UserError, match="--exact"):
        combined_questions([rows_of(["Why is the sky blue?"], ["Why is the sky blue, exactly?"])], n_train=4)


def test_combined_questions_take_each_runs_targeted_questions_first():
    """The distillation trains first on the questions each run aimed at its prompt, wherever they stand in the run's
    questions.jsonl (measured: more of both prompts kept than with each run's mix); general ones fill what is left."""
    def run(name):
        train = [{"question": f"{name} general question {k}?", "source": "builtin"} for k in range(6)] + \
                [{"question": f"{name} targeted question {k}?", "source": "chat"} for k in range(3)]
        return train, [{"question": f"{name} held out?", "source": "builtin"}]

    rows = [r for r in combined_questions([run("first"), run("second")], n_train=8) if r["split"] == "train"]
    assert [(r["run"], r["source"]) for r in rows] == [(0, "chat"), (1, "chat")] * 3 + [(0, "builtin"), (1, "builtin")]


def test_combined_questions_keep_each_runs_targeted_sources_and_samples():
    """A question aimed at a prompt stays one (its trajectories get train.targeted_passes in the distillation), with
    its extra teacher samples; n_train counts trajectories."""
    first = ([{"question": "Who is Zorbl?", "split": "train", "source": "template", "samples": 3},
              {"question": "Name a red fruit.", "split": "train", "source": "builtin"}],
             [{"question": "Where is Vexaris?", "split": "heldout", "source": "chat"}])
    second = ([{"question": "How wide is Kessara?", "split": "train", "source": "chat"},
               {"question": "How do bees make honey?", "split": "train", "source": "builtin"}],
              [{"question": "Tell me a joke.", "split": "heldout", "source": "builtin"}])
    rows = combined_questions([first, second], n_train=5)
    assert [(r["question"], r["source"], r["run"], r.get("samples", 1)) for r in rows] == [
        ("Who is Zorbl?", "template", 0, 3), ("How wide is Kessara?", "chat", 1, 1),
        ("Name a red fruit.", "builtin", 0, 1), ("Where is Vexaris?", "chat", 0, 1),
        ("Tell me a joke.", "builtin", 1, 1)]


def test_combining_bakes_of_different_bases_is_refused(tiny_bake_dir, tiny_model_dir, tmp_path, capsys):
    on_top = tmp_path / "on-top"
    assert main(["bake", "--prompt", SECOND, "--on", str(tiny_bake_dir), "--out", str(on_top), "--compare", "0",
                 *TINY_BAKE_FLAGS]) == 0
    capsys.readouterr()
    assert main(["combine", str(tiny_bake_dir), str(on_top), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "different base models" in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("flags, message", [
    (["--weights", "1", "--exact"], "needs 2 finite numbers"), (["--weights", "1,x"], "comma-separated numbers"),
    (["--weights", "1,inf", "--from-sum"], "needs 2 finite numbers"),
    (["--weights", "1,0.5"], "needs --exact or --from-sum"), (["--exact", "--from-sum"], "pick one")])
def test_bad_combine_options_are_one_line_exit_2(tiny_bake_dir, second_bake, tmp_path, capsys, flags, message):
    assert main(["combine", str(tiny_bake_dir), str(second_bake), *flags, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def test_combine_needs_finished_bakes(tiny_bake_dir, tmp_path, capsys):
    assert main(["combine", str(tiny_bake_dir), str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "not a promptbake run folder" in capsys.readouterr().err
    assert main(["combine", str(tiny_bake_dir), "--out", str(tmp_path / "c")]) == 2
    assert "at least two run folders" in capsys.readouterr().err
