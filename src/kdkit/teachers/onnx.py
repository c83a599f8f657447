"""ONNX teachers: ``onnx:PATH`` -- a classifier that exists only as an ONNX file, run by ONNX Runtime.

The model source ``onnx:`` (in :data:`kdkit.registry.MODEL_SOURCES`, the ``deploy`` extra) builds an
:class:`OnnxModel`: an ``nn.Module`` whose forward hands the (B, C, H, W) batch to an ONNX Runtime CPU session and
returns its first output as (B, K) float32 logits on the input's device. It therefore goes wherever a frozen teacher
goes -- :class:`kdkit.teachers.FrozenTeachers` in the offline scheme, several teachers combined, ``kdkit cache`` --
with these limits, each refused in one line:

* **logits only**: the graph is opaque, so no module can be tapped; a feature term on it (FitNets, AT, RKD ...) is
  refused by :func:`kdkit.terms.base.setup_terms`, and so is a term that differentiates the teacher (Sobolev);
* **frozen**: it has no trainable parameters, so a scheme that trains its teacher (``online``, ``mutual``) is refused
  when it asks for training mode;
* **its own weights**: the file holds them; give no ``checkpoint``.

The file's SHA-256 is kept in the (persistent) buffer ``onnx_sha256``, so the soft-label store's teacher identity --
the hash of the state dict -- changes when the file does.

The input must be float32 of the data's shape, normalised as the model expects: a teacher exported from a kdkit model
(``kdkit export``) takes exactly what the student takes. For another size, channel count or normalisation, declare it
with ``scheme.params.teacher_inputs`` (see :mod:`kdkit.teachers.adapters`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from kdkit.errors import CheckpointError, ConfigError
from kdkit.registry import MODEL_SOURCES


def file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def _session(path: Path, threads: int | None) -> Any:
    opts = ort.SessionOptions()
    # ORT's default pool has one thread per physical core; share the budget PyTorch was given instead.
    opts.intra_op_num_threads = int(threads if threads is not None else torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"model 'onnx:{path}': ONNX Runtime cannot load the file ({first})") from None


class OnnxModel(nn.Module):
    """A frozen classifier run by ONNX Runtime, usable as a teacher that gives logits only.

    Args:
        path: the ``.onnx`` file: one float32 input (B, C, H, W) -- the batch axis symbolic or fixed -- and logits
            (B, K) as the first output.
        num_classes: K the data has; the model's output width must match.
        in_channels, image_size: C and H = W the model is fed; fixed dimensions of the file must match.
        threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).

    Raises:
        ConfigError / CheckpointError: one line naming the file and what does not fit.
    """

    kd_logits_only = True  # see kdkit.types.is_logits_only: no module to tap, no gradient through it

    def __init__(self, path: str | Path, num_classes: int, in_channels: int = 3, image_size: int = 32,
                 threads: int | None = None) -> None:
        super().__init__()
        p = Path(path).expanduser()
        if not p.is_file():
            raise CheckpointError(f"model 'onnx:{path}': file not found" + ("; it is a directory, name the .onnx "
                                                                            "file inside" if p.is_dir() else ""))
        self.path = p
        self.session = _session(p, threads)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ConfigError(f"model 'onnx:{p}' has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); an "
                              f"ONNX teacher takes one image tensor")
        self.input_name = inputs[0].name
        if inputs[0].type != "tensor(float)":
            raise ConfigError(f"model 'onnx:{p}' input '{self.input_name}' is {inputs[0].type}; an ONNX teacher takes "
                              f"float32 images (export it in float32)")
        shape = list(inputs[0].shape)
        want = [None, in_channels, image_size, image_size]
        if len(shape) != 4 or any(isinstance(d, int) and w is not None and d != w for d, w in zip(shape, want,
                                                                                                  strict=False)):
            raise ConfigError(f"model 'onnx:{p}' takes input {_shape(shape)}, the data gives (B, {in_channels}, "
                              f"{image_size}, {image_size}); declare what it takes with scheme.params.teacher_inputs: "
                              f"[{{image_size: H, in_channels: C, mean: [...], std: [...]}}]")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        out_shape = list(outputs[0].shape)
        if len(out_shape) != 2:
            raise ConfigError(f"model 'onnx:{p}' first output '{outputs[0].name}' has shape {_shape(out_shape)}; "
                              f"an ONNX teacher must output (B, K) logits first")
        if isinstance(out_shape[1], int) and out_shape[1] != num_classes:
            raise ConfigError(f"model 'onnx:{p}' outputs {out_shape[1]} classes, the data has {num_classes}; "
                              f"use the teacher of this dataset")
        self.num_classes = num_classes
        self.register_buffer("onnx_sha256", torch.tensor(list(file_sha256(p)), dtype=torch.uint8))
        self.training = False

    def train(self, mode: bool = True) -> OnnxModel:
        if mode:
            raise ConfigError(f"model 'onnx:{self.path}' cannot train (ONNX Runtime runs inference only); use it as a "
                              f"frozen teacher in the offline scheme")
        self.training = False
        return self

    def _run(self, arr: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: arr})[0]

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        b = arr.shape[0]
        if self.fixed_batch is None or b == self.fixed_batch:
            out = self._run(arr)
        else:  # a file exported with a fixed batch: run it in pieces of that size, padding the last
            n = self.fixed_batch
            pieces = []
            for s in range(0, b, n):
                part = arr[s:s + n]
                if part.shape[0] < n:
                    part = np.concatenate([part, np.repeat(part[-1:], n - part.shape[0], axis=0)])
                pieces.append(self._run(part)[: min(n, b - s)])
            out = np.concatenate(pieces)
        if out.ndim != 2 or out.shape != (b, self.num_classes):
            raise ConfigError(f"model 'onnx:{self.path}' returned shape {tuple(out.shape)} for {b} inputs; expected "
                              f"({b}, {self.num_classes}) logits")
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, num_classes={self.num_classes}"


def _shape(shape: list[Any]) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + ")"


def build_onnx(path: str, num_classes: int, in_channels: int = 3, image_size: int = 32, **kwargs: Any) -> OnnxModel:
    """The ``onnx:`` model source: ``onnx:PATH`` with ``params: {threads: N}`` optionally."""
    allowed = {"threads"}
    if set(kwargs) - allowed:
        raise ConfigError(f"model 'onnx:{path}' has no params {sorted(set(kwargs) - allowed)}; allowed: threads")
    if not path:
        raise ConfigError("model 'onnx:' needs a file: 'onnx:path/to/teacher.onnx'")
    return OnnxModel(path, num_classes, in_channels, image_size, **kwargs)


MODEL_SOURCES.add("onnx", build_onnx, "onnx:PATH, a frozen teacher run by ONNX Runtime, logits only (deploy extra)",
                  weights_in_name=True)

__all__ = ["OnnxModel", "build_onnx"]
