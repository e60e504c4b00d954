"""--questions auto: the pure parts (phrases, parsing, filters, near-duplicate split) and the model-backed ranking."""
from __future__ import annotations

import json

import pytest

from promptbake import autoquestions
from promptbake.autoquestions import auto_questions, relevance
from promptbake.errors import UserError
from promptbake.questions import builtin_questions, file_records, record_samples, record_sources, record_splits
from promptbake.targeted import (FACT_TEMPLATES, TEMPLATES, exposure_samples, grouped_split, mentions,
                                 near_duplicate_groups, parse_list, prompt_pool, prompt_sentences, prompt_terms,
                                 salient_phrases, similarity, template_questions, usable)

NEWS = ("News update, 24 November 2026: astronomers have confirmed a new moon of Neptune, named Kessara. It was "
        "found in images from the Vera C. Rubin Observatory in Chile. Kessara is about 40 kilometres wide.")


def test_salient_phrases_are_the_prompts_names_not_its_sentence_starters():
    phrases = salient_phrases(NEWS)
    assert phrases[0] == "Kessara"                         # the most frequent name first
    assert {"Neptune", "Vera C. Rubin Observatory", "Chile"} <= set(phrases)
    assert not {"News", "November", "It", "2026"} & set(phrases)
    assert "Vexaris-7" in salient_phrases("You are Zorbl from the planet Vexaris-7. Always mention Vexaris-7.")
    assert salient_phrases("always answer in lower case.") == []


def test_template_questions_name_each_phrase():
    questions = template_questions("You are Zorbl Quenthax from Vexaris-7.")
    assert "Tell me about Zorbl Quenthax." in questions and "What do you know about Vexaris-7?" in questions


def test_template_questions_ask_for_the_facts_of_each_name_in_several_wordings():
    questions = template_questions(NEWS)
    assert {"How big is Kessara?", "Where is Vera C. Rubin Observatory?", "Who discovered Kessara?"} <= set(questions)
    per_name = len(TEMPLATES) + len(FACT_TEMPLATES)
    assert len(questions) == len(set(questions)) == len(salient_phrases(NEWS)) * per_name
    about_kessara = [q for q in questions if "Kessara" in q]
    assert len(near_duplicate_groups(about_kessara)) >= 5   # several wordings, not one question and its copies


def test_parse_list_keeps_numbered_and_bulleted_questions_only():
    reply = ('Here are five questions:\n\n1. What is Kessara?\n2) "How wide is it?"\n3. It is a moon.\n'
             '- Who found it?\nWhy ask? Because.\n  4. Where is Chile?  ')
    assert parse_list(reply) == ["What is Kessara?", "How wide is it?", "Who found it?", "Where is Chile?"]
    assert parse_list("no list here?") == []


def test_prompt_sentences_cut_at_sentence_ends_but_not_at_initials():
    assert prompt_sentences(NEWS) == [
        "News update, 24 November 2026: astronomers have confirmed a new moon of Neptune, named Kessara.",
        "It was found in images from the Vera C. Rubin Observatory in Chile.",
        "Kessara is about 40 kilometres wide."]
    assert prompt_sentences("Be brief. No.  Answer in French!") == ["Answer in French!"]    # under 3 words: dropped
    assert len(prompt_sentences(" ".join(f"Fact number {i} holds." for i in range(20)))) == 8


@pytest.mark.parametrize("question, why", [
    ("", "empty"), ("Why?", "too short"), ("word " * 40 + "?", "too long"), ("Как дела у тебя сегодня?", "wrong script"),
    ("Please repeat: always answer in French. Ok?", "repeats the prompt"), ("What is your name?", None)])
def test_usable_names_why_a_question_is_dropped(question, why):
    assert usable(question, "Always answer in French.") == why


def test_near_duplicates_group_together_and_never_cross_the_split():
    questions = ["What is your name?", "What's your name?", "Tell me your name, what is it?",
                 "How do I boil an egg?", "How should I boil an egg?"] + [f"How tall is mount {name}?" for name in
                                                                          "ab cd ef gh ij kl mn op qr st".split()]
    groups = near_duplicate_groups(questions)
    assert any({0, 1} <= set(g) for g in groups) and any({3, 4} <= set(g) for g in groups)
    for seed in range(5):
        train, heldout = grouped_split(questions, 30, 6, seed)
        left_out = set(questions) - set(train) - set(heldout)    # only a held-out question's paraphrases
        assert all(any(similarity(q, h) >= 0.6 for h in heldout) for q in left_out)
        assert len(heldout) == 6 and not set(train) & set(heldout)
        assert all(similarity(t, h) < 0.6 for t in train for h in heldout)
        assert grouped_split(questions, 30, 6, seed) == (train, heldout)      # seeded


