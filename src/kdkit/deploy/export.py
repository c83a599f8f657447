"""Export a PyTorch model to ONNX and check that ONNX Runtime computes the same logits.

Exporter choice (measured with torch 2.14, onnx 1.23, onnxruntime 1.32 on the zoo's MLPs and CNNs):

* ``"torchscript"`` — the legacy tracer, ``torch.onnx.export(..., dynamo=False)``. Exports an MLP or a small CNN in
  ~0.05–0.1 s, honours the requested opset (17) exactly, and emits compact fused ops (``Flatten``,
  ``GlobalAveragePool``, BatchNorm folded into ``Conv``) that ONNX Runtime's quantiser knows how to handle. It is
  deprecated upstream ("will be removed") but fully working in this torch.
* ``"dynamo"`` — the ``torch.export``-based exporter (torch's default since 2.9). Also correct, but 1.5–5 s per
  export, prints progress lines, and has no implementations below opset 18: asking for 17 triggers a down-conversion
  that fails (with a logged traceback) and silently leaves the model at opset 18.

``exporter="auto"`` (the default) therefore uses TorchScript and falls back to dynamo (at opset ≥ 18) only when the
tracer raises — e.g. on a model it cannot trace, or once the legacy path is removed from torch. Either way the file is
written atomically (temp file in the same directory, then ``os.replace``) and verified with ONNX Runtime.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from kdkit.errors import CheckpointError, KdkitError
from kdkit.models.qat import qat_full_range
from kdkit.types import logits_of

__all__ = ["ExportResult", "export_onnx", "verify_onnx", "ort_session", "run_onnx", "file_size_mb"]

Exporter = Literal["auto", "torchscript", "dynamo"]
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_DYNAMO_MIN_OPSET = 18  # the dynamo exporter has no opset-17 implementations (see the module docstring)


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file.
        exporter: ``"torchscript"`` or ``"dynamo"`` — the path that actually produced the file.
        opset: default-domain opset of the written model.
        dynamic_batch: whether the batch axis (axis 0 of input and logits) is symbolic.
        input_shape: shape of the example used for tracing (batch axis included).
        size_mb: file size in MB (10^6 bytes).
        max_abs_diff: largest |ONNX Runtime − PyTorch| logit difference on the verification inputs (None if not
            verified).
        notes: anything the user should know (e.g. a fallback to the dynamo exporter).
    """

    path: Path
    exporter: str
    opset: int
    dynamic_batch: bool
    input_shape: tuple[int, ...]
    size_mb: float
    max_abs_diff: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "exporter": self.exporter,
            "opset": self.opset,
            "dynamic_batch": self.dynamic_batch,
            "input_shape": list(self.input_shape),
            "size_mb": self.size_mb,
            "max_abs_diff": self.max_abs_diff,
            "notes": list(self.notes),
        }


