import json

import pytest

from promptbake.errors import UserError
from promptbake.questions import builtin_questions, load_questions, split_questions


def test_builtin_pool_is_large_and_distinct():
    pool = builtin_questions()
    assert len(pool) >= 300
    assert len({q.lower() for q in pool}) == len(pool)


def test_txt_and_jsonl_files(tmp_path):
    (tmp_path / "q.txt").write_text("Why?\n\n  How?  \nWhy?\n", encoding="utf-8")
    assert load_questions(str(tmp_path / "q.txt")) == ["Why?", "How?"]
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "When?", "id": 1}) + "\n\n", encoding="utf-8")
    assert load_questions(str(tmp_path / "q.jsonl")) == ["When?"]


@pytest.mark.parametrize("name, content, match", [
    ("empty.txt", b"\n \n", "holds no questions"),
    ("latin1.txt", "caf\xe9?\n".encode("latin-1"), "not UTF-8"),
    ("bad.jsonl", b"{not json}\n", "bad.jsonl:1 is not valid JSON"),
    ("noq.jsonl", b'{"prompt": "x"}\n', "no non-empty string field 'question'"),
    ("q.csv", b"a,b\n", "must end in .txt"),
])
def test_bad_question_files(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=match):
        load_questions(str(tmp_path / name))


def test_missing_question_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_questions(str(tmp_path / "none.txt"))


def test_split_is_seeded_and_disjoint():
    pool = [f"q{i}" for i in range(50)]
    train, heldout = split_questions(pool, 30, 10, seed=1)
    assert (train, heldout) == split_questions(pool, 30, 10, seed=1)
    assert not set(train) & set(heldout) and len(train) == 30 and len(heldout) == 10
    assert split_questions(pool, 30, 10, seed=2) != (train, heldout)
    assert split_questions(pool, 12, 10, seed=1)[1] == heldout  # held-out set independent of the training budget


def test_too_few_questions_for_the_split():
    with pytest.raises(UserError, match="3 distinct questions, but the split needs 5"):
        split_questions(["a", "b", "c"], 3, 2, seed=0)


def test_arithmetic_source_is_the_train_side_of_the_word_problems():
    from promptbake.eval.arithmetic import generate_problems, question_split
    from promptbake.questions import ARITHMETIC_POOL, load_questions

    questions = load_questions("arithmetic")
    assert len(questions) == ARITHMETIC_POOL and all(question_split(q) == "train" for q in questions)
    assert not set(questions) & {p.question for p in generate_problems(200, 0, "eval")}
