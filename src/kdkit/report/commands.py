"""``kdkit report RUN... [--out DIR] [--case-study FILE]`` (in :data:`kdkit.registry.COMMANDS`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kdkit.registry import COMMANDS
from kdkit.report import write_report


@COMMANDS.register("report")
def report(
    runs: Annotated[list[Path], typer.Argument(help="run directories (each with metrics.jsonl)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="output directory (default: a 'report' "
                                                                    "folder next to the first run)")] = None,
    case_study: Annotated[Path | None, typer.Option("--case-study", help="the quickstart's table.json: use "
                                                                            "its roles and measurements")] = None,
    no_measure: Annotated[bool, typer.Option("--no-measure", help="do not measure size and latency of runs the "
                                                                  "case study does not cover")] = False,
    study: Annotated[list[Path] | None, typer.Option("--study", help="a kdkit seeds output directory (seeds.json) "
                                                                     "or a kdkit tune study directory (after "
                                                                     "--show): a section of the report; "
                                                                     "repeatable")] = None,
) -> None:
    """One self-contained HTML page (and summary.md) comparing runs: teacher vs scratch vs KD, accuracy against
    latency and size, the case-study table, and learning curves per loss term."""
    out_dir = out if out is not None else runs[0].parent / "report"
    path = write_report(runs, out_dir, case_study=case_study, measure=not no_measure, studies=study or [])
    console = Console()
    console.print(f"[bold green]report[/] {path}")
    console.print(f"summary: {path.parent / 'summary.md'}")