class _LogitsOnly(nn.Module):
    """Wrap a model so that its single output is the logits tensor (HF-style outputs, tuples → logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return logits_of(self.model(x))


def file_size_mb(path: str | os.PathLike[str]) -> float:
    """Size of a file in MB (10^6 bytes)."""
    return os.path.getsize(_existing_file(path, "model file")) / 1e6


def _existing_file(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} not found: {p} (check the path; export one with `kdkit export`)")
    return p


def _first_line(e: BaseException, limit: int = 300) -> str:
    """One line of an exception message (tracer and ORT errors span many lines), for one-line KdkitErrors."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def _chmod_like_new_file(path: str) -> None:
    """mkstemp creates 0600 files; give the result the permissions ``open()`` would have (0666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _export_torchscript(model: nn.Module, example: Tensor, path: str, opset: int, dynamic_batch: bool) -> None:
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # We chose this path deliberately (module docstring); its deprecation notice would only alarm users.
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r".*will be removed.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def _export_dynamo(model: nn.Module, example: Tensor, path: str, opset: int, dynamic_batch: bool) -> None:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    # torch.export specialises a dimension of size 1 to a constant; trace with batch 2 when the batch is dynamic.
    if dynamic_batch and example.shape[0] == 1:
        example = example.expand(2, *example.shape[1:]).contiguous()
    program = torch.onnx.export(
        model,
        (example,),
        None,
        dynamo=True,
        opset_version=max(opset, _DYNAMO_MIN_OPSET),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=shapes,
        verbose=False,
        external_data=False,
    )
    program.save(path, external_data=False)


def export_onnx(
    model: nn.Module,
    example: Tensor,
    path: str | os.PathLike[str],
    opset: int = 17,
    dynamic_batch: bool = True,
    exporter: Exporter = "auto",
    verify: bool = True,
) -> ExportResult:
    """Export ``model`` (in eval mode) to an ONNX file with one input ``"input"`` and one output ``"logits"``.

    Args:
        model: a module whose forward takes one tensor and returns logits (or an object/tuple holding them).
        example: a representative input, e.g. (B, C, H, W) float; only its shape and dtype matter.
        path: destination ``.onnx`` file; parent directories are created; written atomically.
        opset: ONNX opset for the TorchScript exporter (the dynamo exporter uses ``max(opset, 18)``).
        dynamic_batch: make axis 0 symbolic so any batch size runs.
        exporter: ``"auto"`` (TorchScript, falling back to dynamo), ``"torchscript"`` or ``"dynamo"``.
        verify: run the file with ONNX Runtime on ``example`` (and on a batch of another size when the batch is
            dynamic) and raise if the logits differ from PyTorch's (see :func:`verify_onnx`).

    Returns:
        An :class:`ExportResult`, with ``max_abs_diff`` filled when ``verify``.

    Raises:
        KdkitError: when neither exporter can convert the model, or verification fails.
    """
    import onnx

    path = Path(path)
    if path.suffix != ".onnx":
        raise KdkitError(f"export path must end in .onnx: {path}")
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise KdkitError(f"unknown exporter {exporter!r}: choose auto, torchscript or dynamo")
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training  # read before .eval(), which switches the wrapped model too
    wrapped = _LogitsOnly(model).eval()
    notes: list[str] = []
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".onnx.tmp")
    os.close(fd)
    used = exporter
    try:
        with torch.no_grad():
            if exporter in ("auto", "torchscript"):
                try:
                    _export_torchscript(wrapped, example, tmp, opset, dynamic_batch)
                    used = "torchscript"
                except KdkitError:
                    raise  # the model itself rejected the example (e.g. a ShapeError): another exporter won't help
                except Exception as e:  # the tracer's failures come in many types
                    if exporter == "torchscript":
                        raise KdkitError(
                            f"TorchScript ONNX export of {type(model).__name__} to {path} failed: {_first_line(e)}"
                        ) from e
                    notes.append(f"TorchScript exporter failed ({type(e).__name__}: {_first_line(e)}); used dynamo")
                    used = "dynamo"
            if used == "dynamo":
                try:
                    _export_dynamo(wrapped, example, tmp, opset, dynamic_batch)
                except KdkitError:
                    raise
                except Exception as e:
                    raise KdkitError(f"ONNX export of {type(model).__name__} to {path} failed: {_first_line(e)}") from e
        onnx.checker.check_model(tmp)
        _chmod_like_new_file(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        model.train(was_training)

    proto = onnx.load(str(path), load_external_data=False)
    written_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    result = ExportResult(
        path=path,
        exporter=used,
        opset=int(written_opset),
        dynamic_batch=dynamic_batch,
        input_shape=tuple(int(s) for s in example.shape),
        size_mb=file_size_mb(path),
        notes=notes,
    )
    if verify:
        checks = [example]
        if dynamic_batch:
            # A second batch size proves the batch axis really is dynamic (a traced constant would break it).
            other = 3 if example.shape[0] != 3 else 5
            idx = torch.arange(other) % example.shape[0]
            checks.append(example[idx])
        result.max_abs_diff = verify_onnx(path, model, checks)
    return result


def ort_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An ONNX Runtime CPU inference session for ``path``.

    Args:
        path: ``.onnx`` file.
        threads: intra-op threads; ``None`` means ``torch.get_num_threads()`` so that PyTorch and ONNX Runtime are
            timed with the same parallelism (ORT's own default is one thread per physical core).
    """
    import onnxruntime as ort

    p = _existing_file(path, "ONNX model")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads if threads is not None else torch.get_num_threads())
    opts.inter_op_num_threads = 1  # classifier graphs are sequential chains; a second pool only adds contention
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers etc. are noise here
    try:
        return ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise CheckpointError(f"ONNX Runtime cannot load {p}: {_first_line(e)}") from e


def run_onnx(session: Any, x: Tensor | np.ndarray) -> np.ndarray:
    """Run a single-input session on a batch; returns the first output (logits) as an array."""
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    inp = session.get_inputs()[0]
    if inp.type == "tensor(float)" and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return session.run(None, {inp.name: arr})[0]


def verify_onnx(
    path: str | os.PathLike[str],
    model: nn.Module,
    inputs: Tensor | Iterable[Tensor],
    rtol: float = 1e-4,
) -> float:
    """Largest absolute difference between ONNX Runtime's and PyTorch's logits on ``inputs``.

    The tolerance scales with the logits: ``rtol × max(1, max|PyTorch logits|)`` (float32 summation order differs
    between the two runtimes, so differences grow with the magnitude of the values). For an fp32 export this is
    ~1e-6 in practice; anything near the tolerance means a wrong graph, not rounding.

    Args:
        path: exported ``.onnx`` file.
        model: the PyTorch model it was exported from (put in eval mode for the comparison, then restored).
        inputs: one batch or several.
        rtol: tolerance relative to the logits' scale.

    Returns:
        max |ORT − PyTorch| over all inputs.

    Raises:
        KdkitError: when the difference exceeds the tolerance or the output shapes differ.
    """
    sess = ort_session(path)
    batches = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if not batches:
        raise KdkitError(f"verify_onnx({path}): no inputs to compare on")
    was_training = model.training
    model.eval()
    worst = 0.0
    scale = 1.0
    try:
        with torch.inference_mode():
            for x in batches:
                ref = logits_of(model(x)).float().cpu().numpy()
                got = run_onnx(sess, x)
                if got.shape != ref.shape:
                    raise KdkitError(
                        f"{path}: ONNX output shape {tuple(got.shape)} != PyTorch {tuple(ref.shape)} for input "
                        f"{tuple(x.shape)} (was the batch axis exported as dynamic?)"
                    )
                worst = max(worst, float(np.abs(got - ref).max()))
                scale = max(scale, float(np.abs(ref).max()))
    finally:
        model.train(was_training)
    if not np.isfinite(worst) or worst > rtol * scale:
        if qat_full_range(model):
            raise KdkitError(
                f"{path}: ONNX Runtime logits differ from PyTorch by {worst:.3g} (tolerance {rtol * scale:.3g}): the "
                "qat: model quantises activations to the full 0..255, which int8 kernels without VNNI saturate; "
                "train it with `reduce_range: true` (the default)"
            )
        raise KdkitError(
            f"{path}: ONNX Runtime logits differ from PyTorch by {worst:.3g} (tolerance {rtol * scale:.3g}); "
            "the export is wrong — try exporter='dynamo' or report the model"
        )
    return worst
