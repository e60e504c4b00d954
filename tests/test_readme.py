"""The README is the door: short, and every command and link in it works. No model is loaded here."""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from promptbake.cli import build_parser
from promptbake.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 150
# Pages that land together with a CLI verb another change is adding: a link to one may dangle until the verb exists.
PENDING_WITH_VERB = {"docs/ui.md": "ui"}

FENCE = re.compile(r"^ *(```|~~~)[^\n]*\n(.*?)^ *\1 *$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
MAKE_TARGET = re.compile(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", re.M)


def verbs() -> set[str]:
    parser = build_parser()
    return {name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices}


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number in the file, logical line) of every fenced code block, backslash continuations joined."""
    out = []
    for block in FENCE.finditer(text):
        first = text.count("\n", 0, block.start(2)) + 1
        pending, start = "", None
        for offset, raw in enumerate(block.group(2).splitlines()):
            line = raw.rstrip()
            if start is None:
                start = first + offset
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            out.append((start, (pending + line).strip()))
            pending, start = "", None
        if pending:
            out.append((start, pending.strip()))
    return out


def commands(text: str, program: str) -> list[tuple[int, str, list[str]]]:
    """(line number, logical line, argv without the program) for each `program ...` command in the code blocks;
    comments are dropped and `&&` / `;` / `|` chains are split into their commands."""
    found = []
    for number, line in code_lines(text):
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue                                                    # not shell (Python, YAML, a folder listing)
        command: list[str] = []
        for word in words + ["&&"]:
            if word in ("&&", "||", ";", "|"):
                if command and command[0] == program:
                    found.append((number, line, command[1:]))
                command = []
            else:
                command.append(word)
    return found


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines, more than {MAX_README_LINES}: move the depth into a docs/ page")


def test_every_promptbake_command_in_the_readme_parses():
    found = commands(README.read_text(encoding="utf-8"), "promptbake")
    assert len(found) >= 5, f"expected the README's CLI tour in a fenced code block, found {len(found)} commands"
    known = verbs()
    failures = []
    for number, line, argv in found:
        if argv and argv[0] not in known and argv[0] in PENDING_WITH_VERB.values():
            continue                                                    # the verb is being added; checked once it is
        try:
            build_parser().parse_args(argv)
        except (SystemExit, UserError) as exc:
            failures.append(f"README.md:{number}: {line}\n    -> {exc}")
    assert not failures, "README commands the CLI parser rejects:\n" + "\n".join(failures)


def test_every_make_command_in_the_readme_names_a_makefile_target():
    targets = set(MAKE_TARGET.findall((ROOT / "Makefile").read_text(encoding="utf-8"))) - {".PHONY"}
    found = commands(README.read_text(encoding="utf-8"), "make")
    assert found, "expected `make demo` / `make test` in a fenced code block of the README"
    failures = [f"README.md:{number}: {line} -> no target {goal!r} in the Makefile (targets: {sorted(targets)})"
                for number, line, argv in found
                for goal in argv if not goal.startswith("-") and "=" not in goal and goal not in targets]
    assert not failures, "\n".join(failures)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(0)[1:-1], heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    known = None
    failures = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue                                                    # http(s), mailto, an anchor on this page
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve()
        where = f"{page.relative_to(ROOT)}: [{target}]"
        if not resolved.exists():
            rel = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else str(resolved)
            known = verbs() if known is None else known
            if rel in PENDING_WITH_VERB and PENDING_WITH_VERB[rel] not in known:
                continue                                                # lands with its verb; required once it does
            hint = f" (the `{PENDING_WITH_VERB[rel]}` verb exists now, so its page must too)" \
                if rel in PENDING_WITH_VERB else ""
            failures.append(f"{where} -> {resolved} does not exist{hint}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            failures.append(f"{where} -> no heading with anchor #{anchor} in {resolved.name}")
    assert not failures, "broken links:\n" + "\n".join(dict.fromkeys(failures))
