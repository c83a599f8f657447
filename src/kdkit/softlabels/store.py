"""The soft-label store: top-k teacher logits per (sample, view), memory-mapped, with a manifest.

Layout of a store directory::

    manifest.json   what the store was computed from (teachers, data, augmentation, k, V, K) + "complete"
    values.npy      (V, N, k) float16   the k largest raw teacher logits of view v of sample i, descending
    indices.npy     (V, N, k) uint16    their class indices (int32 when K > 65535)
    tail.npy        (V, N)    float16   log-mean-exp of the K − k other logits (0 when k = K)
    samples.npy     (N,)      int64     the dataset index of each row (row p = training position p), for other tools
    progress.json   completed chunks while a ``kdkit cache`` run is under way (removed when complete)

The arrays are plain ``.npy`` files (a 128-byte header, then C-order data), so ``np.load(..., mmap_mode="r")`` reads
them without kdkit. Views are the outer axis: an epoch replays one view, so its reads stay in one contiguous slab.
At k = 10 and K ≤ 65535 a (sample, view) costs 10·2 + 10·2 + 2 = 42 bytes.

**Reconstruction rule.** The stored tail value is ``c = log( (1/(K−k)) Σ_{j∉top-k} exp(z_j) )``. The rebuilt logits
are ``ẑ_j = z_j`` for the top-k classes and ``ẑ_j = c`` for every other class. Hence at T = 1

    softmax(ẑ)_j = softmax(z)_j                         for j in the top-k (exactly, up to fp16 rounding), and
    Σ_{j∉top-k} softmax(ẑ)_j = Σ_{j∉top-k} softmax(z)_j  (the mass outside the top-k), spread evenly.

Because only *logits* are stored (never probabilities), each loss term applies its own temperature. At T ≠ 1 the
ratios between top-k classes stay exact, and the tail's mass relative to them is (K−k)·exp(c/T) instead of
Σ exp(z_j/T): by the power-mean inequality the rebuilt tail carries *at least* the true tail mass when T > 1 and at
most when T < 1, with equality when the tail logits are all equal. Storing the tail as a log-*sum*-exp instead of
``1 − Σ top-k probabilities`` avoids a cancellation: that difference loses every digit when the tail mass is tiny and
the top logits are rounded to fp16. See docs/softlabels.md for measured reconstruction errors.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdkit.errors import ConfigError, KdkitError
from kdkit.utils import atomic_write_json, fsync_dir, fsync_file

FORMAT = "kdkit-softlabels"
VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
ARRAYS = ("values", "indices", "tail")
FP16_MAX = 65504.0
SAMPLES_SPEC = {"file": "samples.npy", "dtype": "int64",
                "meaning": "dataset index (position in data.name as kdkit reads it) of each row"}
DENSE_LIMIT = 1 << 25  # rebuild a whole view's (N, K) float32 logits up front when they take at most 128 MB


# ----------------------------------------------------------------------------------------------------------------------
# Pure tensor functions: encoding and reconstruction


def index_dtype(num_classes: int) -> np.dtype:
    """uint16 while every class index fits in it (K ≤ 65535), else int32."""
    return np.dtype(np.uint16) if num_classes <= 65535 else np.dtype(np.int32)


def bytes_per_row(topk: int, num_classes: int) -> int:
    """Bytes one (sample, view) costs: k fp16 values, k indices, one fp16 tail value."""
    return topk * 2 + topk * index_dtype(num_classes).itemsize + 2


def encode_topk(logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Compress teacher logits to their top-k values, indices and the tail's log-mean-exp.

    Args:
        logits: (B, K) raw teacher logits (any float dtype).
        k: number of classes kept, 1 ≤ k ≤ K.

    Returns:
        values: (B, k) float16, descending. indices: (B, k) int64. tail: (B,) float16,
        ``log((1/(K−k)) Σ_{j∉top-k} exp(z_j))`` (computed in float64), or 0 when k = K.

    Raises:
        KdkitError: a logit is not finite or lies outside float16's range.
    """
    if logits.dim() != 2:
        raise KdkitError(f"teacher logits must be (B, K), got shape {tuple(logits.shape)}")
    z = logits.detach().to(torch.float64)
    b, kk = z.shape
    if not 1 <= k <= kk:
        raise ConfigError(f"--topk must be in [1, {kk}] for {kk} classes, got {k}")
    if b and not bool(torch.isfinite(z).all()):
        raise KdkitError("the teacher produced non-finite logits (inf/NaN); check its weights and inputs")
    if b and float(z.abs().max()) > FP16_MAX:
        raise KdkitError(f"teacher logits reach {float(z.abs().max()):.4g}, beyond float16's range (±65504); the store "
                         f"keeps fp16 values, so such a teacher cannot be cached")
    values, indices = z.topk(k, dim=1, largest=True, sorted=True)
    if k < kk:
        rest = z.scatter(1, indices, float("-inf"))
        tail = torch.logsumexp(rest, dim=1) - math.log(kk - k)
    else:
        tail = torch.zeros(b, dtype=torch.float64)
    return values.to(torch.float16), indices, tail.to(torch.float16)


