"""The ``kdkit`` command (Typer). Every user error is printed as one line, without a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kdkit.errors import KdkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="kdkit: train a small student to mimic a large teacher (knowledge distillation).")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # errors stay on one line, however long

SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a recipe field: key.path=value "
                                                                          "(repeatable), e.g. --set optim.lr=0.1")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue the run in the recipe's run directory")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]


def _summary(result) -> None:
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun only the main process reports
        return
    best = result.best
    console.print(f"[bold green]done[/] {result.run_dir} — best val top-1 {best.get('top1', float('nan')):.2f}% "
                  f"(epoch {best.get('epoch')}), last {result.last.get('val_top1', float('nan')):.2f}%")
    console.print(f"student weights: {result.best_path}")


@app.command()
def train(recipe: Annotated[str, typer.Argument(help="recipe YAML path or bundled recipe name")],
          set_: SetOpt = None, resume: ResumeOpt = False, quiet: QuietOpt = False) -> None:
    """Supervised training (teachers, students from scratch) — or any recipe, as written."""
    from kdkit import api

    _summary(api.train(recipe, set_, resume=resume, quiet=quiet))


@app.command()
def distill(recipe: Annotated[str, typer.Argument(help="recipe YAML path or bundled recipe name")],
            set_: SetOpt = None, resume: ResumeOpt = False, quiet: QuietOpt = False) -> None:
    """Distil a student from the recipe's teacher(s)."""
    from kdkit import api

    _summary(api.distill(recipe, set_, resume=resume, quiet=quiet))


@app.command("eval")
def eval_(checkpoint: Annotated[str, typer.Argument(help="weights file (.safetensors) or run directory")],
          data: Annotated[str | None, typer.Option(
              help="dataset name or path (default: the one the checkpoint was trained on)")] = None,
          split: Annotated[str, typer.Option(help="'val' (the recipe's held-out split) or 'all'")] = "val",
          val_fraction: Annotated[float | None, typer.Option(
              help="held-out fraction of the split (default: the recipe's)")] = None,
          split_seed: Annotated[int | None, typer.Option(help="seed of the split (default: the recipe's)")] = None,
          as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Accuracy of a saved model on a dataset."""
    from kdkit import api

    out = api.evaluate(checkpoint, data=data, split=split, val_fraction=val_fraction, split_seed=split_seed)
    if as_json:
        console.print_json(json.dumps(out))
    else:
        top5 = f", top-5 {out['top5']:.2f}%" if "top5" in out else ""
        console.print(f"{checkpoint} on {data or 'its training data'} ({split}, n={int(out['n'])}): top-1 "
                      f"{out['top1']:.2f}%{top5}, "
                      f"loss {out['loss']:.4f}")


def _listing(title: str, registry, extra=None) -> None:
    import kdkit.catalog  # noqa: F401

    table = Table(title=title)
    table.add_column("name", style="bold")
    table.add_column("description")
    for e in registry.entries():
        table.add_row(e.name, e.description)
    console.print(table)
    if extra:
        console.print(extra)


@app.command()
def models(layers: Annotated[str | None, typer.Option("--layers", help="list a model's module paths (tap "
                                                                          "points) instead")] = None,
           num_classes: Annotated[int, typer.Option(help="with --layers")] = 10,
           in_channels: Annotated[int, typer.Option(help="with --layers")] = 3) -> None:
    """List registered models (also torchvision:NAME, timm:NAME, local checkpoints)."""
    from kdkit.registry import MODELS

    if layers:
        from kdkit.models import create_model
        from kdkit.taps import leaf_modules

        m = create_model(layers, num_classes=num_classes, in_channels=in_channels)
        for path, kind in leaf_modules(m):
            console.print(f"{path}  [dim]{kind}[/]")
        console.print(f"stages: {list(getattr(m, 'kd_stages', []))}")
        return
    _listing("models", MODELS, "also: torchvision:NAME, timm:NAME (vision extra), and `checkpoint:` local weights")


@app.command()
def datasets() -> None:
    """List registered datasets (also imagefolder:PATH, cifar10:PATH, cifar100:PATH, npz:PATH)."""
    from kdkit.registry import DATASETS

    _listing("datasets", DATASETS, "also: imagefolder:PATH, cifar10:PATH, cifar100:PATH, npz:PATH, or a bare path")


@app.command()
def losses() -> None:
    """List registered loss terms."""
    from kdkit.registry import LOSSES

    _listing("loss terms", LOSSES)


@app.command()
def schemes() -> None:
    """List registered schemes (who teaches whom)."""
    from kdkit.registry import SCHEMES

    _listing("schemes", SCHEMES)


@app.command()
def recipes() -> None:
    """List the bundled recipes."""
    from kdkit.recipe import bundled_recipes_dir

    d = bundled_recipes_dir()
    table = Table(title=f"recipes ({d})")
    table.add_column("name", style="bold")
    table.add_column("what")
    for p in sorted(d.rglob("*.yaml")):
        first = next((ln[1:].strip() for ln in p.read_text().splitlines() if ln.startswith("#")), "")
        table.add_row(str(p.relative_to(d).with_suffix("")), first)
    console.print(table)


@app.command()
def quickstart(output_dir: Annotated[Path, typer.Option(help="where the three runs and the table go")] =
               Path("runs/quickstart"),
               teacher_epochs: Annotated[int, typer.Option(help="teacher epochs")] = 15,
               student_epochs: Annotated[int, typer.Option(help="student epochs (scratch and KD)")] = 50,
               seed: Annotated[int, typer.Option(help="seed of all three runs")] = 0,
               train_limit: Annotated[int | None, typer.Option(help="smoke test: train on a stratified subset "
                                                                       "of this many digits")] = None,
               quiet: QuietOpt = False) -> None:
    """The seed's case study on the bundled MNIST digits: teacher, student from scratch, student with KD."""
    from kdkit.quickstart import run_quickstart

    run_quickstart(output_dir, teacher_epochs=teacher_epochs, student_epochs=student_epochs, seed=seed,
                   quiet=quiet, console=console, train_limit=train_limit)


def _register_optional_commands() -> None:
    """Commands contributed by other modules (deploy, report, soft labels, text) when they are present."""
    import importlib

    for module in ("kdkit.deploy.commands", "kdkit.report.commands", "kdkit.softlabels.commands"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name == module:
                continue
            raise
        register = getattr(mod, "register_cli", None)
        if register is not None:
            register(app)


_register_optional_commands()


def main() -> None:
    try:
        app()
    except KdkitError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted — resume with --resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
