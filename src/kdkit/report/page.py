"""The run report page: what it shows and how it is assembled from run directories.

>>> from kdkit.report import write_report
>>> write_report(["runs/mnist_teacher", "runs/mnist_scratch", "runs/mnist_kd"], "runs/report")   # doctest: +SKIP
PosixPath('runs/report/report.html')

The page answers, top to bottom: *is the distilled student worth it* (a one-line verdict: its accuracy, its gain over
the same student trained from scratch, how much smaller and faster than the teacher it is), *where each run sits on
accuracy against cost* (a Pareto view), the numbers (the case-study table and a per-run table), and *how training
went* (learning curves per loss term, accuracy, learning rate). ``kdkit report RUN...`` is the command.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdkit.deploy.measure import count_params, measure_batch_sizes, size_on_disk_mb
from kdkit.errors import KdkitError
from kdkit.models.factory import load_model
from kdkit.report.fmt import (
    fmt_g,
    fmt_params,
    fmt_pct,
    fmt_pts,
    is_number,
    model_desc,
    slug,
    terms_desc,
    times,
)
from kdkit.report.html import Page, Plot, Section, Table, render_html, render_markdown
from kdkit.report.plots import plot_accuracy, plot_learning_curves, plot_pareto
from kdkit.report.runs import (
    ROLE_COLORS,
    ROLE_LABELS,
    ROLES,
    RunInfo,
    infer_roles,
    load_run,
    normalize_role,
    pareto_front,
    references_run,
    shade,
)
from kdkit.report.studies import study_sections
from kdkit.utils import atomic_write_bytes, atomic_write_text
from kdkit.weights import input_shape_of

__all__ = ["write_report", "load_run", "infer_roles", "pareto_front", "RunInfo", "Entry", "measure_run",
           "load_case_study"]

COST_KEYS = ("params", "size_mb", "latency_b1_ms", "latency_b64_ms")


@dataclass
class Entry:
    """One row of the teacher-vs-students comparison: a run, or a case-study row whose run was not given."""

    label: str
    role: str
    model: str
    top1: float
    cost: dict[str, float] = field(default_factory=dict)
    run: RunInfo | None = None
    teacher: Entry | None = None   # the teacher this student is compared with
    scratch: Entry | None = None   # the same model trained from scratch
    case_last: float | None = None  # a case-study row's last-epoch top-1 (its "last_top1"), when it gives one
    from_case: bool = False  # the figures come from a case-study table

    @property
    def gain(self) -> float:
        """Top-1 points over the scratch baseline (NaN without one)."""
        return self.top1 - self.scratch.top1 if self.scratch is not None else math.nan

    def ratio(self, key: str) -> float:
        """teacher's cost / this entry's cost (``> 1`` means smaller / faster than the teacher)."""
        if self.teacher is None:
            return math.nan
        a, b = self.teacher.cost.get(key, math.nan), self.cost.get(key, math.nan)
        return a / b if _ok(a) and _ok(b) and b > 0 else math.nan


_ok = is_number


# ----------------------------------------------------------------------------------------------------------------------
# Inputs


def load_case_study(path: str | Path) -> dict[str, Any]:
    """Read the quickstart's ``table.json`` (``{"dataset", "rows": [{role, model, run, top1, params, size_mb,
    latency_b1_ms, latency_b64_ms, ...}], "threads", ...}``)."""
    p = Path(path)
    if not p.is_file():
        raise KdkitError(f"report: case-study file '{p}' not found (the quickstart writes it as table.json)")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise KdkitError(f"report: case-study file '{p}' is not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) \
            or not all(isinstance(r, dict) and "role" in r and "top1" in r for r in data["rows"]):
        raise KdkitError(f"report: case-study file '{p}' needs a 'rows' list of {{role, top1, ...}} objects "
                         "(the quickstart's table.json)")
    return data


def _match_rows(rows: list[dict[str, Any]], runs: Sequence[RunInfo]) -> dict[int, int]:
    """case-study row index -> run index, by run path (resolved), else by the run directory's name when unique."""
    out: dict[int, int] = {}
    for k, row in enumerate(rows):
        if not row.get("run"):
            continue
        p = Path(str(row["run"]))
        hits = [i for i, r in enumerate(runs) if _same(p, r.run_dir)]
        if not hits:
            hits = [i for i, r in enumerate(runs) if r.run_dir.name == p.name]
        if len(hits) == 1 and hits[0] not in out.values():
            out[k] = hits[0]
    return out


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def measure_run(run: RunInfo) -> dict[str, Any]:
    """Parameters, size on disk (MB) and CPU latency per image at batch 1 and 64 of a run's best weights, measured
    exactly as ``kdkit quickstart`` and ``kdkit bench`` measure them (:mod:`kdkit.deploy.measure`). Latencies that
    stay implausible after a re-measurement are left out and explained under ``timing_flag``."""
    import torch

    model, meta = load_model(run.run_dir)
    shape = input_shape_of(meta)
    out = {"params": float(count_params(model)), "size_mb": size_on_disk_mb(model)}
    gen = torch.Generator().manual_seed(0)
    stats, flag = measure_batch_sizes(model, lambda bs: torch.randn((bs, *shape), generator=gen), (1, 64))
    if flag:  # not a result: the latencies stay blank and the page says why
        out["timing_flag"] = flag  # type: ignore[assignment]
        return out
    for bs, st in stats.items():
        out[f"latency_b{bs}_ms"] = st.per_sample_ms
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Formatting


