"""Plain functions behind ``kdkit export`` and ``kdkit bench``; the CLI wraps them (thin: parse, call, print).

For now they take explicit model objects, example shapes and batches. Once the run-dir layout is settled they gain a
loader that turns ``RUN`` (``config.yaml`` = resolved recipe, ``checkpoints/best.safetensors`` = student weights,
``metrics.jsonl``) into these arguments; the measuring code stays here.

This module is imported when the CLI starts, so it imports nothing heavy (onnx, onnxruntime) at module level.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from itertools import islice
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import typer
from rich.console import Console
from torch import nn

from kdkit.data import Augment, BatchLoader, load_source, predefined_split, stratified_split
from kdkit.data.run import build_data
from kdkit.data.views import model_data, model_transform
from kdkit.deploy.bench import BenchEntry, bench_models, dump_json, dump_markdown, print_table, torch_accuracy
from kdkit.deploy.export import export_onnx
from kdkit.deploy.measure import cpu_info
from kdkit.deploy.quantize import onnx_accuracy, quantize_dynamic_onnx, quantize_static_onnx
from kdkit.errors import KdkitError
from kdkit.models.factory import load_model
from kdkit.recipe import load_recipe
from kdkit.registry import COMMANDS
from kdkit.utils import atomic_write_json, fsync_dir, fsync_file
from kdkit.weights import check_input_shape, input_shape_of

__all__ = ["bench_cli", "bench_command", "export_cli", "export_command", "load_run"]

Calibration = Literal["static", "dynamic"]


def export_command(
    model: nn.Module,
    example_shape: Sequence[int],
    out: str | os.PathLike[str],
    format: str = "onnx",
    int8: bool = False,
    calibration: Calibration = "static",
    calibration_batches: Sequence[Any] | None = None,
    eval_batches: Sequence[Any] | None = None,
    opset: int = 17,
    stem: str = "model",
) -> dict[str, Any]:
    """Export ``model`` to ``out/{stem}.onnx`` (verified), optionally quantise to ``out/{stem}.int8.onnx``.

    Args:
        model: the trained student.
        example_shape: one sample's shape without the batch axis, e.g. ``(1, 28, 28)``.
        out: output directory (created).
        format: only ``"onnx"`` for now.
        int8: also write an int8 model.
        calibration: ``"static"`` (int8 activations; needs ``calibration_batches``, e.g. training data with the eval
            transform) or ``"dynamic"`` (no data needed).
        calibration_batches: batches for static calibration (inputs, ``(input, target)`` pairs or ``Batch`` dicts).
        eval_batches: ``(input, target)`` batches of the validation split; when given, the accuracy of PyTorch, the
            fp32 and the int8 model are measured (the int8 accuracy change is the number users ask about).
        opset: ONNX opset.
        stem: file name stem.

    Returns:
        A JSON-ready summary, also written to ``out/export.json``: ``{"onnx": ExportResult, "int8": QuantizeResult
        or None, "accuracy": {"pytorch", "ort-fp32", "ort-int8"} or None}``.
    """

    if format != "onnx":
        raise KdkitError(f"export format {format!r} is not supported: use --format onnx")
    if calibration not in ("static", "dynamic"):
        raise KdkitError(f"calibration {calibration!r} is not supported: use static or dynamic")
    if int8 and calibration == "static" and not calibration_batches:
        raise KdkitError("static int8 calibration needs calibration batches; pass some or use --calibration dynamic")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise KdkitError(f"export output {out_dir} is a file; give a directory")
    first = next(iter(model.parameters()), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    example = torch.randn(1, *map(int, example_shape), generator=torch.Generator().manual_seed(0), dtype=dtype)

    # Everything is written into a staging directory first and published as a set with export.json last (after the
    # old export.json and any old file of the set were removed), so a kill never leaves a new model.onnx beside an
    # old model.int8.onnx and export.json: a directory without export.json holds an interrupted export.
    stage = out_dir.parent / f".{out_dir.name}.export.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        summary = _export_into(model, example, stage, int8, calibration, calibration_batches, eval_batches, opset,
                               stem)
        _publish(stage, out_dir, summary, stem)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return summary


def _export_into(model: nn.Module, example: torch.Tensor, out_dir: Path, int8: bool, calibration: str,
                 calibration_batches: Sequence[Any] | None, eval_batches: Sequence[Any] | None, opset: int, stem: str
                 ) -> dict[str, Any]:
    exported = export_onnx(model, example, out_dir / f"{stem}.onnx", opset=opset, dynamic_batch=True)
    summary: dict[str, Any] = {"onnx": exported.as_dict(), "int8": None, "accuracy": None}
    if int8:
        dst = out_dir / f"{stem}.int8.onnx"
        if calibration == "static":
            q = quantize_static_onnx(exported.path, dst, calibration_batches or [])
        else:
            q = quantize_dynamic_onnx(exported.path, dst)
        summary["int8"] = q.as_dict()
    if eval_batches:
        batches = list(eval_batches)
        acc: dict[str, float | None] = {
            "pytorch": torch_accuracy(model, batches),
            "ort-fp32": onnx_accuracy(exported.path, batches),
            "ort-int8": None,
        }
        if summary["int8"] is not None:
            acc["ort-int8"] = onnx_accuracy(summary["int8"]["path"], batches)
        summary["accuracy"] = acc
    return summary


def _publish(stage: Path, out_dir: Path, summary: dict[str, Any], stem: str) -> None:
    """Move the staged files into ``out_dir``: old export.json and old files of the set go first, export.json last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "export.json").unlink(missing_ok=True)
    for name in (f"{stem}.onnx", f"{stem}.int8.onnx"):
        (out_dir / name).unlink(missing_ok=True)
    fsync_dir(out_dir)
    for part in ("onnx", "int8"):
        if summary[part] is not None:
            src = Path(summary[part]["path"])
            fsync_file(src)
            os.replace(src, out_dir / src.name)
            summary[part]["path"] = str(out_dir / src.name)
    fsync_dir(out_dir)
    atomic_write_json(out_dir / "export.json", summary)


