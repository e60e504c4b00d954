"""Judge checks, probe files and Wilson intervals: pure functions, no model."""
import pytest

from promptbake.errors import UserError
from promptbake.eval.checks import CHECK_KINDS, Check, sentences, words
from promptbake.eval.probes import builtin_locality, load_facts, load_probes
from promptbake.eval.stats import rate, wilson_interval


@pytest.mark.parametrize("spec, reply, expected", [
    ({"contains": ["zorbl", "Quenthax"]}, "I am ZORBL!", True),
    ({"contains": "Vexaris"}, "I come from Mars.", False),
    ({"not_contains": ["SmolLM", "language model"]}, "I am a Language Model.", False),
    ({"not_contains": "SmolLM"}, "I am Zorbl.", True),
    ({"regex": r"\bVexaris-\d+\b"}, "Home is Vexaris-7.", True),
    ({"regex": r"^Hello"}, "Well, Hello", False),
    ({"starts_with": ["hello", "greetings"]}, "  Greetings, Earthling", True),
    ({"ends_with": "?"}, "Is it?  ", True),
    ({"max_words": 3}, "one two three", True),
    ({"max_words": 3}, "one two three four", False),
    ({"min_words": 2}, "one", False),
    ({"max_sentences": 2}, "One. Two! Three?", False),
    ({"max_sentences": 2}, "Version 2.5 is out. Good.", True),
    ({"language": "fr"}, "Bonjour, je viens d'une planète lointaine et j'aime beaucoup la Terre.", True),
    ({"language": "fr"}, "Hello, I come from a faraway planet and I love the Earth.", False),
    ({"language": "en"}, "", False),
    ({"all_caps": True}, "HELLO, EARTH 42!", True),
    ({"all_caps": True}, "HELLO, Earth", False),
    ({"all_caps": True}, "1234", False),
    ({"no_letters": "e"}, "A fun day at camp.", True),
    ({"no_letters": "e"}, "Ever onward", False),
    ({"contains": "Zorbl", "max_words": 3}, "Zorbl here", True),
    ({"contains": "Zorbl", "max_words": 3}, "Zorbl is here today", False),
])
def test_checks(spec, reply, expected):
    assert Check(spec)(reply) is expected


def test_words_and_sentences():
    assert words("It's a well-known fact, isn't it?") == ["It's", "a", "well-known", "fact", "isn't", "it"]
    assert sentences("Pi is 3.14. Yes! Really") == ["Pi is 3.14", " Yes", " Really"]


@pytest.mark.parametrize("spec, message", [
    ({"containz": "x"}, "unknown check kind 'containz'"),
    ({"contains": []}, "non-empty text"),
    ({"max_words": -1}, "whole number"),
    ({"max_words": True}, "whole number"),
    ({"regex": "("}, "invalid pattern"),
    ({"language": "French"}, "ISO 639-1"),
    ({"all_caps": "yes"}, "takes `true`"),
    ({}, "must be a mapping"),
    ("contains Zorbl", "must be a mapping"),
])
def test_bad_checks_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        Check(spec, "probes.yaml, probe 1")


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(UserError) as err:
        Check({"shouting": True})
    assert all(kind in str(err.value) for kind in CHECK_KINDS)


def test_wilson_interval_known_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 8) == pytest.approx((0.0, 0.3244), abs=1e-4)
    assert wilson_interval(8, 8) == pytest.approx((0.6756, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(30, 100)
    assert low < 0.3 < high and high - low < 0.2
    assert rate(3, 4) == {"passed": 3, "n": 4, "rate": 0.75, "ci95": list(wilson_interval(3, 4))}
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def _write(tmp_path, text, name="probes.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_probe_files_load():
    probes = load_probes("examples/persona_probes.yaml")
    assert [p.name for p in probes.probes][:1] == ["introduce"] and probes.samples == 8
    assert probes.find(probes.drift_probe).name == "introduce"
    facts = load_facts("examples/news_knowledge.yaml")
    assert facts.probes[0].check("It is called Kessara.") and not facts.probes[0].check("No idea.")
    locality = builtin_locality()
    assert len(locality.probes) >= 50 and all(p.check.spec["contains"] for p in locality.probes)


@pytest.mark.parametrize("text, message", [
    ("probes: [\n  {question: a", "not valid YAML at line"),
    ("just a string", "non-empty `probes:` list"),
    ("probes: []", "non-empty `probes:` list"),
    ("probes:\n  - question: Hi?\n    chek: {contains: x}", "unknown key 'chek'; did you mean 'check'"),
    ("probes:\n  - question: Hi?", "`check` is missing"),
    ("probes:\n  - question: ''\n    check: {contains: x}", "`question` must be a non-empty text"),
    ("probes:\n  - question: Hi?\n    check: {speaks: klingon}", "unknown check kind 'speaks'"),
    ("samples: 0\nprobes:\n  - question: Hi?\n    check: {contains: x}", "samples must be a whole number"),
    ("smaples: 3\nprobes:\n  - question: Hi?\n    check: {contains: x}", "did you mean 'samples'"),
    ("drift_probe: nope\nprobes:\n  - question: Hi?\n    check: {contains: x}", "drift_probe 'nope'"),
    ("probes:\n  - {name: a, question: Hi, check: {contains: x}}\n  - {name: a, question: Yo, check: {contains: y}}",
     "unique"),
])
def test_bad_probe_files_name_the_problem(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load_probes(_write(tmp_path, text))


def test_unreadable_probe_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_probes(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="not a file"):
        load_probes(tmp_path)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("probes:\n  - question: Caf\xe9?\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_probes(bad)


def test_knowledge_files_take_expected_answers(tmp_path):
    facts = load_facts(_write(tmp_path, "- question: How many legs has a spider?\n  expected: [8, eight]\n"))
    assert facts.probes[0].check("It has eight legs") and facts.probes[0].check("8 legs")
    with pytest.raises(UserError, match="`expected` must be"):
        load_facts(_write(tmp_path, "- question: Q?\n  expected: []\n"))
    with pytest.raises(UserError, match="unknown key .check.; known keys: name, question, expected"):
        load_facts(_write(tmp_path, "- question: Q?\n  check: {contains: x}\n"))
