"""`promptbake strength`: prompt strength as a dial. Sweep the adapter scale α and the training checkpoints (the
paper's half-baked models), measuring held-out KL to the teacher and judge rates at each point.

Every point is measured on the same held-out trajectories (teacher logits computed once) and with the same sampling
seeds, so differences between points are differences between models, not between random draws.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from . import runfolder
from .baked import load_baked
from .config import check_strength
from .errors import UserError
from .eval.conditions import CONDITIONS
from .eval.kl import HeldoutKL, closure
from .eval.probes import ProbeFile

STRENGTH_JSON = "strength.json"
STRENGTH_PNG = "strength.png"
DEFAULT_STRENGTHS = "0,0.25,0.5,0.75,1,1.5,2"
BASE, TEACHER, BAKED, REPROMPTED = CONDITIONS


def parse_strengths(text: str) -> list[float]:
    """'0,0.5,1' → [0.0, 0.5, 1.0]; each must be a finite number ≥ 0 (check_strength's message otherwise)."""
    values = [check_strength(part.strip()) for part in str(text).split(",") if part.strip()]
    if not values:
        raise UserError(f"--strengths {text!r} lists no strengths; give comma-separated numbers like 0,0.5,1")
    return list(dict.fromkeys(values))


def _judge(baked, probes: ProbeFile | None, conditions, samples: int, temperature: float, max_new_tokens: int,
           seed: int) -> dict:
    if probes is None:
        return {}
    from .eval.judges import run_probes

    overall, rows = run_probes(baked, probes.probes, samples, temperature, max_new_tokens, seed, conditions)
    return {name: {"all": overall[name], **{row["name"]: _drop_samples(row["conditions"][name]) for row in rows}}
            for name in overall}


def _drop_samples(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "samples"}


def _accuracy(baked, scoring: tuple | None, conditions) -> dict:
    """{condition: rate record} on the task family's problems, greedy; {} without --task."""
    if scoring is None:
        return {}
    from .eval.accuracy import score_conditions

    task, items = scoring
    records, _ = score_conditions(baked, task, items, conditions)
    return {name: {k: v for k, v in record.items() if k != "correct"} for name, record in records.items()}


def _point(baked, measure: HeldoutKL, kl_base: float, probes, reprompt: bool, judging: tuple, scoring, step) -> dict:
    start = time.perf_counter()
    conditions = (BAKED, REPROMPTED) if reprompt else (BAKED,)
    kl = {BAKED.name: measure.measure(baked.model, True, "student")}
    if reprompt:
        kl[REPROMPTED.name] = measure.measure(baked.model, True, "teacher")
    return {"adapter": baked.checkpoint or "final", "step": step, "strength": baked.strength, "kl": kl,
            "closure": closure(kl_base, kl[BAKED.name]), "judges": _judge(baked, probes, conditions, *judging),
            "accuracy": _accuracy(baked, scoring, conditions), "seconds": round(time.perf_counter() - start, 2)}


def strength_sweep(run_dir: str | Path, strengths: list[float], probes: ProbeFile | None = None,
                   checkpoints: bool = True, reprompt: bool = True, samples: int | None = None,
                   temperature: float | None = None, seed: int = 0, task: str | None = None, problems: int = 200,
                   on_point=None) -> dict:
    """Measure the bake at each adapter scale in `strengths` (final adapter) and at every saved checkpoint (scale 1).

    Args:
        probes: judge probes; without them only KL is measured.
        reprompt: also measure baked + prompt (re-prompting) at every point.
        task, problems: also score `problems` eval-side problems of this task family (the accuracy suite's, greedy)
            at every point, and base / base + prompt once.
        on_point: called with each point as it is measured (the CLI prints a row).
    Returns:
        {"strengths", "reference": {"kl_base", "judges": {base, base+prompt}}, "points": [...], ...}; also written
        to DIR/strength.json after every point (a long sweep keeps what it measured).
    """
    baked = load_baked(run_dir)
    heldout = [t for t in _trajectories(baked) if t.split == "heldout"]
    if not heldout:
        raise UserError(f"{run_dir} has no held-out trajectories to measure KL on")
    measure = HeldoutKL(baked.model, heldout, baked.tokenizer.pad_token_id, baked.config.train.micro_batch_tokens)
    kl_base = measure.measure(baked.model, adapter=False)
    judging = _settings(baked, probes, samples, temperature, seed)
    scoring = None
    if task:
        from .eval.accuracy import suite_items

        scoring = (task, suite_items(task, problems, seed, baked.system_prompt))
    sweep = {"run": str(Path(run_dir).resolve()), "strengths": strengths, "reprompt": reprompt,
             "heldout_tokens": measure.tokens, "probe_file": probes.source if probes else None,
             "samples_per_probe": judging[0], "temperature": judging[1], "seed": seed,
             "task": task, "problems": len(scoring[1]) if scoring else 0,
             "reference": {"kl_base": kl_base, "judges": _judge(baked, probes, (BASE, TEACHER), *judging),
                           "accuracy": _accuracy(baked, scoring, (BASE, TEACHER))},
             "points": []}
    steps = baked.record.get("metrics", {}).get("steps")
    # A checkpoint at the last step is the final adapter again: measured once, as "final" at α = 1.
    half_baked = [c for c in (baked.checkpoints() if checkpoints else []) if int(c.split("-")[1]) != steps]
    plan = [(None, a) for a in strengths] + [(c, 1.0) for c in half_baked]
    for checkpoint, strength in plan:
        baked.use_checkpoint(checkpoint).with_strength(strength)
        step = int(checkpoint.split("-")[1]) if checkpoint else steps
        sweep["points"].append(_point(baked, measure, kl_base, probes, reprompt, judging, scoring, step))
        runfolder.atomic_write_json(Path(run_dir) / STRENGTH_JSON, sweep)
        if on_point:
            on_point(sweep["points"][-1], sweep)
    sweep["monotone"] = monotonicity(sweep)
    runfolder.atomic_write_json(Path(run_dir) / STRENGTH_JSON, sweep)
    return sweep


def _trajectories(baked):
    from .data import read_trajectories

    return read_trajectories(baked.run_dir / runfolder.TRAJECTORIES)


def _settings(baked, probes, samples, temperature, seed) -> tuple:
    """(samples, temperature, max_new_tokens, seed) of the judges, resolved as for `promptbake eval`."""
    if probes is None:
        return (0, None, 0, seed)
    from .eval.judges import DEFAULT_MAX_NEW_TOKENS, DEFAULT_SAMPLES, settings

    return settings(baked, probes, samples, temperature, DEFAULT_SAMPLES, DEFAULT_MAX_NEW_TOKENS) + (seed,)


def series(sweep: dict, adapter_kind: str) -> list[dict]:
    """The points of one curve: "strength" (final adapter, by α) or "step" (checkpoints, then final at α = 1)."""
    if adapter_kind == "strength":
        return sorted((p for p in sweep["points"] if p["adapter"] == "final"), key=lambda p: p["strength"])
    ckpts = [p for p in sweep["points"] if p["adapter"] != "final"]
    final = [p for p in sweep["points"] if p["adapter"] == "final" and p["strength"] == 1.0]
    return sorted(ckpts, key=lambda p: p["step"]) + final


def _breaks(values: list[tuple], rising: bool = True) -> list[str]:
    """Where a sequence of (label, value) fails to rise (or to fall): ['0.75→1', ...]."""
    out = []
    for (a, x), (b, y) in zip(values, values[1:]):
        if x is None or y is None or math.isnan(x) or math.isnan(y):
            continue
        if (y < x) if rising else (y > x):
            out.append(f"{a}→{b}")
    return out


def monotonicity(sweep: dict) -> dict:
    """Where closure and the baked judge rate fail to rise with α and with training step: {kind: {metric: [...]}}.

    Closure is expected to fall past α = 1 (the adapter overshoots the teacher); a judge rate may keep rising there.
    """
    result = {}
    for kind in ("strength", "step"):
        points = series(sweep, kind)
        label = (lambda p: f"{p['strength']:g}") if kind == "strength" else (lambda p: str(p["step"]))
        result[kind] = {"closure": _breaks([(label(p), p["closure"]) for p in points])}
        if sweep.get("probe_file"):
            result[kind]["judges"] = _breaks([(label(p), p["judges"][BAKED.name]["all"]["rate"]) for p in points])
        if sweep.get("task"):
            result[kind]["accuracy"] = _breaks([(label(p), p["accuracy"][BAKED.name]["rate"]) for p in points])
    return result


def _rate(record: dict | None) -> str:
    return f"{record['passed']:>3}/{record['n']:<3} {record['rate']:>4.0%}" if record else ""


def sweep_row(point: dict, reprompt: bool, judged: bool) -> str:
    """One table row: adapter, step, α, KL and closure, then the judge rates and the task accuracy (baked, baked +
    prompt) where measured."""
    cells = [f"{point['adapter']:<9}{point['step'] if point['step'] is not None else '':>6}{point['strength']:>6g}",
             f"{point['kl'][BAKED.name]:>10.4f}{point['closure']:>9.3f}"]
    if reprompt:
        cells.append(f"{point['kl'][REPROMPTED.name]:>11.4f}")
    if judged:
        cells.append(f"   {_rate(point['judges'][BAKED.name]['all']):<14}")
        if reprompt:
            cells.append(f"{_rate(point['judges'][REPROMPTED.name]['all']):<14}")
    if point.get("accuracy"):
        cells.append(f"   {_rate(point['accuracy'][BAKED.name]):<14}")
        if reprompt:
            cells.append(f"{_rate(point['accuracy'][REPROMPTED.name]):<14}")
    return "  " + "".join(cells)


def sweep_header(sweep: dict) -> list[str]:
    reprompt, judged = sweep["reprompt"], bool(sweep["probe_file"])
    ref = sweep["reference"]
    lines = [f"strength sweep of {sweep['run']}: held-out KL(teacher ‖ model) over {sweep['heldout_tokens']} tokens; "
             f"base KL {ref['kl_base']:.4f}"]
    if judged:
        lines.append(f"judges ({sweep['probe_file']}, {sweep['samples_per_probe']} samples per probe at temperature "
                     f"{sweep['temperature']:g}): base {_rate(ref['judges'][BASE.name]['all']).strip()}, "
                     f"base+prompt {_rate(ref['judges'][TEACHER.name]['all']).strip()}")
    if sweep.get("task"):
        acc = ref["accuracy"]
        lines.append(f"accuracy ({sweep['problems']} {sweep['task']} problems, greedy): base "
                     f"{_rate(acc[BASE.name]).strip()}, base+prompt {_rate(acc[TEACHER.name]).strip()}")
    head = f"  {'adapter':<9}{'step':>6}{'α':>6}{'KL baked':>10}{'closure':>9}"
    head += f"{'KL +prompt':>11}" if reprompt else ""
    head += f"   {'judges baked':<14}" if judged else ""
    head += f"{'baked+prompt':<14}" if judged and reprompt else ""
    head += f"   {'acc baked':<14}" if sweep.get("task") else ""
    head += f"{'acc +prompt':<14}" if sweep.get("task") and reprompt else ""
    return lines + [head]


def sweep_footer(sweep: dict) -> list[str]:
    lines = []
    for kind, metrics in sweep.get("monotone", {}).items():
        for metric, breaks in metrics.items():
            where = f"falls at {', '.join(breaks)}" if breaks else "rises monotonically"
            lines.append(f"  {metric} vs {kind}: {where}")
    return lines
