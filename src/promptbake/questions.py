"""Question pools: the built-in set shipped with the package, or a user's .txt / .jsonl file, and the seeded split."""
from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path

from .config import not_utf8, show
from .errors import UserError

AUTO = "auto"             # questions aimed at the prompt (autoquestions.py), mixed with the builtin pool
BUILTIN = "builtin"
ARITHMETIC = "arithmetic"   # generated multi-step word problems (eval/arithmetic.py), for chain-of-thought prompts
ARITHMETIC_POOL = 2000   # also the most questions a task family (eval/task_families.py) gives as a pool


def is_generated(source: str) -> bool:
    """Whether `source` names a built-in generator (not a file): auto, builtin, arithmetic or a task family."""
    from .eval.task_families import FAMILIES

    return source in (AUTO, BUILTIN, ARITHMETIC) or source in FAMILIES


def builtin_questions() -> list[str]:
    text = resources.files("promptbake").joinpath("data/questions.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_jsonl(path: Path, text: str) -> list[tuple[str, str | None]]:
    """(question, split or None) per line of a .jsonl question file."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise UserError(f"{path}:{number} is not valid JSON; each line must be an object with a 'question'") from None
        question = record.get("question") if isinstance(record, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{path}:{number} has no non-empty string field 'question'")
        split = record.get("split")
        if split not in (None, "train", "heldout"):
            raise UserError(f"{path}:{number} has split {split!r}; it must be 'train' or 'heldout' (or left out)")
        out.append((question.strip(), split))
    return out


def _read_file(source: str) -> tuple[Path, str]:
    path = Path(source).expanduser()
    if path.is_dir():
        raise UserError(f"question file {path} is a folder; give a .txt (one per line) or .jsonl file")
    if not path.is_file():
        raise UserError(f"question file {path} does not exist; give a .txt (one per line) or .jsonl file, or "
                        f"--questions auto / builtin")
    try:
        return path, path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8("question file", path, exc) from None
    except OSError as exc:
        raise UserError(f"cannot read question file {path}: {exc.strerror}") from None


def file_splits(source: str) -> tuple[list[str], list[str]] | None:
    """(train, heldout) as a .jsonl file assigns them, when every line has a 'split' (a run's questions.jsonl);
    else None. A question on both sides is refused: held-out questions are never trained on."""
    if is_generated(source) or not source.endswith(".jsonl"):
        return None
    path, text = _read_file(source)
    records = _read_jsonl(path, text)
    if not records or any(split is None for _, split in records):
        return None
    train = list(dict.fromkeys(q for q, split in records if split == "train"))
    heldout = list(dict.fromkeys(q for q, split in records if split == "heldout"))
    both = set(train) & set(heldout)
    if both:
        raise UserError(f"question file {path} puts {show(sorted(both)[0])} in both train and heldout; a held-out "
                        f"question must never be trained on")
    if not train or not heldout:
        raise UserError(f"question file {path} assigns every question a split but has {len(train)} train and "
                        f"{len(heldout)} held-out; it needs both (or leave 'split' out to draw them)")
    return train, heldout


def file_sources(source: str) -> dict[str, str]:
    """question -> its 'source' field, for the lines of a .jsonl question file that have one (a run's
    questions.jsonl: a bake from it trains the questions aimed at the prompt as the first bake did)."""
    return _file_field(source, "source", str)


def file_samples(source: str) -> dict[str, int]:
    """question -> its 'samples' field (teacher trajectories per trajectories_per_question, default 1), for the
    lines of a .jsonl question file that have one; a run's questions.jsonl gives more to the questions whose
    answers use a rarely used word of the prompt."""
    return {q: n for q, n in _file_field(source, "samples", int).items() if n >= 1 and not isinstance(n, bool)}


def _file_field(source: str, name: str, kind: type) -> dict:
    if is_generated(source) or not source.endswith(".jsonl"):
        return {}
    path, text = _read_file(source)
    out = {}
    for line in text.splitlines():
        record = json.loads(line) if line.strip() else None
        if isinstance(record, dict) and isinstance(record.get(name), kind):
            out[record["question"].strip()] = record[name]
    return out


def load_questions(source: str) -> list[str]:
    """Questions from 'builtin', 'arithmetic', a task family ('addition', ...; its train side), a .txt file (one
    per line) or a .jsonl file ({"question": ...} per line).

    Duplicates are dropped (first occurrence kept) so a repeated line cannot land on both sides of the split.
    """
    if source == BUILTIN:
        questions = builtin_questions()
    elif source == ARITHMETIC:   # the train side only: the cot suite scores the other side, never seen in a bake
        from .eval.arithmetic import problems_questions

        questions = problems_questions(ARITHMETIC_POOL, seed=0)
    elif is_generated(source) and source != AUTO:   # a task family: the accuracy suite scores the other side
        from .eval.task_families import family_questions

        questions = family_questions(source, ARITHMETIC_POOL)
    else:
        path, text = _read_file(source)
        if path.suffix == ".jsonl":
            questions = [question for question, _ in _read_jsonl(path, text)]
        elif path.suffix == ".txt":
            questions = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            raise UserError(f"question file {path} must end in .txt (one per line) or .jsonl (a 'question' field)")
        if not questions:
            raise UserError(f"question file {path} holds no questions")
    return list(dict.fromkeys(questions))


def split_questions(questions: list[str], n_train: int, n_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded disjoint train / held-out draw. Held-out questions are never trained on.

    The held-out questions are drawn first, so they depend only on the pool, the seed and n_heldout: bakes with
    different training budgets are measured on the same held-out set.
    """
    need = n_train + n_heldout
    if len(questions) < need:
        raise UserError(f"{len(questions)} distinct questions, but the split needs {need} "
                        f"({n_train} train + {n_heldout} held-out); add questions or lower "
                        f"--train-questions / --heldout-questions")
    order = list(range(len(questions)))
    random.Random(seed).shuffle(order)
    heldout = [questions[i] for i in order[:n_heldout]]
    train = [questions[i] for i in order[n_heldout:need]]
    return train, heldout