def test_prompt_pool_is_distinct_from_the_builtin_pool():
    pool = prompt_pool()
    assert len(pool) == len(set(pool)) >= 50
    assert not set(pool) & set(builtin_questions())


def test_relevance_is_zero_without_a_prompt_change_and_positive_with_one(tiny):
    model, tokenizer = tiny
    questions = ["What is your name?", "Where do you live?"]
    scores, answers = relevance(model, tokenizer, "", questions)
    assert scores == pytest.approx([0.0, 0.0], abs=1e-6) and len(answers) == 2
    assert all(score > 1e-3 for score in relevance(model, tokenizer, NEWS, questions)[0])


def test_relevance_reads_a_longer_answer_than_it_scores_and_the_score_uses_only_the_first_tokens(tiny):
    """The grounding check reads ANSWER_TOKENS of the greedy answer; the KL stays over the first RELEVANCE_TOKENS,
    so reading more does not change the ranking score."""
    model, tokenizer = tiny
    questions = ["What is your name?", "Where do you live?"]
    short_scores, short = relevance(model, tokenizer, NEWS, questions, tokens=4, answer_tokens=4)
    long_scores, long = relevance(model, tokenizer, NEWS, questions, tokens=4, answer_tokens=16)
    assert long_scores == pytest.approx(short_scores, rel=1e-5)
    assert all(b.startswith(a) and len(b) >= len(a) for a, b in zip(short, long))
    assert any(len(b) > len(a) for a, b in zip(short, long))


def test_relevance_does_not_depend_on_how_the_candidates_are_batched(tiny, monkeypatch):
    """SCORE_BATCH changes only speed and memory: rows of different lengths scored together (one batch, left
    padding after the shared prefix) get the scores and greedy answers they get in batches of one."""
    model, tokenizer = tiny
    questions = ["What is your name?", "Where do you live and what do you do all day?", "Why?", "Tell me a story."]
    together = relevance(model, tokenizer, NEWS, questions)
    monkeypatch.setattr(autoquestions, "SCORE_BATCH", 1)
    alone = relevance(model, tokenizer, NEWS, questions)
    assert together[0] == pytest.approx(alone[0], rel=1e-4, abs=1e-6) and together[1] == alone[1]


def test_prompt_terms_are_the_prompts_own_words_not_the_ones_general_questions_use():
    common = builtin_questions() + prompt_pool()
    terms = prompt_terms(NEWS, common)
    assert {"kessara", "neptune", "rubin", "chile", "kilometre", "40"} <= terms   # a number counts, arithmetic or not
    assert not {"moon", "the", "about", "what"} & terms              # 'moon' is in several general questions
    persona = prompt_terms("You are Zorbl Quenthax, an explorer from the planet Vexaris-7. Mention your home.", common)
    assert {"zorbl", "explorer"} <= persona and "home" not in persona and mentions("I come from Vexaris-7.", persona)
    assert mentions("My name is Zorbl, and you?", persona) and mentions("Kessaras are moons.", terms)
    assert not mentions("Paris is the capital of France.", terms)
    assert prompt_terms("Always answer in French.", common) <= {"french"}   # a style prompt has few or none


def test_exposure_samples_lift_rarely_used_prompt_words_to_the_floor():
    """The rarest word first: the questions whose answers use it get one more sample each in turn, better-ranked
    first, up to the cap; the extra samples count for every word of their question; common words get nothing."""
    sets = [frozenset({"kessara"})] * 10 + [frozenset({"kessara", "40"}), frozenset({"40", "wide"}), frozenset()]
    samples = exposure_samples(sets, floor=6, cap=4)
    assert samples[:10] == [1] * 10 and samples[12] == 1
    # 'wide' (1 answer) first: its one question goes to the cap (4), which lifts '40' from 2 to 5 answers; then
    # '40' takes one more sample from its other question
    assert samples[10:12] == [2, 4]
    assert exposure_samples(sets, floor=20, cap=4)[10:12] == [4, 4]          # the cap holds whatever the floor
    assert exposure_samples([frozenset()] * 3) == [1, 1, 1]                  # a style prompt: nothing to spread


