"""Small shared helpers: atomic writes, seeding, hashing, the CPU a timing was taken on."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DirLock:
    """An exclusive, non-blocking ``fcntl.flock`` on ``lock_file`` (created if missing), holding the owner's pid.

    The OS drops the lock when the process ends, however it ends (kill -9 included), so a crash never leaves a stale
    lock. :meth:`acquire` raises ``busy(pid)`` — an exception the caller builds with a one-line message — when another
    process holds it. Where ``fcntl`` is missing (Windows) no lock is taken.
    """

    def __init__(self, lock_file: Path, busy: Any) -> None:
        self.path = Path(lock_file)
        self.busy = busy
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise self.busy(holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def fsync_file(path: Path) -> None:
    """Force a written file's data to disk (so a rename that follows never publishes an empty file after a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Force a directory's entries (renames, new files) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_info() -> dict[str, Any]:
    """What a timing depends on: CPU model, the SIMD flags that pick PyTorch's and ONNX Runtime's kernels (AVX2,
    AVX-512, VNNI, AMX), logical CPUs and the load average. Read from ``/proc/cpuinfo`` where it exists (Linux);
    elsewhere the model is ``platform.processor()`` and the flags are empty."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"model": model, "simd": [f for f in _SIMD_FLAGS if f in flags], "logical_cpus": os.cpu_count(),
            "load_average": load, "isa": effective_isa()}


# Environment variables that cap the instruction set PyTorch's kernels use below what the CPU has: ATen's own kernels
# (ATEN_CPU_CAPABILITY), oneDNN's convolutions and matmuls (ONEDNN_MAX_CPU_ISA, formerly DNNL_MAX_CPU_ISA) and MKL's
# BLAS (MKL_ENABLE_INSTRUCTIONS). Setting them emulates an older CPU (e.g. AVX2-only) on a newer one.
ISA_CAP_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def isa_caps() -> dict[str, str]:
    """The instruction-set caps set in this process's environment (:data:`ISA_CAP_VARS`), by variable name."""
    return {k: os.environ[k] for k in ISA_CAP_VARS if os.environ.get(k)}


def effective_isa() -> dict[str, Any]:
    """The instruction set PyTorch's CPU kernels actually use: ATen's dispatch level (``AVX512``, ``AVX2``, ...: what
    ``torch.backends.cpu.get_cpu_capability()`` says, after ATEN_CPU_CAPABILITY) and any caps set in the environment
    (:func:`isa_caps`). With no caps the SIMD flags say it all; with caps the CPU's flags overstate what runs."""
    try:
        aten = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):  # a torch without the query
        aten = None
    return {"aten_capability": aten, "caps": isa_caps()}


def mean_pm_std(ms: dict[str, Any] | None, digits: int = 2, signed: bool = False) -> str:
    """``{"mean": m, "std": s}`` as ``"m ± s"`` for tables (``–`` without a mean, ``n/a`` for a one-seed std)."""
    if not ms or ms.get("mean") is None:
        return "–"
    mean = f"{ms['mean']:+.{digits}f}" if signed else f"{ms['mean']:.{digits}f}"
    std = "n/a" if ms.get("std") is None else f"{ms['std']:.{digits}f}"
    return f"{mean} ± {std}"
