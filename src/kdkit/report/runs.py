"""Run directories as facts, and what the report says of them.

* :class:`RunInfo` / :func:`load_run` — one run directory (``config.yaml``, ``metrics.jsonl``, ``summary.json``) read
  into plain Python values;
* :func:`infer_roles` — is a run the *teacher*, a student trained from *scratch*, a *regularised* one or a
  *distilled* student (from its recipe);
* the colour, marker and label of each role (Okabe–Ito palette, readable by colour-blind readers), the same on every
  figure and table;
* :func:`pareto_front` — which (cost, accuracy) points no other point beats on both axes.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdkit.errors import KdkitError
from kdkit.yamlio import read_yaml_file

# ----------------------------------------------------------------------------------------------------------------------
# Roles and style

ROLES = ("teacher", "scratch", "regularized", "distilled")
ROLE_LABELS = {"teacher": "teacher", "scratch": "student (scratch)", "regularized": "student (no teacher, regularised)",
               "distilled": "student (KD)"}
# Okabe–Ito: blue, grey, vermillion — the distilled student is the one the eye should find first; a student trained
# with a regulariser but no teacher (label smoothing, confidence penalty, teacher-free KD) is dark green: it is
# neither the scratch baseline nor distilled.
ROLE_COLORS = {"teacher": "#0072B2", "scratch": "#8C8C8C", "regularized": "#117733", "distilled": "#D55E00"}
ROLE_MARKERS = {"teacher": "s", "scratch": "o", "regularized": "^", "distilled": "D"}
_LINESTYLES = ("-", "--", ":", "-.")
# Loss-term colours: distinct from the role colours so a term never reads as a run.
_TERM_COLORS = ("#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#882255", "#44AA99", "#999933")

STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 11,
    "axes.titlesize": 12.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#E3E3E3",
    "grid.linewidth": 0.8,
    "legend.fontsize": 9.5,
    "legend.frameon": False,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
DPI = 110

# Keys of metrics.jsonl that start with "train_" but are not loss terms.
_NOT_TERMS = {"train_loss", "train_top1", "train_top5", "train_seconds"}


# ----------------------------------------------------------------------------------------------------------------------
# Runs


@dataclass
class RunInfo:
    """One run directory, read. ``history`` is metrics.jsonl (one dict per epoch); ``cost`` is filled by the report
    (``params``, ``size_mb``, ``latency_b1_ms``, ``latency_b64_ms`` — the latencies per image)."""

    run_dir: Path
    name: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    split_sizes: tuple[int, int] | None = None
    # split.json's teachers_trained_on_val: teachers that trained on some of this run's validation images
    teachers_saw_val: list[dict[str, Any]] = field(default_factory=list)
    role: str = "scratch"
    label: str = ""
    cost: dict[str, float] = field(default_factory=dict)
    cost_source: str = ""
    color: str = ""  # set by the report when one role has several recipe groups: a shade of the role's colour

    def __post_init__(self) -> None:
        self.label = self.label or self.name

    # --- facts from config.yaml ---------------------------------------------------------------------------------
    @property
    def student(self) -> dict[str, Any]:
        return self.config.get("student") or {}

    @property
    def model(self) -> str:
        return str(self.student.get("name", "?"))

    @property
    def teachers(self) -> list[dict[str, Any]]:
        return list(self.config.get("teachers") or [])

    @property
    def dataset(self) -> str:
        return str((self.config.get("data") or {}).get("name", "?"))

    @property
    def scheme(self) -> str:
        return str((self.config.get("scheme") or {}).get("name", "offline"))

    @property
    def epochs_planned(self) -> int | None:
        e = self.config.get("epochs")
        return int(e) if e is not None else None

    # --- facts from metrics.jsonl / summary.json -----------------------------------------------------------------
    @property
    def best(self) -> tuple[float, int | None]:
        """(best val top-1 %, its epoch): summary.json's when present, else the maximum over the history."""
        b = self.summary.get("best") or {}
        if isinstance(b.get("top1"), (int, float)) and math.isfinite(b["top1"]):
            return float(b["top1"]), b.get("epoch")
        vals = [(h["val_top1"], h.get("epoch")) for h in self.history if _finite(h.get("val_top1"))]
        if not vals:
            return math.nan, None
        return max(vals, key=lambda v: v[0])

    @property
    def last_top1(self) -> float:
        vals = [h["val_top1"] for h in self.history if _finite(h.get("val_top1"))]
        return float(vals[-1]) if vals else math.nan

    @property
    def images_per_s(self) -> float:
        """Median training throughput over epochs (the median ignores a slow first epoch)."""
        vals = [h["images_per_s"] for h in self.history if _finite(h.get("images_per_s"))]
        return float(statistics.median(vals)) if vals else math.nan


