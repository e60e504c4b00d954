"""`promptbake report DIR`: one self-contained DIR/report.html (inline CSS, plots as inline PNG) that opens offline.

It reads only the run folder: bake.json (header), metrics.jsonl (training curve) and eval.json (one section per
evaluation key, one table per suite). Everything taken from the run (prompt, questions, answers) is HTML-escaped.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

from .. import runfolder
from ..errors import UserError
from . import plots
from .conditions import CONDITION_NAMES

REPORT_HTML = "report.html"
EVAL_JSON = "eval.json"  # the name evaluate.py writes; not imported from there, which would pull in torch
SUITE_TITLES = {"kl": "Held-out KL", "judges": "Judges", "knowledge": "Knowledge", "drift": "Drift over turns",
                "cot": "Chain of thought", "accuracy": "Task accuracy", "benchmarks": "Benchmarks",
                "samples": "Sample answers"}
CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;max-width:1120px;
 margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:21px;margin:40px 0 8px;border-bottom:2px solid #eee;padding-bottom:4px}
h3{font-size:19px;margin:40px 0 6px;background:#f3f1e6;padding:6px 10px;border-radius:4px}
h4{font-size:16px;margin:26px 0 6px}h5{font-size:14px;margin:16px 0 4px}
.meta{color:#666;margin:0 0 14px}.note{color:#666;font-size:13px}.prompt{white-space:pre-wrap;background:#f7f7f4;
 border-left:4px solid #c9b458;padding:10px 14px;margin:8px 0 16px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(118px,1fr));gap:10px;margin:12px 0}
.card{border:1px solid #e3e3e3;border-radius:6px;padding:8px 12px}.card b{display:block;font-size:19px}
.card span{color:#666;font-size:12px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:14px}th,td{border:1px solid #ddd;padding:5px 9px;
 text-align:left;vertical-align:top}th{background:#f5f5f5;font-weight:600}td.num{text-align:right;
 font-variant-numeric:tabular-nums;white-space:nowrap}.ci{color:#777;font-size:12px}
table.answers{table-layout:fixed;width:100%}table.answers td{white-space:pre-wrap;font-size:13px;
 overflow-wrap:anywhere}img{max-width:100%;display:block;margin:8px 0}
pre{background:#f7f7f7;border:1px solid #e5e5e5;padding:10px;white-space:pre-wrap;overflow-wrap:anywhere;
 font-size:12px}
.answer{white-space:pre-wrap;border-left:3px solid #ddd;padding:2px 10px;margin:4px 0;font-size:13px}
details{margin:6px 0}summary{cursor:pointer;color:#335}nav a{margin-right:12px;color:#335}
"""
LEGEND = ("<p class=note>Each evaluation compares four conditions: <b>base</b> (the model without the prompt), "
          "<b>base+prompt</b> (the teacher: what baking aims at), <b>baked</b> (adapter on, no prompt) and "
          "<b>baked+prompt</b> (adapter on and the prompt again). Keys name the adapter (final or a checkpoint) and "
          "its strength. Rates show k/n and a 95 % Wilson interval.</p>")


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else _esc("—" if value is None else value)


def _rate(record: dict | None) -> str:
    """"62.5%" with "5/8 · CI 30.6–86.3%" beneath it: the rate, its counts and its 95 % interval."""
    if not record or record.get("rate") is None:
        return "—"
    low, high = record["ci95"]
    return (f"{100 * record['rate']:.1f}%<br><span class=ci>{record['passed']}/{record['n']} · "
            f"CI {100 * low:.1f}–{100 * high:.1f}%</span>")


