"""A restricted unpickler for dataset files that are pickles of plain containers and numpy arrays.

Unpickling runs whatever callable the file names (``os.system`` included), so a downloaded "dataset" can execute
code. The CIFAR python batches and the Animal-MNIST package files only need dicts, lists, bytes, ints and numpy
arrays; this unpickler resolves exactly the globals that numpy's array/dtype reconstruction uses and refuses every
other one with a :class:`~kdkit.errors.DataError` naming the file and the global.
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from kdkit.errors import DataError


def _numpy_attr(submodule: str, name: str) -> Callable[[], Any]:
    """Resolve numpy's private reconstruction helpers, which moved from ``numpy.core`` to ``numpy._core`` in 2.0."""

    def get() -> Any:
        for mod in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
            try:
                return getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError):
                continue
        raise DataError(f"this numpy has no {submodule}.{name}; cannot rebuild the arrays in this pickle")

    return get


def _numpy_top(name: str) -> Callable[[], Any]:
    def get() -> Any:
        import numpy

        return getattr(numpy, name)

    return get


# (module, name) -> resolver. Pickles written by numpy 1.x say ``numpy.core``; numpy 2.x writes ``numpy._core``.
_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): _numpy_top("ndarray"),
    ("numpy", "dtype"): _numpy_top("dtype"),
    # Protocol 2 pickles written by Python 3 store ``bytes`` as _codecs.encode(text, "latin1"): a pure conversion.
    ("_codecs", "encode"): lambda: codecs.encode,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _numpy_attr("multiarray", "_reconstruct")
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _numpy_attr("multiarray", "scalar")  # numpy scalars in lists
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _numpy_attr("numeric", "_frombuffer")  # protocol-5 arrays


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that only reconstructs builtin containers and numpy arrays.

    Args:
        file: binary file object.
        source: the file name, used in error messages.
        encoding: how to decode Python 2 ``str`` objects; ``"bytes"`` keeps them as bytes, as CIFAR's keys are.
    """

    def __init__(self, file: IO[bytes], source: str, encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        resolver = _ALLOWED.get((module, name))
        if resolver is None:
            raise DataError(
                f"{self.source}: refusing to unpickle '{module}.{name}' — only numpy arrays and plain containers are "
                f"allowed in dataset pickles (the file may be malicious or not a dataset file)"
            )
        return resolver()

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source}: pickle uses persistent ids, which dataset files never need; refusing it")


def safe_load(path: str | Path, *, encoding: str = "ASCII", gzipped: bool | None = None) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler`.

    Args:
        path: the pickle file (optionally gzip-compressed).
        encoding: see :class:`SafeUnpickler`; use ``"bytes"`` for Python 2 pickles such as the CIFAR batches.
        gzipped: True/False, or None to detect the gzip magic number.

    Raises:
        DataError: the file is missing, corrupt, or names a global outside the allow-list.
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if gzipped is None:
        gzipped = magic == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as f:
            return SafeUnpickler(f, str(path), encoding=encoding).load()
    except DataError:
        raise
    except Exception as e:  # corrupt data surfaces as many types (zlib.error, EOFError, UnpicklingError, ...)
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