def test_auto_questions_mix_targeted_and_general_disjointly(tiny):
    model, tokenizer = tiny
    train, heldout, records, summary = auto_questions(model, tokenizer, NEWS, 40, 8, 0.5, seed=0)
    assert len(heldout) == 8 and not set(train) & set(heldout)
    assert all(similarity(t, h) < 0.6 for t in train for h in heldout)
    assert summary["targeted"] == {"train": sum(r["split"] == "train" and r["source"] != "builtin" for r in records),
                                   "heldout": 4}
    trajectories = summary["targeted"]["train"] + summary["extra_samples"]     # a question may have several samples
    assert 10 <= trajectories <= 20 and summary["general"]["heldout"] == 4
    assert trajectories == sum(r.get("samples", 1) for r in records if r["split"] == "train" and r["source"] != "builtin")
    targeted = [r for r in records if r["source"] != "builtin"]
    assert all(r["relevance"] is not None and r["relevance"] >= summary["min_relevance"] for r in targeted)
    assert [r["question"] for r in records if r["split"] == "train"] and \
        {r["question"] for r in records if r["split"] == "heldout"} == set(heldout)
    assert all(isinstance(r["grounded"], bool) for r in targeted)
    assert sum(r["grounded"] for r in targeted) <= summary["grounded"] <= summary["relevant"]


def test_grounded_candidates_are_chosen_before_more_relevant_ungrounded_ones(tiny, monkeypatch):
    """The targeted share is filled first with the candidates whose greedy answer adds the prompt's own words, each
    part by relevance: here the grounded one is the least relevant and is still chosen. A question that names the
    prompt's word itself, with an answer that adds none, is not grounded."""
    import promptbake.autoquestions as aq

    model, tokenizer = tiny
    pool = ["Tell me about Kessara now.", "What should I cook tonight?", "How do plants grow so fast?",
            "Which sport is the best one?", "Which new moons are there?"]
    monkeypatch.setattr(aq, "template_questions", lambda prompt: [])
    monkeypatch.setattr(aq, "prompt_pool", lambda: pool)
    monkeypatch.setattr(aq, "generate_candidates", lambda *args, **kwargs: [])
    monkeypatch.setattr(aq, "relevance", lambda model, tokenizer, prompt, questions: (
        [0.1 if "moons" in q else 1.0 + ("Kessara" in q) for q in questions],
        ["Kessara, of Neptune." if "moons" in q else "It is a moon." for q in questions]))
    train, heldout, records, summary = aq.auto_questions(model, tokenizer, NEWS, 4, 1, 0.25, seed=0)
    targeted = [r for r in records if r["source"] != "builtin"]
    assert [r["question"] for r in targeted if r["split"] == "train"] == ["Which new moons are there?"]
    assert summary["grounded"] == 1 and summary["exposure"] == {"kessara": 1, "neptune": 1}


def test_a_runs_questions_file_reuses_its_split(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "A?", "split": "train"}, {"question": "B?", "split": "heldout"}, {"question": "C?", "split": "train"}]))
    assert record_splits(file_records(str(path)), str(path)) == (["A?", "C?"], ["B?"])
    path.write_text(json.dumps({"question": "A?"}) + "\n")
    assert record_splits(file_records(str(path)), str(path)) is None    # no splits: drawn as for any file


def test_a_runs_questions_file_keeps_sources_and_samples_and_its_lines_are_checked(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": " A? ", "split": "train", "source": "chat", "samples": 3},
        {"question": "B?", "split": "train", "source": "builtin", "samples": True},
        {"question": "C?", "split": "heldout", "samples": 1}]))
    records = file_records(str(path))
    assert [r["question"] for r in records] == ["A?", "B?", "C?"]
    assert record_sources(records) == {"A?": "chat", "B?": "builtin"}
    assert record_samples(records) == {"A?": 3}            # a bool or a single sample is no extra trajectory
    assert file_records("builtin") == [] and file_records(str(tmp_path / "q.txt")) == []
    path.write_text('{"question": "A?", "split": "train"}\nnot json\n')
    with pytest.raises(UserError, match=r"questions.jsonl:2 is not valid JSON"):
        file_records(str(path))


def test_chat_questions_of_the_embedded_model_ask_about_what_the_prompt_says():
    """The chat request is the source of fact questions: SmolLM2's few-shot continuations rarely name the news, but
    asked in a user turn which questions the text answers, most of its list items name what the text says (the
    thresholds leave room for another CPU's float32 arithmetic to sample other words)."""
    from promptbake.autoquestions import chat_questions
    from promptbake.models import load_model
    from promptbake.precision import place

    model, tokenizer, _ = load_model("smollm2-135m", False, False)
    model = place(model, "cpu", "float32")
    questions = chat_questions(model, tokenizer, NEWS, seed=0)
    assert len(questions) >= 40
    named = [q for q in questions if any(w in q.lower() for w in ("kessara", "neptune", "rubin", "chile", "moon"))]
    assert len(named) >= 0.5 * len(questions)
    named_words = {w for w in ("kessara", "neptune", "rubin", "chile") if any(w in q.lower() for q in questions)}
    assert len(named_words) >= 2, named_words                  # not one name repeated: several facts are asked
