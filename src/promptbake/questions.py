"""Question pools: the built-in set shipped with the package, or a user's .txt / .jsonl file, and the seeded split."""
from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path

from . import runfolder
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


def _read_jsonl(path: Path, text: str) -> list[dict]:
    """The lines of a .jsonl question file as dicts, each with a non-empty 'question' (stripped) and a 'split' of
    None, 'train' or 'heldout'; other fields (a run's source, relevance, samples) are kept as they are."""
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
        out.append({**record, "question": question.strip(), "split": split})
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


def file_records(source: str) -> list[dict]:
    """The records of a .jsonl question file (a run's questions.jsonl: question, split, source, samples, ...),
    checked line by line; [] for a built-in source or a .txt file."""
    if is_generated(source) or not source.endswith(".jsonl"):
        return []
    return _read_jsonl(*_read_file(source))


def record_splits(records: list[dict], where: str) -> tuple[list[str], list[str]] | None:
    """(train, heldout) as question records assign them, when every one has a 'split'; else None. A question on
    both sides is refused: held-out questions are never trained on."""
    if not records or any(r["split"] is None for r in records):
        return None
    train = list(dict.fromkeys(r["question"] for r in records if r["split"] == "train"))
    heldout = list(dict.fromkeys(r["question"] for r in records if r["split"] == "heldout"))
    both = set(train) & set(heldout)
    if both:
        raise UserError(f"question file {where} puts {show(sorted(both)[0])} in both train and heldout; a held-out "
                        f"question must never be trained on")
    if not train or not heldout:
        raise UserError(f"question file {where} assigns every question a split but has {len(train)} train and "
                        f"{len(heldout)} held-out; it needs both (or leave 'split' out to draw them)")
    return train, heldout


def record_sources(records: list[dict]) -> dict[str, str]:
    """question -> its 'source', for the records that have one (a run's questions.jsonl: a bake from it trains the
    questions aimed at the prompt as the first bake did)."""
    return {r["question"]: r["source"] for r in records if isinstance(r.get("source"), str)}


def record_samples(records: list[dict]) -> dict[str, int]:
    """question -> its 'samples' (teacher trajectories per trajectories_per_question, default 1), for the records
    that have more than one: a run's questions.jsonl gives more to the questions whose answers use a rarely used
    word of the prompt."""
    return {r["question"]: r["samples"] for r in records
            if isinstance(r.get("samples"), int) and not isinstance(r["samples"], bool) and r["samples"] > 1}


def run_questions(run: Path, record: dict | None = None) -> tuple[list[dict], list[dict]]:
    """(train, held-out) question records of a finished bake: its questions.jsonl lines (each with its source and
    samples), else the lists of its bake.json `record`."""
    path = run / runfolder.QUESTIONS
    if path.is_file():
        rows = file_records(str(path))
        return [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "heldout"]
    questions = (record or {}).get("questions") or {}
    return ([{"question": q} for q in questions.get("train") or []],
            [{"question": q} for q in questions.get("heldout") or []])


def file_sources(source: str) -> dict[str, str]:
    """record_sources of a question file."""
    return record_sources(file_records(source))


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
            questions = [record["question"] for record in _read_jsonl(path, text)]
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
