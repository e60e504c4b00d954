"""`--questions auto`: training and held-out questions aimed at what the prompt says, mixed with the general pool.

Candidates come from targeted.py (templates over the prompt's names, a pool of prompt-sensitive questions) and from
the generator model, asked as a chat model which questions the prompt and each of its sentences answer. Each is
ranked by its relevance: the KL between the base model with and without the prompt over the first RELEVANCE_TOKENS
tokens of the prompted model's greedy answer, a free measure of whether the prompt changes the answer. Candidates
whose greedy answer adds the prompt's own words, words the question did not already say (grounded: they make the
teacher say what the prompt says), come first, each part by relevance, and fill the targeted share of the split;
questions the prompt barely moves (below MIN_RELEVANCE) are dropped; the builtin pool fills the rest, so general
behaviour and locality are still trained. Within the targeted share, a question whose greedy answer uses a prompt
word few other answers use gets more teacher samples (`samples` in questions.jsonl), so that every fact the
candidates can draw out is said in several training answers; the share keeps its number of trajectories. A bake --on
a chain that carries its prompts also asks the earlier bakes' own targeted questions, in place of half the general
ones.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from .base import carries_prompts, chain_runs
from .config import SampleConfig
from .data import Trajectory
from .errors import UserError
from .logits import adapter_disabled, collate_for, completion_logits
from .losses import per_token_kl
from .prompts import student_prompt_ids, teacher_prompt_ids, stop_token_ids
from .models import load_model, resolve_model
from .precision import place
from .questions import (AUTO, builtin_questions, file_records, is_generated, load_questions, record_samples,
                        record_sources, record_splits, run_questions, split_questions)
from .sampling import batches_of, generate_batch, generation_config, stream_seed
from .targeted import (CHAT_ASKS, exposure_samples, grouped_split, mentioned, normalise, parse_list, prompt_pool,
                       prompt_sentences, prompt_terms, similarity, template_questions, usable, NEAR_DUPLICATE)

CHAT_WHOLE, CHAT_PER_SENTENCE = 8, 4   # chat replies per request about the whole prompt / each of its sentences
CHAT_TOKENS = 96
CHAT_TEMPERATURE = 0.7     # the reply has to stay a list of questions
RELEVANCE_TOKENS = 4       # answer tokens over which the relevance KL is averaged
ANSWER_TOKENS = 16         # greedy answer tokens read for the prompt's own words (grounding)
MIN_RELEVANCE = 0.02       # nats per token: a question the prompt moves less than this is not targeted
SCORE_BATCH = 64
TARGETED_SOURCES = ("template", "prompt-pool", "generated", "chat")   # questions.jsonl sources aimed at the prompt
CARRIED = "carried"        # questions.jsonl source: an earlier bake's targeted question, asked again by a chain bake
CARRIED_SHARE = 0.5        # of the general training questions, the part that gives way to carried ones


@dataclass
class Candidate:
    question: str
    source: str                # "template", "prompt-pool" or "chat" ("generated": the few-shot list of older runs)
    relevance: float | None = None
    terms: frozenset[str] = frozenset()   # the prompt's own words the prompted greedy answer adds to the question's

    @property
    def grounded(self) -> bool:         # it makes the teacher say what the prompt says, not only change its manner
        return bool(self.terms)


def generate_candidates(model, tokenizer, system_prompt: str, seed: int) -> list[tuple[str, str]]:
    """(question, "chat") pairs: the questions the generator lists about the prompt and its sentences."""
    return [(q, "chat") for q in chat_questions(model, tokenizer, system_prompt, seed)]


def _generate(model, tokenizer, rows: list[list[int]], cfg: SampleConfig, stops: list[int], seed: int,
              tag: str) -> list[str]:
    """The decoded sampled continuations of `rows` (adapter off), those too long for the context left out."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    rows = [row for row in rows if not (limit and len(row) + cfg.max_new_tokens > limit)]
    if not rows:
        return []
    gen = generation_config(cfg, stops, tokenizer.pad_token_id)
    with adapter_disabled(model), torch.no_grad():
        out, _ = generate_batch(model, rows, gen, tokenizer.pad_token_id, stops,
                                seeds=[stream_seed(seed, tag, i) for i in range(len(rows))])
    return [tokenizer.decode(tokens, skip_special_tokens=True) for tokens, _ in out]


