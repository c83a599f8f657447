"""What a model costs to deploy: parameter count, size on disk and CPU latency.

These helpers are shared by ``kdkit quickstart``, ``kdkit bench`` and the report, so every number kdkit prints about a
model is measured the same way:

* **parameters** — unique ``nn.Parameter`` elements (tied weights counted once);
* **size on disk** — bytes of the model's ``state_dict`` (parameters *and* buffers, e.g. BatchNorm running stats)
  written as a safetensors file, in **MB = 10^6 bytes** (not MiB);
* **latency** — wall-clock milliseconds per call on the CPU, warm, median (p50) and p90 over repeated calls.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdkit.errors import KdkitError
from kdkit.utils import cpu_info  # noqa: F401 - re-exported: benchmarks and deploy read it from here

__all__ = ["LatencyStats", "count_params", "size_on_disk_mb", "cpu_latency", "model_card"]

_MB = 1e6  # decimal megabytes, as file managers and model cards report them


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one call (one batch) in milliseconds.

    Attributes:
        p50_ms: median call time.
        p90_ms: 90th percentile call time (≥ p50_ms).
        mean_ms: mean call time (sensitive to outliers, hence p50 is the headline number).
        n: number of timed calls.
        batch_size: samples per call (``example.shape[0]``).
        per_sample_ms: ``p50_ms / batch_size``, to compare throughput across batch sizes.
    """

    p50_ms: float
    p90_ms: float
    mean_ms: float
    n: int
    batch_size: int
    per_sample_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model``.

    ``model.parameters()`` yields each ``nn.Parameter`` once, so tied weights (e.g. a shared embedding and output
    projection) are counted once. Buffers (BatchNorm running statistics) are not parameters and are not counted.

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad=True``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def size_on_disk_mb(model: nn.Module) -> float:
    """Size of ``model``'s ``state_dict`` saved as safetensors, in MB (10^6 bytes).

    The file is written to a temporary directory, measured and deleted. Shared tensors are stored once (safetensors'
    ``save_model`` de-duplicates them), so the figure is what ``kdkit`` checkpoints of this model weigh: roughly
    ``(parameters + buffer elements) × bytes per element`` plus a small JSON header.
    """
    from safetensors.torch import save_model

    fd, path = tempfile.mkstemp(suffix=".safetensors", prefix="kdkit-size-")
    os.close(fd)
    try:
        save_model(model, path)
        return os.path.getsize(path) / _MB
    finally:
        os.unlink(path)


def cpu_latency(
    fn_or_model: nn.Module | Callable[[Any], Any],
    example: Tensor | np.ndarray,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.2,
    threads: int | None = None,
) -> LatencyStats:
    """Time ``fn_or_model(example)`` on the CPU.

    Protocol: ``warmup`` untimed calls (allocator, oneDNN/ORT kernel selection and caches warm up), then timed calls
    with :func:`time.perf_counter` until at least ``repeats`` calls **and** ``min_time_s`` seconds of timed calls have
    been made (fast models thus get more samples, which steadies the median), capped at ``20 × repeats`` calls. Python's
    garbage collector is paused while timing so a collection does not land inside one call. A module is put in eval
    mode and run under :func:`torch.inference_mode`; its training flag is restored afterwards.

    Args:
        fn_or_model: an ``nn.Module`` or any callable taking ``example`` (e.g. a wrapper around an ONNX Runtime
            session, which may take a ``np.ndarray`` so that the tensor→array conversion is not timed).
        example: the batch fed at every call; ``example.shape[0]`` is the batch size.
        warmup: untimed calls before timing.
        repeats: minimum number of timed calls (≥ 1).
        min_time_s: minimum total timed duration.
        threads: if given, ``torch.set_num_threads(threads)`` for the measurement; the previous value is restored.
            This affects PyTorch ops only; an ONNX Runtime session has its own thread pool, set when it is created.

    Returns:
        :class:`LatencyStats` per call (p50 = median, p90, mean) and per sample (p50 / batch size).
    """
    if repeats < 1:
        raise KdkitError(f"cpu_latency: repeats must be ≥ 1, got {repeats}")
    if warmup < 0:
        raise KdkitError(f"cpu_latency: warmup must be ≥ 0, got {warmup}")
    if threads is not None and threads < 1:
        raise KdkitError(f"cpu_latency: threads must be ≥ 1 or None, got {threads}")
    batch_size = int(example.shape[0]) if len(example.shape) > 0 else 1
    is_module = isinstance(fn_or_model, nn.Module)
    was_training = fn_or_model.training if is_module else False
    old_threads = torch.get_num_threads()
    gc_was_enabled = gc.isenabled()
    max_calls = 20 * repeats
    times: list[float] = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if is_module:
            fn_or_model.eval()
        with torch.inference_mode():
            for _ in range(warmup):
                fn_or_model(example)
            gc.collect()
            gc.disable()
            spent = 0.0
            while len(times) < repeats or (spent < min_time_s and len(times) < max_calls):
                t0 = time.perf_counter()
                fn_or_model(example)
                dt = time.perf_counter() - t0
                times.append(dt)
                spent += dt
    finally:
        if gc_was_enabled:
            gc.enable()
        if is_module:
            fn_or_model.train(was_training)
        if threads is not None:
            torch.set_num_threads(old_threads)
    ms = np.asarray(times) * 1e3
    p50 = float(np.percentile(ms, 50))
    return LatencyStats(
        p50_ms=p50,
        p90_ms=float(np.percentile(ms, 90)),
        mean_ms=float(ms.mean()),
        n=len(times),
        batch_size=batch_size,
        per_sample_ms=p50 / batch_size,
    )


