"""Pure text handling behind `--questions auto`: questions aimed at what a prompt says (no model, no I/O).

Three sources of candidates, ranked later by how much the prompt moves the model (autoquestions.py):
- templates over the names and phrases the prompt contains: about-questions ("Tell me about Kessara.") and
  attribute questions that draw out its facts ("How big is Kessara?", "Where is Mill Pier?");
- a shipped pool of questions where system prompts tend to matter (identity, recent news, instructions);
- questions the generator model writes: the numbered lists it replies with as a chat model asked which questions
  the prompt answers (`parse_list`).
The prompt's own words (`prompt_terms`) mark the candidates that make the teacher draw on what the prompt says.
Near-duplicates are grouped, so a question and its paraphrase never land on both sides of the split.
"""
from __future__ import annotations

import random
import re
from importlib import resources

# the generator is asked, as a chat model, for the questions a text answers: the text (the whole prompt, then each
# of its sentences) in the user turn, then one of these requests; instruct models write numbered lists of questions
# about the text's own facts (a continued few-shot list, tried before, rarely named them)
CHAT_ASKS = ("List 5 questions that this text answers.",
             "What questions does this text answer? Write them as a numbered list.")
MAX_SENTENCES = 8          # the first sentences of a long prompt; the rest share the whole-prompt list
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+(?=[A-Z0-9\"'])")

TEMPLATES = ("Tell me about {}.", "What do you know about {}?", "What is {}?", "Have you heard of {}?",
             "What is the latest about {}?", "Why does {} matter?")
# one attribute each (size, place, origin, time, discovery, operator, price, schedule, news): a prompt's facts are
# mostly attributes of its names, and the prompted teacher answers these with them ("How big is Kessara?" -> "about
# 40 kilometers"), worded unlike the about-questions above; the relevance ranking drops the ones a prompt leaves
# untouched. The generator's own lists rarely ask for a number (4 of 181 news candidates' answers said "40")
FACT_TEMPLATES = ("How big is {}?", "How large is {}?", "Where is {}?", "Where is {} located?",
                  "Where does {} come from?", "When did {} happen?", "When was {} found?", "Who discovered {}?",
                  "Who runs {}?", "How much does {} cost?", "How often does {} run?", "What time does {} open?",
                  "What is new with {}?")
# capitalised words that start sentences or name calendar things, not what a prompt is about
NOT_NAMES = {"a", "an", "the", "you", "your", "i", "we", "it", "its", "this", "that", "these", "those", "he", "she",
             "they", "always", "never", "be", "do", "don't", "answer", "reply", "speak", "use", "news", "update",
             "note", "when", "if", "and", "but", "or", "in", "on", "at", "for", "of", "to", "as", "is", "are", "was",
             "my", "our", "please", "every", "each", "all", "no", "not", "today", "monday", "tuesday", "wednesday",
             "thursday", "friday", "saturday", "sunday", "january", "february", "march", "april", "may", "june",
             "july", "august", "september", "october", "november", "december", "there", "here", "after", "before"}
MIN_WORDS, MAX_WORDS = 3, 30
COMMON_IN = 2          # a prompt word used by this many general questions is no sign that a reply draws on the prompt
EXPOSURE_FLOOR = 8     # training answers that should use each of the prompt's own words, where candidates allow
MAX_SAMPLES = 4        # teacher trajectories one targeted question may get to lift a rarely used word to the floor
NEAR_DUPLICATE = 0.6   # Jaccard similarity of content-word sets at or above which two questions are one group
_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+[\"']?(.+\?)[\"']?\s*$")
_WORD = re.compile(r"[A-Za-z0-9]+")
_NAME = re.compile(r"[A-Z][\w-]*\.?(?:\s+[A-Z][\w-]*\.?)*")
_STOP = NOT_NAMES | {"what", "who", "how", "why", "where", "which", "can", "could", "would", "tell", "me", "about",
                     "know", "does", "did", "have", "has", "any", "some", "s"}


def prompt_pool() -> list[str]:
    """The shipped questions where a system prompt tends to change the answer (identity, news, instructions)."""
    text = resources.files("promptbake").joinpath("data/prompt_questions.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def salient_phrases(system_prompt: str, limit: int = 8) -> list[str]:
    """Names and numbered names in the prompt ('Zorbl Quenthax', 'Vexaris-7', 'Vera C. Rubin Observatory'), most
    frequent first, then in order of appearance; sentence starters and calendar words are left out."""
    found: dict[str, int] = {}
    for match in _NAME.finditer(system_prompt):
        run: list[str] = []
        for word in match.group(0).split() + [""]:          # a sentence starter or calendar word splits a run
            if word and word.lower().strip(".") not in NOT_NAMES:
                run.append(word)
                if not (word.endswith(".") and len(word) > 2):   # "C." is an initial; "Chile." ends a sentence
                    continue
                word = ""
            phrase = " ".join(run).rstrip(".")
            if phrase and any(ch.isalpha() for ch in phrase):
                found[phrase] = found.get(phrase, 0) + 1
            run = []
    ranked = sorted(found, key=lambda p: -found[p])           # stable: ties keep their order of appearance
    return ranked[:limit]


def prompt_sentences(system_prompt: str, limit: int = MAX_SENTENCES) -> list[str]:
    """The prompt cut into sentences (at . ! ? ; : before a capital or digit; initials such as 'C.' do not cut),
    at most `limit`, each of at least MIN_WORDS words."""
    out: list[str] = []
    for line in system_prompt.splitlines():
        parts = _SENTENCE_END.split(line.strip())
        merged: list[str] = []
        for part in parts:
            if merged and re.search(r"\b[A-Z]\.$", merged[-1]):      # "Vera C." + "Rubin ..." is one sentence
                merged[-1] += " " + part
            else:
                merged.append(part)
        out += [part.strip() for part in merged if len(part.split()) >= MIN_WORDS]
    return out[:limit]


def template_questions(system_prompt: str) -> list[str]:
    """Every about-question and attribute question (TEMPLATES, FACT_TEMPLATES) over each of the prompt's names."""
    return [template.format(phrase) for phrase in salient_phrases(system_prompt)
            for template in TEMPLATES + FACT_TEMPLATES]


def parse_list(text: str) -> list[str]:
    """The questions of a chat reply: every line that is a numbered or bulleted item ending in '?'."""
    out = []
    for line in text.splitlines():
        match = _ITEM.match(line)
        if match:
            out.append(match.group(1).strip())
    return out


def normalise(question: str) -> str:
    return " ".join(question.lower().split()).rstrip("?.! ")


def content_words(question: str) -> frozenset[str]:
    return frozenset(w.lower() for w in _WORD.findall(question) if w.lower() not in _STOP)


def prompt_terms(system_prompt: str, common: list[str]) -> frozenset[str]:
    """The prompt's own words: its numbers, and its content words that fewer than COMMON_IN of the `common`
    questions use. 'kessara', 'neptune', 'rubin', '40' for the news example, 'zorbl' and 'vexaris' for the persona;
    'moon', 'name' and 'home' are in several general questions, so they do not count. A number is a fact of the
    prompt however many arithmetic questions also use it ('40' kilometres wide)."""
    counts: dict[str, int] = {}
    for question in common:
        for word in _terms(question):
            counts[word] = counts.get(word, 0) + 1
    return frozenset(w for w in _terms(system_prompt) if w.isdigit() or counts.get(w, 0) < COMMON_IN)


def mentioned(text: str, terms: frozenset[str]) -> frozenset[str]:
    """The prompt's own words (prompt_terms) that `text` uses."""
    return frozenset(_terms(text) & terms)


def mentions(text: str, terms: frozenset[str]) -> bool:
    """Whether `text` uses one of the prompt's own words (prompt_terms)."""
    return bool(mentioned(text, terms))


def exposure_samples(term_sets: list[frozenset[str]], floor: int = EXPOSURE_FLOOR,
                     cap: int = MAX_SAMPLES) -> list[int]:
    """Trajectories per question (1 to `cap`) so that each prompt word reaches `floor` answers where it can.

    term_sets[i] holds the prompt words question i's greedy answer uses. Rarest word first, the questions that use
    it get one more trajectory each in turn (the earlier, better-ranked ones first) until the word's count reaches
    the floor or they are all at the cap; every extra trajectory counts for all the words its question uses. A
    word no question uses stays at 0: no number of samples makes the teacher say it."""
    samples = [1] * len(term_sets)
    count: dict[str, int] = {}
    for terms in term_sets:
        for term in terms:
            count[term] = count.get(term, 0) + 1
    for term in sorted(count, key=lambda t: (count[t], t)):
        holders = [i for i, terms in enumerate(term_sets) if term in terms]
        while count[term] < floor:
            growable = [i for i in holders if samples[i] < cap]
            if not growable:
                break
            pick = min(growable, key=lambda i: (samples[i], i))
            samples[pick] += 1
            for other in term_sets[pick]:
                count[other] += 1
    return samples


def _terms(text: str) -> set[str]:
    words = (w.lower() for w in _WORD.findall(text))
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words
            if w not in _STOP and (len(w) >= 3 or w.isdigit())}


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of two questions' content-word sets (1.0 for the same words, whatever the order)."""
    wa, wb = content_words(a), content_words(b)
    if not wa and not wb:
        return 1.0 if normalise(a) == normalise(b) else 0.0
    return len(wa & wb) / len(wa | wb)


def usable(question: str, system_prompt: str) -> str | None:
    """Why a candidate question is dropped (None: it is kept)."""
    words = question.split()
    if not question.strip():
        return "empty"
    if len(words) < MIN_WORDS:
        return "too short"
    if len(words) > MAX_WORDS or "\n" in question:
        return "too long"
    if sum(ch.isascii() for ch in question) < 0.9 * len(question) and \
            sum(ch.isascii() for ch in system_prompt) >= 0.9 * len(system_prompt):
        return "wrong script"
    if normalise(system_prompt) and normalise(system_prompt) in normalise(question):
        return "repeats the prompt"
    return None


def near_duplicate_groups(questions: list[str], threshold: float = NEAR_DUPLICATE) -> list[list[int]]:
    """Indices of `questions` grouped so that any two at similarity >= threshold share a group (union-find)."""
    parent = list(range(len(questions)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    words = [content_words(q) for q in questions]
    for i in range(len(questions)):
        for j in range(i):
            union = len(words[i] | words[j])
            same = len(words[i] & words[j]) / union if union else normalise(questions[i]) == normalise(questions[j])
            if same >= threshold:
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(questions)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def grouped_split(questions: list[str], n_train: int, n_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """Seeded train / held-out draw in which near-duplicate groups stay whole: no paraphrase crosses the split.

    Groups are shuffled; held-out takes whole groups' first members until it has n_heldout, then training takes
    the remaining groups' members (as many as n_train, or all there are)."""
    groups = near_duplicate_groups(questions)
    random.Random(seed).shuffle(groups)
    heldout, train, rest = [], [], []
    for group in groups:
        if len(heldout) < n_heldout:
            heldout.append(questions[group[0]])       # one per group: the held-out set has no paraphrases within
        else:
            rest.append(group)
    for group in rest:
        train += [questions[i] for i in group]
    return train[:n_train], heldout