def chat_questions(model, tokenizer, system_prompt: str, seed: int) -> list[str]:
    """The questions the generator lists when asked, in a user turn without a system prompt, which questions the
    prompt (CHAT_WHOLE replies per request) and each of its sentences (CHAT_PER_SENTENCE) answer."""
    sentences = prompt_sentences(system_prompt)
    texts = [(system_prompt, CHAT_WHOLE)] + ([(s, CHAT_PER_SENTENCE) for s in sentences] if len(sentences) > 1
                                             else [])
    rows = [student_prompt_ids(tokenizer, f"{text}\n\n{ask}") for text, n in texts for ask in CHAT_ASKS
            for _ in range(n)]
    stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    cfg = SampleConfig(sampling_temperature=CHAT_TEMPERATURE, top_p=0.95, max_new_tokens=CHAT_TOKENS)
    replies = _generate(model, tokenizer, rows, cfg, stops, seed, "chat-question-generator")
    return [q for reply in replies for q in parse_list(reply)]


@torch.no_grad()
def relevance(model, tokenizer, system_prompt: str, questions: list[str], tokens: int = RELEVANCE_TOKENS,
              answer_tokens: int = ANSWER_TOKENS) -> tuple[list[float], list[str]]:
    """(scores, answers). Per question: the mean KL(prompted ‖ unprompted) of the base model over the first
    `tokens` tokens of the prompted model's greedy answer (nats per token), and the first `answer_tokens` of that
    answer as text. The prompted side's logits are the decoding loop's own."""
    stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    pad = tokenizer.pad_token_id
    gen = generation_config(SampleConfig(sampling_temperature=0.0, max_new_tokens=max(tokens, answer_tokens)),
                            stops, pad)
    teacher = [teacher_prompt_ids(tokenizer, q, system_prompt) for q in questions]
    order = sorted(range(len(questions)), key=lambda i: len(teacher[i]))
    scores, answers = [0.0] * len(questions), [""] * len(questions)
    with adapter_disabled(model):
        for batch in batches_of(order, SCORE_BATCH):
            out, kept = generate_batch(model, [teacher[i] for i in batch], gen, pad, stops, keep=[0] * len(batch))
            rows = [Trajectory(question=questions[i], split="score", sample_index=0, teacher_prompt_ids=teacher[i],
                               student_prompt_ids=student_prompt_ids(tokenizer, questions[i]),
                               completion_ids=ids[:tokens], text="", finished=done)
                    for i, (ids, done) in zip(batch, out)]
            collated = collate_for(model, rows, pad)
            student = completion_logits(model, collated, "student")                 # [B, C, V]
            for j, (i, row) in enumerate(zip(batch, rows)):
                n = len(row.completion_ids)
                scores[i] = float(per_token_kl(kept[j][None, :n].to(student.device), student[j:j + 1, :n]).mean())
                answers[i] = tokenizer.decode(out[j][0], skip_special_tokens=True)
    return scores, answers


def candidates(model, tokenizer, system_prompt: str, seed: int, generator=None) -> tuple[list[Candidate], dict]:
    """Every usable candidate (deduplicated, filtered, scored) and counts of what was dropped and why."""
    gen_model, gen_tokenizer = generator or (model, tokenizer)
    raw = ([Candidate(q, "template") for q in template_questions(system_prompt)]
           + [Candidate(q, "prompt-pool") for q in prompt_pool()]
           + [Candidate(q, source) for q, source in generate_candidates(gen_model, gen_tokenizer, system_prompt,
                                                                         seed)])
    dropped: dict[str, int] = {}
    seen, kept = set(), []
    for candidate in raw:
        why = usable(candidate.question, system_prompt)
        if why is None and normalise(candidate.question) in seen:
            why = "duplicate"
        if why:
            dropped[why] = dropped.get(why, 0) + 1
            continue
        seen.add(normalise(candidate.question))
        kept.append(candidate)
    if kept:
        terms = prompt_terms(system_prompt, builtin_questions() + prompt_pool())
        scores, answers = relevance(model, tokenizer, system_prompt, [c.question for c in kept])
        for candidate, score, answer in zip(kept, scores, answers):
            candidate.relevance = score
            # a name the question already says proves nothing ("How often does Earth run?" is about a name, and
            # every template is): a candidate is grounded when the teacher's answer brings in a word of the prompt
            candidate.terms = mentioned(answer, terms) - mentioned(candidate.question, terms)
    relevant = [c for c in kept if c.relevance >= MIN_RELEVANCE]
    dropped["prompt barely changes the answer"] = len(kept) - len(relevant)
    return relevant, {"candidates": len(raw), "dropped": dropped}


