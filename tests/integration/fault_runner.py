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

spec = os.environ.get("KDKIT_KILL_AT")
if spec:
    point, n = spec.split(":")
    count = {"n": 0}

    def reached(name: str) -> None:
        if name == point:
            count["n"] += 1
            if count["n"] == int(n):
                os._exit(137)

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

    checkpoint.os = _Os()
    orig_latest_write = checkpoint.atomic_write_json

    def atomic_write_json(path, obj):
        orig_latest_write(path, obj)
        if str(path).endswith("latest.json"):
            reached("ckpt_latest")

    checkpoint.atomic_write_json = atomic_write_json
    orig_write_weights = loop.write_weights

    def write_weights(model, path, meta=None):
        out = orig_write_weights(model, path, meta)
        if str(path).endswith("best.safetensors"):
            reached("best")
        return out

    loop.write_weights = write_weights

sys.argv = ["kdkit", *sys.argv[1:]]
cli.main()
