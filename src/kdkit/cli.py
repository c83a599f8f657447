"""The ``kdkit`` command (Typer). Every user error is printed as one line, without a traceback."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kdkit import api
from kdkit.errors import ConfigError, KdkitError
from kdkit.models.factory import create_model
from kdkit.quickstart import run_quickstart
from kdkit.recipe import bundled_recipes_dir
from kdkit.registry import (
    COMMANDS,
    DATASETS,
    LOSSES,
    MODEL_SOURCES,
    MODELS,
    SCHEMES,
    Registry,
    add_plugin,
    skipped_plugins,
)
from kdkit.taps import leaf_modules

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="kdkit: train a small student to mimic a large teacher (knowledge distillation).")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # errors stay on one line, however long

SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a recipe field: key.path=value "
                                                                          "(repeatable), e.g. --set optim.lr=0.1")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue the run in the recipe's run directory")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]


def _summary(result) -> None:
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
    _summary(api.train(recipe, set_, resume=resume, quiet=quiet))


@app.command()
def distill(recipe: Annotated[str, typer.Argument(help="recipe YAML path or bundled recipe name")],
            set_: SetOpt = None, resume: ResumeOpt = False, quiet: QuietOpt = False) -> None:
    """Distil a student from the recipe's teacher(s)."""
    _summary(api.distill(recipe, set_, resume=resume, quiet=quiet))


