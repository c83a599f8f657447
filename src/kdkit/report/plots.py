"""What the report draws. The facts it draws them from (:class:`RunInfo`, roles and their colours,
:func:`pareto_front`) are :mod:`kdkit.report.runs`.

* the figures (matplotlib, Agg canvas, no pyplot global state): :func:`plot_learning_curves` per run,
  :func:`plot_accuracy` (teacher vs students), :func:`plot_pareto` (accuracy against latency and against size).

Every figure function returns PNG bytes, so the page can embed them and the caller can also write them to files.
Colours are fixed per role (Okabe–Ito palette, readable by colour-blind readers): the same role has the same colour on
every figure and in the tables.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)  # no display needed; the figures below draw on Agg canvases directly anyway

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from kdkit.report.runs import (  # noqa: E402
    _LINESTYLES,
    _TERM_COLORS,
    DPI,
    ROLE_COLORS,
    ROLE_LABELS,
    ROLE_MARKERS,
    ROLES,
    STYLE,
    RunInfo,
    _finite,
    pareto_front,
    run_color,
    term_keys,
)

__all__ = ["axis_floor", "plot_learning_curves", "plot_accuracy", "plot_pareto"]

# ----------------------------------------------------------------------------------------------------------------------
# Figures


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _new_figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(STYLE):
        return Figure(figsize=(width, height), layout="constrained")


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, h in enumerate(history):
        v = h.get(key)
        if _finite(v):
            xs.append(float(h.get("epoch", i + 1)))
            ys.append(float(v))
    return xs, ys


def plot_learning_curves(run: RunInfo) -> bytes:
    """One run's learning curves, three panels: training loss (total and each unweighted term), top-1 per epoch
    (validation, extra eval models, training), and the learning rate."""
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(12.0, 3.5)
        ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
        color = run_color(run)

        xs, ys = _series(run.history, "train_loss")
        ax_loss.plot(xs, ys, color="#222222", lw=2.4, label="total (weighted)")
        values = list(ys)
        weights = {str(t.get("key") or t.get("name")): t.get("weight") for t in run.config.get("terms") or []
                   if isinstance(t, dict)}
        for k, term in enumerate(term_keys(run.history, run.config)):
            txs, tys = _series(run.history, f"train_{term}")
            w = weights.get(term)
            lab = f"{term} (×{w:g})" if _finite(w) else term
            if len(tys) == len(ys) and all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(tys, ys, strict=True)):
                lab += " = total"  # one term with weight 1: its line hides the total's
            ax_loss.plot(txs, tys, color=_TERM_COLORS[k % len(_TERM_COLORS)], lw=1.6, label=lab)
            values += tys
        pos = [v for v in values if v > 0]
        # Terms of very different scales: a log axis keeps each one readable (only if all are positive).
        if pos and len(pos) == len(values) and max(pos) / min(pos) > 30:
            ax_loss.set_yscale("log")
            ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_loss.set_title("training loss")
        ax_loss.set_xlabel("epoch")
        ax_loss.legend(loc="upper right")

        xs, ys = _series(run.history, "val_top1")
        ax_acc.plot(xs, ys, color=color, lw=2.4, marker="o", ms=3.5, label="validation")
        extra = sorted({k for h in run.history for k in h
                        if k.startswith("val_") and k.endswith("_top1") and k != "val_top1"})
        for k, key in enumerate(extra):
            exs, eys = _series(run.history, key)
            ax_acc.plot(exs, eys, color=_TERM_COLORS[k % len(_TERM_COLORS)], lw=1.6, label=f"val {key[4:-5]}")
        txs, tys = _series(run.history, "train_top1")
        if tys:
            ax_acc.plot(txs, tys, color="#999999", lw=1.3, ls="--", label="train")
        best, best_epoch = run.best
        if _finite(best) and best_epoch is not None:
            ax_acc.plot([best_epoch], [best], marker="*", ms=14, color=color, mec="black", mew=0.8, ls="none",
                        label=f"best {best:.2f}% (ep {best_epoch})")
        ax_acc.set_title("top-1 accuracy (%)")
        ax_acc.set_xlabel("epoch")
        ax_acc.legend(loc="lower right")

        xs, ys = _series(run.history, "lr")
        ax_lr.plot(xs, ys, color="#555555", lw=1.8)
        ax_lr.set_title("learning rate (end of epoch)")
        ax_lr.set_xlabel("epoch")
        ax_lr.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))  # no "1e-3" offset over the title
        for ax in (ax_loss, ax_acc, ax_lr):
            ax.xaxis.get_major_locator().set_params(integer=True)
        fig.suptitle(f"{run.label} — {ROLE_LABELS.get(run.role, run.role)}, {run.model}", fontsize=13,
                     fontweight="bold", color=color, x=0.01, ha="left")
        return _png(fig)


def _nice_step(x: float) -> float:
    """The smallest 1, 2 or 5 × 10^k that is ≥ ``x`` (> 0)."""
    k = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * k >= x:
            return float(m * k)
    return float(10 * k)


def axis_floor(lo: float, hi: float) -> float:
    """Where a bar chart of accuracies in [lo, hi] should start so that their differences are visible: a margin
    below ``lo`` (at least 2 points, or 60% of the spread), rounded down to a round tick (≥ 0)."""
    raw = lo - max(2.0, 0.6 * (hi - lo))
    if raw <= 0:
        return 0.0
    step = _nice_step(max(hi - raw, 1.0) / 5)
    return max(0.0, math.floor(raw / step) * step)


def plot_accuracy(runs: Sequence[RunInfo], accuracies: Sequence[float], notes: Sequence[str] = ()) -> bytes:
    """Teacher vs students: best top-1 per run as horizontal bars (left, ordered teacher → scratch → KD, annotated)
    and validation top-1 per epoch of every run on one axis (right).

    Args:
        runs: the runs (their ``role`` and ``label`` set).
        accuracies: (N,) the top-1 to show for each run (the case study's when given).
        notes: (N,) a short annotation after each bar's value, e.g. "+1.9 vs scratch".
    """
    notes = list(notes) + [""] * (len(runs) - len(notes))
    order = sorted(range(len(runs)), key=lambda i: (ROLES.index(runs[i].role) if runs[i].role in ROLES else 9, i))
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(12.0, max(3.2, 0.62 * len(runs) + 1.6))
        ax_bar, ax_curve = fig.subplots(1, 2, width_ratios=[1.05, 1.0])
        accs = [accuracies[i] for i in order]
        finite = [a for a in accs if _finite(a)]
        lo = min(finite) if finite else 0.0
        hi = max(finite) if finite else 100.0
        floor = axis_floor(lo, hi)
        ypos = list(range(len(order)))[::-1]  # first in order at the top
        for y, i, a in zip(ypos, order, accs, strict=True):
            c = run_color(runs[i])
            if _finite(a):
                ax_bar.barh(y, a - floor, left=floor, color=c, height=0.62)
                text = f"{a:.2f}%" + (f"  {notes[i]}" if notes[i] else "")
                ax_bar.text(a, y, "  " + text, va="center", ha="left", fontsize=10.5, fontweight="bold", color=c)
        ax_bar.set_yticks(ypos, [f"{runs[i].label}\n{ROLE_LABELS.get(runs[i].role, runs[i].role)}" for i in order])
        # Room on the right for the printed values; ticks stop at 100 so the extra room does not read as >100 %.
        ax_bar.set_xlim(floor, hi + 0.6 * (hi - floor) + 1.0 if finite else 100.0)
        ax_bar.set_xticks([t for t in ax_bar.get_xticks() if floor <= t <= 100.0])
        ax_bar.set_xlabel(f"best validation top-1 (%) — axis starts at {floor:g}")
        ax_bar.set_title("teacher vs students")
        ax_bar.grid(axis="y", visible=False)

        dashes: dict[str, int] = {}
        for i in order:
            r = runs[i]
            k = dashes.get(r.role, 0)
            dashes[r.role] = k + 1
            xs, ys = _series(r.history, "val_top1")
            ax_curve.plot(xs, ys, color=run_color(r), lw=2.0, ls=_LINESTYLES[k % 4],
                          marker=ROLE_MARKERS.get(r.role, "o"), ms=3.5, label=r.label)
        ax_curve.set_title("validation top-1 per epoch")
        ax_curve.set_xlabel("epoch")
        ax_curve.set_ylabel("top-1 (%)")
        ax_curve.xaxis.get_major_locator().set_params(integer=True)
        ax_curve.legend(loc="lower right")
        return _png(fig)


# Label positions tried around a point, in order of preference: (dx, dy) in points, horizontal and vertical alignment.
_LABEL_SPOTS = [(0, 10, "center", "bottom"), (0, -10, "center", "top"), (11, 4, "left", "bottom"),
                (11, -4, "left", "top"), (-11, 4, "right", "bottom"), (-11, -4, "right", "top"),
                (9, 17, "left", "bottom"), (9, -17, "left", "top"), (-9, 17, "right", "bottom"),
                (-9, -17, "right", "top")]


def _place_labels(fig: Figure, ax: Any, items: Sequence[tuple[float, float, str, dict[str, Any]]],
                  lines: Sequence[tuple[Sequence[float], Sequence[float]]] = ()) -> None:
    """Annotate points so labels overlap neither each other, nor the points, nor ``lines``, and stay in the axes.

    Runs of similar cost and accuracy sit on top of each other; a fixed offset would print their names on top of each
    other too. Each label tries the spots of ``_LABEL_SPOTS`` in turn and takes the first free one, measured with the
    real text extent (the layout is final: the figure is drawn first, and labels are kept out of the layout).
    """
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    pad = 9 * fig.dpi / 72  # about a marker's radius
    taken = []
    for x, y, _, _ in items:
        px, py = ax.transData.transform((x, y))
        taken.append(Bbox.from_extents(px - pad, py - pad, px + pad, py + pad))
    for xs, ys in lines:
        pts = ax.transData.transform(list(zip(xs, ys, strict=True)))
        for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=False):
            taken.append(Bbox.from_extents(min(x0, x1) - 1, min(y0, y1) - 1, max(x0, x1) + 1, max(y0, y1) + 1))
    for x, y, text, style in sorted(items, key=lambda t: -t[1]):
        chosen = None
        for dx, dy, ha, va in _LABEL_SPOTS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, **style)
            ann.set_in_layout(False)
            box = ann.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(t) for t in taken):
                chosen = (ann, box)
                break
            ann.remove()
        if chosen is None:  # crowded: fall back to the first spot, overlapping rather than missing
            dx, dy, ha, va = _LABEL_SPOTS[0]
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, **style)
            ann.set_in_layout(False)
            chosen = (ann, ann.get_window_extent(renderer))
        taken.append(chosen[1])


def plot_pareto(runs: Sequence[RunInfo], accuracies: Sequence[float]) -> bytes:
    """Accuracy against CPU latency (batch 1, per image) and against size on disk, both on log axes; the Pareto-optimal
    runs of each panel (nothing both cheaper and at least as accurate) are ringed and joined by the front's staircase.
    Runs without a cost are left out of that panel (and say so)."""
    panels = [("latency_b1_ms", "CPU latency, batch 1 (ms / image, log)", "accuracy vs latency"),
              ("size_mb", "size on disk (MB, log)", "accuracy vs size")]
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(12.0, 4.4)
        axes = fig.subplots(1, 2)
        labels = []
        for ax, (key, xlabel, title) in zip(axes, panels, strict=True):
            xs = [r.cost.get(key, math.nan) for r in runs]
            flags = pareto_front(xs, accuracies)
            shown = [i for i in range(len(runs)) if _finite(xs[i]) and _finite(accuracies[i])]
            items = []
            for i in shown:
                r = runs[i]
                c = run_color(r)
                ax.scatter([xs[i]], [accuracies[i]], s=150 if flags[i] else 80, color=c,
                           marker=ROLE_MARKERS.get(r.role, "o"), edgecolors="black" if flags[i] else "white",
                           linewidths=1.8 if flags[i] else 0.8, zorder=3)
                items.append((xs[i], accuracies[i], r.label,
                              {"fontsize": 10, "color": c, "fontweight": "bold" if flags[i] else "normal"}))
            front = sorted((xs[i], accuracies[i]) for i in shown if flags[i])
            steps = []
            if len(front) > 1:
                # the staircase drawn by step(where="post"): right along each point's accuracy, then up to the next
                sx, sy = [front[0][0]], [front[0][1]]
                for x2, y2 in front[1:]:
                    sx += [x2, x2]
                    sy += [sy[-1], y2]
                ax.plot(sx, sy, color="black", lw=1.2, ls="--", alpha=0.7, zorder=2)
                steps.append((sx, sy))
            if shown:
                lo = min(xs[i] for i in shown)
                hi = max(xs[i] for i in shown)
                ax.set_xscale("log")
                # Plain numbers at 1-2-5 steps (1-10-100 over a wide range): the default labels minor ticks
                # "3×10^-1" and they collide.
                subs = (1.0, 2.0, 5.0) if hi / lo < 300 else (1.0,)
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
                span = max(hi / lo, 1.0)
                ax.set_xlim(lo / span ** 0.12 / 1.4, hi * span ** 0.25 * 2.0)  # room on both sides for the labels
                alo = min(accuracies[i] for i in shown)
                ahi = max(accuracies[i] for i in shown)
                pad = max(0.5, 0.15 * (ahi - alo))
                ax.set_ylim(alo - pad, ahi + pad)
            missing = len(runs) - len(shown)
            if missing:
                ax.text(0.02, 0.02, f"{missing} run(s) without a measurement not shown", transform=ax.transAxes,
                        fontsize=9, color="#888888")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("top-1 (%)")
            ax.set_title(title)
            labels.append((ax, items, steps))
        handles = [Line2D([], [], marker=ROLE_MARKERS[r], color=ROLE_COLORS[r], ls="none", ms=9, label=ROLE_LABELS[r])
                   for r in ROLES if any(run.role == r for run in runs)]
        handles.append(Line2D([], [], marker="o", color="black", mfc="white", mec="black", mew=1.8, ls="--", ms=10,
                              label="Pareto-optimal (up-left is better)"))
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles))
        FigureCanvasAgg(fig)
        for ax, items, steps in labels:
            _place_labels(fig, ax, items, steps)
        return _png(fig)
