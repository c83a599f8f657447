"""Deployment: measure a model (parameters, size, CPU latency), export it to ONNX, quantise it to int8, benchmark it.

``kdkit.deploy.measure`` needs only PyTorch and safetensors. ``export``, ``quantize`` and ``bench`` also need the
``deploy`` extra (onnx, onnxruntime); they import it lazily so that ``import kdkit.deploy`` always works.
"""

from kdkit.deploy.measure import LatencyStats, count_params, cpu_latency, model_card, size_on_disk_mb

__all__ = ["LatencyStats", "count_params", "cpu_latency", "model_card", "size_on_disk_mb"]