@app.command("eval")
def eval_(checkpoint: Annotated[list[str], typer.Argument(
              help="weights file (.safetensors) or run directory; several: their ensemble")],
          data: Annotated[str | None, typer.Option(
              help="dataset name or path (default: the one the checkpoint was trained on)")] = None,
          split: Annotated[str, typer.Option(help="'val' (the recipe's held-out split) or 'all'")] = "val",
          val_fraction: Annotated[float | None, typer.Option(
              help="held-out fraction of the split (default: the recipe's)")] = None,
          split_seed: Annotated[int | None, typer.Option(help="seed of the split (default: the recipe's)")] = None,
          precision: Annotated[str, typer.Option(
              help="fp32 (exact, default) | bf16 | fp16 | auto: the fastest mode that agrees with fp32, measured on "
                   "the first batch (docs/speed.md)")] = "fp32",
          channels_last: Annotated[str, typer.Option(
              "--channels-last", help="false (default) | true | auto (image models)")] = "false",
          combine: Annotated[str, typer.Option(
              help="several checkpoints: mean_probs (log of the averaged probabilities, default) | mean_logits")
          ] = "mean_probs",
          as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Accuracy of a saved model on a dataset (of several: each one's and their ensemble's)."""
    cl = {"false": False, "true": True, "auto": "auto"}.get(channels_last.lower())
    if cl is None:
        raise ConfigError(f"--channels-last: '{channels_last}' is not one of false, true, auto")
    out = api.evaluate(checkpoint, data=data, split=split, val_fraction=val_fraction, split_seed=split_seed,
                       precision=precision, channels_last=cl, combine=combine)
    if as_json:
        console.print_json(json.dumps(out))
        return

    def line(name: str, r: dict) -> str:
        top5 = f", top-5 {r['top5']:.2f}%" if "top5" in r else ""
        return (f"{name} on {data or 'its training data'} ({split}, n={int(r['n'])}): top-1 {r['top1']:.2f}%{top5}, "
                f"loss {r['loss']:.4f}" + (f" ({r['mode']})" if "mode" in r else ""))

    for member in out.get("members", []):
        console.print(line(member["checkpoint"], member), highlight=False)
    name = f"ensemble of {len(checkpoint)} ({combine})" if "members" in out else checkpoint[0]
    console.print(line(name, out), highlight=False)


def _listing(title: str, registry: Registry, extra: str | None = None) -> None:
    table = Table(title=title)
    table.add_column("name", style="bold")
    table.add_column("description")
    for e in registry.entries():
        table.add_row(e.name, e.description)
    console.print(table)
    if extra:
        console.print(extra)
    for module, why in skipped_plugins().items():
        console.print(f"[yellow]not loaded:[/] {module} {why}", highlight=False)


@app.command()
def models(layers: Annotated[str | None, typer.Option("--layers", help="list a model's module paths (tap "
                                                                          "points) instead")] = None,
           num_classes: Annotated[int, typer.Option(help="with --layers")] = 10,
           in_channels: Annotated[int, typer.Option(help="with --layers")] = 3) -> None:
    """List registered models and model sources (PREFIX:NAME, e.g. torchvision:NAME, timm:NAME, py:module:Class)."""
    if layers:
        m = create_model(layers, num_classes=num_classes, in_channels=in_channels)
        for path, kind in leaf_modules(m):
            console.print(f"{path}  [dim]{kind}[/]")
        console.print(f"stages: {list(getattr(m, 'kd_stages', []))}")
        return
    _listing("models (the kdkit zoo)", MODELS)
    _listing("model sources: PREFIX:NAME", MODEL_SOURCES, "any model takes local weights with `checkpoint:`")


@app.command()
def datasets() -> None:
    """List registered datasets (KIND:PATH ones take your files, e.g. npz:PATH, imagefolder:PATH, csv:PATH)."""
    _listing("datasets", DATASETS, "a bare path works too: its format is detected")


@app.command()
def losses() -> None:
    """List registered loss terms."""
    _listing("loss terms", LOSSES)


@app.command()
def schemes() -> None:
    """List registered schemes (who teaches whom)."""
    _listing("schemes", SCHEMES)


@app.command()
def recipes() -> None:
    """List the bundled recipes."""
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
    run_quickstart(output_dir, teacher_epochs=teacher_epochs, student_epochs=student_epochs, seed=seed,
                   quiet=quiet, console=console, train_limit=train_limit)


@app.callback()
def _plugins(plugin: Annotated[list[str] | None, typer.Option(
        "--plugin", help="import MODULE first: your own models, datasets, loss terms, schemes or commands register "
                         "there (repeatable; also the `kdkit.plugins` entry-point group)")] = None) -> None:
    for module in plugin or []:
        add_plugin(module)


def _add_registered_commands() -> None:
    """Commands contributed by plug-in modules (export, bench, report, cache ...): one registry, like everything else.

    A command whose module's extra is missing is not offered; ``kdkit models`` (and the other listings) say which."""
    have = {c.name or c.callback.__name__ for c in app.registered_commands}
    for entry in COMMANDS.entries():
        if entry.name not in have:
            app.command(entry.name)(entry.obj)


def _early_plugins(argv: list[str]) -> list[str]:
    """``--plugin MODULE`` is imported before the command line is parsed, so a plug-in can add commands too; it is
    accepted anywhere on the line (``kdkit train r.yaml --plugin mypkg.kd``), so every command takes it. Returns
    the arguments without it."""
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--plugin":
            if i + 1 >= len(argv):
                raise ConfigError("--plugin needs a module name, e.g. --plugin mypkg.kd")
            add_plugin(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--plugin="):
            add_plugin(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    return rest


def main() -> None:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `py:mymodule:Net` and --plugin find modules in the working directory
    try:
        args = _early_plugins(sys.argv[1:])
        _add_registered_commands()
        app(args=args)
    except KdkitError as err:
        err_console.print(f"[bold red]error:[/] {_one_line(str(err))}", highlight=False)
        sys.exit(2)
    except OSError as err:
        if err.errno not in _USER_OS_ERRORS:
            _report_bug()
            raise
        where = f" '{err.filename}'" if err.filename else ""
        err_console.print(f"[bold red]error:[/] cannot write or read{where}: {err.strerror}; free disk space, fix the "
                          f"permissions or choose another output_dir, then run again (add --resume to continue a "
                          f"run)", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted — resume with --resume")
        sys.exit(130)
    except SystemExit:
        raise
    except BaseException:
        _report_bug()
        raise


# Operating-system failures that are the user's environment, not a kdkit bug: full disk, quota, permissions,
# read-only file system, missing file.
_USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _report_bug() -> None:
    """An exception kdkit did not expect: the traceback follows (Python prints it), plus a line asking for a report."""
    err_console.print("[bold red]kdkit hit an unexpected error[/] — this is a bug; please report it with the command "
                      "line, the recipe and the traceback below", highlight=False)


_add_registered_commands()

if __name__ == "__main__":
    main()
