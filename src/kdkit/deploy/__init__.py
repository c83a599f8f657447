"""Deployment: measure a model (parameters, size, CPU latency), export it to ONNX, quantise it to int8, benchmark it.

``kdkit.deploy.measure`` needs only PyTorch and safetensors and is imported eagerly. ``export``, ``quantize`` and
``bench`` also need the ``deploy`` extra (onnx, onnxruntime); their names are resolved on first use, so
``import kdkit.deploy`` always works and ``from kdkit.deploy import export_onnx`` works when the extra is installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from kdkit.deploy.measure import LatencyStats, count_params, cpu_latency, model_card, size_on_disk_mb

_LAZY = {
    "ExportResult": "export",
    "export_onnx": "export",
    "verify_onnx": "export",
    "ort_session": "export",
    "QuantizeResult": "quantize",
    "quantize_dynamic_onnx": "quantize",
    "quantize_static_onnx": "quantize",
    "onnx_accuracy": "quantize",
    "BenchEntry": "bench",
    "bench_models": "bench",
    "to_markdown": "bench",
    "dump_json": "bench",
    "print_table": "bench",
}

__all__ = ["LatencyStats", "count_params", "cpu_latency", "model_card", "size_on_disk_mb", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"kdkit.deploy.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'kdkit.deploy' has no attribute {name!r}")
