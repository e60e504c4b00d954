"""The judges, knowledge, drift and samples suites on the tiny bake, and `promptbake eval` bad input."""
import json

import pytest
import yaml

import promptbake
from promptbake.cli import main
from promptbake.config import EvalConfig
from promptbake.eval.conditions import CONDITION_NAMES, CONDITIONS, answers
from promptbake.eval.drift import drift_suite, simulator_view
from promptbake.eval.evaluate import evaluate
from promptbake.eval.judges import judges_suite
from promptbake.eval.knowledge import knowledge_suite
from promptbake.eval.probes import load_facts, load_probes

PROBES = """
samples: 3
max_new_tokens: 6
probes:
  - name: anything
    question: Who are you?
    check: {min_words: 0}
  - name: nothing
    question: Where do you live?
    check: {regex: "(?!)"}
"""


@pytest.fixture(scope="module")
def baked(tiny_bake_dir):
    return promptbake.load_baked(tiny_bake_dir)


def _file(tmp_path, text, name="probes.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_judges_count_each_condition_own_replies(baked, tmp_path):
    result = judges_suite(baked, load_probes(_file(tmp_path, PROBES)), seed=5)
    assert result["samples_per_probe"] == 3 and result["temperature"] == baked.config.sample.sampling_temperature
    always, never = result["probes"]
    for name in CONDITION_NAMES:
        assert always["conditions"][name]["passed"] == 3 and never["conditions"][name]["passed"] == 0
        assert result["conditions"][name]["passed"] == 3 and result["conditions"][name]["n"] == 6
    # The replies judged for a condition are that condition's own: the same seeded batch, regenerated directly.
    for condition in CONDITIONS:
        direct = answers(baked, condition, ["Who are you?", "Where do you live?"], 3, None, 6, seed=5)
        assert [always["conditions"][condition.name]["samples"], never["conditions"][condition.name]["samples"]] == direct
    # The prompt really reaches the prompted conditions: their replies differ from the unprompted ones.
    assert always["conditions"]["base"]["samples"] != always["conditions"]["base+prompt"]["samples"]


def test_locality_keeps_what_the_base_gets_right(baked, tmp_path):
    questions = ["What is the capital of France?", "Name a colour.", "What is two plus two?"]
    base = [r[0] for r in answers(baked, CONDITIONS[0], questions, 1, 0.0, 32)]
    entries = [{"question": q, "expected": [r.split()[0]]} for q, r in zip(questions[:2], base)]
    entries.append({"question": questions[2], "expected": ["a reply the random model never writes"]})
    locality = load_facts(_file(tmp_path, yaml.safe_dump(entries), "locality.yaml"))
    result = knowledge_suite(baked, None, locality)["locality"]
    assert result["questions"] == 3 and result["kept"] == 2
    assert result["conditions"]["base"]["rate"] == 1.0 and result["drop"]["base"] == 0.0
    for name in CONDITION_NAMES:
        assert result["drop"][name] == pytest.approx(1 - result["conditions"][name]["rate"])


def test_simulator_sees_the_dialogue_with_roles_swapped():
    dialogue = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    view = simulator_view("tea", dialogue)
    assert view[0]["role"] == "system" and "tea" in view[0]["content"]
    assert [m["role"] for m in view[1:]] == ["user", "assistant", "user"]
    assert [m["content"] for m in view[2:]] == ["hi", "hello"]


def test_drift_runs_the_self_chat_turn_by_turn(baked, tmp_path):
    heard = []
    result = drift_suite(baked, load_probes(_file(tmp_path, PROBES)), turns=2, dialogues=2, samples=2,
                         progress=heard.append)
    assert heard[0] == "drift: base+prompt, turn 0 of 2: 4/4 pass 'anything'"   # a line per judged turn, as it goes
    assert len(heard) == 3 * 3 and heard[-1] == "drift: baked+prompt, turn 2 of 2: 4/4 pass 'anything'"
    assert set(result["conditions"]) == {"base+prompt", "baked", "baked+prompt"}
    for entry in result["conditions"].values():
        assert [t["turn"] for t in entry["per_turn"]] == [0, 1, 2]
        assert all(t["n"] == 4 and t["passed"] == 4 for t in entry["per_turn"])   # the first probe always passes
        roles = [m["role"] for m in entry["example"]]
        assert roles == ["user", "assistant", "user", "assistant"]                  # opener, reply, simulator, reply


def test_eval_writes_every_suite_and_keeps_earlier_results(tiny_bake, tmp_path, capsys):
    probes = _file(tmp_path, PROBES)
    assert main(["eval", str(tiny_bake), "--suite", "kl"]) == 0
    assert main(["eval", str(tiny_bake), "--suite", "samples,judges", "--probes", str(probes),
                 "--questions", "2"]) == 0
    record = json.loads((tiny_bake / "eval.json").read_text())["final@strength=1"]
    assert {"kl", "samples", "judges", "seconds"} <= set(record)
    assert len(record["samples"]) == 2 and set(record["samples"][0]) == {"question", *CONDITION_NAMES}
    out = capsys.readouterr().out
    assert "judges: 2 probes × 3 samples" in out and "side by side" in out and "closure" in out


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("extra, message", [
    (["--suite", "judges"], "the judges suite needs probes: pass --probes FILE"),
    (["--suite", "drift"], "the drift suite needs a persona probe"),
    (["--suite", "judges", "--probes", "MISSING"], "does not exist"),
    (["--suite", "judges", "--probes", "BROKEN"], "is not valid YAML at line"),
    (["--suite", "judges", "--probes", "UNKNOWN_KIND"], "unknown check kind 'sounds_like'"),
    (["--suite", "knowledge", "--locality", "none"], "the knowledge suite needs --knowledge FILE"),
    (["--suite", "benchmarks"], "the benchmarks suite needs --tasks"),
    (["--suite", "accuracy"], "the accuracy suite needs a task family: pass --task NAME (addition, "),
    (["--suite", "accuracy", "--task", "algebra"], "unknown task family 'algebra'; available: addition"),
    (["--suite", "accuracy", "--task", "addition", "--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    (["--suite", "kl,vibes"], "unknown suite vibes"),
    (["--checkpoint", "step-99"], "has no checkpoint 'step-99'"),
    (["--samples", "0"], "samples must be >= 1"),
    (["--strength", "-1"], "strength"),
])
def test_eval_bad_input_is_one_line_exit_2_and_changes_nothing(tiny_bake, tmp_path, capsys, extra, message):
    files = {"MISSING": tmp_path / "missing.yaml", "BROKEN": _file(tmp_path, "probes: [\n  {question: x", "b.yaml"),
             "UNKNOWN_KIND": _file(tmp_path, "probes:\n  - question: Hi\n    check: {sounds_like: x}", "u.yaml")}
    before = _snapshot(tiny_bake)
    assert main(["eval", str(tiny_bake), *[str(files.get(a, a)) for a in extra]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("promptbake: error:") and message in err and len(err.splitlines()) == 1
    assert _snapshot(tiny_bake) == before


def test_eval_of_a_folder_without_adapter(tiny_bake, capsys):
    import shutil

    shutil.rmtree(tiny_bake / "adapter")
    assert main(["eval", str(tiny_bake)]) == 2
    assert "has no adapter" in capsys.readouterr().err


def test_eval_options_are_validated():
    with pytest.raises(promptbake.errors.UserError, match="turns must be >= 1"):
        EvalConfig(turns=0)
    assert evaluate.__doc__


def test_report_verb_writes_the_report_of_what_eval_found(tiny_bake, tmp_path, capsys):
    assert main(["eval", str(tiny_bake), "--suite", "kl,judges", "--probes", str(_file(tmp_path, PROBES))]) == 0
    assert main(["report", str(tiny_bake)]) == 0
    html = (tiny_bake / "report.html").read_text()
    assert "Where do you live?" in html and "closure" in html
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "promptbake: error:" in capsys.readouterr().err