def _ratio_words(e: Entry, latency_key: str = "latency_b1_ms") -> list[str]:
    size_x, lat_x = e.ratio("size_mb"), e.ratio(latency_key)
    bits = []
    if _ok(size_x):
        bits.append(times(size_x, "smaller", "larger"))
    if _ok(lat_x):
        bits.append(times(lat_x, "faster", "slower"))
    return bits


def _vs_teacher(e: Entry) -> str:
    return "" if e.role == "teacher" else (" · ".join(_ratio_words(e)) or "—")


# ----------------------------------------------------------------------------------------------------------------------
# The report


def _unique_labels(runs: Sequence[RunInfo]) -> None:
    """Two runs with the same recipe name (different output dirs) get their parent directory as a prefix."""
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.label = f"{r.run_dir.parent.name}/{r.name}"
    labels = [r.label for r in runs]
    for i, r in enumerate(runs):
        if labels.count(r.label) > 1:
            r.label = f"{r.label} #{i + 1}"


def _link(entries: list[Entry]) -> None:
    """Give every student its teacher (the run it learned from, else the most accurate teacher) and its scratch
    baseline (the same model, same builder parameters, trained on labels alone; else the same model name)."""
    teachers = [e for e in entries if e.role == "teacher"]
    scratch = [e for e in entries if e.role == "scratch"]
    for e in entries:
        if e.role == "teacher":
            continue
        own = []
        if e.run is not None:
            own = [t for t in teachers if t.run is not None and
                   any(references_run(s.get("checkpoint"), t.run.run_dir) for s in e.run.teachers)]
        pool = own or teachers
        e.teacher = max(pool, key=lambda t: t.top1 if _ok(t.top1) else -1.0) if pool else None
        if e.role in ("distilled", "regularized"):
            spec = e.run.student if e.run is not None else {}
            same = [s for s in scratch if s.model == e.model and
                    (s.run is None or e.run is None or s.run.student.get("params") == spec.get("params"))]
            same = same or [s for s in scratch if s.model == e.model]
            e.scratch = max(same, key=lambda s: s.top1 if _ok(s.top1) else -1.0) if same else None


@dataclass
class Group:
    """Runs of one recipe that differ only in seed (and name / output directory): reported as mean ± std."""

    entries: list[Entry]

    @property
    def role(self) -> str:
        return self.entries[0].role

    @property
    def label(self) -> str:
        labels = [e.label for e in self.entries]
        if len(labels) == 1:
            return labels[0]
        common = os.path.commonprefix(labels).rstrip("_-. ")
        return f"{common or labels[0]} ×{len(labels)} seeds"

    def stat(self, value: Any) -> tuple[float, float, int]:
        """(mean, sample std (0 for one run), n) of ``value(entry)`` over the group's finite values."""
        vals = [v for v in (value(e) for e in self.entries) if _ok(v)]
        if not vals:
            return math.nan, math.nan, 0
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        return mean, std, len(vals)


