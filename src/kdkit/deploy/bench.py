"""One table comparing models across runtimes: parameters, size on disk, CPU latency, accuracy.

A :class:`BenchEntry` names a model and what to run it with — the PyTorch module (eager), an fp32 ONNX file, an int8
ONNX file, any further ONNX variants — and optionally evaluation batches. :func:`bench_models` measures every
(model, runtime) pair and returns one row per pair ("long" format, so the table stays narrow enough for a terminal and
plots can group rows by ``runtime``):

=============  ======================================================================================================
column         meaning
=============  ======================================================================================================
name           the entry's name (e.g. "teacher", "student (KD)")
runtime        ``pytorch`` (eager), ``ort-fp32``, ``ort-int8`` or an extra label (e.g. ``ort-int8-dynamic``)
params         parameters of the PyTorch model (or initializer elements of the fp32 ONNX file when there is none)
size_mb        safetensors state_dict size for PyTorch, file size for ONNX; MB = 10^6 bytes
p50_ms_b{N}    median latency of one call with a batch of N (default N = 1 and 64), milliseconds
p90_ms_b{N}    90th percentile of the same
speedup_b1     PyTorch eager p50 at batch 1 ÷ this row's p50 at batch 1 (same entry), when both exist
vs_teacher_b{N}  the teacher's PyTorch eager time per sample at batch N ÷ this row's: how much faster than the
               teacher (the teacher is the first entry, or ``teacher=NAME``); None when either timing is flagged
timing_flag    set when a larger batch stayed slower per sample than batch 1 after a re-measurement (a busy
               machine): the row's latencies are not a result, the table marks them with "!"
accuracy       top-1 % on the entry's eval batches (None without them)
threads        intra-op threads used for every runtime of the row
=============  ======================================================================================================

Threads: every runtime uses the same intra-op thread count, ``torch.get_num_threads()`` unless ``threads`` is given —
PyTorch through :func:`torch.set_num_threads`, ONNX Runtime through ``SessionOptions.intra_op_num_threads`` (its own
default would be one thread per physical core, which can differ from PyTorch's). One setting, stated in every row, so
the runtimes are compared on equal terms. Timing protocol: :func:`kdkit.deploy.measure.cpu_latency`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdkit.deploy.export import _existing_file, file_size_mb, ort_session
from kdkit.deploy.measure import count_params, measure_batch_sizes, size_on_disk_mb
from kdkit.deploy.quantize import _input_array, _target_array, onnx_accuracy
from kdkit.errors import KdkitError
from kdkit.types import logits_of
from kdkit.utils import atomic_write_json, atomic_write_text

__all__ = [
    "BenchEntry",
    "bench_models",
    "torch_accuracy",
    "to_markdown",
    "dump_json",
    "dump_markdown",
    "load_json",
    "print_table",
]


@dataclass
class BenchEntry:
    """One model to benchmark, in one or more runtimes.

    Attributes:
        name: row label.
        model: the PyTorch module (benchmarked eagerly on the CPU), or None.
        onnx_fp32: fp32 ONNX file, or None.
        onnx_int8: int8 ONNX file, or None.
        extra_onnx: more ONNX variants as ``{runtime label: path}``, e.g. ``{"ort-int8-dynamic": path}``.
        eval_batches: ``(input, target)`` pairs or kdkit ``Batch`` dicts for accuracy; a sequence (it is iterated
            once per runtime). Its first inputs also serve as the timing example.
        example_shape: one sample's shape without the batch axis, e.g. ``(1, 28, 28)``; needed only when there are
            no eval batches and the ONNX input shape is not fully static.
    """

    name: str
    model: nn.Module | None = None
    onnx_fp32: str | os.PathLike[str] | None = None
    onnx_int8: str | os.PathLike[str] | None = None
    extra_onnx: dict[str, str | os.PathLike[str]] = field(default_factory=dict)
    eval_batches: Sequence[Any] | None = None
    example_shape: Sequence[int] | None = None

    def runtimes(self) -> list[tuple[str, Path | None]]:
        """``[(runtime label, ONNX path or None for PyTorch), ...]`` in table order."""
        out: list[tuple[str, Path | None]] = []
        if self.model is not None:
            out.append(("pytorch", None))
        if self.onnx_fp32 is not None:
            out.append(("ort-fp32", Path(self.onnx_fp32)))
        if self.onnx_int8 is not None:
            out.append(("ort-int8", Path(self.onnx_int8)))
        out += [(label, Path(p)) for label, p in self.extra_onnx.items()]
        return out


def _onnx_param_count(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer))


def _sample_inputs(entry: BenchEntry, first_onnx: Path | None) -> np.ndarray:
    """A pool of real (or, failing that, random) samples to cut timing batches from: (N, *sample_shape)."""
    if entry.eval_batches:
        xs = [_input_array(b) for b in list(entry.eval_batches)[:4]]
        return np.concatenate(xs, axis=0)
    shape: Sequence[int] | None = entry.example_shape
    dtype: Any = np.float32
    if shape is None and first_onnx is not None:
        inp = ort_session(first_onnx, threads=1).get_inputs()[0]
        dims = inp.shape[1:]
        if all(isinstance(d, int) for d in dims):
            shape = dims
        dtype = np.int64 if "int64" in inp.type else np.float32
    if shape is None:
        raise KdkitError(f"bench entry {entry.name!r}: give eval_batches or example_shape (one sample's shape)")
    rng = np.random.default_rng(0)
    if dtype == np.int64:
        return rng.integers(0, 100, size=(64, *shape)).astype(np.int64)
    return rng.standard_normal((64, *shape)).astype(np.float32)


def _batch_of(pool: np.ndarray, n: int) -> np.ndarray:
    idx = np.arange(n) % pool.shape[0]
    return np.ascontiguousarray(pool[idx])


@torch.inference_mode()
def torch_accuracy(model: nn.Module, batches: Iterable[Any]) -> float:
    """Top-1 accuracy (%) of a PyTorch classifier over ``(input, target)`` batches, computed like :func:`onnx_accuracy`
    (array inputs, targets -1 skipped) so that PyTorch and ONNX rows are directly comparable."""
    was = model.training
    model.eval()
    correct = n = 0
    try:
        for b in batches:
            x = torch.from_numpy(np.ascontiguousarray(_input_array(b)))
            y = _target_array(b).reshape(-1)
            pred = logits_of(model(x)).argmax(1).cpu().numpy()
            keep = y >= 0
            correct += int((pred[keep] == y[keep]).sum())
            n += int(keep.sum())
    finally:
        model.train(was)
    if n == 0:
        raise KdkitError("bench: the eval batches hold no labelled samples")
    return 100.0 * correct / n


def bench_models(
    entries: Sequence[BenchEntry],
    batch_sizes: Sequence[int] = (1, 64),
    threads: int | None = None,
    warmup: int = 10,
    repeats: int = 50,
    min_time_s: float = 0.2,
    progress: Callable[[str], None] | None = None,
    teacher: str | None = None,
) -> list[dict[str, Any]]:
    """Measure every (entry, runtime) pair; one row each (columns in the module docstring).

    Args:
        entries: what to benchmark.
        batch_sizes: batch sizes to time (columns ``p50_ms_b{N}``, ``p90_ms_b{N}``).
        threads: intra-op threads for PyTorch and ONNX Runtime alike (default ``torch.get_num_threads()``).
        warmup, repeats, min_time_s: timing protocol, see :func:`kdkit.deploy.measure.cpu_latency`.
        progress: called with a short message before each measurement (e.g. a CLI status line).
        teacher: the entry the ``vs_teacher_b{N}`` columns compare with (default: the first entry).

    Returns:
        Rows as plain dicts (JSON-ready), in entry order, runtimes in the order of :meth:`BenchEntry.runtimes`.

    Raises:
        KdkitError: an entry has nothing to run, or names an ONNX file that does not exist (checked before any
            timing starts, so a typo does not cost a long run).
    """
    threads = int(threads if threads is not None else torch.get_num_threads())
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise KdkitError(f"bench: entry names must be unique, got {names}")
    for e in entries:
        if not e.runtimes():
            raise KdkitError(f"bench entry {e.name!r} has neither a PyTorch model nor an ONNX file")
        for label, p in e.runtimes():
            if p is not None:
                _existing_file(p, f"ONNX model for {e.name!r} ({label})")

    say = progress or (lambda _msg: None)
    rows: list[dict[str, Any]] = []
    for e in entries:
        onnx_paths = [p for _, p in e.runtimes() if p is not None]
        pool = _sample_inputs(e, onnx_paths[0] if onnx_paths else None)
        if e.model is not None:
            params: int | None = count_params(e.model)
        elif e.onnx_fp32 is not None:
            params = _onnx_param_count(Path(e.onnx_fp32))
        else:
            params = None
        eval_batches = list(e.eval_batches) if e.eval_batches else None
        entry_rows: list[dict[str, Any]] = []
        for label, path in e.runtimes():
            say(f"{e.name} · {label}")
            row: dict[str, Any] = {"name": e.name, "runtime": label, "params": params}
            if path is None:
                model: nn.Module = e.model  # type: ignore[assignment]  # runtimes() gives None only for it
                dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
                row["size_mb"] = size_on_disk_mb(model)
                fn: Callable[[Any], Any] = model
                make = lambda a, dt=dtype: torch.from_numpy(a).to(dt) if a.dtype.kind == "f" else torch.from_numpy(a)
            else:
                sess = ort_session(path, threads=threads)
                name = sess.get_inputs()[0].name
                row["size_mb"] = file_size_mb(path)
                # The array is prepared outside the timed call: only the session's run is measured.
                fn = lambda a, s=sess, n=name: s.run(None, {n: a})
                make = lambda a: a.astype(np.float32) if a.dtype.kind == "f" else a
            stats, flag = measure_batch_sizes(fn, lambda bs, mk=make, pl=pool: mk(_batch_of(pl, bs)), batch_sizes,
                                              warmup=warmup, repeats=repeats, min_time_s=min_time_s, threads=threads)
            for bs, st in stats.items():
                row[f"p50_ms_b{bs}"] = st.p50_ms
                row[f"p90_ms_b{bs}"] = st.p90_ms
            if flag:
                row["timing_flag"] = flag
            if eval_batches is None:
                row["accuracy"] = None
            elif path is None:
                row["accuracy"] = torch_accuracy(e.model, eval_batches)  # type: ignore[arg-type]
            else:
                row["accuracy"] = onnx_accuracy(path, eval_batches, threads=threads)
            row["threads"] = threads
            if path is not None:
                row["path"] = str(path)
            entry_rows.append(row)
        base = next((r for r in entry_rows if r["runtime"] == "pytorch"), None)
        for r in entry_rows:
            if base is not None and "p50_ms_b1" in r and r["p50_ms_b1"] > 0:
                r["speedup_b1"] = base["p50_ms_b1"] / r["p50_ms_b1"]
            else:
                r["speedup_b1"] = None
        rows.extend(entry_rows)
    _vs_teacher(rows, teacher or entries[0].name, batch_sizes)
    return rows


def _vs_teacher(rows: list[dict[str, Any]], teacher: str, batch_sizes: Sequence[int]) -> None:
    """``vs_teacher_b{N}``: the teacher's PyTorch (else first runtime) time per sample over each row's."""
    own = [r for r in rows if r["name"] == teacher]
    if not own:
        raise KdkitError(f"bench: teacher {teacher!r} is not among the entries {[r['name'] for r in rows]}")
    ref = next((r for r in own if r["runtime"] == "pytorch"), own[0])
    for r in rows:
        for bs in batch_sizes:
            a, b = ref.get(f"p50_ms_b{bs}"), r.get(f"p50_ms_b{bs}")
            ok = a is not None and b and not ref.get("timing_flag") and not r.get("timing_flag")
            r[f"vs_teacher_b{bs}"] = a / b if ok else None


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Display columns in a fixed, readable order (latency columns in batch-size order as they appear)."""
    lead = ["name", "runtime", "params", "size_mb"]
    lat: list[str] = []
    for r in rows:
        for k in r:
            if k.startswith(("p50_ms_b", "p90_ms_b")) and k not in lat:
                lat.append(k)
    lat.sort(key=lambda k: (int(k.rsplit("_b", 1)[1]), k[:3]))
    vs = sorted({k for r in rows for k in r if k.startswith("vs_teacher_b")}, key=lambda k: int(k.rsplit("_b", 1)[1]))
    tail = [*vs, "accuracy"] if vs else ["speedup_b1", "accuracy"]
    return lead + lat + [c for c in tail if any(c in r for r in rows)]


