"""The seeds protocol: each recipe run over several seeds, then mean ± sample std of its accuracy.

``kdkit seeds a.yaml b.yaml --seeds 0 1 2 --baseline a.yaml`` runs every recipe once per seed as a normal run
directory ``<output_dir>/<name>-seed<k>`` (the recipe's ``name`` and ``seed`` overridden), then reads each run's
``metrics.jsonl`` and writes a table (``seeds.json`` and ``seeds.md``, both atomically) of:

- best-epoch validation top-1: the highest ``val_top1`` over the run's epochs (what ``best.safetensors`` holds);
- last-epoch validation top-1: ``val_top1`` of the final epoch;
- the paired gain against the baseline recipe: per seed, this recipe's top-1 minus the baseline's top-1 *of the same
  seed*, then mean ± std of those differences (best and last epoch separately);
- images/s (training samples over training seconds, all epochs) and training seconds per run.

Every ± is the **sample** standard deviation (ddof = 1) over seeds; with one seed it is undefined and shown as "n/a".
Resumable: a run directory that already holds a complete run (``summary.json`` and one ``metrics.jsonl`` record per
epoch, with the same recipe) is read, not retrained; an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from kdkit.errors import ConfigError
from kdkit.recipe import Recipe, as_recipe
from kdkit.runs import ADDED_FIELDS, run
from kdkit.utils import atomic_write_json, atomic_write_text, mean_pm_std
from kdkit.yamlio import read_yaml_file

SEED_RUN = "{name}-seed{seed}"


@dataclass
class SeedsResult:
    """What ``kdkit seeds`` measured: ``table`` (the JSON written to ``json_path``) and the runs it read."""

    table: dict[str, Any]
    json_path: Path
    md_path: Path
    trained: list[Path] = field(default_factory=list)  # run directories trained (or resumed) by this call
    reused: list[Path] = field(default_factory=list)  # complete run directories read without training


def seed_recipe(recipe: Recipe, seed: int) -> Recipe:
    """``recipe`` with ``seed`` and the run name ``<name>-seed<k>``."""
    return as_recipe(recipe, [f"seed={seed}", f"name={SEED_RUN.format(name=recipe.name, seed=seed)}"])


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read '{path}' ({err}); delete the run directory '{run_dir}' to rerun it") from None


def is_complete(recipe: Recipe) -> bool:
    """A run directory holding the finished run of ``recipe``: ``summary.json`` written and one metrics record per
    epoch. A finished run of a *different* recipe under the same name is refused (one line), never silently read."""
    run_dir = recipe.run_dir
    if not (run_dir / "summary.json").is_file() or not (run_dir / "metrics.jsonl").is_file():
        return False
    saved = read_yaml_file(run_dir / "config.yaml", f"saved recipe '{run_dir / 'config.yaml'}'") \
        if (run_dir / "config.yaml").is_file() else None
    now = json.loads(json.dumps(recipe.model_dump(mode="json")))
    if isinstance(saved, dict):
        diff = [k for k in now if saved.get(k, ADDED_FIELDS.get(k)) != now[k]
            and k not in ("threads", "output_dir", "epochs", "track")]
        if diff:
            raise ConfigError(f"seeds: '{run_dir}' holds a finished run of a different recipe (differs in "
                              f"{', '.join(diff)}); delete it, or give the recipe another name")
    epochs = [m.get("epoch") for m in read_metrics(run_dir)]
    return bool(epochs) and max(epochs) >= recipe.epochs


def _mean_std(xs: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(xs) if xs else None,
            "std": statistics.stdev(xs) if len(xs) > 1 else None, "n": len(xs), "values": xs}


def run_figures(run_dir: Path) -> dict[str, Any]:
    """One run's figures from its ``metrics.jsonl``: best- and last-epoch ``val_top1``, images/s, training seconds."""
    ms = read_metrics(run_dir)
    vals = [(m["epoch"], m["val_top1"]) for m in ms if m.get("val_top1") is not None]
    if not vals:
        raise ConfigError(f"'{run_dir}/metrics.jsonl' has no validation accuracy (val_top1); the seeds table needs "
                          f"a validation split (data.val_fraction > 0)")
    best_epoch, best = max(vals, key=lambda ev: (ev[1], -ev[0]))
    seconds = sum(m.get("train_seconds", 0.0) for m in ms)
    samples = sum(m.get("samples", 0) for m in ms)
    last = ms[-1]
    return {"run_dir": str(run_dir), "best_top1": best, "best_epoch": best_epoch,
            "last_top1": last.get("val_top1"), "last_epoch": last["epoch"],
            "images_per_s": samples / seconds if seconds > 0 else None, "train_seconds": seconds}


