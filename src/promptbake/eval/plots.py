"""Plots for report.html, each returned as a `data:image/png;base64,...` URI so the report is one offline file.

Figures are built with `matplotlib.figure.Figure` and saved through the Agg canvas directly: no pyplot, no global
backend switch, nothing left open between calls.
"""
from __future__ import annotations

import base64
import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# One colour per condition, the same in every plot (grey: untouched base, blue: the teacher, orange/green: baked).
COLOURS = {"base": "#7f7f7f", "base+prompt": "#1f77b4", "baked": "#ff7f0e", "baked+prompt": "#2ca02c"}
DPI = 110


def _figure(width: float, height: float, panels: int = 1, legend: bool = False):
    """A figure of `panels` axes side by side; margins fixed in inches (cheaper than a layout engine), with room on
    the right for a legend outside the axes when `legend`."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(left=0.8 / width, right=1 - (1.8 if legend else 0.2) / width, bottom=0.55 / height,
                        top=1 - 0.35 / height, wspace=0.3)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    for ax in (axes if panels > 1 else [axes]):
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _data_uri(fig: Figure) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(fig)).decode("ascii")


def _legend(ax) -> None:
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _colour(name: str, index: int) -> str:
    return COLOURS.get(name, f"C{index % 10}")


def training_curve(metrics: list[dict]) -> str | None:
    """Two panels: training loss per step, held-out KL at its evaluation steps (step 0 = before training)."""
    steps = [(m["step"], m["loss"]) for m in metrics if m.get("loss") is not None]
    kls = [(m["step"], m["heldout_kl"]) for m in metrics if m.get("heldout_kl") is not None]
    if not steps and not kls:
        return None
    fig, (loss_ax, kl_ax) = _figure(10, 3.4, panels=2)
    if steps:
        loss_ax.plot(*zip(*steps), color="#444", lw=1.3)
    loss_ax.set(title="training loss (KL per token)", xlabel="step", ylabel="loss")
    if kls:
        kl_ax.plot(*zip(*kls), color=COLOURS["baked"], marker="o", lw=1.5)
    kl_ax.set(title="held-out KL(teacher ‖ student)", xlabel="step", ylabel="KL")
    for ax in (loss_ax, kl_ax):
        ax.set_ylim(bottom=0)
    return _data_uri(fig)


def per_position_kl(conditions: dict, first_tokens: int | None) -> str | None:
    """KL at each answer position for every condition that has a per-position curve."""
    curves = {name: record["per_position"] for name, record in conditions.items() if record.get("per_position")}
    if not curves:
        return None
    fig, ax = _figure(10, 3.2, legend=True)
    for i, (name, values) in enumerate(curves.items()):
        ys = [math.nan if v is None else v for v in values]
        ax.plot(range(1, len(ys) + 1), ys, label=name, color=_colour(name, i), lw=1.5)
    if first_tokens:
        ax.axvline(first_tokens + 0.5, color="#999", ls="--", lw=1)
        ax.text(first_tokens + 0.5, 0.97, f" ← first {first_tokens} tokens", transform=ax.get_xaxis_transform(),
                ha="left", va="top", fontsize=8, color="#666")
    ax.set(title="held-out KL(teacher ‖ condition) per answer position", xlabel="answer token", ylabel="KL")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(ax)
    return _data_uri(fig)


def _error_bars(records: list[dict]) -> tuple[list[float], list[list[float]]]:
    rates = [r.get("rate") or 0.0 for r in records]
    lows = [max(0.0, rate - r["ci95"][0]) for rate, r in zip(rates, records)]
    highs = [max(0.0, r["ci95"][1] - rate) for rate, r in zip(rates, records)]
    return rates, [lows, highs]


def rate_bars(conditions: dict, title: str) -> str | None:
    """One bar per condition: the pass rate with its 95 % interval as an error bar."""
    if not conditions:
        return None
    names = list(conditions)
    rates, errors = _error_bars([conditions[name] for name in names])
    fig, ax = _figure(6, 3.0)
    ax.bar(names, [100 * r for r in rates], color=[_colour(n, i) for i, n in enumerate(names)],
           yerr=[[100 * e for e in side] for side in errors], capsize=6, ecolor="#333")
    ax.set(title=title, ylabel="pass rate (%)", ylim=(0, 105))
    return _data_uri(fig)


def drift_lines(conditions: dict) -> str | None:
    """Pass rate per dialogue turn for each condition, with its 95 % interval as a band."""
    if not conditions:
        return None
    fig, ax = _figure(8, 3.2, legend=True)
    for i, (name, record) in enumerate(conditions.items()):
        turns = record.get("per_turn") or []
        xs = [t["turn"] for t in turns]
        ys = [100 * (t.get("rate") or 0.0) for t in turns]
        colour = _colour(name, i)
        ax.plot(xs, ys, marker="o", label=name, color=colour, lw=1.5, clip_on=False)
        ax.fill_between(xs, [100 * t["ci95"][0] for t in turns], [100 * t["ci95"][1] for t in turns],
                        color=colour, alpha=0.12, lw=0)
    ax.set(title="pass rate over dialogue turns", xlabel="turn", ylabel="pass rate (%)", ylim=(0, 105))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(ax)
    return _data_uri(fig)


def _rate_line(ax, xs, records, name: str, index: int) -> None:
    rates = [100 * (r.get("rate") or 0.0) for r in records]
    colour = _colour(name, index)
    ax.plot(xs, rates, marker="o", label=name, color=colour, lw=1.5, clip_on=False)
    ax.fill_between(xs, [100 * r["ci95"][0] for r in records], [100 * r["ci95"][1] for r in records],
                    color=colour, alpha=0.12, lw=0)


def _strength_figure(sweep: dict) -> Figure:
    """Three panels: KL vs α, judge rate vs α (base and teacher as dashed references), closure and rate vs step."""
    from ..strength import series

    judged = bool(sweep.get("probe_file"))
    fig, (kl_ax, judge_ax, step_ax) = _figure(15, 3.6, panels=3)
    by_strength, by_step = series(sweep, "strength"), series(sweep, "step")
    alphas = [p["strength"] for p in by_strength]
    for i, name in enumerate(n for n in ("baked", "baked+prompt") if n in by_strength[0]["kl"]):
        kl_ax.plot(alphas, [p["kl"][name] for p in by_strength], marker="o", label=name, color=_colour(name, i))
    kl_ax.axhline(sweep["reference"]["kl_base"], color=COLOURS["base"], ls="--", lw=1, label="base")
    kl_ax.set(title="held-out KL(teacher ‖ model) vs strength α", xlabel="α", ylabel="KL per token")
    kl_ax.set_ylim(bottom=0)
    kl_ax.legend(frameon=False, fontsize=8)
    if judged:
        for i, name in enumerate(n for n in ("baked", "baked+prompt") if n in by_strength[0]["judges"]):
            _rate_line(judge_ax, alphas, [p["judges"][name]["all"] for p in by_strength], name, i)
        for name, ref in sweep["reference"]["judges"].items():
            judge_ax.axhline(100 * ref["all"]["rate"], color=_colour(name, 0), ls="--", lw=1, label=name)
        judge_ax.legend(frameon=False, fontsize=8)
    judge_ax.set(title="judge pass rate vs strength α" if judged else "no probes: judges not measured",
                 xlabel="α", ylabel="pass rate (%)", ylim=(0, 105))
    if by_step:
        steps = [p["step"] for p in by_step]
        step_ax.plot(steps, [100 * p["closure"] for p in by_step], marker="s", color="#444", label="closure")
        if judged:
            _rate_line(step_ax, steps, [p["judges"]["baked"]["all"] for p in by_step], "baked", 0)
        step_ax.legend(frameon=False, fontsize=8)
        step_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    step_ax.set(title="half-baked: checkpoints (α = 1)", xlabel="training step", ylabel="closure / pass rate (%)",
                ylim=(0, 105))
    return fig


def strength_curves(sweep: dict) -> str:
    """The strength sweep's plot as a data URI (for report.html)."""
    return _data_uri(_strength_figure(sweep))


def strength_png(sweep: dict) -> bytes:
    """The strength sweep's plot as PNG bytes (DIR/strength.png)."""
    return _png(_strength_figure(sweep))
