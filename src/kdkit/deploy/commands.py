"""Plain functions behind ``kdkit export`` and ``kdkit bench``; the CLI wraps them (thin: parse, call, print).

For now they take explicit model objects, example shapes and batches. Once the run-dir layout is settled they gain a
loader that turns ``RUN`` (``config.yaml`` = resolved recipe, ``checkpoints/best.safetensors`` = student weights,
``metrics.jsonl``) into these arguments; the measuring code stays here.

This module is imported when the CLI starts, so it imports nothing heavy (onnx, onnxruntime) at module level.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from kdkit.errors import KdkitError

__all__ = ["export_command", "bench_command"]

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
    from kdkit.deploy.bench import torch_accuracy
    from kdkit.deploy.export import export_onnx
    from kdkit.deploy.quantize import onnx_accuracy, quantize_dynamic_onnx, quantize_static_onnx
    from kdkit.utils import atomic_write_json

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
    atomic_write_json(out_dir / "export.json", summary)
    return summary


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

    Returns:
        The rows.
    """
    from kdkit.deploy.bench import bench_models, dump_json, dump_markdown, print_table

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
    )
    if out is not None:
        out_dir = Path(out)
        if out_dir.exists() and not out_dir.is_dir():
            raise KdkitError(f"bench output {out_dir} is a file; give a directory")
        dump_json(rows, out_dir / "bench.json")
        dump_markdown(rows, out_dir / "bench.md")
    if not quiet:
        print_table(rows, console=console)
    return rows
