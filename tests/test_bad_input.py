"""Bad input, systematically: every malformed config, prompt, question file, probe file, run folder and flag value
gets one `promptbake: error:` line naming the problem (and the fix), exit code 2, before any model loads, and
nothing is written or lost: a new --out is not created, an existing run folder is not touched.

Each table row is (what the user gives, the fragment of the one line it must get). Paths in the rows are relative
to the test's own temporary folder, which is the working directory while the case runs.
"""
import dataclasses
import math
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promptbake.cli import main
from promptbake.config import SECTIONS, BakeConfig, EvalConfig, config_from_dict, load_config, override
from promptbake.errors import UserError

from conftest import PERSONA

DIR = object()                                   # in a files table: make a folder here
GARBAGE = bytes(range(256)) * 8                  # not UTF-8 (0x80 at position 128), NULs and control bytes
LATIN1 = "model:\n  name: café\n".encode("latin-1")


def _huge() -> bytes:
    return b"plain text, far too much of it for any one input.\n" * 1_000_000   # 50.0 MB


def _write(files: dict) -> None:
    for name, content in files.items():
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is DIR:
            path.mkdir()
            continue
        content = content() if callable(content) else content
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fails(argv: list[str], fragment: str, capsys) -> str:
    """Run the CLI: exit 2, exactly one stderr line, `promptbake: error: ...` containing `fragment`, quickly."""
    start = time.perf_counter()
    code = main([str(a) for a in argv])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]  # transformers' bar
    assert code == 2 and len(lines) == 1 and lines[0].startswith("promptbake: error: "), err
    assert fragment in lines[0], lines[0]
    assert seconds < 10, f"bad input took {seconds:.0f} s to be refused"   # a 50 MB YAML file would take minutes
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Bad input must be refused before minutes of model loading: loading a model fails the test."""
    def refuse(*args, **kwargs):
        pytest.fail("a model was loaded before the bad input was refused")

    monkeypatch.setattr("promptbake.base.load_model", refuse)


@pytest.fixture(scope="module")
def existing_run(tiny_bake_dir, tmp_path_factory):
    """A finished bake that bad commands aimed at it (bake --overwrite, eval, ...) must leave byte for byte."""
    run = shutil.copytree(tiny_bake_dir, tmp_path_factory.mktemp("existing") / "run")
    return run, _snapshot(run)


# --- promptbake bake: config files, prompts, question files ------------------------------------------------------

def config(case: str, content, fragment: str):
    files = {} if content is None else {"c.yaml": content}
    return pytest.param(files, ["--prompt", "x", "--config", "c.yaml"], fragment, id=f"config: {case}")


def prompt(case: str, content, fragment: str, argv=("--prompt-file", "p.txt")):
    files = {} if content is None else {"p.txt": content}
    return pytest.param(files, list(argv), fragment, id=f"prompt: {case}")


def questions(case: str, name: str, content, fragment: str, *flags: str):
    files = {} if content is None else {name: content}
    return pytest.param(files, ["--prompt", "x", "--questions", name, *flags], fragment, id=f"questions: {case}")


BAKE_CASES = [
    # config: the file itself
    config("missing", None, "config file c.yaml does not exist"),
    config("a folder", DIR, "config file c.yaml is a folder, not a file; give a YAML file"),
    config("binary garbage", GARBAGE, "config file c.yaml is not UTF-8 text (byte 0x80 at position 128); save it as"),
    config("latin-1, not UTF-8", LATIN1, "config file c.yaml is not UTF-8 text (byte 0xe9 at position 18)"),
    config("UTF-16", "train:\n  epochs: 1\n".encode("utf-16"), "is not UTF-8 text (byte 0xff at position 0)"),
    config("NUL byte in text", "train:\n  epochs: 1\x00\n", "it holds the control character U+0000 at position 18"),
    config("50 MB of text", _huge, "config file c.yaml is 50.0 MB, more than the 1 MB a config file may have; is it"),
    config("not YAML", "train: [1, 2\n", "config file c.yaml is not valid YAML at line 2: expected ',' or ']'"),
    config("tab indentation", "train:\n\tepochs: 1\n", "at line 2: found character '\\t' that cannot start any"),
    config("impossible date", "seed: 2020-02-30\n", "a value cannot be read (day is out of range for month)"),
    config("bad YAML tag", "train:\n  epochs: !!int two\n", "is not valid YAML: a value cannot be read"),
    config("nested 600 deep", "[" * 600 + "]" * 600, "config file c.yaml is not valid YAML: it is nested too"),
    # config: the wrong shape
    config("a list", "- train\n- sample\n", "c.yaml: expected a mapping with sections model, sample, train (got list)"),
    config("a number", "42\n", "expected a mapping with sections model, sample, train (got int)"),
    config("a zero", "0\n", "expected a mapping with sections model, sample, train (got int)"),
    config("a string", "learning_rate=0.1\n", "expected a mapping with sections model, sample, train (got str)"),
    config("section not a mapping", "train: 3\n", "c.yaml: section 'train' must be a mapping (got 3)"),
    # config: wrong types
    config("string for int", "sample:\n  train_questions: many\n",
           "c.yaml: sample.train_questions must be an integer (got 'many')"),
    config("bool for int", "train:\n  epochs: true\n", "c.yaml: train.epochs must be an integer (got True)"),
    config("float for int", "train:\n  epochs: 1.5\n", "c.yaml: train.epochs must be an integer (got 1.5)"),
    config("int for bool", "model:\n  allow_download: 1\n", "model.allow_download must be true or false (got 1)"),
    config("list for float", "train:\n  learning_rate: [0.1, 0.2]\n",
           "c.yaml: train.learning_rate must be a number (got [0.1, 0.2])"),
    config("null for float", "train:\n  learning_rate:\n", "train.learning_rate must be a number (got None)"),
    config("number for string", "train:\n  kl_direction: 1\n", "c.yaml: train.kl_direction must be a string (got 1)"),
    config("a long pasted value", "model:\n  name: [" + ", ".join(["x"] * 1000) + "]\n",
           "model.name must be a string (got ['x', 'x', 'x', 'x', ...])"),
    # config: out of range
    config("NaN", "train:\n  learning_rate: .nan\n", "c.yaml: train.learning_rate must be a finite number (got nan)"),
    config("infinity", "sample:\n  top_p: .inf\n", "c.yaml: sample.top_p must be a finite number (got inf)"),
    config("int too big for a float", "train:\n  learning_rate: 1" + "0" * 400 + "\n",
           "c.yaml: train.learning_rate must be a finite number (got 1000000"),
    config("negative learning rate", "train:\n  learning_rate: -0.1\n",
           "invalid config: train.learning_rate must be > 0 (got -0.1)"),
    config("top_p 0", "sample:\n  top_p: 0\n", "invalid config: sample.top_p must be in (0, 1] (got 0.0)"),
    config("top_p 1.5", "sample:\n  top_p: 1.5\n", "invalid config: sample.top_p must be in (0, 1] (got 1.5)"),
    config("negative batch_size", "train:\n  batch_size: -1\n",
           "invalid config: train.batch_size must be >= 1, or 0 for auto (got -1)"),
    config("negative temperature", "sample:\n  sampling_temperature: -1\n",
           "sample.sampling_temperature must be >= 0 (got -1.0)"),
    config("lora_dropout 1", "train:\n  lora_dropout: 1\n", "train.lora_dropout must be in [0, 1) (got 1.0)"),
    config("unknown kl_direction", "train:\n  kl_direction: sideways\n",
           "train.kl_direction must be forward, reverse or jsd (got 'sideways')"),
    config("seed 2**32", "seed: 4294967296\n", "invalid config: seed must be in [0, 2**32) (got 4294967296)"),
    config("negative seed", "seed: -1\n", "invalid config: seed must be in [0, 2**32) (got -1)"),
    config("several problems", "train:\n  epochs: 0\n  learning_rate: -1\n",
           "train.epochs must be >= 1 (got 0); train.learning_rate must be > 0 (got -1.0)"),
    # config: unknown keys, with the nearest valid one
    config("misspelt section", "sampel:\n  top_p: 0.5\n", "c.yaml: unknown key 'sampel' (did you mean 'sample'?)"),
    config("misspelt setting", "train:\n  learning_rat: 0.1\n",
           "c.yaml: unknown key 'train.learning_rat' (did you mean 'learning_rate'?)"),
    config("setting at top level", "learning_rate: 0.1\n", "unknown key 'learning_rate' (it belongs under train:)"),
    config("setting in the wrong section", "sample:\n  epochs: 2\n",
           "unknown key 'sample.epochs' (it belongs under train:)"),
    config("nothing like any key", "train:\n  zzz: 1\n", "unknown key 'train.zzz' (valid: lora_r, lora_alpha, "),
    config("number as key", "train:\n  1: 3\n", "unknown key 'train.1' (valid: lora_r, "),
    # prompts
    prompt("file missing", None, "prompt file p.txt does not exist"),
    prompt("empty file", "", "the prompt is empty; pass --prompt TEXT or --prompt-file FILE with the text to bake"),
    prompt("whitespace only", " \n\t\n  ", "the prompt is empty; pass --prompt TEXT or --prompt-file FILE"),
    prompt("binary", GARBAGE, "prompt file p.txt is not UTF-8 text (byte 0x80 at position 128); save it as UTF-8"),
    prompt("latin-1, not UTF-8", "Tu es un café.".encode("latin-1"), "prompt file p.txt is not UTF-8 text (byte 0xe9"),
    prompt("a folder", DIR, "prompt file p.txt is a folder, not a file; give a text file"),
    prompt("50 MB", _huge, "prompt file p.txt is 50.0 MB; a system prompt must fit the model's context"),
    prompt("--prompt empty", None, "the prompt is empty", argv=("--prompt", "")),
    prompt("none given", None, "no prompt given; pass --prompt TEXT or --prompt-file FILE", argv=()),
    prompt("both given", "x", "give either --prompt or --prompt-file, not both",
           argv=("--prompt", "x", "--prompt-file", "p.txt")),
    # question files
    questions("missing", "q.txt", None, "question file q.txt does not exist; give a .txt (one per line) or .jsonl"),
    questions("a folder", "q.txt", DIR, "question file q.txt is a folder; give a .txt (one per line) or .jsonl file"),
    questions("empty .txt", "q.txt", "", "question file q.txt holds no questions"),
    questions("blank lines only", "q.txt", "\n   \n\t\n\n", "question file q.txt holds no questions"),
    questions("empty .jsonl", "q.jsonl", "", "question file q.jsonl holds no questions"),
    questions(".jsonl bad line", "q.jsonl", '{"question": "Why?"}\n{"question": "How?"\n',
              "q.jsonl:2 is not valid JSON; each line must be an object with a 'question'"),
    questions(".jsonl no question field", "q.jsonl", '{"prompt": "Why?"}\n',
              "q.jsonl:1 has no non-empty string field 'question'"),
    questions(".jsonl non-string question", "q.jsonl", '{"question": 42}\n',
              "q.jsonl:1 has no non-empty string field 'question'"),
    questions(".jsonl line not an object", "q.jsonl", '["Why?"]\n', "q.jsonl:1 has no non-empty string field"),
    questions("binary", "q.txt", GARBAGE, "question file q.txt is not UTF-8 text (byte 0x80 at position 128); save"),
    questions("latin-1, not UTF-8", "q.txt", "Où est le café?\n".encode("latin-1"),
              "question file q.txt is not UTF-8 text (byte 0xf9 at position 1)"),
    questions("unknown extension", "q.csv", "Why?\nHow?\n",
              "question file q.csv must end in .txt (one per line) or .jsonl (a 'question' field)"),
    # --questions auto and multi-turn settings
    pytest.param({}, ["--prompt", "x", "--turns", "0"], "sample.turns must be >= 1 (got 0)", id="--turns 0"),
    pytest.param({}, ["--prompt", "x", "--turns", "3", "--turn-prompt", "middle"],
                 "sample.turn_prompt must be repeated or start (got 'middle')", id="--turn-prompt middle"),
    pytest.param({}, ["--prompt", "x", "--question-model", "nowhere.gguf"],
                 "model file nowhere.gguf does not exist", id="--question-model not found"),
    pytest.param({}, ["--prompt", "x", "--question-model", "nowhere-folder/"],
                 "--question-model 'nowhere-folder/' not found: no local folder", id="--question-model folder not found"),
    pytest.param({}, ["--prompt", "x", "--questions", "builtin", "--question-model", "m.gguf"],
                 "sample.question_model is used only with --questions auto", id="--question-model without auto"),
    pytest.param({}, ["--prompt", "x", "--start-adapter", "nowhere"], "--start-adapter nowhere holds no adapter",
                 id="--start-adapter not an adapter"),
    pytest.param({}, ["--prompt", "x", "--targeted-fraction", "0"], "sample.targeted_fraction must be in (0, 1]",
                 id="--targeted-fraction 0"),
    pytest.param({}, ["--prompt", "x", "--general-teacher", "none"],
                 "sample.general_teacher must be prompted or base (got 'none')", id="--general-teacher unknown"),
    pytest.param({}, ["--prompt", "x", "--general-teacher", "base", "--turns", "2"],
                 "sample.general_teacher base needs single-turn trajectories", id="--general-teacher base --turns 2"),
    pytest.param({}, ["--prompt", "x", "--general-teacher", "base", "--on-policy", "0.5"],
                 "sample.general_teacher base cannot be used with --on-policy", id="--general-teacher base on-policy"),
    pytest.param({}, ["--prompt", "x", "--general-teacher", "base", "--targeted-fraction", "1"],
                 "targeted_fraction 1 leaves none", id="--general-teacher base all targeted"),
    pytest.param({}, ["--prompt", "x", "--general-teacher", "base", "--questions", "builtin"],
                 "--general-teacher base needs training questions of both kinds", id="--general-teacher base builtin"),
    questions(".jsonl bad split", "q.jsonl", '{"question": "Why?", "split": "test"}\n',
              "q.jsonl:1 has split 'test'; it must be 'train' or 'heldout'"),
    questions(".jsonl question on both sides", "q.jsonl",
              '{"question": "Why?", "split": "train"}\n{"question": "Why?", "split": "heldout"}\n',
              "puts 'Why?' in both train and heldout"),
    questions("fewer than the split needs", "q.txt", "A?\nB?\nC?\nB?\nD?\nE?\n",
              "5 distinct questions, but the split needs 6 (4 train + 2 held-out); add questions or lower "
              "--train-questions / --heldout-questions", "--train-questions", "4", "--heldout-questions", "2"),
]


@pytest.mark.parametrize("files, argv, fragment", BAKE_CASES)
def test_bad_bake_input_is_refused_before_the_model_loads_and_writes_nothing(
        files, argv, fragment, existing_run, no_model_load, tmp_path, monkeypatch, capsys):
    run, before = existing_run
    monkeypatch.chdir(tmp_path)
    _write(files)
    _fails(["bake", *argv, "--out", "new", "--quiet"], fragment, capsys)
    assert not Path("new").exists()
    _fails(["bake", *argv, "--out", run, "--overwrite", "--quiet"], fragment, capsys)
    assert _snapshot(run) == before


def test_a_prompt_longer_than_the_context_is_refused_before_anything_is_written(
        tiny_model_dir, existing_run, tmp_path, monkeypatch, capsys):
    run, before = existing_run
    monkeypatch.chdir(tmp_path)
    Path("p.txt").write_text(PERSONA + " Osk." * 300, encoding="utf-8")   # the tiny model's context is 256 tokens
    for out in (["--out", "new"], ["--out", run, "--overwrite"]):
        _fails(["bake", "--prompt-file", "p.txt", "--model", tiny_model_dir, *out, "--quiet"],
               "the prompt is too long: the system prompt is", capsys)
    assert not Path("new").exists() and _snapshot(run) == before


@pytest.mark.parametrize("text", ["", "\n\n", "# every setting commented out\n# train:\n#   epochs: 2\n"])
def test_an_empty_config_file_means_all_defaults(tmp_path, text):
    """Not an error: a config with nothing (or only comments) in it changes nothing."""
    (tmp_path / "c.yaml").write_text(text)
    assert load_config(tmp_path / "c.yaml") == BakeConfig()


# --- promptbake eval --probes: probe files ------------------------------------------------------------------------

PROBE = "  - name: says-name\n    question: What is your name?\n    check: {contains: [Brindle]}\n"


def probes(case: str, content, fragment: str, suite: str = "judges"):
    files = {} if content is None else {"p.yaml": content}
    return pytest.param(files, suite, fragment, id=f"probes: {case}")


PROBE_CASES = [
    probes("missing", None, "probe file p.yaml does not exist"),
    probes("a folder", DIR, "probe file p.yaml is a folder, not a file; give a YAML file"),
    probes("empty", "", "probe file p.yaml is empty; it needs a `probes:` list (see examples/)"),
    probes("binary", GARBAGE, "probe file p.yaml is not UTF-8 text (byte 0x80 at position 128); save it as UTF-8"),
    probes("latin-1, not UTF-8", "probes:\n  - question: Où?\n".encode("latin-1"), "probe file p.yaml is not UTF-8"),
    probes("not YAML", "probes: [\n", "probe file p.yaml is not valid YAML at line 2: expected the node content"),
    probes("a scalar", "hello\n", "p.yaml: expected a mapping with a non-empty `probes:` list (see examples/)"),
    probes("no probes", "samples: 4\n", "p.yaml: expected a mapping with a non-empty `probes:` list"),
    probes("empty probes list", "probes: []\n", "p.yaml: expected a mapping with a non-empty `probes:` list"),
    probes("probes not a list", "probes: What is your name?\n", "expected a mapping with a non-empty `probes:` list"),
    probes("probe not a mapping", "probes:\n  - What is your name?\n",
           "p.yaml, probe 1: each probe is a mapping with question, check, got 'What is your name?'"),
    probes("unknown top-level key", "probs:\n" + PROBE, "p.yaml: unknown key 'probs'; did you mean 'probes'?"),
    probes("unknown probe key", "probes:\n  - question: Hi?\n    chek: {contains: a}\n",
           "p.yaml, probe 1: unknown key 'chek'; did you mean 'check'?"),
    probes("unknown check kind", "probes:\n  - question: Hi?\n    check: {containz: [a]}\n",
           "p.yaml, probe 1: unknown check kind 'containz'; known kinds: contains, not_contains, regex"),
    probes("bad regex", "probes:\n  - question: Hi?\n    check: {regex: '(['}\n",
           "p.yaml, probe 1: check 'regex' has an invalid pattern '([': unterminated character set"),
    probes("check missing", "probes:\n  - question: Hi?\n", "p.yaml, probe 1: `check` is missing"),
    probes("check a list", "probes:\n  - question: Hi?\n    check: [Brindle]\n",
           "p.yaml, probe 1: `check` must be a mapping such as {contains: [Paris]}, got ['Brindle']"),
    probes("question a number", "probes:\n  - question: 42\n    check: {contains: a}\n",
           "p.yaml, probe 1: `question` must be a non-empty text"),
    probes("name a list", "probes:\n  - name: [a]\n    question: Hi?\n    check: {contains: a}\n",
           "p.yaml, probe 1: `name` must be a text, got ['a']"),
    probes("max_words a word", "probes:\n  - question: Hi?\n    check: {max_words: ten}\n",
           "p.yaml, probe 1: check 'max_words' needs a whole number ≥ 0, got 'ten'"),
    probes("samples a word", "samples: many\nprobes:\n" + PROBE,
           "p.yaml: samples must be a whole number ≥ 1, got 'many'"),
    probes("temperature NaN", "temperature: .nan\nprobes:\n" + PROBE,
           "p.yaml: temperature must be a finite number ≥ 0, got nan"),
    probes("duplicate names", "probes:\n" + PROBE + PROBE, "p.yaml: probe names must be unique"),
    probes("unknown drift_probe", "drift_probe: says-nmae\nprobes:\n" + PROBE,
           "p.yaml: drift_probe 'says-nmae' is not one of the probes (says-name)", suite="drift"),
]


@pytest.mark.parametrize("files, suite, fragment", PROBE_CASES)
def test_a_bad_probe_file_is_refused_before_the_model_loads(
        files, suite, fragment, existing_run, no_model_load, tmp_path, monkeypatch, capsys):
    run, before = existing_run
    monkeypatch.chdir(tmp_path)
    _write(files)
    _fails(["eval", run, "--suite", f"kl,{suite}", "--probes", "p.yaml"], fragment, capsys)
    _fails(["strength", run, "--probes", "p.yaml"], fragment, capsys)
    assert _snapshot(run) == before


# --- eval / generate / train / strength DIR: run folders ---------------------------------------------------------

def folder(case: str, files: dict, fragment: str):
    return pytest.param(files, fragment, id=f"run folder: {case}")


RUN_CASES = [
    folder("missing", {}, "run is not a promptbake run folder: it does not exist; give the --out folder of a"),
    folder("empty", {"run": DIR}, "run is not a promptbake run folder (no bake.json); bake one with `promptbake bake`"),
    folder("a file, not a folder", {"run": "x"}, "run is not a promptbake run folder: it is a file"),
    folder("bake.json a folder", {"run/bake.json": DIR}, "run is not a promptbake run folder (no bake.json)"),
    folder("bake.json empty", {"run/bake.json": ""},
           "run/bake.json is not valid JSON (Expecting value: line 1 column 1 (char 0)); the run folder is damaged; "
           "bake it again (--overwrite replaces it)"),
    folder("bake.json binary", {"run/bake.json": GARBAGE},
           "run/bake.json is not UTF-8 text; the run folder is damaged"),
    folder("bake.json not JSON", {"run/bake.json": "{status: finished}"},
           "run/bake.json is not valid JSON (Expecting property name enclosed in double quotes"),
    folder("bake.json a JSON list", {"run/bake.json": "[1, 2]"},
           "run/bake.json holds a JSON list, not the bake record (an object); the run folder is damaged"),
    folder("bake.json without the record", {"run/bake.json": '{"status": "finished"}'},
           "run/bake.json lacks 'model', 'system_prompt', 'config'; the run folder is damaged"),
]
VERBS = {"eval": ["eval", "run"], "generate": ["generate", "run", "--question", "Hi?"], "train": ["train", "run"],
         "strength": ["strength", "run"]}


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("files, fragment", RUN_CASES)
def test_a_missing_or_damaged_run_folder_is_one_line_and_left_as_it_is(
        files, fragment, verb, no_model_load, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write(files)
    before = _snapshot(tmp_path)
    _fails(VERBS[verb], fragment, capsys)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("verb, damage, fragment", [
    pytest.param("eval", "adapter", "run has no adapter (run/adapter is missing); finish the bake or pick one of: "
                 "step-1, step-2", id="eval: adapter missing"),
    pytest.param("generate", "adapter", "run has no adapter (run/adapter is missing)", id="generate: adapter missing"),
    pytest.param("strength", "adapter", "run has no adapter (run/adapter is missing)", id="strength: adapter missing"),
    pytest.param("train", "adapter", "run already holds a finished bake; pass --overwrite to train it again",
                 id="train: adapter missing, no --overwrite"),
    pytest.param("train --overwrite", "trajectories.jsonl",
                 "run/trajectories.jsonl does not exist; run `promptbake sample` first",
                 id="train: trajectories.jsonl missing"),
    pytest.param("train --overwrite", "config.yaml", "config file run/config.yaml does not exist",
                 id="train: config.yaml missing"),
])
def test_a_bake_with_a_part_missing_is_one_line_and_left_as_it_is(
        verb, damage, fragment, tiny_bake_dir, no_model_load, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_bake_dir, "run")
    if Path("run", damage).is_dir():
        shutil.rmtree(Path("run", damage))
    else:
        Path("run", damage).unlink()
    before = _snapshot(tmp_path)
    name, *flags = verb.split()
    _fails([*VERBS[name], *flags], fragment, capsys)
    assert _snapshot(tmp_path) == before


# --- flags -----------------------------------------------------------------------------------------------------------

def flags(case: str, argv: list[str], fragment: str):
    return pytest.param(argv, fragment, id=f"flag: {case}")


FLAG_CASES = [
    flags("not a number", ["bake", "--prompt", "x", "--top-p", "high"],
          "argument --top-p: invalid float value: 'high' (see `promptbake bake --help`)"),
    flags("unknown flag", ["bake", "--prompt", "x", "--learnin-rate", "0.1"],
          "unrecognized arguments: --learnin-rate 0.1 (see `promptbake --help`)"),
    flags("unknown verb", ["bak"], "argument verb: invalid choice: 'bak' (choose from 'bake', "),
    flags("required flag missing", ["generate", "{run}"], "the following arguments are required: --question"),
    flags("bake --learning-rate nan", ["bake", "--prompt", "x", "--learning-rate", "nan"],
          "command line: train.learning_rate must be a finite number (got nan)"),
    flags("bake --seed 2**40", ["bake", "--prompt", "x", "--seed", str(2**40)],
          "invalid config: seed must be in [0, 2**32) (got 1099511627776)"),
    flags("generate --temperature nan", ["generate", "{run}", "--question", "Hi?", "--temperature", "nan"],
          "argument --temperature: must be a finite number >= 0 (got 'nan')"),
    flags("generate --temperature -1", ["generate", "{run}", "--question", "Hi?", "--temperature", "-1"],
          "argument --temperature: must be a finite number >= 0 (got '-1')"),
    flags("generate --max-new-tokens 0", ["generate", "{run}", "--question", "Hi?", "--max-new-tokens", "0"],
          "argument --max-new-tokens: must be a whole number >= 1 (got '0')"),
    flags("generate --samples 0", ["generate", "{run}", "--question", "Hi?", "--samples", "0"],
          "argument --samples: must be a whole number >= 1 (got '0')"),
    flags("generate --seed 2**70", ["generate", "{run}", "--question", "Hi?", "--seed", str(2**70)],
          "argument --seed: must be a whole number in [0, 2**32)"),
    flags("generate --checkpoint ../adapter", ["generate", "{run}", "--question", "Hi?", "--checkpoint", "../adapter"],
          "argument --checkpoint: must be a checkpoint name like step-8 (got '../adapter')"),
    flags("generate --checkpoint step-99", ["generate", "{run}", "--question", "Hi?", "--checkpoint", "step-99"],
          "has no checkpoint 'step-99'"),
    flags("generate --strength -1", ["generate", "{run}", "--question", "Hi?", "--strength", "-1"],
          "--strength must be a finite number >= 0 (got '-1')"),
    flags("eval --temperature nan", ["eval", "{run}", "--temperature", "nan"],
          "bad eval settings: temperature must be a finite number >= 0 (got nan)"),
    flags("eval --seed -1", ["eval", "{run}", "--seed", "-1"],
          "bad eval settings: seed must be in [0, 2**32) (got -1)"),
    flags("eval --samples 0", ["eval", "{run}", "--samples", "0"], "bad eval settings: samples must be >= 1 (got 0)"),
    flags("eval unknown suite", ["eval", "{run}", "--suite", "kl,vibes"], "unknown suite vibes; available: kl, "),
    flags("strength --samples 0", ["strength", "{run}", "--samples", "0"],
          "argument --samples: must be a whole number >= 1 (got '0')"),
    flags("strength --strengths 1,lots", ["strength", "{run}", "--strengths", "1,lots"],
          "--strength must be a number >= 0 (got 'lots')"),
]


@pytest.mark.parametrize("argv, fragment", FLAG_CASES)
def test_a_bad_flag_value_is_one_line_before_the_model_loads(
        argv, fragment, existing_run, no_model_load, tmp_path, monkeypatch, capsys):
    run, before = existing_run
    monkeypatch.chdir(tmp_path)
    _fails([a.replace("{run}", str(run)) for a in argv] + (["--out", "new"] if argv[0] == "bake" else []),
           fragment, capsys)
    assert not Path("new").exists() and _snapshot(run) == before


# --- property: any value of any config field is a valid config or one UserError line ---------------------------

FIELDS = [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)] + ["seed"]
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**80, max_value=2**80).map(lambda n: n * 10**300),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=4),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3))


def _one_user_error_line(build):
    """`build()` is a valid BakeConfig (that survives a save and reload), or a short one-line UserError."""
    try:
        config = build()
    except UserError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 400, message
        return None
    assert isinstance(config, BakeConfig)
    assert config_from_dict(config.to_dict()) == config
    return config


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(FIELDS), value=ANY_VALUE)
def test_any_value_of_any_field_is_a_valid_config_or_one_user_error_line(key, value):
    section, _, name = key.rpartition(".")
    data = {section: {name: value}} if section else {name: value}
    for build in (lambda: config_from_dict(data), lambda: override(BakeConfig(), {key: value})):
        config = _one_user_error_line(build)
        if config is not None:                   # accepted: the value itself, of the field's type, in range
            got = getattr(getattr(config, section), name) if section else config.seed
            default = getattr(getattr(BakeConfig(), section), name) if section else 0
            assert type(got) is type(default) and got == (float(value) if type(default) is float else value)
            assert not isinstance(got, float) or math.isfinite(got)


JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
                       lambda inner: st.one_of(st.lists(inner, max_size=3),
                                               st.dictionaries(st.text(max_size=12), inner, max_size=3)),
                       max_leaves=12)
SECTION_KEYS = st.sampled_from(list(SECTIONS) + ["seed", "sampel", ""])
FIELD_KEYS = st.sampled_from([f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)] + ["learning_rat"])


@settings(max_examples=150, deadline=None)
@given(data=st.one_of(JSONISH, st.dictionaries(SECTION_KEYS, st.one_of(JSONISH, st.dictionaries(FIELD_KEYS, JSONISH)))),
       dotted=st.dictionaries(st.one_of(st.text(max_size=12), st.sampled_from(FIELDS), st.just("trian.epochs")),
                              JSONISH, max_size=3))
def test_any_yaml_shaped_data_is_a_valid_config_or_one_user_error_line(data, dotted):
    _one_user_error_line(lambda: config_from_dict(data))
    _one_user_error_line(lambda: override(BakeConfig(), dotted))


EVAL_NUMBERS = {"samples": st.one_of(st.none(), st.integers()), "temperature": st.one_of(st.none(), st.floats()),
                "turns": st.integers(), "dialogues": st.integers(), "problems": st.integers(),
                "questions": st.integers(), "limit": st.one_of(st.none(), st.integers()), "seed": st.integers()}


@settings(max_examples=150, deadline=None)
@given(values=st.fixed_dictionaries({}, optional=EVAL_NUMBERS))
def test_any_number_for_the_eval_settings_is_accepted_or_one_user_error_line(values):
    try:
        options = EvalConfig(**values)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert options.temperature is None or (math.isfinite(options.temperature) and options.temperature >= 0)
    assert 0 <= options.seed < 2**32 and all(getattr(options, k) is None or getattr(options, k) >= 1
                                             for k in ("samples", "turns", "dialogues", "problems", "limit"))


@pytest.fixture(scope="module")
def neox_dir(tmp_path_factory):
    """A tiny GPT-NeoX (a base model: no chat template, fused query_key_value)."""
    from families import build_family

    return build_family("gpt_neox", tmp_path_factory.mktemp("neox"))


@pytest.mark.parametrize("flags, fragment", [
    (["--target-modules", "q_proj,v_proj"], "--target-modules q_proj, v_proj are not linear layers of this gpt_neox "
                                            "model; its decoder's linear layers are dense, dense_4h_to_h, "
                                            "dense_h_to_4h, query_key_value"),
    (["--turns", "3"], "--turns 3 needs a chat template"),
])
def test_family_mismatches_are_refused_before_sampling(neox_dir, tmp_path, capsys, flags, fragment):
    out = tmp_path / "run"
    assert main(["bake", "--prompt", PERSONA, "--model", str(neox_dir), "--out", str(out), "--questions", "builtin",
                 "--quiet", *flags]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("promptbake: error:")]
    assert len(errors) == 1 and fragment in errors[0], errors   # (transformers' loading bar may precede it)
    assert not out.exists()


def test_an_architecture_transformers_does_not_know_is_named(neox_dir, tmp_path, capsys):
    import json

    folder = shutil.copytree(neox_dir, tmp_path / "unknown")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="zorblformer", architectures=["ZorblForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["bake", "--prompt", PERSONA, "--model", str(folder), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "model_type 'zorblformer', which transformers" in err and err.count("\n") == 1, err