def decode_topk(values: Tensor, indices: Tensor, tail: Tensor, num_classes: int) -> Tensor:
    """Rebuild (B, K) logits: the stored top-k values in place, the tail value ``c`` in every other class.

    Args:
        values: (B, k) top-k logits (float16 or float32).
        indices: (B, k) their class indices (any integer dtype).
        tail: (B,) tail log-mean-exp ``c``.
        num_classes: K.

    Returns:
        (B, K) float32 logits ẑ with softmax(ẑ) = the teacher's distribution at T = 1 on the top-k and the remaining
        mass spread evenly over the other K − k classes (see the module docstring).
    """
    b = values.shape[0]
    out = tail.to(torch.float32).reshape(b, 1).expand(b, num_classes).contiguous()
    return out.scatter_(1, indices.to(torch.int64), values.to(torch.float32))


# ----------------------------------------------------------------------------------------------------------------------
# Hashes that identify what a store was computed from


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict: every entry's name, dtype, shape and raw bytes, in sorted name order.

    Identifies the teacher's weights whatever file they came from (a run directory, a .safetensors or a .pt file).
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def json_sha256(obj: Any) -> str:
    """SHA-256 of an object's canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# The store on disk


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"soft-label store file '{path}' is unreadable ({err}); re-create the store with "
                          f"`kdkit cache RECIPE --overwrite`") from None


class SoftLabelStore:
    """A soft-label store directory, opened read-only (training) or for writing (``kdkit cache``).

    Attributes:
        path: the store directory.
        manifest: the parsed manifest.json.
        views, topk, num_classes, num_samples: V, k, K and N.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], writable: bool = False) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.views = int(manifest["views"])
        self.topk = int(manifest["topk"])
        self.num_classes = int(manifest["num_classes"])
        self.num_samples = int(manifest["num_samples"])
        mode = "r+" if writable else "r"
        self.arrays: dict[str, np.memmap] = {}
        for name in ARRAYS:
            f = self.path / f"{name}.npy"
            if not f.is_file():
                raise ConfigError(f"soft-label store '{self.path}' lacks {f.name}; re-create it with `kdkit cache "
                                  f"RECIPE --overwrite`")
            try:
                arr = np.load(f, mmap_mode=mode)
            except (ValueError, OSError) as err:  # e.g. "mmap length is greater than file size" (a truncated file)
                raise ConfigError(f"soft-label store '{self.path}': {f.name} is damaged ({err}); re-create the store "
                                  f"with `kdkit cache RECIPE --overwrite`") from None
            want = self.expected_shape(name)
            if arr.shape != want:
                raise ConfigError(f"soft-label store '{self.path}': {f.name} has shape {arr.shape}, the manifest says "
                                  f"{want}; re-create the store")
            self.arrays[name] = arr
        self._view_cache: tuple[int, Tensor, Tensor, Tensor] | None = None
        self._dense: Tensor | None = None

    # -------------------------------------------------------------------------------------------------- creation
    @staticmethod
    def array_specs(views: int, num_samples: int, topk: int, num_classes: int) -> dict[str, dict[str, Any]]:
        return {
            "values": {"file": "values.npy", "dtype": "float16", "shape": [views, num_samples, topk]},
            "indices": {"file": "indices.npy", "dtype": index_dtype(num_classes).name,
                        "shape": [views, num_samples, topk]},
            "tail": {"file": "tail.npy", "dtype": "float16", "shape": [views, num_samples]},
        }

    def expected_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.manifest["arrays"][name]["shape"])

    @classmethod
    def create(cls, path: Path, manifest: dict[str, Any], overwrite: bool = False) -> SoftLabelStore:
        """Create a new, empty (incomplete) store: zero-filled arrays and ``manifest["complete"] = False``.

        The store is built in a sibling ``.NAME.creating.tmp`` directory and renamed into place once its manifest is
        written, so a kill during creation leaves either nothing at ``path`` or a whole (resumable) store; the next
        call removes the temporary directory. A directory that holds only the files of a store whose creation an
        older kdkit left unfinished (arrays and progress.json, no manifest) is replaced without ``--overwrite``.
        """
        path = Path(path)
        if path.exists() and not _interrupted_creation(path):
            if not overwrite:
                raise ConfigError(f"'{path}' already exists; pass --overwrite to replace it")
            if path.is_dir() and not (path / MANIFEST).is_file() and any(path.iterdir()):
                raise ConfigError(f"'{path}' is a non-empty directory that is not a soft-label store; choose another "
                                  f"--out")
        tmp = path.with_name(f".{path.name}.creating.tmp")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            manifest = dict(manifest, complete=False)
            for spec in manifest["arrays"].values():
                arr = np.lib.format.open_memmap(tmp / spec["file"], mode="w+", dtype=np.dtype(spec["dtype"]),
                                                shape=tuple(spec["shape"]))
                arr.flush()
                del arr
                _reserve(tmp / spec["file"])
                fsync_file(tmp / spec["file"])
            atomic_write_json(tmp / PROGRESS, {"done": []})
            atomic_write_json(tmp / MANIFEST, manifest)
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ConfigError(f"cannot create the soft-label store '{path}' ({err.strerror or err}); free disk space "
                              f"or choose another --out") from None
        return cls(path, manifest, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike[str], writable: bool = False, require_complete: bool = True
             ) -> SoftLabelStore:
        """Open an existing store; by default refuse one whose ``kdkit cache`` run has not finished."""
        p = Path(path)
        if not (p / MANIFEST).is_file():
            raise ConfigError(f"soft_labels: '{p}' is not a soft-label store (no {MANIFEST}); create it with "
                              f"`kdkit cache RECIPE --views V --topk K --out {p}`")
        manifest = _read_json(p / MANIFEST)
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ConfigError(f"soft_labels: '{p}' has format {manifest.get('format')!r} version "
                              f"{manifest.get('version')!r}; this kdkit reads {FORMAT!r} version {VERSION}; "
                              f"re-create it with `kdkit cache`")
        if require_complete and not manifest.get("complete"):
            done = len(read_progress(p))
            raise ConfigError(f"soft_labels: store '{p}' is incomplete ({done}/{manifest['chunks']} chunks); finish "
                              f"it by re-running the same `kdkit cache` command")
        store = cls(p, manifest, writable=writable)
        if require_complete and not writable:
            store.validate()
        return store

    def validate(self) -> None:
        """Check every view once (class indices in range, finite values) so a damaged store is refused when it is
        opened, before a run writes anything — not as a NaN loss or an index error in the middle of an epoch."""
        for view in range(self.views):
            self._check_view(view, torch.from_numpy(np.asarray(self.arrays["values"][view], dtype=np.float32)),
                             torch.from_numpy(np.asarray(self.arrays["indices"][view], dtype=np.int64)),
                             torch.from_numpy(np.asarray(self.arrays["tail"][view], dtype=np.float32)))

    # -------------------------------------------------------------------------------------------------- writing
    def write(self, view: int, start: int, values: Tensor, indices: Tensor, tail: Tensor) -> None:
        """Store rows ``start .. start + B`` of ``view`` (outputs of :func:`encode_topk`)."""
        end = start + values.shape[0]
        self.arrays["values"][view, start:end] = values.cpu().numpy()
        self.arrays["indices"][view, start:end] = indices.cpu().numpy().astype(self.arrays["indices"].dtype)
        self.arrays["tail"][view, start:end] = tail.cpu().numpy()

    def commit_chunks(self, done: Iterable[int]) -> None:
        """Flush the arrays to disk, then record ``done`` atomically: a crash never marks unwritten rows as done."""
        for arr in self.arrays.values():
            arr.flush()
        atomic_write_json(self.path / PROGRESS, {"done": sorted(set(done))})

    def finalize(self, extra: dict[str, Any]) -> None:
        for arr in self.arrays.values():
            arr.flush()
        self.manifest = dict(self.manifest, complete=True, **extra)
        atomic_write_json(self.path / MANIFEST, self.manifest)
        (self.path / PROGRESS).unlink(missing_ok=True)

    # -------------------------------------------------------------------------------------------------- reading
    def view_of_epoch(self, epoch: int) -> int:
        """The view replayed in ``epoch``: epoch mod V."""
        return int(epoch) % self.views

    def _view(self, view: int) -> tuple[Tensor, Tensor, Tensor]:
        # One view's rows are read into memory once, already in the dtypes the reconstruction needs (N·(12k+4) bytes:
        # 6 MB for CIFAR's 50k samples at k = 10), so a batch costs no page faults into the memmap and no dtype
        # conversions inside the training step.
        if self._view_cache is None or self._view_cache[0] != view:
            if not 0 <= view < self.views:
                raise KdkitError(f"soft-label store '{self.path}' has views 0..{self.views - 1}, view {view} was "
                                 f"requested")
            vals = torch.from_numpy(self.arrays["values"][view].astype(np.float32))
            idx = torch.from_numpy(self.arrays["indices"][view].astype(np.int64))
            tail = torch.from_numpy(self.arrays["tail"][view].astype(np.float32))
            self._check_view(view, vals, idx, tail)
            self._view_cache = (view, vals, idx, tail)
            # When the whole view's rebuilt (N, K) logits are small, rebuild them once: a batch is then one
            # index_select, which matters for tiny students whose whole step is a millisecond.
            self._dense = decode_topk(vals, idx, tail, self.num_classes) if vals.shape[0] * self.num_classes <= \
                DENSE_LIMIT else None
        return self._view_cache[1:]

    def _check_view(self, view: int, vals: Tensor, idx: Tensor, tail: Tensor) -> None:
        """Refuse a damaged view once, when it is first read, instead of a NaN loss or an index error mid-step."""
        fix = "re-create the store with `kdkit cache RECIPE --overwrite`"
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_classes):
            raise KdkitError(f"soft-label store '{self.path}' view {view}: class indices reach "
                             f"{int(idx.min())}..{int(idx.max())}, outside 0..{self.num_classes - 1}; {fix}")
        for name, t in (("values", vals), ("tail", tail)):
            if t.numel() and not bool(torch.isfinite(t).all()):
                raise KdkitError(f"soft-label store '{self.path}' view {view}: {name}.npy holds "
                                 f"{int((~torch.isfinite(t)).sum())} non-finite teacher logit(s) (NaN/inf); {fix}")

    def lookup(self, index: Tensor, view: int) -> tuple[Tensor, Tensor, Tensor]:
        """Stored rows of samples ``index`` (B,) in ``view``: values (B, k) and tail (B,) as float32 (exactly the stored
        fp16 numbers), indices (B, k) int64."""
        vals, ind, tail = self._view(int(view))
        idx = index.to("cpu", torch.int64)
        try:
            return vals.index_select(0, idx), ind.index_select(0, idx), tail.index_select(0, idx)
        except (IndexError, RuntimeError):
            raise KdkitError(f"soft-label store '{self.path}' holds samples 0..{self.num_samples - 1}; got indices "
                             f"{int(idx.min())}..{int(idx.max())}") from None

    def teacher_logits(self, index: Tensor, view: Tensor | int) -> Tensor:
        """(B, K) float32 reconstructed teacher logits for split-local ``index`` (B,) and ``view`` (int or (B,)).

        Returned on ``index``'s device.
        """
        if isinstance(view, Tensor):
            if view.numel() == 0:
                return torch.empty(0, self.num_classes, device=index.device)
            v0 = int(view.reshape(-1)[0])
            if not bool((view == v0).all()):  # samples of several views in one batch: gather each view's rows
                out = torch.empty(index.shape[0], self.num_classes, dtype=torch.float32)
                v_cpu, i_cpu = view.cpu(), index.cpu()
                for v in torch.unique(v_cpu).tolist():
                    m = v_cpu == v
                    out[m] = decode_topk(*self.lookup(i_cpu[m], int(v)), self.num_classes)
                return out.to(index.device)
            view = v0
        self._view(int(view))
        if self._dense is not None:
            idx = index.to("cpu", torch.int64)
            try:
                return self._dense.index_select(0, idx).to(index.device)
            except (IndexError, RuntimeError):
                raise KdkitError(f"soft-label store '{self.path}' holds samples 0..{self.num_samples - 1}; got "
                                 f"indices {int(idx.min())}..{int(idx.max())}") from None
        return decode_topk(*self.lookup(index, int(view)), self.num_classes).to(index.device)

    # -------------------------------------------------------------------------------------------------- sizes
    def file_bytes(self) -> int:
        """Apparent size of the three arrays (headers included)."""
        return sum((self.path / self.manifest["arrays"][n]["file"]).stat().st_size for n in ARRAYS)

    def disk_bytes(self) -> int:
        """Blocks actually allocated on disk (the arrays are reserved when the store is created)."""
        total = 0
        for n in ARRAYS:
            st = (self.path / self.manifest["arrays"][n]["file"]).stat()
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
        return total


