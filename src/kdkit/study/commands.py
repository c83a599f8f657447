"""``kdkit seeds RECIPE... --seeds 0 1 2 [--baseline RECIPE]`` and ``kdkit tune RECIPE --trials N`` / ``--show`` (in
:data:`kdkit.registry.COMMANDS`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kdkit.errors import ConfigError
from kdkit.recipe import as_recipe
from kdkit.registry import COMMANDS
from kdkit.report import write_report
from kdkit.study.seeds import run_seeds, table_markdown
from kdkit.study.tune import load_study, run_tune, show_markdown, study_dir_of, write_show


@COMMANDS.register("seeds")
def seeds(
    recipes: Annotated[list[str], typer.Argument(help="recipe YAML paths or bundled recipe names")],
    seed: Annotated[list[str], typer.Option("--seeds", help="the seeds: --seeds 0 1 2 (or 0,1,2)")],
    baseline: Annotated[str | None, typer.Option("--baseline", help="recipe the paired gains are against (one of "
                                                                     "RECIPE or another)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a field of every recipe: "
                                                                       "key.path=value (repeatable)")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="where seeds.json and seeds.md go (default: "
                                                                  "<output_dir>/seeds)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Run each recipe over several seeds (each a run directory <output_dir>/<name>-seed<k>; finished ones are not
    rerun) and print mean ± sample std of best- and last-epoch validation top-1, the paired gain against --baseline,
    images/s and training time."""
    # `--seeds 0 1 2`: the option takes one value, so the further integers arrive among the positional arguments.
    extra = [r for r in recipes if re.fullmatch(r"-?\d+(,-?\d+)*", r) and not Path(r).exists()]
    recipes = [r for r in recipes if r not in extra]
    result = run_seeds(recipes, list(seed) + extra, baseline=baseline, overrides=set_, out=out, quiet=quiet)
    typer.echo(table_markdown(result.table))
    Console(soft_wrap=True).print(f"[bold green]seeds[/] {result.json_path} · {result.md_path} "
                                  f"({len(result.trained)} run(s) trained, {len(result.reused)} finished already)")


def _int_list(option: str, text: str | None) -> list[int] | None:
    if text is None:
        return None
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if not parts or not all(re.fullmatch(r"-?\d+", p) for p in parts):
        raise ConfigError(f"{option}: give integers separated by commas, e.g. {option} 0,1; got '{text}'")
    return [int(p) for p in parts]


@COMMANDS.register("tune")
def tune(
    recipe: Annotated[str, typer.Argument(help="recipe YAML path (with a `search:` block) or bundled recipe name")],
    trials: Annotated[int, typer.Option("--trials", "-n", help="trials this worker adds to the study")] = 10,
    show: Annotated[bool, typer.Option("--show", help="print the best trials of the study, write its plots "
                                                      "(<study>/plots/history.png, slices.png, importance.png) and "
                                                      "its report (<study>/report/report.html), and exit")] = False,
    top: Annotated[int, typer.Option("--top", help="with --show: how many trials")] = 5,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna RDB URL (e.g. postgresql://...) for "
                                                                  "workers on several machines (default: the "
                                                                  "journal file in <output_dir>/<name>-tune)")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="tpe or random")] = "tpe",
    pruner: Annotated[str, typer.Option("--pruner", help="median or none")] = "median",
    sampler_seed: Annotated[int | None, typer.Option("--sampler-seed", help="seed of the sampler")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a recipe field: key.path=value "
                                                                       "(repeatable)")] = None,
    store: Annotated[bool, typer.Option("--store/--no-store", help="share one soft-label store between the trials "
                                                                   "when the search changes only student-side fields "
                                                                   "(default); --no-store: every trial runs its "
                                                                   "teachers")] = True,
    store_views: Annotated[int | None, typer.Option("--store-views", help="views the shared store holds (default: "
                                                                          "the epochs, with random augmentation)")
                           ] = None,
    trial_seeds: Annotated[str | None, typer.Option("--trial-seeds", help="train each trial once per seed and "
                                                                      "maximise the mean, e.g. --trial-seeds 0,1 "
                                                                      "(default: one run, the recipe's seed)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Search the recipe's `search:` space with Optuna (TPE, median pruning on per-epoch validation top-1); each
    trial is a run directory <output_dir>/<name>-tune/trial-<k>. Run it again (or on several workers) to add trials."""
    if not show:
        result = run_tune(recipe, trials, overrides=set_, storage=storage, sampler=sampler, pruner=pruner,
                          seed=sampler_seed, quiet=quiet, store=store, store_views=store_views,
                          trial_seeds=_int_list("--trial-seeds", trial_seeds))
        Console(soft_wrap=True).print(f"[bold green]tune[/] {result.ran} trial(s) run; study '{result.study_name}' "
                                      f"in {result.storage}")
    study = load_study(recipe, set_, storage)
    typer.echo(show_markdown(study, top))
    if show:
        sdir = study_dir_of(as_recipe(recipe, set_))
        info = write_show(study, sdir / "plots", top)
        if info["plots"]:
            typer.echo("plots: " + " · ".join(str(sdir / "plots" / p) for p in info["plots"]))
        runs = [t["run_dir"] for t in info["best_trials"] if t.get("run_dir") and Path(t["run_dir"]).is_dir()]
        if runs:
            # the best trials as runs, and the study itself (table, importances, figures) as a section
            page = write_report(runs, sdir / "report", measure=False, studies=[sdir],
                                title=f"kdkit tune — study '{study.study_name}'")
            typer.echo(f"report: {page}")
