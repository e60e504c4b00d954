"""Probe files: what a prompt should make the model do (judges) or know (knowledge), as YAML written by the user.

Judges file (see examples/persona_probes.yaml):

    samples: 8            # answers per probe and condition (optional)
    temperature: 1.0      # sampling temperature (optional; default: the bake's)
    max_new_tokens: 64    # (optional)
    drift_probe: name     # the probe the drift suite asks after every turn (optional; default: the first)
    probes:
      - name: says-name
        question: What is your name?
        check: {contains: [Zorbl]}

Knowledge file (see examples/news_knowledge.yaml): the same settings, and probes with `expected` answers
(a reply is right when it contains any of them, case-insensitive) instead of a `check`.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path

from ..config import read_yaml, show
from ..errors import UserError
from .checks import Check

SETTINGS = ("samples", "temperature", "max_new_tokens", "drift_probe", "probes")
JUDGE_KEYS = ("name", "question", "check")
FACT_KEYS = ("name", "question", "expected")


@dataclass
class Probe:
    """One question and the check its replies must pass."""
    name: str
    question: str
    check: Check


@dataclass
class ProbeFile:
    probes: list[Probe]
    source: str
    samples: int | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None
    drift_probe: str | None = None

    def find(self, name: str | None) -> Probe:
        if name is None:
            return self.probes[0]
        for probe in self.probes:
            if probe.name == name:
                return probe
        raise UserError(f"{self.source}: drift_probe {name!r} is not one of the probes "
                        f"({', '.join(p.name for p in self.probes)})")


def _unknown(keys, allowed, where: str) -> None:
    for key in keys:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(allowed)}"
            raise UserError(f"{where}: unknown key {key!r}{hint}")


def _setting(data: dict, key: str, kind, source: str, minimum: float):
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum or (
            isinstance(value, float) and not math.isfinite(value)):
        raise UserError(f"{source}: {key} must be a {'whole ' if kind is int else 'finite '}number ≥ {minimum}, "
                        f"got {show(value)}")
    return value


def _entries(path: str | Path, keys: tuple[str, ...]) -> tuple[dict, list[dict], str]:
    source = str(path)
    data = read_yaml(path, "probe file")
    if data is None:
        raise UserError(f"probe file {source} is empty; it needs a `probes:` list (see examples/)")
    if isinstance(data, list):
        data = {"probes": data}
    if isinstance(data, dict):
        _unknown(data, SETTINGS, source)    # first: a misspelt `probes:` is the likeliest reason it seems missing
    if not isinstance(data, dict) or not isinstance(data.get("probes"), list) or not data["probes"]:
        raise UserError(f"{source}: expected a mapping with a non-empty `probes:` list (see examples/)")
    entries = []
    for number, entry in enumerate(data["probes"], 1):
        where = f"{source}, probe {number}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: each probe is a mapping with {', '.join(keys[1:])}, got {show(entry)}")
        _unknown(entry, keys, where)
        if not isinstance(entry.get("question"), str) or not entry["question"].strip():
            raise UserError(f"{where}: `question` must be a non-empty text")
        if entry.get("name") is not None and not isinstance(entry["name"], (str, int)):
            raise UserError(f"{where}: `name` must be a text, got {show(entry['name'])}")
        for key in keys[2:]:
            if key not in entry:
                raise UserError(f"{where}: `{key}` is missing")
        entries.append(dict(entry, name=str(entry.get("name") or f"probe-{number}"), where=where))
    return data, entries, source


def load_probes(path: str | Path) -> ProbeFile:
    """Read and validate a judges probe file; every problem is a UserError naming the file and probe."""
    data, entries, source = _entries(path, JUDGE_KEYS)
    probes = [Probe(e["name"], e["question"].strip(), Check(e["check"], e["where"])) for e in entries]
    names = [p.name for p in probes]
    if len(set(names)) != len(names):
        raise UserError(f"{source}: probe names must be unique, got {names}")
    result = ProbeFile(probes, source, _setting(data, "samples", int, source, 1),
                       _setting(data, "temperature", (int, float), source, 0),
                       _setting(data, "max_new_tokens", int, source, 1), data.get("drift_probe"))
    result.find(result.drift_probe)
    return result


def _expected(value, where: str) -> list[str]:
    items = [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value
    if not isinstance(items, list) or not items or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v).strip() for v in items):
        raise UserError(f"{where}: `expected` must be a non-empty answer or list of answers, got {value!r}")
    return [str(v).strip() for v in items]


def load_facts(path: str | Path) -> ProbeFile:
    """Read a knowledge file: probes with `expected` answers, turned into `contains` checks."""
    data, entries, source = _entries(path, FACT_KEYS)
    probes = [Probe(e["name"], e["question"].strip(), Check({"contains": _expected(e["expected"], e["where"])}))
              for e in entries]
    return ProbeFile(probes, source, _setting(data, "samples", int, source, 1),
                     _setting(data, "temperature", (int, float), source, 0),
                     _setting(data, "max_new_tokens", int, source, 1))


def builtin_locality() -> ProbeFile:
    """The packaged locality control: stable general facts unrelated to any baked prompt."""
    return load_facts(Path(__file__).resolve().parent.parent / "data" / "locality.yaml")
