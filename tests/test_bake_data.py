"""What a bake trains on: auto questions in the run folder, multi-turn dialogues, and `--on` chains that carry
every prompt (tiny model, through the CLI)."""
import json
from pathlib import Path

import pytest

from conftest import PERSONA, TINY_BAKE_FLAGS
from promptbake.baked import load_baked
from promptbake.cli import main
from promptbake.data import read_trajectories
from promptbake.prompts import prompt_ids

NEWS = "News: a new moon of Neptune, Kessara, was confirmed in November 2026. Kessara is 40 kilometres wide."
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"   # SmolLM2's template's own


def _bake(model_dir, out, prompt, *flags):
    return main(["bake", "--prompt", prompt, "--model", str(model_dir), "--out", str(out), "--compare", "0",
                 *TINY_BAKE_FLAGS, *flags])


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_auto_questions_are_written_and_a_rerun_from_them_trains_on_the_same_split(tiny_model_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert _bake(tiny_model_dir, first, NEWS, "--targeted-passes", "2") == 0
    record = json.loads((first / "bake.json").read_text())
    questions = _records(first / "questions.jsonl")
    assert record["questions"]["source"] == "auto" and record["questions"]["mix"]["targeted_fraction"] == 0.5
    assert {q["question"] for q in questions if q["split"] == "heldout"} == set(record["questions"]["heldout"])
    assert {q["source"] for q in questions} - {"template", "prompt-pool", "generated", "chat", "builtin"} == set()
    assert any(q["source"] != "builtin" for q in questions if q["split"] == "train")
    trained = {t.question for t in read_trajectories(first / "trajectories.jsonl") if t.split == "train"}
    assert trained == {q["question"] for q in questions if q["split"] == "train"}
    assert _bake(tiny_model_dir, second, NEWS, "--targeted-passes", "2", "--questions",
                 str(first / "questions.jsonl")) == 0
    again = json.loads((second / "bake.json").read_text())
    assert (again["questions"]["train"], again["questions"]["heldout"]) == (record["questions"]["train"],
                                                                            record["questions"]["heldout"])
    # the sources come along, so the questions aimed at the prompt get their second pass again
    assert {q["question"]: q["source"] for q in _records(second / "questions.jsonl")} == \
        {q["question"]: q["source"] for q in questions}
    assert again["metrics"]["repeated_trajectories"] == record["metrics"]["repeated_trajectories"] > 0


def test_a_question_files_samples_give_that_many_teacher_trajectories_and_a_rerun_keeps_them(tiny_model_dir,
                                                                                               tmp_path):
    """questions.jsonl's `samples` (set by --questions auto for a question whose answer uses a rare word of the
    prompt) multiplies --trajectories-per-question for that question, each trajectory its own sample."""
    from collections import Counter

    rows = [{"question": "How wide is Kessara?", "split": "train", "source": "chat", "samples": 3},
            {"question": "Name a red fruit.", "split": "train", "source": "builtin"},
            {"question": "Who found Kessara?", "split": "heldout", "source": "chat"},
            {"question": "Why is the sky blue?", "split": "heldout", "source": "builtin"}]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = tmp_path / "first", tmp_path / "second"
    assert _bake(tiny_model_dir, first, NEWS, "--questions", str(path), "--targeted-passes", "1") == 0
    train = [t for t in read_trajectories(first / "trajectories.jsonl") if t.split == "train"]
    assert Counter(t.question for t in train) == {"How wide is Kessara?": 6, "Name a red fruit.": 2}
    assert len({tuple(t.completion_ids) for t in train if t.question == "How wide is Kessara?"}) > 1
    assert _bake(tiny_model_dir, second, NEWS, "--questions", str(first / "questions.jsonl"),
                 "--targeted-passes", "1") == 0
    assert [r.get("samples", 1) for r in _records(second / "questions.jsonl")] == [3, 1, 1, 1]


def test_a_prompt_that_changes_nothing_gives_no_usable_question(tiny_model_dir, tmp_path, capsys):
    """Baking the template's own default system prompt: prompted and unprompted are the same text."""
    assert _bake(tiny_model_dir, tmp_path / "run", DEFAULT_SYSTEM, "--quiet") == 2
    assert "no usable question could be generated from the prompt" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_multi_turn_bake_trains_every_assistant_turn_without_the_prompt(tiny_model_dir, tiny, tmp_path):
    _, tokenizer = tiny
    out = tmp_path / "run"
    assert _bake(tiny_model_dir, out, PERSONA, "--turns", "3", "--questions", "builtin") == 0
    trajectories = read_trajectories(out / "trajectories.jsonl")
    train = [t for t in trajectories if t.split == "train"]
    heldout = [t for t in trajectories if t.split == "heldout"]
    assert len(train) == 3 * 4 * 2 and len(heldout) == 2                # 4 questions × 2 samples × 3 turns
    later = [t for t in train if t.sample_index >= 8]
    assert len(later) == 16
    for t in later:   # the dialogue so far, with and without the system prompt, on the two sides
        assert len(t.student_prompt_ids) > len(prompt_ids(tokenizer, [{"role": "user", "content": t.question}], None))
        assert tokenizer.decode(t.teacher_prompt_ids).count("<|im_start|>assistant") >= 2
        assert PERSONA not in tokenizer.decode(t.student_prompt_ids)
        # the teacher sees the prompt at the start and again opening the user's latest message (turn_prompt
        # "repeated"), which the student's copy of the dialogue has without it
        teacher = tokenizer.decode(t.teacher_prompt_ids)
        latest = teacher.rsplit("<|im_start|>user\n", 1)[1]
        assert teacher.count(PERSONA) == 2 and latest.startswith(PERSONA + "\n\n")
        assert latest[len(PERSONA) + 2:].split("<|im_end|>")[0] in tokenizer.decode(t.student_prompt_ids)
    assert json.loads((out / "bake.json").read_text())["metrics"]["train_trajectories"] == len(train)
    start = tmp_path / "start"
    assert _bake(tiny_model_dir, start, PERSONA, "--turns", "3", "--questions", "builtin", "--turn-prompt",
                 "start") == 0
    later = [t for t in read_trajectories(start / "trajectories.jsonl") if t.split == "train" and t.sample_index >= 8]
    assert later and all(tokenizer.decode(t.teacher_prompt_ids).count(PERSONA) == 1 for t in later)


def test_sequential_bake_carries_the_first_prompt_into_the_teacher(tiny_model_dir, tiny_bake_dir, tmp_path):
    carried, alone = tmp_path / "carried", tmp_path / "alone"
    assert _bake(tiny_model_dir, carried, NEWS, "--on", str(tiny_bake_dir), "--questions", "builtin") == 0
    assert _bake(tiny_model_dir, alone, NEWS, "--on", str(tiny_bake_dir), "--questions", "builtin",
                 "--no-carry-prompts") == 0
    teacher = json.loads((carried / "bake.json").read_text())["teacher"]
    assert teacher["carries_prompts"] and teacher["system_prompt"] == PERSONA + "\n\n" + NEWS
    assert [link["system_prompt"] for link in teacher["chain"]] == [PERSONA]
    assert json.loads((alone / "bake.json").read_text())["teacher"]["system_prompt"] == NEWS
    both = read_trajectories(carried / "trajectories.jsonl")
    one = read_trajectories(alone / "trajectories.jsonl")
    assert [t.student_prompt_ids for t in both] == [t.student_prompt_ids for t in one]
    assert all(len(a.teacher_prompt_ids) > len(b.teacher_prompt_ids) for a, b in zip(both, one))
    # re-prompting a carried chain gives it every prompt it was baked with; an uncarried one its own prompt
    assert load_baked(carried).system_prompt == PERSONA + "\n\n" + NEWS
    assert load_baked(alone).system_prompt == NEWS


def test_a_carrying_chain_asks_the_earlier_bakes_own_questions_in_place_of_general_ones(tiny_model_dir,
                                                                                           tiny_bake_dir, tmp_path):
    """With --questions auto, a bake --on a chain trades half its general training questions for the earlier bakes'
    targeted ones (source 'carried', and the run they came from), so the teacher prompted with every prompt is asked
    about the first one too; the number of training questions stays, and without carrying nothing is traded."""
    carried, alone = tmp_path / "carried", tmp_path / "alone"
    flags = ("--train-questions", "8")
    assert _bake(tiny_model_dir, carried, NEWS, "--on", str(tiny_bake_dir), *flags) == 0
    assert _bake(tiny_model_dir, alone, NEWS, "--on", str(tiny_bake_dir), "--no-carry-prompts", *flags) == 0
    first = {q["question"] for q in _records(tiny_bake_dir / "questions.jsonl")
             if q["split"] == "train" and q["source"] != "builtin"}
    rows, plain = _records(carried / "questions.jsonl"), _records(alone / "questions.jsonl")
    kept = [q for q in rows if q["source"] == "carried"]
    general = [q for q in plain if q["split"] == "train" and q["source"] == "builtin"]
    assert kept and len(kept) == len(general) // 2 and {q["question"] for q in kept} <= first
    assert all(q["split"] == "train" and q["from"] == str(tiny_bake_dir) for q in kept)
    assert not any(q["source"] == "carried" for q in plain)
    assert sum(q["split"] == "train" for q in rows) == sum(q["split"] == "train" for q in plain)
    mix = json.loads((carried / "bake.json").read_text())["questions"]["mix"]
    assert mix["carried"] == {str(tiny_bake_dir): len(kept)} and mix["by_source"]["carried"] == len(kept)
    assert mix["general"]["train"] == len(general) - len(kept) == \
        mix["by_source"]["builtin"] - mix["general"]["heldout"]
    trained = {t.question for t in read_trajectories(carried / "trajectories.jsonl") if t.split == "train"}
    assert {q["question"] for q in kept} <= trained


def test_a_carried_teacher_is_the_original_base_model_whoever_computes_it(tiny_model_dir, tiny_bake_dir, tmp_path):
    """Sampling keeps the teacher's logits; `promptbake train` recomputes them from the original base (not the
    merged chain with its adapter off): the closure's starting KL must agree."""
    sampled, trained = tmp_path / "bake", tmp_path / "split"
    assert _bake(tiny_model_dir, sampled, NEWS, "--on", str(tiny_bake_dir), "--questions", "builtin") == 0
    assert main(["sample", "--prompt", NEWS, "--model", str(tiny_model_dir), "--on", str(tiny_bake_dir),
                 "--out", str(trained), "--questions", "builtin", *TINY_BAKE_FLAGS[:11]]) == 0
    assert main(["train", str(trained), "--quiet", *TINY_BAKE_FLAGS[11:]]) == 0
    before = [json.loads((run / "bake.json").read_text())["metrics"]["heldout_kl_before"] for run in (sampled, trained)]
    assert before[0] == pytest.approx(before[1], rel=1e-3)


def test_on_policy_steps_are_seeded_and_about_the_asked_share():
    from promptbake.onpolicy import is_on_policy

    picks = [is_on_policy(step, 0.25, seed=3) for step in range(2000)]
    assert picks == [is_on_policy(step, 0.25, seed=3) for step in range(2000)]
    assert 0.22 < sum(picks) / len(picks) < 0.28
    assert not any(is_on_policy(step, 0.0, 3) for step in range(100))
    assert all(is_on_policy(step, 1.0, 3) for step in range(100))


def test_a_fresh_students_rollouts_are_the_base_models_answers_without_the_prompt(tiny):
    from promptbake.config import SampleConfig, TrainConfig
    from promptbake.onpolicy import student_rollouts
    from promptbake.sampling import generate_batch, generation_config, stream_seed
    from promptbake.prompts import stop_token_ids
    from promptbake.train import add_lora
    from conftest import make_trajectories

    model, tokenizer = tiny
    rows = make_trajectories(tokenizer)
    cfg = SampleConfig(max_new_tokens=5)
    stops = stop_token_ids(tokenizer, model.generation_config)
    want, _ = generate_batch(model, [t.student_prompt_ids for t in rows], generation_config(cfg, stops,
                             tokenizer.pad_token_id), tokenizer.pad_token_id, stops,
                             seeds=[stream_seed(7, "on-policy", 4, i) for i in range(len(rows))])
    student = add_lora(model, TrainConfig(), seed=0)                   # B = 0: the student is still the base
    got = student_rollouts(student, tokenizer, cfg, seed=7)(rows, 4)
    assert [t.completion_ids for t in got] == [ids for ids, _ in want]
    assert [t.teacher_prompt_ids for t in got] == [t.teacher_prompt_ids for t in rows]
    assert any(a.completion_ids != b.completion_ids for a, b in zip(got, rows))


def test_on_policy_bake_trains_on_student_answers(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert _bake(tiny_model_dir, out, PERSONA, "--on-policy", "1", "--questions", "builtin", "--batch-size",
                 "2") == 0
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert steps and all(step["on_policy"] for step in steps)
    record = json.loads((out / "bake.json").read_text())
    assert record["metrics"]["on_policy_steps"] == len(steps) == 4


def test_on_policy_with_a_carried_chain_is_refused_before_anything_loads(tiny_model_dir, tiny_bake_dir, tmp_path,
                                                                          capsys):
    assert _bake(tiny_model_dir, tmp_path / "run", NEWS, "--on", str(tiny_bake_dir), "--on-policy", "0.5") == 2
    assert "train.on_policy cannot be used with --on carrying the chain's prompts" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_unprompted_general_teacher_keeps_the_base_models_answers_to_the_general_questions(tiny_model_dir,
                                                                                             tmp_path):
    """--general-teacher base: the general pool's training trajectories are the base model's, without the prompt
    (their teacher sees what the student sees), the targeted ones and the held-out ones keep the prompt."""
    from promptbake.prompts import student_prompt_ids, teacher_prompt_ids
    from promptbake.models import load_model

    out = tmp_path / "anchored"
    assert _bake(tiny_model_dir, out, NEWS, "--general-teacher", "base") == 0
    sources = {q["question"]: q["source"] for q in _records(out / "questions.jsonl")}
    tokenizer = load_model(str(tiny_model_dir))[1]
    trajectories = read_trajectories(out / "trajectories.jsonl")
    general = [t for t in trajectories if t.split == "train" and sources[t.question] == "builtin"]
    prompted = [t for t in trajectories if t not in general]
    assert general and prompted
    assert all(t.teacher_prompt_ids == t.student_prompt_ids == student_prompt_ids(tokenizer, t.question)
               for t in general)
    assert all(t.teacher_prompt_ids == teacher_prompt_ids(tokenizer, t.question, NEWS) for t in prompted)
    teacher = json.loads((out / "bake.json").read_text())["teacher"]
    assert teacher["unprompted_train_questions"] == len({t.question for t in general})


def test_an_unprompted_general_teacher_with_a_carried_chain_is_refused(tiny_model_dir, tiny_bake_dir, tmp_path,
                                                                       capsys):
    assert _bake(tiny_model_dir, tmp_path / "run", NEWS, "--on", str(tiny_bake_dir), "--general-teacher", "base") == 2
    assert "unteach the earlier bakes" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_the_questions_aimed_at_the_prompt_are_trained_twice_per_epoch(tiny_model_dir, tmp_path):
    """targeted_passes (2 by default): the targeted share's trajectories are trained twice an epoch, the general
    pool's once; bake.json counts the repeats and the steps follow (8 trajectories, 4 a step)."""
    runs = {}
    for passes in ("2", "1"):
        out = tmp_path / passes
        assert _bake(tiny_model_dir, out, NEWS, "--targeted-passes", passes) == 0   # the last flag wins
        runs[passes] = json.loads((out / "bake.json").read_text())
    questions = _records(tmp_path / "2" / "questions.jsonl")
    aimed = {q["question"] for q in questions if q["source"] != "builtin" and q["split"] == "train"}
    train = [t for t in read_trajectories(tmp_path / "2" / "trajectories.jsonl") if t.split == "train"]
    repeated = sum(t.question in aimed for t in train)
    assert repeated >= 2 and runs["2"]["metrics"]["repeated_trajectories"] == repeated
    assert runs["2"]["metrics"]["steps"] == -(-(len(train) + repeated) // 4)
    assert runs["1"]["metrics"]["repeated_trajectories"] == 0 and runs["1"]["metrics"]["steps"] == len(train) // 4