def run_color(run: RunInfo) -> str:
    return run.color or ROLE_COLORS.get(run.role, "#333333")


def shade(hex_color: str, k: int) -> str:
    """The k-th distinct shade of a colour (k = 0: the colour itself; then alternately darker and lighter)."""
    if k == 0:
        return hex_color
    amount = min(0.7, 0.3 * ((k + 1) // 2))
    target = 0 if k % 2 else 255  # odd: towards black, even: towards white
    rgb = [int(hex_color[i:i + 2], 16) for i in (1, 3, 5)]
    mixed = [round(c + (target - c) * amount) for c in rgb]
    return "#" + "".join(f"{c:02X}" for c in mixed)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def load_run(run_dir: str | Path) -> RunInfo:
    """Read a run directory. Raises :class:`KdkitError` naming the path when it is not a finished-epoch kdkit run."""
    d = Path(run_dir)
    if not d.is_dir():
        raise KdkitError(f"report: run directory '{d}' not found")
    metrics = d / "metrics.jsonl"
    if not metrics.is_file():
        raise KdkitError(f"report: '{metrics}' not found; is '{d}' a kdkit run directory with a finished epoch?")
    history: list[dict[str, Any]] = []
    for i, line in enumerate(metrics.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise KdkitError(f"report: '{metrics}' line {i} is not JSON ({err.msg})") from None
        if isinstance(rec, dict):
            history.append(rec)
    if not history:
        raise KdkitError(f"report: '{metrics}' is empty; the run has not finished an epoch yet")
    config: dict[str, Any] = {}
    if (d / "config.yaml").is_file():
        config = read_yaml_file(d / "config.yaml", f"report: '{d / 'config.yaml'}'") or {}
    summary: dict[str, Any] = {}
    if (d / "summary.json").is_file():
        try:
            summary = json.loads((d / "summary.json").read_text())
        except json.JSONDecodeError:
            summary = {}  # written atomically, so this is a foreign file; the history has the same facts
    split_sizes, saw_val = None, []
    if (d / "split.json").is_file():
        try:
            s = json.loads((d / "split.json").read_text())
            split_sizes = (len(s.get("train_idx", [])), len(s.get("val_idx", [])))
            saw_val = [t for t in s.get("teachers_trained_on_val", []) if isinstance(t, dict)]
        except (json.JSONDecodeError, TypeError, AttributeError):
            split_sizes, saw_val = None, []
    name = str(config.get("name") or d.name)
    return RunInfo(run_dir=d, name=name, config=config, history=history, summary=summary, split_sizes=split_sizes,
                   teachers_saw_val=saw_val)


def term_keys(history: Sequence[Mapping[str, Any]], config: Mapping[str, Any] | None = None) -> list[str]:
    """Names of the loss terms logged in ``history`` (keys ``train_<term>``), in the recipe's order when known.

    The recipe's ``terms`` give the order (and the log name, ``key`` or ``name``); any other ``train_*`` key a scheme
    logged (e.g. a second student's terms) follows in the order it first appears.
    """
    seen: list[str] = []
    for h in history:
        for k in h:
            if k.startswith("train_") and k not in _NOT_TERMS and k[6:] not in seen:
                seen.append(k[6:])
    order = [str(t.get("key") or t.get("name")) for t in (config or {}).get("terms") or [] if isinstance(t, dict)]
    return [t for t in order if t in seen] + [t for t in seen if t not in order]


# ----------------------------------------------------------------------------------------------------------------------
# Roles


def normalize_role(text: str) -> str:
    """Map a free-form role ("student (KD)", "Teacher", "baseline") to one of :data:`ROLES`."""
    t = text.lower()
    if "teacher" in t and "student" not in t:
        return "teacher"
    if "regulari" in t or "smoothing" in t:
        return "regularized"
    if any(w in t for w in ("kd", "distil", "distill")):
        return "distilled"
    if any(w in t for w in ("scratch", "baseline", "supervised", "student")):
        return "scratch"
    return "scratch"


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def references_run(checkpoint: str | None, run_dir: Path) -> bool:
    """Whether a teacher ``checkpoint`` (a run directory or a weights file inside one) points at ``run_dir``.

    Relative checkpoint paths were relative to the directory training ran from, which the report may not share, so
    when the resolved paths differ the run directory's name must appear as a component of the checkpoint path.
    """
    if not checkpoint:
        return False
    c = Path(checkpoint)
    if _same_path(c, run_dir) or any(_same_path(p, run_dir) for p in c.parents):
        return True
    return run_dir.name in c.parts


def recipe_role(config: Mapping[str, Any]) -> str | None:
    """What a run's recipe says it is: ``distilled`` (it learns from a teacher, a soft-label store, or a scheme other
    than offline), ``regularized`` (no teacher, but a loss beyond plain cross-entropy: label smoothing, a confidence
    penalty, teacher-free KD ...), or None (plain cross-entropy: a teacher or a scratch baseline, told apart by how
    other runs use it)."""
    scheme = str((config.get("scheme") or {}).get("name", "offline"))
    if config.get("teachers") or config.get("soft_labels") or scheme != "offline":
        return "distilled"
    for t in config.get("terms") or [{"name": "ce"}]:
        if not isinstance(t, Mapping):
            continue
        if t.get("name") != "ce" or float((t.get("params") or {}).get("label_smoothing", 0) or 0) > 0:
            return "regularized"
    return None


def infer_roles(runs: Sequence[RunInfo], given: Mapping[int, str] | None = None) -> list[str]:
    """Role of each run: ``"teacher"``, ``"scratch"``, ``"regularized"`` or ``"distilled"``, from the recipes.

    Rules, first match wins:

    1. ``given[i]`` (e.g. from the case-study table), normalised by :func:`normalize_role`;
    2. a run that learns from someone — teachers in its recipe, a soft-label store, or a scheme other than the
       offline one (online/mutual/self-distillation) — is ``distilled``;
    3. a run whose weights another run in the set uses as its teacher is ``teacher``;
    4. a run without a teacher whose loss is more than plain cross-entropy is ``regularized`` (never the scratch
       baseline a KD gain is measured against);
    5. the run's name says so (``teacher`` / ``scratch``, ``baseline``);
    6. a run that trains the same model as a distilled run in the set is that student's ``scratch`` baseline;
    7. a run that trains the model a distilled run names as its teacher is ``teacher``;
    8. otherwise ``scratch`` (trained on labels alone).
    """
    given = dict(given or {})
    roles: list[str | None] = [None] * len(runs)
    for i, r in enumerate(runs):
        if i in given:
            roles[i] = normalize_role(given[i])
        elif recipe_role(r.config) == "distilled":
            roles[i] = "distilled"
    distilled = [r for r, role in zip(runs, roles, strict=True) if role == "distilled"]
    teacher_names = {str(t.get("name")) for r in distilled for t in r.teachers}
    student_names = {r.model for r in distilled}
    for i, r in enumerate(runs):
        if roles[i] is not None:
            continue
        name = r.name.lower()
        if any(references_run(t.get("checkpoint"), r.run_dir) for d in distilled for t in d.teachers):
            roles[i] = "teacher"
        elif recipe_role(r.config) == "regularized":
            roles[i] = "regularized"
        elif "teacher" in name:
            roles[i] = "teacher"
        elif "scratch" in name or "baseline" in name:
            roles[i] = "scratch"
        elif r.model in student_names:
            roles[i] = "scratch"
        elif r.model in teacher_names:
            roles[i] = "teacher"
        else:
            roles[i] = "scratch"
    return [str(r) for r in roles]


# ----------------------------------------------------------------------------------------------------------------------
# Pareto front


def pareto_front(costs: Sequence[float], accuracies: Sequence[float]) -> list[bool]:
    """Which points are Pareto-optimal when a lower cost and a higher accuracy are better.

    Point *i* is optimal iff no point *j* has ``cost_j <= cost_i`` and ``acc_j >= acc_i`` with at least one of the two
    strict. Exact duplicates are all optimal (neither beats the other). Points with a missing (NaN/None) cost or
    accuracy are never optimal and never dominate.

    Args:
        costs: (N,) latency, size, parameters … (lower is better).
        accuracies: (N,) top-1 or any higher-is-better score.

    Returns:
        (N,) flags.
    """
    if len(costs) != len(accuracies):
        raise ValueError(f"pareto_front: {len(costs)} costs but {len(accuracies)} accuracies")
    ok = [_finite(c) and _finite(a) for c, a in zip(costs, accuracies, strict=True)]
    out = []
    for i, (ci, ai) in enumerate(zip(costs, accuracies, strict=True)):
        if not ok[i]:
            out.append(False)
            continue
        dominated = any(ok[j] and costs[j] <= ci and accuracies[j] >= ai and (costs[j] < ci or accuracies[j] > ai)
                        for j in range(len(costs)) if j != i)
        out.append(not dominated)
    return out