def implausible_batches(stats: dict[int, LatencyStats]) -> list[int]:
    """Batch sizes whose per-sample time exceeds that of the smallest batch size measured.

    Batching never makes one sample slower on a CPU (the batch-1 call pays the same per-call overheads and no less
    compute per sample), so such a pair means a disturbed measurement -- another process took the cores during one of
    them -- not a property of the model."""
    if not stats:
        return []
    lo = min(stats)
    return [bs for bs in sorted(stats) if bs > lo and stats[bs].per_sample_ms > stats[lo].per_sample_ms]


def measure_batch_sizes(fn_or_model: nn.Module | Callable[[Any], Any], make_batch: Callable[[int], Any],
                        batch_sizes: Sequence[int] = (1, 64), **latency_kwargs: Any
                        ) -> tuple[dict[int, LatencyStats], str | None]:
    """:func:`cpu_latency` at every batch size, checked for plausibility.

    When a larger batch costs more per sample than the smallest (:func:`implausible_batches`), every batch size is
    measured again once; if the pair is still implausible the figures are returned with a flag -- one sentence to
    print beside them -- instead of being presented as a result.

    Returns:
        ``({batch_size: LatencyStats}, flag or None)``.
    """
    def run() -> dict[int, LatencyStats]:
        return {int(bs): cpu_latency(fn_or_model, make_batch(int(bs)), **latency_kwargs) for bs in batch_sizes}

    stats = run()
    if implausible_batches(stats):
        stats = run()
    bad = implausible_batches(stats)
    flag = None
    if bad:
        lo = min(stats)
        flag = (f"implausible timing: per-sample time at batch {bad[0]} ({stats[bad[0]].per_sample_ms:.3g} ms) above "
                f"batch {lo} ({stats[lo].per_sample_ms:.3g} ms) after a re-measurement; the machine was busy -- "
                f"re-run on a quiet machine")
    return stats, flag


def model_card(
    model: nn.Module,
    example_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64),
    **latency_kwargs: Any,
) -> dict[str, Any]:
    """Parameters, size on disk and CPU latency of ``model`` at each batch size.

    Args:
        model: the model (its first parameter's dtype is used for the random example input).
        example_shape: shape of ONE sample without the batch axis, e.g. ``(1, 28, 28)`` for MNIST.
        batch_sizes: batch sizes to time.
        **latency_kwargs: forwarded to :func:`cpu_latency` (``warmup``, ``repeats``, ``min_time_s``, ``threads``).

    Returns:
        ``{"params": int, "trainable_params": int, "size_mb": float, "latency": {batch_size: LatencyStats dict}}``.
    """
    first = next(iter(model.parameters()), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    device = first.device if first is not None else torch.device("cpu")
    latency: dict[int, dict[str, float | int]] = {}
    gen = torch.Generator().manual_seed(0)
    for bs in batch_sizes:
        x = torch.randn((int(bs), *map(int, example_shape)), generator=gen).to(device=device, dtype=dtype)
        latency[int(bs)] = cpu_latency(model, x, **latency_kwargs).as_dict()
    return {
        "params": count_params(model),
        "trainable_params": count_params(model, trainable_only=True),
        "size_mb": size_on_disk_mb(model),
        "latency": latency,
    }
