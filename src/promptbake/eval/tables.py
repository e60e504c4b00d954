"""Plain-text tables of suite results, printed by `promptbake eval` as each suite finishes."""
from __future__ import annotations

import textwrap

from .conditions import CONDITION_NAMES


def pct(r: dict) -> str:
    """'62% (5/8) [31–86]': rate, counts and the 95 % Wilson interval."""
    if not r.get("n"):
        return "n/a"
    low, high = r["ci95"]
    return f"{r['rate']:.0%} ({r['passed']}/{r['n']}) [{low:.0%}–{high:.0%}]"


def _rates(title: str, conditions: dict) -> list[str]:
    lines = [title]
    lines += [f"  {name:<14}{pct(conditions[name])}" for name in CONDITION_NAMES if name in conditions]
    return lines


def kl_table(kl: dict) -> list[str]:
    lines = [f"held-out KL(teacher ‖ condition) per token: {kl['heldout_tokens']} tokens of "
             f"{kl['heldout_trajectories']} trajectories; closure {kl['closure']:.3f}",
             f"  {'condition':<14}{'all tokens':>12}{'first ' + str(kl['first_tokens']):>12}{'later':>10}"]
    for name in CONDITION_NAMES:
        row = kl["conditions"][name]
        if "per_position" not in row:
            lines.append(f"  {name:<14}{row['kl']:>12.4f}   ({row['note']})")
        else:
            lines.append(f"  {name:<14}{row['kl']:>12.4f}{row['kl_first_tokens']:>12.4f}{row['kl_later_tokens']:>10.4f}")
    return lines


def judges_table(judges: dict) -> list[str]:
    lines = _rates(f"judges: {len(judges['probes'])} probes × {judges['samples_per_probe']} samples at temperature "
                   f"{judges['temperature']:g}; pass rate [95% Wilson interval]", judges["conditions"])
    for probe in judges["probes"]:
        lines.append(f"  probe {probe['name']!r}: {probe['question']!r} → {probe['check']}")
        lines += [f"    {name:<14}{pct(probe['conditions'][name])}" for name in CONDITION_NAMES]
    return lines


def knowledge_table(knowledge: dict) -> list[str]:
    lines = []
    if "conditions" in knowledge:
        lines += _rates(f"knowledge: {len(knowledge['probes'])} fact probes × {knowledge['samples_per_probe']} "
                        f"samples; accuracy [95% Wilson interval]", knowledge["conditions"])
    loc = knowledge.get("locality")
    if loc:
        lines += _rates(f"locality: {loc['kept']} of {loc['questions']} general questions the base model answers "
                        f"correctly (greedy); still correct:", loc["conditions"])
    return lines


def drift_table(drift: dict) -> list[str]:
    names = list(drift["conditions"])
    lines = [f"drift: probe {drift['probe']['question']!r} ({drift['probe']['check']}) after each turn of "
             f"{drift['dialogues']} self-chats × {drift['samples_per_dialogue']} samples; pass rate",
             f"  {'turn':<6}" + "".join(f"{n:>16}" for n in names)]
    for t in range(drift["turns"] + 1):
        cells = [drift["conditions"][n]["per_turn"][t] for n in names]
        lines.append(f"  {t:<6}" + "".join(f"{c['rate']:>10.0%} ({c['passed']:>2})" for c in cells))
    return lines


def cot_table(cot: dict) -> list[str]:
    lines = _rates(f"cot: {cot['problems']} arithmetic word problems (seed {cot['seed']}), exact match of the "
                   f"final number; accuracy [95% Wilson interval]", cot["conditions"])
    lines += _rates("  replies ending in the line 'The answer is N.' (the format examples/cot.txt asks for):",
                    {name: c["answer_line"] for name, c in cot["conditions"].items() if "answer_line" in c})
    return lines


def accuracy_table(acc: dict) -> list[str]:
    lines = _rates(f"accuracy: {acc['problems']} {acc['task']} problems (seed {acc['seed']}, "
                   f"{'greedy' if not acc['temperature'] else 'temperature ' + format(acc['temperature'], 'g')}), "
                   f"exact match of the last answer in the reply; accuracy [95% Wilson interval]", acc["conditions"])
    lines.append("  mean reply words: " + ", ".join(f"{name} {c['mean_reply_words']:.1f}"
                                                    for name, c in acc["conditions"].items()))
    return lines


def benchmarks_table(bench: dict) -> list[str]:
    lines = [f"benchmarks (lm-evaluation-harness): {', '.join(bench['tasks'])}"]
    for task in bench["tasks"]:
        metrics = sorted({m for c in bench["conditions"].values() for m in c.get(task, {}) if "stderr" not in m})
        for metric in metrics:
            cells = [bench["conditions"].get(n, {}).get(task, {}).get(metric) for n in CONDITION_NAMES]
            lines.append(f"  {task} {metric}: " + "  ".join(
                f"{n} {'n/a' if v is None else f'{v:.3f}'}" for n, v in zip(CONDITION_NAMES, cells)))
    return lines


def side_by_side_lines(rows: list[dict], labels: dict[str, str]) -> list[str]:
    """Each row's question, then its answers wrapped under right-aligned labels ({row key: label})."""
    width = max(len(label) for label in labels.values())
    lines = []
    for row in rows:
        lines.append(f"Q: {row['question']}")
        for key, label in labels.items():
            text = " ".join(row[key].split()) or "(empty)"
            lines.append(textwrap.fill(text, width=110, initial_indent=f"  {label:>{width}}: ",
                                       subsequent_indent=" " * (width + 4)))
    return lines


def samples_table(rows: list[dict]) -> list[str]:
    return (["side by side (held-out questions, never trained on):"]
            + side_by_side_lines(rows, {name: name for name in CONDITION_NAMES}))


TABLES = {"kl": kl_table, "judges": judges_table, "knowledge": knowledge_table, "drift": drift_table,
          "cot": cot_table, "accuracy": accuracy_table, "benchmarks": benchmarks_table, "samples": samples_table}