_HEADERS = {
    "name": "model",
    "runtime": "runtime",
    "params": "params",
    "size_mb": "size (MB)",
    "speedup_b1": "speed-up b1",
    "accuracy": "top-1 (%)",
}


def _header(col: str) -> str:
    if col in _HEADERS:
        return _HEADERS[col]
    if col.startswith("vs_teacher_b"):
        return f"× teacher b{col.rsplit('_b', 1)[1]}"
    stat, _, bs = col.partition("_ms_b")
    return f"{stat} b{bs} (ms)"


def _fmt(col: str, v: Any) -> str:
    if v is None:
        return "–"
    if col == "params":
        return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v >= 1e4 else f"{v:,}"
    if col == "size_mb":
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if col.startswith(("p50", "p90")):
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if col == "speedup_b1" or col.startswith("vs_teacher_b"):
        return f"{v:.2f}×" if v < 100 else f"{v:,.0f}×"
    if col == "accuracy":
        return f"{v:.2f}"
    return str(v)


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table of ``rows``, followed by a line stating the thread setting."""
    if not rows:
        return "_no models benchmarked_\n"
    cols = _columns(rows)
    right = {c for c in cols if c not in ("name", "runtime")}
    lines = [
        "| " + " | ".join(_header(c) for c in cols) + " |",
        "|" + "|".join("---:" if c in right else "---" for c in cols) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_cell(c, r).replace("|", "\\|") for c in cols) + " |")
    threads = sorted({r.get("threads") for r in rows if r.get("threads") is not None})
    if threads:
        lines.append("")
        lines.append(f"CPU, intra-op threads: {', '.join(map(str, threads))}; latency per call (one batch), warm.")
    lines += [f"! {r['name']} · {r['runtime']}: {r['timing_flag']}" for r in rows if r.get("timing_flag")]
    return "\n".join(lines) + "\n"


def _cell(col: str, row: dict[str, Any]) -> str:
    text = _fmt(col, row.get(col))
    return text + " !" if row.get("timing_flag") and col.startswith(("p50", "p90")) else text


def dump_json(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write ``rows`` as a JSON list (atomically); returns the path."""
    p = Path(path)
    atomic_write_json(p, list(rows))
    return p