def bench_command(
    entries: Sequence[Any],
    out: str | os.PathLike[str] | None = None,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int | None = None,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.2,
    console: Any = None,
    quiet: bool = False,
    progress: Callable[[str], None] | None = None,
    teacher: str | None = None,
) -> list[dict[str, Any]]:
    """Benchmark ``entries`` (:class:`kdkit.deploy.bench.BenchEntry`), print the table, write JSON + Markdown.

    Args:
        entries: models to compare (teacher and students, each in PyTorch and/or ONNX fp32/int8).
        out: directory for ``bench.json`` and ``bench.md`` (nothing written when None).
        batch_sizes: batch sizes to time.
        threads: intra-op threads for every runtime (default ``torch.get_num_threads()``).
        warmup, repeats, min_time_s: timing protocol, see :func:`kdkit.deploy.measure.cpu_latency`.
        console: a rich console to print to (default stdout).
        quiet: do not print the table.
        progress: forwarded to :func:`kdkit.deploy.bench.bench_models`.
        teacher: the entry the ``× teacher`` columns compare with (default: the first).

    Returns:
        The rows.
    """

    if not entries:
        raise KdkitError("kdkit bench: name at least one model")
    rows = bench_models(
        list(entries),
        batch_sizes=batch_sizes,
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        min_time_s=min_time_s,
        progress=progress,
        teacher=teacher,
    )
    if out is not None:
        out_dir = Path(out)
        if out_dir.exists() and not out_dir.is_dir():
            raise KdkitError(f"bench output {out_dir} is a file; give a directory")
        machine = cpu_info()  # timings depend on the CPU (model, AVX2/AVX-512/VNNI/AMX) and on the load
        rows = [dict(r, cpu=machine) for r in rows]
        dump_json(rows, out_dir / "bench.json")
        dump_markdown(rows, out_dir / "bench.md")
    if not quiet:
        print_table(rows, console=console)
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Run directories -> models and batches, and the Typer commands.


def load_run(target: str | os.PathLike[str], data: str | None = None, calibration_batches: int = 8,
             batch_size: int = 64) -> tuple[nn.Module, dict[str, Any], list[Any], list[Any]]:
    """Model, metadata, calibration inputs and (input, target) validation batches for a run directory or a
    kdkit weights file.

    With a run directory and no ``data``, the run's own recipe (``config.yaml``) gives the dataset and the held-out
    split; otherwise ``data`` names a dataset whose stratified 20% split is used (as ``kdkit eval`` does). Inputs are
    normalised with the statistics stored in the weights' metadata; calibration uses training samples, un-augmented.
    """

    model, meta = load_model(target)
    run_dir = Path(target)
    # A student that read a derived named input (data.inputs, e.g. 14x14 digits) is fed that input again.
    plain = model_transform(meta, Augment(mean=meta["mean"], std=meta["std"], crop_padding=0, flip=False, seed=0))
    if run_dir.is_dir() and (run_dir / "config.yaml").is_file() and data is None:
        recipe = load_recipe(run_dir / "config.yaml")
        d = build_data(recipe)
        train, val = model_data(meta, d.train), model_data(meta, d.val)  # a model of another array reads that array
    else:
        trained_on = meta.get("data") or {}
        if data is None and not trained_on.get("name"):
            raise KdkitError(f"{target}: the checkpoint does not record its dataset; pass --data NAME")
        params = trained_on.get("params") or {} if data is None or data == trained_on.get("name") else {}
        src = model_data(meta, load_source(data or trained_on["name"], **params))
        if src.test_indices is not None:  # the source's own held-out part (npz x_val/x_test), as in training
            tr, va = predefined_split(src)
        else:
            tr, va = stratified_split(src.targets, src.groups, trained_on.get("val_fraction", 0.2),
                                      trained_on.get("split_seed", 0))
        train, val = src.subset(torch.as_tensor(tr)), src.subset(torch.as_tensor(va))
    check_input_shape(val, meta, f"{target}: the data")
    if val.num_classes != meta["num_classes"]:
        raise KdkitError(f"{target}: the model predicts {meta['num_classes']} classes but the data has "
                         f"{val.num_classes}; pass --data with the dataset it was trained on")
    cal_loader = BatchLoader(train, torch.arange(len(train.targets)), batch_size, plain, shuffle=True, seed=0)
    cal_loader.set_epoch(0)
    calib = [b["input"] for b in islice(iter(cal_loader), calibration_batches)]
    val_loader = BatchLoader(val, torch.arange(len(val.targets)), 256, plain, shuffle=False, seed=0)
    evals = [(b["input"], b["target"]) for b in val_loader]
    return model, meta, calib, evals