def auto_questions(model, tokenizer, system_prompt: str, n_train: int, n_heldout: int, targeted_fraction: float,
                   seed: int, generator=None,
                   earlier: dict[str, list[str]] | None = None) -> tuple[list[str], list[str], list[dict], dict]:
    """(train, heldout, records, summary): the targeted share of each split from the most relevant candidates, the
    rest from the builtin pool; no question on one side is a near-duplicate of one on the other. `earlier` (a chain
    that carries its prompts: each earlier run's targeted training questions) takes places of the general share
    (_carry).

    records (questions.jsonl) hold question, split, source and relevance; summary records the mix.
    """
    relevant, counts = candidates(model, tokenizer, system_prompt, seed, generator)
    if not relevant:
        raise UserError(f"no usable question could be generated from the prompt: the prompt changes the model's "
                        f"answer to none of the {counts['candidates']} candidates (is it the chat template's own "
                        f"default system prompt?); give your own questions with --questions FILE (.txt, one per "
                        f"line), or bake on the general pool with --questions builtin")
    # grounded candidates first (they make the teacher use what the prompt says, not only change its manner),
    # each part by relevance; a style prompt ("answer in French") has few or none, and falls back to relevance
    relevant.sort(key=lambda c: (not c.grounded, -c.relevance))
    want_train, want_heldout = round(n_train * targeted_fraction), round(n_heldout * targeted_fraction)
    if want_heldout < 1 <= targeted_fraction * n_heldout * 2:
        want_heldout = 1
    pool = relevant[:want_train + want_heldout]
    by_text = {c.question: c for c in pool}
    t_train, t_heldout = grouped_split([c.question for c in pool], want_train, want_heldout, seed)
    if len(t_heldout) == len(pool):            # too few for both sides: the held-out set keeps one group at most
        t_train, t_heldout = grouped_split([c.question for c in pool], want_train, 1, seed)
    t_train, samples = _spread_exposure(t_train, relevant)
    targeted = {normalise(c.question) for c in pool}
    general = [q for q in builtin_questions() if normalise(q) not in targeted]
    g_train, g_heldout = split_questions(general, max(0, n_train - sum(samples.values())),
                                         n_heldout - len(t_heldout), seed)
    heldout = t_heldout + g_heldout
    train = [q for q in t_train + g_train if all(similarity(q, h) < NEAR_DUPLICATE for h in heldout)]
    chosen = set(train)
    g_kept = [q for q in g_train if q in chosen]
    carried = _carry(earlier or {}, train, heldout, len(g_kept))
    dropped = set(g_kept[len(g_kept) - len(carried):]) if carried else set()
    train = [q for q in train if q not in dropped] + [q for q, _ in carried]
    trained = set(train)
    records = ([{"question": q, "split": "train", "source": by_text[q].source, "relevance": by_text[q].relevance,
                 "grounded": by_text[q].grounded, **({"samples": samples[q]} if samples[q] > 1 else {})}
                for q in t_train if q in trained]
               + [{"question": q, "split": "heldout", "source": by_text[q].source,
                   "relevance": by_text[q].relevance, "grounded": by_text[q].grounded} for q in t_heldout]
               + [{"question": q, "split": "train", "source": "builtin", "relevance": None}
                  for q in g_train if q in trained]
               + [{"question": q, "split": "heldout", "source": "builtin", "relevance": None} for q in g_heldout]
               + [{"question": q, "split": "train", "source": CARRIED, "relevance": None, "from": run}
                  for q, run in carried])
    targeted_train = sum(r["split"] == "train" and r["source"] in TARGETED_SOURCES for r in records)
    exposure: dict[str, int] = {}
    for q in t_train:
        for term in by_text[q].terms if q in trained else ():
            exposure[term] = exposure.get(term, 0) + samples[q]
    summary = {**counts, "relevant": len(relevant), "grounded": sum(c.grounded for c in relevant),
               "targeted_fraction": targeted_fraction,
               "extra_samples": sum(samples[q] - 1 for q in t_train if q in trained),
               "exposure": dict(sorted(exposure.items(), key=lambda item: (item[1], item[0]))),
               "targeted": {"train": targeted_train, "heldout": len(t_heldout)},
               "general": {"train": sum(r["split"] == "train" and r["source"] == "builtin" for r in records),
                           "heldout": len(g_heldout)},
               "by_source": {s: sum(r["source"] == s for r in records)
                             for s in (*TARGETED_SOURCES, "builtin", *((CARRIED,) if earlier else ()))},
               "min_relevance": MIN_RELEVANCE,
               **({"carried": {run: sum(r == run for _, r in carried) for run in earlier}} if earlier else {})}
    return train, heldout, records, summary


def _spread_exposure(t_train: list[str], ranked: list[Candidate]) -> tuple[list[str], dict[str, int]]:
    """(questions, trajectories per question) for the targeted training share: a question whose greedy answer uses
    a prompt word few others use gets more teacher samples (targeted.exposure_samples: the news example's "40"
    kilometres came up in 4 of 181 candidates' answers), and the least relevant questions give way so the share
    keeps its number of trajectories, and the bake its time."""
    rank = {c.question: i for i, c in enumerate(ranked)}
    terms = {c.question: c.terms for c in ranked}
    ordered = sorted(t_train, key=lambda q: rank[q])
    counts = dict(zip(ordered, exposure_samples([terms[q] for q in ordered])))
    budget = len(ordered)
    while sum(counts.values()) > budget:     # the least relevant single-sample question gives way first
        last = next((q for q in reversed(ordered) if counts[q] == 1), ordered[-1])
        counts[last] -= 1
        if not counts[last]:
            ordered.remove(last)
            del counts[last]
    return ordered, counts


