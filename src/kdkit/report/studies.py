"""Studies in the report: a ``kdkit seeds`` table (``seeds.json``) and a ``kdkit tune`` study (``show.json`` and the
figures ``kdkit tune --show`` writes beside it) become sections of the page.

Only files are read, so the report needs neither Optuna nor the study code: ``kdkit seeds`` and ``kdkit tune --show``
write what is shown here, and these sections lay it out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdkit.errors import KdkitError
from kdkit.report.html import Plot, Section, Table
from kdkit.utils import mean_pm_std

_CAPTIONS = {
    "history.png": "Each finished trial's objective (dots) and the best so far (line), by trial number.",
    "slices.png": "The objective against each searched numeric field (log axis for log_uniform fields): where the "
                  "good trials lie.",
    "importance.png": "Parameter importance (Optuna's fANOVA): the share of the objective's variance over the "
                      "finished trials that each searched field explains (they sum to 1).",
}


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise KdkitError(f"report --study: cannot read '{path}' ({err}); re-run the command that wrote it") from None
    if not isinstance(data, dict):
        raise KdkitError(f"report --study: '{path}' is not a study file; re-run the command that wrote it")
    return data


def study_sections(dirs: list[str | Path]) -> list[Section]:
    """One section per study directory: a seeds directory (``seeds.json``) or a tune study (its ``plots/show.json``,
    written by ``kdkit tune --show``). Anything else is a one-line error naming the directory and the fix."""
    out = []
    for d in dirs:
        d = Path(d)
        if (d / "seeds.json").is_file():
            out.append(seeds_section(_json(d / "seeds.json"), d))
        elif (d / "plots" / "show.json").is_file() or (d / "show.json").is_file():
            show = d / "plots" / "show.json" if (d / "plots" / "show.json").is_file() else d / "show.json"
            out.append(tune_section(_json(show), show.parent))
        else:
            raise KdkitError(f"report --study: '{d}' holds neither seeds.json (write it with kdkit seeds) nor "
                             f"plots/show.json (write it with kdkit tune RECIPE --show)")
    return out


def seeds_section(table: dict[str, Any], where: Path) -> Section:
    """The ``kdkit seeds`` table: per recipe, mean ± sample std over seeds, and the paired gain against the
    baseline."""
    base = table.get("baseline")
    head = ["recipe", "seeds", "best-epoch val top-1 (%)", "last-epoch val top-1 (%)"]
    if base:
        head += [f"gain vs {base}, best (pts)", f"gain vs {base}, last (pts)"]
    head += ["train s/run"]
    rows = []
    for name, row in table.get("recipes", {}).items():
        cells = [name + (" (baseline)" if name == base else ""), " ".join(map(str, row.get("seeds", []))),
                 mean_pm_std(row.get("best_top1")), mean_pm_std(row.get("last_top1"))]
        if base:
            cells += [mean_pm_std(row.get("gain_best_top1"), signed=True),
                      mean_pm_std(row.get("gain_last_top1"), signed=True)]
        cells.append(mean_pm_std(row.get("train_seconds"), 1))
        rows.append(cells)
    intro = (f"kdkit seeds ({where}): each recipe run over the same seeds; mean ± sample standard deviation (n − 1) "
             f"over seeds, top-1 on each recipe's validation split.")
    if base:
        intro += (" The gain is paired: per seed, the recipe minus the baseline of the same seed, then mean ± std of "
                  "those differences, in points.")
    return Section(f"Seeds study ({where.name})", anchor=f"seeds-{where.name}", intro=intro,
                   tables=[Table(head, rows, numeric=[False, False] + [True] * (len(head) - 2))])


def tune_section(show: dict[str, Any], plots_dir: Path) -> Section:
    """A ``kdkit tune`` study: trial counts, the best trials with their sampled values and run directories, the
    parameter importances, and the figures ``--show`` drew (history, slices, importance)."""
    counts = ", ".join(f"{n} {k}" for k, n in sorted(show.get("states", {}).items()))
    rows = []
    for t in show.get("best_trials", []):
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["values"].items())
        rows.append([str(t["trial"]), f"{t['value']:.2f}", values, str(t.get("run_dir") or "")])
    tables = [Table(["trial", "best-epoch val top-1 (%)", "sampled values", "run directory"], rows,
                    numeric=[True, True, False, False])]
    imp = show.get("importances") or {}
    if imp:
        tables.append(Table(["searched field", "importance"], [[k, f"{v:.2f}"] for k, v in imp.items()],
                            numeric=[False, True]))
    plots = []
    for name in show.get("plots", []):
        png = plots_dir / name
        if png.is_file():
            plots.append(Plot(f"tune-{show['study_name']}-{name}", png.read_bytes(), alt=f"{show['study_name']} "
                              f"{name[:-4]}", caption=_CAPTIONS.get(name, "")))
    intro = (f"kdkit tune study '{show['study_name']}': {show.get('n_trials', 0)} trials ({counts}). Objective: "
             f"{show.get('objective')}. The best value is optimistic (the same split chose it): confirm the winner "
             f"with kdkit seeds on fresh seeds.")
    return Section(f"Tuning study '{show['study_name']}'", anchor=f"tune-{show['study_name']}", intro=intro,
                   tables=tables, plots=plots)