def _recipe_key(run: RunInfo) -> str:
    cfg = {k: v for k, v in run.config.items() if k not in ("name", "seed", "output_dir")}
    return json.dumps(cfg, sort_keys=True, default=str)


def _groups(entries: list[Entry]) -> list[Group]:
    """Entries of runs with the same recipe but for the seed form one group (entries without a run stay alone)."""
    groups: dict[str, Group] = {}
    for i, e in enumerate(entries):
        key = _recipe_key(e.run) if e.run is not None else f"row{i}"
        groups.setdefault(key, Group([])).entries.append(e)
    return list(groups.values())


def _last(e: Entry) -> float:
    """The final-epoch validation top-1 (no selection on the validation split): a case study's ``last_top1``, else
    the run's last epoch; a case-study row without one keeps the figure it printed."""
    if e.from_case:
        return e.case_last if _ok(e.case_last) else e.top1
    return e.run.last_top1 if e.run is not None and _ok(e.run.last_top1) else e.top1


def _pm(mean: float, std: float, n: int) -> str:
    return f"{mean:.1f}% ± {std:.1f} over {n} seeds" if n > 1 else f"{mean:.1f}%"


def _glance(entries: list[Entry]) -> tuple[str, str, Entry | None]:
    """The headline and the role whose colour frames it.

    The headline's accuracy is the *last*-epoch validation top-1 -- never a maximum over epochs or seeds chosen on the
    validation split -- as the mean ± std over the seeds of the KD recipe; the gain is over the mean of the same
    student's scratch runs. With several KD recipes it names the one with the best mean and says so."""
    groups = _groups(entries)
    kd = [g for g in groups if g.role == "distilled" and g.stat(_last)[2]]
    if kd:
        g = max(kd, key=lambda x: x.stat(_last)[0])
        e = g.entries[0]
        mean, std, n = g.stat(_last)
        parts = [_pm(mean, std, n)]
        scratch = [s for s in groups if s.role == "scratch" and e.scratch is not None and e.scratch in s.entries]
        if scratch and scratch[0].stat(_last)[2]:
            gain = round(mean - scratch[0].stat(_last)[0], 1)
            parts[0] += f" (+{gain:.1f} over scratch)" if gain >= 0 else f" ({-gain:.1f} below scratch)"
        tail = _ratio_words(e)
        which = f"{g.label}, the best of {len(kd)} KD recipes by mean" if len(kd) > 1 else g.label
        text = f"KD student: {', '.join(parts + tail)}"
        if tail:
            text += " than the teacher"
        return text + f" ({which}; last-epoch validation top-1)", "distilled", e
    best = [e for e in entries if _ok(e.top1)]
    if best:
        e = max(best, key=lambda x: x.top1)
        return f"Best run: {e.label} ({e.model}), {e.top1:.1f}% top-1", e.role, e
    return "No run has a validation accuracy yet", "scratch", None


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, case_study: str | Path | None = None, *,
                 measure: bool = True, title: str | None = None, studies: Sequence[str | Path] = ()) -> Path:
    """Write ``report.html`` (self-contained), ``summary.md`` and the PNG plots to ``out_dir``.

    Args:
        run_dirs: kdkit run directories (each with ``metrics.jsonl``; ``config.yaml`` tells roles and recipes).
        out_dir: created if needed; existing report files in it are replaced.
        case_study: the quickstart's ``table.json``: its roles, accuracies, sizes and latencies are used for the runs
            it lists (so the page shows the numbers the quickstart printed), and its table is shown as written.
        measure: measure parameters, size and CPU latency of runs the case study does not cover (from their best
            weights, ~1 s per run); ``False`` leaves them blank.
        title: the page title (default: "kdkit report — <dataset>").
        studies: ``kdkit seeds`` output directories (``seeds.json``) and ``kdkit tune`` study directories (after
            ``kdkit tune --show``): each becomes a section (:mod:`kdkit.report.studies`).

    Returns:
        The path of ``report.html``.

    Raises:
        KdkitError: a run directory or its metrics.jsonl is missing, or the case-study file is unreadable.
    """
    if not run_dirs:
        raise KdkitError("report: give at least one run directory")
    study_secs = study_sections(list(studies))  # read first: a bad --study fails before any measuring
    runs = [load_run(p) for p in run_dirs]
    _unique_labels(runs)
    case = load_case_study(case_study) if case_study is not None else None
    rows = case["rows"] if case else []
    row_of = {run_i: row_k for row_k, run_i in _match_rows(rows, runs).items()}
    roles = infer_roles(runs, {i: str(rows[k]["role"]) for i, k in row_of.items()})
    notes: list[str] = []
    measured: list[str] = []
    load_at_measure = None
    for i, (r, role) in enumerate(zip(runs, roles, strict=True)):
        r.role = role
        row = rows[row_of[i]] if i in row_of else None
        if row is not None and all(_ok(row.get(k)) for k in COST_KEYS):
            r.cost = {k: float(row[k]) for k in COST_KEYS}
            r.cost_source = "case study"
        elif measure:
            try:
                if load_at_measure is None:
                    load_at_measure = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
                r.cost = measure_run(r)
                flag = r.cost.pop("timing_flag", None)
                if flag:
                    notes.append(f"{r.label}: latency left blank, {flag}")
                r.cost_source = "measured"
                measured.append(r.label)
            except Exception as err:  # noqa: BLE001 — a report must still be written; say why a cost is missing
                notes.append(f"{r.label}: size and latency not measured ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})")

    entries = [Entry(label=r.label, role=r.role, model=r.model,
                     top1=float(rows[row_of[i]]["top1"]) if i in row_of else r.best[0], cost=dict(r.cost), run=r,
                     from_case=i in row_of,
                     case_last=rows[row_of[i]].get("last_top1") if i in row_of else None)
               for i, r in enumerate(runs)]
    for k, row in enumerate(rows):  # case-study rows whose run was not passed: still in the case-study table
        if k not in row_of.values():
            entries.append(Entry(label=Path(str(row.get("run") or row["role"])).name,
                                 role=normalize_role(str(row["role"])), model=str(row.get("model", "?")),
                                 top1=float(row["top1"]), from_case=True, case_last=row.get("last_top1"),
                                 cost={c: float(row[c]) for c in COST_KEYS if _ok(row.get(c))}))
    _link(entries)
    run_entries = entries[: len(runs)]
    for role in ROLES:  # several recipes of one role: each recipe group gets its own shade of the role's colour
        role_groups = [g for g in _groups(run_entries) if g.role == role]
        if len(role_groups) > 1:
            for k, g in enumerate(role_groups):
                for e in g.entries:
                    e.run.color = shade(ROLE_COLORS[role], k)
    accuracies = [e.top1 for e in run_entries]
    headline, glance_role, star = _glance(entries)

    # --- plots ----------------------------------------------------------------------------------------------------
    bar_notes = [f"{e.gain:+.2f} vs scratch" if _ok(e.gain) else "" for e in run_entries]
    acc_plot = Plot("accuracy.png", plot_accuracy(runs, accuracies, bar_notes), "accuracy of teacher vs students",
                    "Left: best validation top-1 of each run, coloured by role (the axis is cut to make differences "
                    "visible; read the printed values). Right: validation top-1 after every epoch.")
    have_cost = any(r.cost for r in runs)
    pareto_plot = None if not have_cost else Plot(
        "pareto.png", plot_pareto(runs, accuracies), "accuracy against latency and size",
        "Up and to the left is better. Ringed points are Pareto-optimal: no other run is both cheaper "
        "and at least as accurate. Latency is the median CPU time per image at batch 1.")
    curve_plots = [Plot(f"curves_{i + 1:02d}_{slug(r.label)}.png", plot_learning_curves(r),
                        f"learning curves of {r.label}") for i, r in enumerate(runs)]

    # --- tables ---------------------------------------------------------------------------------------------------
    ordered = sorted(entries, key=lambda e: (ROLES.index(e.role) if e.role in ROLES else 9, entries.index(e)))
    cmp_table = Table(
        headers=["role", "run", "model", "top-1 %", "vs scratch", "params", "size MB", "ms/img b1", "ms/img b64",
                 "vs teacher (size, latency b1)"],
        rows=[[ROLE_LABELS.get(e.role, e.role), e.label, e.model, fmt_pct(e.top1), fmt_pts(e.gain),
               fmt_params(e.cost.get("params", math.nan)), fmt_g(e.cost.get("size_mb", math.nan)),
               fmt_g(e.cost.get("latency_b1_ms", math.nan)), fmt_g(e.cost.get("latency_b64_ms", math.nan)),
               _vs_teacher(e)] for e in ordered],
        roles=[e.role for e in ordered],
        numeric=[False, False, False] + [True] * 6 + [False],
    )
    seed_groups = [g for g in _groups(run_entries) if len(g.entries) > 1]
    seeds_table = Table(
        headers=["recipe", "role", "seeds", "last-epoch top-1 % (val)", "best-epoch top-1 % (epoch chosen on val)"],
        rows=[[g.label, ROLE_LABELS.get(g.role, g.role), str(len(g.entries)),
               "{:.2f} ± {:.2f}".format(*g.stat(_last)[:2]),
               "{:.2f} ± {:.2f}".format(*g.stat(lambda e: e.run.best[0] if e.run else math.nan)[:2])]
              for g in seed_groups],
        roles=[g.role for g in seed_groups],
        role_col=1,
        numeric=[False, False, True, True, True],
    ) if seed_groups else None
    run_table = Table(
        headers=["run", "role", "student", "teachers", "loss terms (weight, params)", "epochs",
                 "best-epoch top-1 % (val)", "last top-1 %", "train img/s"],
        rows=[[r.label, ROLE_LABELS.get(r.role, r.role), model_desc(r.student),
               (", ".join(model_desc(t) for t in r.teachers) or "—")
               + (f" [scheme {r.scheme}]" if r.scheme != "offline" else "")
               + (f" [soft labels {Path(str(r.config['soft_labels'])).name}]" if r.config.get("soft_labels") else ""),
               terms_desc(r.config),
               f"{len(r.history)}" + (f"/{r.epochs_planned}" if r.epochs_planned and r.epochs_planned != len(r.history)
                                      else ""),
               f"{fmt_pct(r.best[0])} (ep {r.best[1]})" if r.best[1] is not None else fmt_pct(r.best[0]),
               fmt_pct(r.last_top1), f"{r.images_per_s:,.0f}" if _ok(r.images_per_s) else "—"] for r in runs],
        roles=[r.role for r in runs],
        role_col=1,
        numeric=[False] * 5 + [True] * 4,
    )

    # --- words ----------------------------------------------------------------------------------------------------
    datasets = sorted({r.dataset for r in runs})
    details = []
    if star is not None and star.role == "distilled":
        bits = []
        if star.teacher is not None:
            bits.append(f"teacher {star.teacher.model} {star.teacher.top1:.2f}%")
        if star.scratch is not None:
            bits.append(f"same student from scratch {star.scratch.top1:.2f}%")
        bits.append(f"KD {star.model} {star.top1:.2f}%")
        line = " · ".join(bits)
        if star.teacher is not None:
            gap = star.teacher.top1 - star.top1
            line += f" — {abs(gap):.2f} points {'below' if gap >= 0 else 'above'} the teacher"
        details.append(line)
        if _ok(star.ratio("params")):
            line = (f"{times(star.ratio('params'), 'fewer', 'more')} parameters than the teacher "
                    f"({fmt_params(star.cost['params'])} vs {fmt_params(star.teacher.cost['params'])})")
            if _ok(star.ratio("latency_b64_ms")):
                line += f"; {times(star.ratio('latency_b64_ms'), 'faster', 'slower')} per image at batch 64"
            details.append(line)
    sizes = {r.split_sizes for r in runs if r.split_sizes}
    data_line = f"data: {', '.join(datasets)}"
    if case and case.get("dataset"):
        data_line = f"data: {case['dataset']}"
    elif len(sizes) == 1:
        tr, va = next(iter(sizes))
        data_line += f" ({tr:,} train / {va:,} validation)"
    details.append(data_line + "; the headline is the last-epoch validation top-1 (mean over seeds); tables and bars "
                               "give each run's best-epoch validation top-1, an epoch chosen on that split")
    for r in runs:
        for t in r.teachers_saw_val:
            notes.append(f"{r.label}: its teacher {t.get('teacher')} trained on {t.get('val_images_seen')} of its "
                         f"{t.get('val_images')} validation images, so its validation top-1 is optimistic (train the "
                         f"teacher with the student's data.val_fraction and data.split_seed; docs/tuning.md)")
    if len(datasets) > 1:
        notes.append(f"the runs use different datasets ({', '.join(datasets)}): their accuracies are not comparable")
    threads = None
    if case and case.get("threads"):
        threads = case["threads"]
    srcs = []
    if any(r.cost_source == "case study" for r in runs) or (case and len(entries) > len(runs)):
        srcs.append(f"Case-study numbers from {Path(str(case_study)).name}"
                    + (f" ({threads} CPU thread(s))" if threads else ""))
    if measured:
        import torch

        load_txt = f", load average {load_at_measure:.1f} on {os.cpu_count()} cores" if _ok(load_at_measure) else ""
        srcs.append(f"Measured now for {', '.join(measured)} ({torch.get_num_threads()} CPU thread(s){load_txt})")
    cost_note = ("Latency: median wall-clock time per image on the CPU (PyTorch eager), at batch 1 and batch 64; "
                 "size: the weights saved as safetensors, MB = 10^6 bytes. " + ("; ".join(srcs) + "." if srcs else ""))
    notes.append("Timings depend on the machine and on its load at the time; re-measure on a quiet machine with "
                 "`kdkit bench` before quoting them.")

    sections = [
        Section("Teacher vs students", anchor="accuracy",
                intro="The distilled (KD) student against the same model trained from scratch and against the "
                      "teacher it learned from.", tables=[cmp_table], plots=[acc_plot]),
        Section("Accuracy against cost", anchor="pareto", intro=cost_note,
                plots=[pareto_plot] if pareto_plot else [],
                bullets=[] if have_cost else ["No run has a size or latency measurement, so there is no Pareto view."]),
        Section("Runs", anchor="runs", intro="Each run's recipe and result; terms are listed as name ×weight "
                                             "(parameters). The best epoch is chosen on the validation split, so "
                                             "its figure is optimistic; the last epoch's is not selected.",
                tables=[run_table]),
        *([Section("Seeds", anchor="seeds", intro="Runs of one recipe that differ only in their seed: mean ± sample "
                                                  "standard deviation.", tables=[seeds_table])]
          if seeds_table is not None else []),
        *study_secs,
        Section("Learning curves", anchor="curves", plots=curve_plots,
                intro="Per run: the training loss and each loss term (terms are logged unweighted, the legend gives "
                      "their weights; the total is the weighted sum that was minimised), top-1 per epoch (the star "
                      "marks the epoch whose weights were kept), and the learning rate."),
        Section("Notes", anchor="notes", bullets=notes),
    ]
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    cmd = "kdkit report " + " ".join(str(p) for p in run_dirs)
    if case_study is not None:
        cmd += f" --case-study {case_study}"
    cmd += "".join(f" --study {d}" for d in studies)
    page = Page(title=title or f"kdkit report — {', '.join(datasets)}", glance=headline, glance_details=details,
                sections=sections, glance_role=glance_role,
                footer=f"Written by kdkit {_version()} on {when} · {cmd}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p in [acc_plot, *([pareto_plot] if pareto_plot else []), *curve_plots,
              *(p for sec in study_secs for p in sec.plots)]:
        atomic_write_bytes(out / p.filename, p.png)
        written.append(out / p.filename)
    atomic_write_text(out / "summary.md", render_markdown(page))
    html_path = out / "report.html"
    atomic_write_text(html_path, render_html(page))
    for f in [*written, out / "summary.md", html_path]:
        f.chmod(0o644)  # atomic writes create 0600 temp files; a report is meant to be shared and served
    return html_path


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("kdkit")
    except Exception:  # noqa: BLE001 — running from a source tree without metadata
        return "(source)"