def seeds_table(runs: dict[str, dict[int, Path]], baseline: str | None = None) -> dict[str, Any]:
    """The table from finished run directories: ``runs[recipe_name][seed] = run_dir``.

    Pure in the run directories' ``metrics.jsonl``: the same runs always give the same table.
    """
    rows: dict[str, Any] = {}
    figs = {name: {s: run_figures(d) for s, d in sorted(by_seed.items())} for name, by_seed in runs.items()}
    for name, per_seed in figs.items():
        row: dict[str, Any] = {"seeds": sorted(per_seed), "runs": per_seed}
        for key in ("best_top1", "last_top1", "images_per_s", "train_seconds"):
            row[key] = _mean_std([f[key] for f in per_seed.values() if f[key] is not None])
        if baseline is not None and name != baseline:
            base = figs[baseline]
            paired = [s for s in per_seed if s in base]
            for key in ("best_top1", "last_top1"):
                diffs = [per_seed[s][key] - base[s][key] for s in paired
                         if per_seed[s][key] is not None and base[s][key] is not None]
                row[f"gain_{key}"] = dict(_mean_std(diffs), seeds=paired)
        rows[name] = row
    return {"metric": "validation top-1 (%) on each recipe's held-out validation split",
            "best": "best epoch: the highest val_top1 over the run's epochs",
            "last": "last epoch: val_top1 after the final epoch",
            "std": "sample standard deviation over seeds (ddof=1); null with one seed",
            "gain": "paired: per seed, recipe minus baseline of the same seed; mean and sample std of the differences",
            "baseline": baseline, "recipes": rows}