def _carry(earlier: dict[str, list[str]], train: list[str], heldout: list[str],
           general: int) -> list[tuple[str, str]]:
    """(question, run) pairs for a bake that carries its --on chain's prompts.

    The new prompt's candidates ask only about it, so the teacher (prompted with every prompt of the chain) would be
    asked about the earlier prompts only by the general pool: the persona's planet fell from 34 % to 22 % in a chain
    bake. Here CARRIED_SHARE of the `general` training questions give way to each earlier run's own targeted
    training questions (most relevant first, an equal part per run), none repeating or nearly repeating a question
    already chosen; the bake keeps its number of questions and its length."""
    quota = int(general * CARRIED_SHARE) // len(earlier) if earlier else 0
    taken = {normalise(q) for q in train + heldout}
    carried = []
    for run, questions in earlier.items():
        picked = [q for q in questions if normalise(q) not in taken
                  and all(similarity(q, h) < NEAR_DUPLICATE for h in heldout)][:quota]
        taken.update(normalise(q) for q in picked)
        carried += [(q, run) for q in picked]
    return carried


def check_question_model(config) -> None:
    """Refuse a --question-model that cannot be loaded, before anything loads or is written: a missing file or
    folder, or (downloads off) a hub id that is not in the local Hugging Face cache."""
    name = config.sample.question_model
    if not name:
        return
    source = resolve_model(name)
    if source.kind == "hub" and not config.model.allow_download:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(name, "config.json")
        except ValueError:             # not even a valid hub id ("a/b/c", "x/")
            cached = None
        if not isinstance(cached, str):
            raise UserError(f"--question-model {name!r} not found: no local folder or .gguf file of that name, and "
                            f"not in the local Hugging Face cache (downloads are off; --allow-download fetches it); "
                            f"or leave --question-model out to let the base model write the questions")


def bake_questions(config, model, tokenizer, system_prompt: str,
                   progress: bool = False) -> tuple[list[str], list[str], list[dict], dict]:
    """The (train, heldout) questions of a bake, their questions.jsonl records and a summary, for any source."""
    sample = config.sample
    if sample.questions == AUTO:
        if progress:
            print("questions: writing candidates aimed at the prompt and ranking them by how much it changes the "
                  "answer ...", file=sys.stderr, flush=True)
        generator = None
        if sample.question_model:
            gen_model, gen_tokenizer, _ = load_model(sample.question_model, config.model.allow_download,
                                                     config.model.trust_remote_code)
            generator = (place(gen_model, config.model.device, config.model.precision), gen_tokenizer)
        earlier = ({str(run): [r["question"] for r in run_questions(run)[0] if r.get("source") in TARGETED_SOURCES]
                    for run, _ in chain_runs(config)} if carries_prompts(config) else None)
        train, heldout, records, summary = auto_questions(model, tokenizer, system_prompt, sample.train_questions,
                                                          sample.heldout_questions, sample.targeted_fraction,
                                                          config.seed, generator, earlier)
        summary["question_model"] = sample.question_model or "the base model"
        if progress:
            print(f"questions: {summary['targeted']['train']} train + {summary['targeted']['heldout']} held-out aimed "
                  f"at the prompt (of {summary['relevant']} relevant candidates, {summary['grounded']} of them "
                  f"drawing on its own words; {summary['extra_samples']} extra samples for answers using its "
                  f"rarer words), the rest from the builtin pool; all in questions.jsonl",
                  file=sys.stderr, flush=True)
        if earlier and progress:
            print(f"questions: {summary['by_source'][CARRIED]} general training questions give way to the "
                  f"earlier bakes' own, so the teacher is asked about every prompt it carries",
                  file=sys.stderr, flush=True)
        return train, heldout, records, summary
    given_records = file_records(sample.questions)   # a run's questions.jsonl keeps the split, which questions
    given = record_splits(given_records, sample.questions)   # were targeted, and which had more teacher samples
    if given is None:
        given = split_questions(load_questions(sample.questions), sample.train_questions, sample.heldout_questions,
                                config.seed)
    train, heldout = given
    source = sample.questions if is_generated(sample.questions) else "file"
    kept, samples = record_sources(given_records), record_samples(given_records)
    records = ([{"question": q, "split": "train", "source": kept.get(q, source), "relevance": None,
                 **({"samples": samples[q]} if samples.get(q, 1) > 1 else {})} for q in train]
               + [{"question": q, "split": "heldout", "source": kept.get(q, source), "relevance": None}
                  for q in heldout])
    return train, heldout, records, {"targeted_fraction": 0.0}
