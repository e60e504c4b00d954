"""Judge checks: does one reply do what the prompt asked? Pure functions of the reply text, no model.

A check is a mapping of one or more kinds to their arguments, all of which must pass, e.g.
`{contains: [Zorbl], max_words: 60}`. Kinds:

    contains: TEXT | [TEXT, ...]        any of them appears (case-insensitive)
    not_contains: TEXT | [TEXT, ...]    none of them appears (case-insensitive)
    regex: PATTERN                      re.search finds it (Python syntax; add (?i) for case-insensitive)
    starts_with / ends_with: TEXT | [..]  the stripped reply starts / ends with one of them (case-insensitive)
    max_words / min_words: N            word count bounds
    max_sentences: N                    sentences, split at . ! ? followed by space or end
    language: CODE                      ISO 639-1 code (en, fr, de, ...) identified by py3langid
    all_caps: true                      letters present and none lowercase
    no_letters: TEXT                    none of these characters appears (case-insensitive), e.g. "e"
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable

from ..errors import UserError

SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def _texts(value: Any, kind: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
        raise UserError(f"check {kind!r} needs a non-empty text or a list of non-empty texts, got {value!r}")
    return items


def _count(value: Any, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"check {kind!r} needs a whole number ≥ 0, got {value!r}")
    return value


def _flag(value: Any, kind: str) -> bool:
    if value is not True:
        raise UserError(f"check {kind!r} takes `true`, got {value!r}")
    return True


def words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+(?:['’-][^\W_]+)*", text)


def sentences(text: str) -> list[str]:
    return [s for s in SENTENCE_END.split(text.strip()) if s.strip()]


@lru_cache(maxsize=1)
def _language_identifier():
    import py3langid

    return py3langid


def language_of(text: str) -> str:
    """ISO 639-1 code of the most likely language (py3langid, a trained n-gram model shipped in its wheel)."""
    return _language_identifier().classify(text)[0]


def _make(kind: str, value: Any) -> Callable[[str], bool]:
    """One predicate over the reply for one check kind; argument errors are UserErrors naming the kind."""
    if kind == "contains":
        needles = [t.lower() for t in _texts(value, kind)]
        return lambda reply: any(n in reply.lower() for n in needles)
    if kind == "not_contains":
        needles = [t.lower() for t in _texts(value, kind)]
        return lambda reply: not any(n in reply.lower() for n in needles)
    if kind == "regex":
        if not isinstance(value, str) or not value:
            raise UserError(f"check 'regex' needs one non-empty pattern, got {value!r}")
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise UserError(f"check 'regex' has an invalid pattern {value!r}: {exc}") from None
        return lambda reply: pattern.search(reply) is not None
    if kind in ("starts_with", "ends_with"):
        affixes = [t.lower() for t in _texts(value, kind)]
        test = str.startswith if kind == "starts_with" else str.endswith
        return lambda reply: any(test(reply.strip().lower(), a) for a in affixes)
    if kind == "max_words":
        limit = _count(value, kind)
        return lambda reply: len(words(reply)) <= limit
    if kind == "min_words":
        limit = _count(value, kind)
        return lambda reply: len(words(reply)) >= limit
    if kind == "max_sentences":
        limit = _count(value, kind)
        return lambda reply: len(sentences(reply)) <= limit
    if kind == "language":
        if not isinstance(value, str) or not re.fullmatch(r"[a-z]{2,3}", value):
            raise UserError(f"check 'language' needs an ISO 639-1 code such as en, fr or de, got {value!r}")
        return lambda reply: bool(reply.strip()) and language_of(reply) == value
    if kind == "all_caps":
        _flag(value, kind)
        return lambda reply: any(c.isalpha() for c in reply) and not any(c.islower() for c in reply)
    if kind == "no_letters":
        banned = set("".join(_texts(value, kind)).lower())
        return lambda reply: not banned & set(reply.lower())
    raise UserError(f"unknown check kind {kind!r}; known kinds: {', '.join(CHECK_KINDS)}")


CHECK_KINDS = ("contains", "not_contains", "regex", "starts_with", "ends_with", "max_words", "min_words",
               "max_sentences", "language", "all_caps", "no_letters")


class Check:
    """All of a mapping's checks, compiled once; `check(reply) -> bool`, `str(check)` describes it."""

    def __init__(self, spec: Any, where: str = "probe"):
        if not isinstance(spec, dict) or not spec:
            raise UserError(f"{where}: `check` must be a mapping such as {{contains: [Paris]}}, got {spec!r}")
        self.spec = dict(spec)
        try:
            self._predicates = [_make(str(kind), value) for kind, value in spec.items()]
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None

    def __call__(self, reply: str) -> bool:
        return all(predicate(reply) for predicate in self._predicates)

    def __str__(self) -> str:
        return ", ".join(f"{kind}: {value}" for kind, value in self.spec.items())