def table_markdown(table: dict[str, Any]) -> str:
    """The table as Markdown (what ``kdkit seeds`` prints and saves as ``seeds.md``)."""
    base = table.get("baseline")
    head = ["recipe", "seeds", "best-epoch val top-1 (%)", "last-epoch val top-1 (%)"]
    if base:
        head += [f"gain vs {base}, best (pts)", f"gain vs {base}, last (pts)"]
    head += ["images/s", "train s/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in table["recipes"].items():
        cells = [name + (" (baseline)" if name == base else ""), " ".join(map(str, row["seeds"])),
                 mean_pm_std(row["best_top1"]), mean_pm_std(row["last_top1"])]
        if base:
            cells += [mean_pm_std(row.get("gain_best_top1"), signed=True),
                      mean_pm_std(row.get("gain_last_top1"), signed=True)]
        cells += [mean_pm_std(row["images_per_s"], 0), mean_pm_std(row["train_seconds"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["", "mean ± sample std (ddof=1) over seeds; top-1 on each recipe's validation split; best epoch = highest "
                 "val_top1 over the epochs, last = after the final epoch."]
    if base:
        notes.append("gain: paired per seed (recipe minus baseline of the same seed), mean ± sample std of the "
                     "differences, in points.")
    return "\n".join(lines + notes) + "\n"


def parse_seeds(values: list[str] | list[int]) -> list[int]:
    """``["0", "1,2"]`` → ``[0, 1, 2]``; a non-integer is a one-line error naming ``--seeds``."""
    out: list[int] = []
    for v in values:
        for part in str(v).split(","):
            if not part.strip():
                continue
            if not re.fullmatch(r"-?\d+", part.strip()):
                raise ConfigError(f"--seeds: '{part}' is not an integer seed; e.g. --seeds 0 1 2")
            out.append(int(part))
    if not out:
        raise ConfigError("--seeds: give at least one seed, e.g. --seeds 0 1 2")
    if len(set(out)) != len(out):
        raise ConfigError(f"--seeds: {out} repeats a seed; give each seed once")
    return out


def run_seeds(recipes: list[Recipe | str | Path | dict[str, Any]], seeds: list[int] | list[str],
              baseline: Recipe | str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None,
              out: str | Path | None = None, quiet: bool = False, console: Console | None = None) -> SeedsResult:
    """Run each recipe (and the baseline, if it is not among them) once per seed, then write the table.

    Args:
        recipes: recipes (paths, bundled names, dicts or :class:`Recipe`); their ``name`` fields must differ.
        seeds: the seeds, e.g. ``[0, 1, 2]``.
        baseline: the recipe the paired gains are against (a path/name among ``recipes``, or another recipe).
        overrides: ``key.path=value`` applied to every recipe (e.g. ``["epochs=5"]``).
        out: where ``seeds.json`` and ``seeds.md`` go (default ``<first recipe's output_dir>/seeds``).
        quiet: no progress bars.

    Returns:
        :class:`SeedsResult`. Finished seeds are read, not retrained (``result.reused``).
    """
    console = console or Console(stderr=True)
    seed_list = parse_seeds(list(seeds))
    if not recipes:
        raise ConfigError("seeds: give at least one recipe")
    loaded = [as_recipe(r, overrides) for r in recipes]
    base_name = None
    if baseline is not None:
        base = next((r for r, src in zip(loaded, recipes, strict=True) if src == baseline), None) \
            if isinstance(baseline, (str, Path)) else None
        if base is None:
            base = as_recipe(baseline, overrides)
            if not any(r.name == base.name for r in loaded):
                loaded.insert(0, base)
        base_name = base.name
    staged = [r.name for r in loaded if r.stages]
    if staged:
        raise ConfigError(f"seeds: {staged} are pipelines (`stages:`); run the seeds protocol on a plain recipe "
                          f"(e.g. the pipeline's last stage with its teacher's checkpoint)")
    names = [r.name for r in loaded]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"seeds: recipes {dup} share a name, so their runs would share directories; give each "
                          f"recipe its own name (--set name=... applies to all; edit the YAML)")
    result_runs: dict[str, dict[int, Path]] = {}
    trained: list[Path] = []
    reused: list[Path] = []
    t0 = time.perf_counter()
    for recipe in loaded:
        for seed in seed_list:
            r = seed_recipe(recipe, seed)
            result_runs.setdefault(recipe.name, {})[seed] = r.run_dir
            if is_complete(r):
                reused.append(r.run_dir)
                if not quiet:
                    console.print(f"[dim]finished already:[/] {r.run_dir}")
                continue
            if not quiet:
                console.print(f"[bold]seeds[/] {recipe.name} seed {seed} → {r.run_dir}")
            # an interrupted seed resumes, an empty one starts; trackers file every seed under the recipe's name
            run(r, resume=r.run_dir.is_dir(), quiet=quiet, track_project=recipe.name)
            trained.append(r.run_dir)
    table = seeds_table(result_runs, base_name)
    table["seeds"] = seed_list
    table["wall_seconds_this_call"] = time.perf_counter() - t0
    out_dir = Path(out) if out is not None else Path(loaded[0].output_dir) / "seeds"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "seeds.json", out_dir / "seeds.md"
    atomic_write_json(json_path, table)
    atomic_write_text(md_path, table_markdown(table))
    return SeedsResult(table, json_path, md_path, trained, reused)
