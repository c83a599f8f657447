"""Run ``kdkit ARGS...`` and die like ``kill -9`` (``os._exit``, no cleanup, no ``finally``) at a chosen moment.

Used by test_faults.py. ``KDKIT_KILL_AT=point:N`` kills at the N-th time the run reaches ``point``:

* ``ckpt_files``   inside a checkpoint save: the state files are written into ``.step-*.tmp``, not yet renamed;
* ``ckpt_renamed`` the state directory is renamed into place, ``latest.json`` not yet replaced;
* ``ckpt_latest``  ``latest.json`` is replaced, older states not yet pruned;
* ``best``         ``best.safetensors`` is written, the epoch-end checkpoint (and ``latest.json``) not yet.

Without ``KDKIT_KILL_AT`` it is plain ``kdkit``.
"""

from __future__ import annotations

import os
import sys

from kdkit import cli
from kdkit.engine import checkpoint, loop


def install(point: str, n: int, die=lambda: os._exit(137), patch=setattr) -> None:
    """Call ``die()`` the ``n``-th time the run reaches ``point`` (see the module docstring). ``patch`` sets the hooks
    (tests pass ``monkeypatch.setattr`` so they are undone)."""
    count = {"n": 0}

    def reached(name: str) -> None:
        if name == point:
            count["n"] += 1
            if count["n"] == n:
                die()

    class _Os:
        """``os`` for the checkpoint module, with the rename observed."""

        def __getattr__(self, name: str):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            if str(src).endswith(".tmp") and os.path.isdir(src):
                reached("ckpt_files")
                os.replace(src, dst)
                reached("ckpt_renamed")
            else:
                os.replace(src, dst)

    real_json, real_weights = checkpoint.atomic_write_json, loop.write_weights

    def atomic_write_json(path, obj):
        real_json(path, obj)
        if str(path).endswith("latest.json"):
            reached("ckpt_latest")

    def write_weights(model, path, meta=None):
        out = real_weights(model, path, meta)
        if str(path).endswith("best.safetensors"):
            reached("best")
        return out

    patch(checkpoint, "os", _Os())
    patch(checkpoint, "atomic_write_json", atomic_write_json)
    patch(loop, "write_weights", write_weights)


if __name__ == "__main__":
    spec = os.environ.get("KDKIT_KILL_AT")
    if spec:
        point, n = spec.split(":")
        install(point, int(n))
    sys.argv = ["kdkit", *sys.argv[1:]]
    cli.main()
