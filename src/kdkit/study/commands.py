"""``kdkit seeds RECIPE... --seeds 0 1 2 [--baseline RECIPE]`` (in :data:`kdkit.registry.COMMANDS`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kdkit.registry import COMMANDS
from kdkit.study.seeds import run_seeds, table_markdown


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