def _name_of(target: str) -> str:
    p = Path(target)
    return p.name if p.is_dir() else p.stem


@COMMANDS.register("export")
def export_cli(
    run: Annotated[str, typer.Argument(help="run directory or kdkit weights file (.safetensors)")],
    format: Annotated[str, typer.Option("--format", help="export format")] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="also write an int8 model (ONNX Runtime quantisation)")]
    = False,
    calibration: Annotated[str, typer.Option(help="int8 calibration: static (uses training samples) or "
                                                  "dynamic")] = "static",
    data: Annotated[str | None, typer.Option(help="dataset for calibration/accuracy (default: the run's)")]
    = None,
    out: Annotated[Path | None, typer.Option(help="output directory (default: RUN/export)")] = None,
) -> None:
    """Export the student to ONNX (verified against PyTorch), optionally int8, and measure int8 accuracy."""
    model, meta, calib, evals = load_run(run, data)
    out_dir = out or ((Path(run) / "export") if Path(run).is_dir() else Path(run).with_suffix("") / "export")
    shape = input_shape_of(meta)
    s = export_command(model, shape, out_dir, format=format, int8=int8, calibration=calibration,  # type: ignore
                       calibration_batches=calib, eval_batches=evals)
    c = Console(soft_wrap=True)
    c.print(f"ONNX: {s['onnx']['path']} (max |ONNX − PyTorch| = {s['onnx'].get('max_abs_diff', float('nan')):.2e})")
    if s["int8"]:
        c.print(f"int8: {s['int8']['path']}")
    if s["accuracy"]:
        a = s["accuracy"]
        line = f"top-1 on {len(evals)} val batches: PyTorch {a['pytorch']:.2f}%, ONNX fp32 {a['ort-fp32']:.2f}%"
        if a.get("ort-int8") is not None:
            line += f", int8 {a['ort-int8']:.2f}% ({a['ort-int8'] - a['ort-fp32']:+.2f})"
        c.print(line)
    c.print(f"summary: {out_dir / 'export.json'}")

@COMMANDS.register("bench")
def bench_cli(
    models: Annotated[list[str], typer.Argument(help="run directories or weights files (teacher and students)")],
    data: Annotated[str | None, typer.Option(help="dataset for accuracy (default: each run's own split)")] = None,
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="also time ONNX Runtime fp32 and int8")] = True,
    out: Annotated[Path, typer.Option(help="where bench.json and bench.md go")] = Path("runs/bench"),
    repeats: Annotated[int, typer.Option(help="timed repeats per measurement")] = 50,
    teacher: Annotated[str | None, typer.Option(help="name (run directory name) of the model the '× teacher' "
                                                     "speed-up columns compare with (default: the first)")] = None,
) -> None:
    """Parameters, size, latency p50/p90 at batch 1 and 64 (PyTorch eager, ORT fp32, ORT int8) and accuracy."""
    entries = []
    for target in models:
        model, meta, calib, evals = load_run(target, data)
        shape = input_shape_of(meta)
        fp32 = int8_path = None
        if onnx:
            s = export_command(model, shape, out / "onnx" / _name_of(target), int8=True,
                               calibration="static", calibration_batches=calib)
            fp32, int8_path = s["onnx"]["path"], s["int8"]["path"]
        entries.append(BenchEntry(name=_name_of(target), model=model, onnx_fp32=fp32, onnx_int8=int8_path,
                                  eval_batches=evals, example_shape=shape))
    bench_command(entries, out=out, repeats=repeats, teacher=teacher)