def _table(header: list[str], rows: list[list[str] | str], numeric_from: int = 1, cls: str = "") -> str:
    """Cells are HTML already (escape text with _esc); columns from `numeric_from` on are right-aligned numbers.
    A row given as a string is a ready `<tr>`."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(row if isinstance(row, str) else "<tr>" + "".join(
        f"<td class=num>{c}</td>" if i >= numeric_from else f"<td>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table{f' class={cls}' if cls else ''}><tr>{head}</tr>{body}</table>"


def _img(uri: str | None, alt: str) -> str:
    return f'<img src="{uri}" alt="{_esc(alt)}">' if uri else ""


def _ordered(conditions: dict) -> list[str]:
    """The four conditions in their canonical order, then any other names the suite reported."""
    return [c for c in CONDITION_NAMES if c in conditions] + [c for c in conditions if c not in CONDITION_NAMES]


def _rates_table(conditions: dict) -> str:
    names = _ordered(conditions)
    return _table(["", *names], [["pass rate", *(_rate(conditions[n]) for n in names)]])


def _probe_rows(probes: list[dict], names: list[str], describe) -> list:
    """Per probe: its description and one rate per condition, then a full-width row with the answers, folded."""
    rows = []
    for probe in probes:
        rows.append([describe(probe), *(_rate(probe["conditions"].get(n)) for n in names)])
        answers = [probe["conditions"].get(n, {}).get("samples") or [] for n in names]
        if any(answers):
            cells = "".join("<td>" + "".join(f"<div class=answer>{_esc(a)}</div>" for a in column) + "</td>"
                            for column in answers)
            head = "".join(f"<th>{_esc(n)}</th>" for n in names)
            rows.append(f"<tr><td colspan={len(names) + 1}><details><summary>answers</summary><table class=answers>"
                        f"<tr>{head}</tr><tr>{cells}</tr></table></details></td></tr>")
    return rows


def _header(bake: dict, run_dir: Path) -> str:
    model = bake.get("model", {})
    metrics = bake.get("metrics", {})
    cards = [("held-out KL before", metrics.get("heldout_kl_before")),
             ("held-out KL after", metrics.get("heldout_kl_after")),
             ("closure", metrics.get("closure")), ("steps", metrics.get("steps")),
             ("final train loss", metrics.get("final_train_loss")),
             *((label, f"{metrics[key]:.1f} s") for label, key in
               (("sampling", "sampling_seconds"), ("training", "training_seconds")) if key in metrics),
             ("trajectories train / held-out",
              f"{metrics.get('train_trajectories', '—')} / {metrics.get('heldout_trajectories', '—')}")]
    model_text = model.get("name", "?") + (f" ({model['gguf_file']})" if model.get("gguf_file") else "")
    meta = (f"model <b>{_esc(model_text)}</b> · seed {_esc(bake.get('seed', '—'))} · framing "
            f"{_esc(bake.get('framing', {}).get('kind', '—'))} · status <b>{_esc(bake.get('status', '—'))}</b> · "
            f"finished {_esc(bake.get('finished', '—'))}")
    card_html = "".join(f"<div class=card><b>{_num(v)}</b><span>{_esc(k)}</span></div>" for k, v in cards
                        if v is not None)
    config = json.dumps({k: bake.get(k) for k in ("config", "framing", "versions")}, indent=2, ensure_ascii=False)
    return (f"<h1>promptbake report</h1><p class=meta>{_esc(run_dir)}</p>"
            f"<h2 id=prompt>Baked system prompt</h2><div class=prompt>{_esc(bake.get('system_prompt', ''))}</div>"
            f"<p class=meta>{meta}</p><div class=cards>{card_html}</div>"
            f"<details><summary>resolved config, framing, versions</summary><pre>{_esc(config)}</pre></details>")


def _training(metrics: list[dict]) -> str:
    uri = plots.training_curve(metrics)
    body = _img(uri, "training curve") if uri else "<p class=note>No training metrics (metrics.jsonl) found.</p>"
    return f"<h2 id=training>Training</h2>{body}"


def _kl(suite: dict) -> str:
    conditions = suite["conditions"]
    head = suite.get("first_tokens", "first")
    rows = [[_esc(n) + (f" <span class=ci>({_esc(c['note'])})</span>" if c.get("note") else ""), _num(c.get("kl")),
             _num(c.get("kl_first_tokens")), _num(c.get("kl_later_tokens"))]
            for n in _ordered(conditions) for c in [conditions[n]]]
    table = _table(["condition", "KL", f"first {head} tokens", "later tokens"], rows)
    note = (f"<p>closure <b>{_num(suite.get('closure'))}</b> (1 − KL baked / KL base) on "
            f"{_esc(suite.get('heldout_trajectories', '?'))} held-out trajectories, "
            f"{_esc(suite.get('heldout_tokens', '?'))} tokens.</p>")
    return note + table + _img(plots.per_position_kl(conditions, suite.get("first_tokens")), "per-position KL")


def _judges(suite: dict) -> str:
    conditions = suite["conditions"]
    names = _ordered(conditions)
    note = (f"<p class=note>{_esc(suite.get('samples_per_probe', '?'))} samples per probe at temperature "
            f"{_esc(suite.get('temperature', '?'))}; probes from {_esc(suite.get('probe_file', '?'))}.</p>")
    rows = _probe_rows(suite.get("probes", []), names, lambda p: (
        f"<b>{_esc(p.get('name', ''))}</b><br>{_esc(p.get('question', ''))}<br>"
        f"<span class=ci>check: {_esc(p.get('check', ''))}</span>"))
    return (note + _rates_table(conditions) + _img(plots.rate_bars(conditions, "judged pass rate"), "judges")
            + "<h5>Per probe</h5>" + _table(["probe", *names], rows))


def _knowledge(suite: dict) -> str:
    out = ""
    if "conditions" in suite:      # absent when only the locality control ran
        conditions = suite["conditions"]
        names = _ordered(conditions)
        rows = _probe_rows(suite.get("probes", []), names, lambda p: (
            f"{_esc(p.get('question', ''))}<br><span class=ci>expected: "
            f"{_esc(', '.join(map(str, p.get('expected', []))))}</span>"))
        out = _rates_table(conditions) + "<h5>Per question</h5>" + _table(["question", *names], rows)
    locality = suite.get("locality")
    if locality:
        loc = locality["conditions"]
        loc_names = _ordered(loc)
        drop = locality.get("drop", {})
        out += (f"<h5>Locality</h5><p class=note>{_esc(locality.get('kept', '?'))} of "
                f"{_esc(locality.get('questions', '?'))} general questions kept (answered correctly by the base).</p>"
                + _table(["", *loc_names], [["pass rate", *(_rate(loc[n]) for n in loc_names)],
                                            ["drop", *(_num(drop.get(n)) for n in loc_names)]]))
    return out


def _drift(suite: dict) -> str:
    conditions = suite["conditions"]
    names = _ordered(conditions)
    probe = suite.get("probe", {})
    by_turn = {n: {t["turn"]: t for t in conditions[n].get("per_turn", [])} for n in names}
    turns = sorted({t for per in by_turn.values() for t in per})
    note = (f"<p class=note>{_esc(suite.get('dialogues', '?'))} dialogues of {_esc(suite.get('turns', '?'))} turns; "
            f"probe “{_esc(probe.get('question', ''))}”, check: {_esc(probe.get('check', ''))}.</p>")
    rows = [[_esc(t), *(_rate(by_turn[n].get(t)) for n in names)] for t in turns]
    return note + _img(plots.drift_lines({n: conditions[n] for n in names}), "drift") + _table(["turn", *names], rows)


def _cot(suite: dict) -> str:
    conditions = suite["conditions"]
    names = _ordered(conditions)
    rows = [["correct", *(_rate(conditions[n]) for n in names)]]
    if any("answer_line" in conditions[n] for n in names):   # the cot suite's; the accuracy suite has none
        rows.append(["ends 'The answer is N.'", *(_rate(conditions[n].get("answer_line")) for n in names)])
    rows.append(["mean reply words", *(_num(conditions[n].get("mean_reply_words")) for n in names)])
    table = _table(["", *names], rows)
    examples = "".join(
        f"<h5>{_esc(e.get('question', ''))}</h5><p class=note>answer: {_esc(e.get('answer', ''))}</p>"
        + _table(names, [[_esc(e.get(n, "")) for n in names]], numeric_from=len(names), cls="answers")
        for e in suite.get("examples", []))
    task = f" of the {suite['task']} family" if suite.get("task") else ""
    return (f"<p class=note>{_esc(suite.get('problems', '?'))} problems{_esc(task)}.</p>" + table
            + (f"<details><summary>examples</summary>{examples}</details>" if examples else ""))


def _benchmarks(suite: dict) -> str:
    conditions = suite["conditions"]
    names = _ordered(conditions)
    tasks = list(suite.get("tasks", []))
    tasks += [t for n in names for t in conditions[n] if t not in tasks]
    rows = []
    for task in tasks:
        metrics = list(dict.fromkeys(m for n in names for m in conditions[n].get(task, {})))
        rows += [[_esc(task), _esc(m), *(_num(conditions[n].get(task, {}).get(m)) for n in names)] for m in metrics]
    return _table(["task", "metric", *names], rows, numeric_from=2)


def _samples(samples: list) -> str:
    names = [n for n in CONDITION_NAMES if any(n in s for s in samples)]
    rows = "".join(f"<tr><th colspan={len(names)}>{_esc(s.get('question', ''))}</th></tr><tr>"
                   + "".join(f"<td>{_esc(s.get(n, ''))}</td>" for n in names) + "</tr>" for s in samples)
    head = "".join(f"<th>{_esc(n)}</th>" for n in names)
    return f"<table class=answers><tr>{head}</tr>{rows}</table>"


def _raw_json(value, why: str) -> str:
    return f"<p class=note>{_esc(why)}</p><pre>{_esc(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


SUITES = {"kl": _kl, "judges": _judges, "knowledge": _knowledge, "drift": _drift, "cot": _cot, "accuracy": _cot,
          "benchmarks": _benchmarks, "samples": _samples}


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower())


def _suite(key: str, name: str, value) -> str:
    anchor = _anchor(f"{key}-{name}")
    render = SUITES.get(name)
    if render is None:
        body = _raw_json(value, "A suite this report does not lay out yet; its raw results:")
    else:
        try:
            body = render(value)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            body = _raw_json(value, f"Could not lay out these results ({type(exc).__name__}: {exc}); raw:")
    return f"<h4 id={anchor}>{_esc(SUITE_TITLES.get(name, name))}</h4>{body}"


def _key_order(key: str) -> tuple:
    """final first, then checkpoints by step; full strength before weaker ones; unknown keys last."""
    match = re.fullmatch(r"(final|step-(\d+))@strength=([0-9.]+)", key)
    if not match:
        return (2, 0, 0.0)
    return (0 if match[1] == "final" else 1, int(match[2] or 0), -float(match[3]))


def _evaluations(evaluation: dict | None, run_dir: Path) -> str:
    if not evaluation:
        return (f"<h2 id=evaluations>Evaluations</h2><p>No evaluations yet. Add some with "
                f"<code>promptbake eval {_esc(run_dir)} --suite kl,samples,judges --probes FILE</code> "
                f"(and <code>--strength A</code> or <code>--checkpoint step-N</code> for half-baked models), then "
                f"run <code>promptbake report {_esc(run_dir)}</code> again.</p>")
    parts = ["<h2 id=evaluations>Evaluations</h2>" + LEGEND]
    for key in sorted(evaluation, key=_key_order):
        suites = evaluation[key]
        parts.append(f"<h3 id={_anchor(key)}>{_esc(key)}</h3>")
        if not isinstance(suites, dict):
            parts.append(_raw_json(suites, "Unexpected entry; raw:"))
            continue
        seconds = suites.get("seconds") if isinstance(suites.get("seconds"), dict) else {}
        if seconds:
            parts.append("<p class=note>wall time: " + ", ".join(
                f"{_esc(name)} {_num(value)} s" for name, value in seconds.items()) + "</p>")
        ordered = [s for s in SUITES if s in suites] + [s for s in suites if s not in SUITES and s != "seconds"]
        parts += [_suite(key, name, suites[name]) for name in ordered]
    return "".join(parts)


def _read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl records; a line cut short by a crash mid-append is skipped, not fatal."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _read_evaluation(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); rerun `promptbake eval` or remove it") from None


def _strength(run_dir: Path) -> str:
    """The `promptbake strength` sweep, when DIR/strength.json exists: its plot and one row per point."""
    from ..strength import STRENGTH_JSON

    sweep = _read_evaluation(run_dir / STRENGTH_JSON)
    if not sweep or not sweep.get("points"):
        return ""
    judged = bool(sweep.get("probe_file"))
    header = ["adapter", "α", "KL baked", "closure", "KL baked+prompt"] + (["judged baked", "baked+prompt"]
                                                                            if judged else [])
    rows = []
    for point in sweep["points"]:
        row = [_esc(point["adapter"]), _num(point["strength"]), _num(point["kl"].get("baked")),
               _num(point["closure"]), _num(point["kl"].get("baked+prompt"))]
        if judged:
            row += [_rate(point["judges"].get(name, {}).get("all")) for name in ("baked", "baked+prompt")]
        rows.append(row)
    note = (f"<p class=note>held-out KL over {_esc(sweep['heldout_tokens'])} tokens; base KL "
            f"{_num(sweep['reference']['kl_base'])}" + (f"; judges from {_esc(sweep['probe_file'])}" if judged else "")
            + "</p>")
    return ("<h2 id=strength>Prompt strength</h2>" + note + _img(plots.strength_curves(sweep), "strength sweep")
            + _table(header, rows))


def render_report(run_dir: str | Path) -> str:
    """The report of the run folder `run_dir` as one HTML string (see write_report)."""
    run_dir = Path(run_dir)
    bake = runfolder.read_bake_json(run_dir)
    evaluation = _read_evaluation(run_dir / EVAL_JSON)
    links = [("prompt", "prompt"), ("training", "training"), ("evaluations", "evaluations")]
    links += [(_anchor(key), key) for key in sorted(evaluation or {}, key=_key_order)]
    nav = "<nav>" + "".join(f'<a href="#{a}">{_esc(text)}</a>' for a, text in links) + "</nav>"
    body = (_header(bake, run_dir) + nav + _training(_read_metrics(run_dir / runfolder.METRICS))
            + _strength(run_dir) + _evaluations(evaluation, run_dir))
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>promptbake report · "
            f"{_esc(run_dir.name)}</title><style>{CSS}</style></head><body>{body}</body></html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Write DIR/report.html atomically and return its path.

    Args:
        run_dir: a promptbake run folder (bake.json required; metrics.jsonl and eval.json used when present).
    Returns:
        The path of the written report.
    """
    path = Path(run_dir) / REPORT_HTML
    runfolder.atomic_write_text(path, render_report(run_dir))
    return path