def dump_markdown(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write :func:`to_markdown` of ``rows`` to ``path`` (atomically); returns the path."""
    p = Path(path)
    atomic_write_text(p, to_markdown(rows))
    return p


def print_table(rows: Sequence[dict[str, Any]], console: Any = None, title: str = "kdkit bench") -> None:
    """Print ``rows`` as a rich table (to ``console``, or stdout).

    p50 and p90 share a cell per batch size (``p50 / p90``) so the table fits a terminal; JSON and Markdown keep them
    as separate columns. Each model's runtimes form one section.
    """
    import sys

    from rich.console import Console
    from rich.table import Table

    if console is None:
        # Piped output (logs, CI) would otherwise be cut to 80 columns with ellipses; a table only takes what it needs.
        console = Console() if sys.stdout.isatty() else Console(width=200)
    table = Table(title=title)
    cols = _columns(rows) if rows else ["name"]
    sizes = sorted({int(c.rsplit("_b", 1)[1]) for c in cols if c.startswith("p50_ms_b")})
    shown = [c for c in cols if not c.startswith(("p50_ms_b", "p90_ms_b"))]
    lead, tail = shown[:4], shown[4:]
    for c in lead:
        table.add_column(_header(c), justify="left" if c in ("name", "runtime") else "right", no_wrap=True)
    for bs in sizes:
        table.add_column(f"b{bs} p50 / p90 ms", justify="right", no_wrap=True)
    for c in tail:
        table.add_column(_header(c), justify="right", no_wrap=True)
    for i, r in enumerate(rows):
        cells = [_fmt(c, r.get(c)) for c in lead]
        mark = " !" if r.get("timing_flag") else ""
        cells += [f"{_fmt('p50', r.get(f'p50_ms_b{bs}'))} / {_fmt('p90', r.get(f'p90_ms_b{bs}'))}{mark}"
                  for bs in sizes]
        cells += [_fmt(c, r.get(c)) for c in tail]
        last_of_model = i + 1 == len(rows) or rows[i + 1].get("name") != r.get("name")
        table.add_row(*cells, end_section=last_of_model)
    console.print(table)
    threads = sorted({r.get("threads") for r in rows if r.get("threads") is not None})
    if threads:
        console.print(f"CPU, intra-op threads {', '.join(map(str, threads))}; latency per call (one batch), warm.")
    for r in rows:
        if r.get("timing_flag"):
            console.print(f"! {r['name']} · {r['runtime']}: {r['timing_flag']}", highlight=False)


def load_json(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read rows written by :func:`dump_json`."""
    p = _existing_file(path, "bench JSON")
    try:
        rows = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise KdkitError(f"{p} is not valid JSON ({e.msg} at line {e.lineno}); re-run `kdkit bench`") from e
    if not isinstance(rows, list):
        raise KdkitError(f"{p} holds {type(rows).__name__}, expected a list of bench rows")
    return rows