def _reserve(file: Path) -> None:
    """Allocate a (sparse) array file's blocks now: a full disk is then an error here, not a SIGBUS when the memory
    map is written later."""
    if hasattr(os, "posix_fallocate"):
        fd = os.open(file, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise
        finally:
            os.close(fd)


def _interrupted_creation(path: Path) -> bool:
    """A directory left by a store creation that was killed before its manifest: only store files, no manifest."""
    if not path.is_dir() or (path / MANIFEST).exists():
        return False
    names = {p.name for p in path.iterdir()}
    store_files = {f"{a}.npy" for a in ARRAYS} | {PROGRESS, SAMPLES_SPEC["file"]}
    return bool(names) and all(n in store_files or n.endswith(".tmp") for n in names)


def write_samples(path: Path, source_index: np.ndarray) -> None:
    """``samples.npy``: (N,) int64, the dataset index of each store row (row p is training position p), so that tools
    outside kdkit can tell which sample a row belongs to. Written atomically (a kill leaves the old file or none)."""
    final = Path(path) / SAMPLES_SPEC["file"]
    tmp = final.with_name(final.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(source_index, dtype=np.int64))
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def read_progress(path: Path) -> set[int]:
    """Chunks a ``kdkit cache`` run has completed (empty when none or the store is complete)."""
    f = Path(path) / PROGRESS
    if not f.is_file():
        return set()
    return {int(c) for c in _read_json(f).get("done", [])}


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"
