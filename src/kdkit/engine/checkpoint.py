"""Atomic, resumable checkpoints.

Layout under ``RUN/checkpoints/``::

    step-00001200/            one complete resumable state (older ones are pruned)
        trainable.safetensors   student + connectors/heads (everything the optimiser trains)
        optimizer.pt            optimiser state (tensors and numbers only; loaded with weights_only=True)
        rng.safetensors         torch RNG state
        state.json              epoch, step, step within epoch, best metric, metric history, partial epoch sums
    latest.json               {"dir": "step-00001200"} — replaced atomically after the directory is complete
    best.safetensors          student weights of the best epoch, with model metadata (see ``write_weights``)

A state directory is written under a temporary name, every file fsynced, renamed into place (and the directory
fsynced), then ``latest.json`` is replaced atomically, so a crash or a full disk at any moment leaves the previous
complete state readable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from kdkit.errors import CheckpointError
from kdkit.utils import atomic_write_json, fsync_dir, fsync_file
from kdkit.weights import META_KEY, read_metadata, write_weights  # noqa: F401  (re-exported)

STATE_KEYS = ("epoch", "step", "batch_in_epoch", "history", "best")
STATE_FILES = ("trainable.safetensors", "optimizer.pt", "rng.safetensors", "state.json")


class CheckpointManager:
    """Saves and restores the complete training state of a run directory.

    Guarantees (docs/faults.md): every file is fsynced before the rename that publishes it, and the directory after
    it; a state directory counts only when all its files and a readable ``state.json`` are present; if
    ``latest.json`` is missing or unreadable the newest complete state directory is used; leftovers of an
    interrupted save (``.step-*.tmp``, ``.*.tmp``) are removed by :meth:`clean_stale`.
    """

    def __init__(self, run_dir: Path, keep: int = 1) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep

    @property
    def best_path(self) -> Path:
        return self.dir / "best.safetensors"

    def latest(self) -> Path | None:
        """The state directory to resume from, or None when the run directory holds no complete state."""
        ptr = self.dir / "latest.json"
        try:
            d = self.dir / str(json.loads(ptr.read_text())["dir"])
            if _complete(d):
                return d
        except (OSError, ValueError, KeyError, TypeError):
            pass  # missing or garbage pointer: fall back to the newest complete state below
        for d in sorted((p for p in self.dir.glob("step-*") if p.is_dir()), reverse=True):
            if _complete(d):
                return d
        return None

    def clean_stale(self) -> list[Path]:
        """Remove what an interrupted save left behind (``.step-*.tmp`` directories, ``.*.tmp`` files) and a
        ``latest.json`` that points to no complete state. Returns what was removed."""
        removed: list[Path] = []
        if not self.dir.is_dir():
            return removed
        for p in self.dir.iterdir():
            if p.name.endswith(".tmp"):
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
        ptr = self.dir / "latest.json"
        if ptr.exists():
            try:
                ok = _complete(self.dir / str(json.loads(ptr.read_text())["dir"]))
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                ptr.unlink(missing_ok=True)
                removed.append(ptr)
        return removed

    def broken(self) -> list[Path]:
        """State directories that are not complete (missing files or an unreadable ``state.json``)."""
        return sorted(p for p in self.dir.glob("step-*") if p.is_dir() and not _complete(p)) if self.dir.is_dir() \
            else []

    def why_incomplete(self, d: Path) -> str:
        missing = [f for f in STATE_FILES if not (d / f).is_file()]
        if missing:
            return f"lacks {', '.join(missing)}"
        try:
            state = json.loads((d / "state.json").read_text())
        except (OSError, ValueError) as err:
            return f"has an unreadable state.json ({err})"
        if not isinstance(state, dict):
            return "has a state.json that is not an object"
        return f"has a state.json without {', '.join(k for k in STATE_KEYS if k not in state)}"

    def reset(self) -> None:
        """Forget every saved state (a fresh start in a directory whose run never completed a checkpoint)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def save(self, trainable: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
        tag = f"step-{int(state['step']):08d}"
        final = self.dir / tag
        tmp = self.dir / f".{tag}.tmp"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            save_model(trainable, str(tmp / "trainable.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
            for name in STATE_FILES:
                fsync_file(tmp / name)
            fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(self.dir)
            atomic_write_json(self.dir / "latest.json", {"dir": tag})
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"could not write the checkpoint in '{self.dir}' ({err.strerror or err}); the "
                                  f"previous checkpoint is intact: free disk space or fix permissions, then run again "
                                  f"with --resume") from None
        self._prune(keep={tag})
        return final

    def _prune(self, keep: set[str]) -> None:
        dirs = sorted(p for p in self.dir.glob("step-*") if p.is_dir())
        for p in dirs[: max(0, len(dirs) - self.keep)]:
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)

    def load(self, trainable: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
        d = self.latest()
        if d is None:
            raise CheckpointError(f"no checkpoint to resume in '{self.dir}'; run without --resume to start afresh")
        try:
            state = json.loads((d / "state.json").read_text())
            missing_keys = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else list(STATE_KEYS)
            if missing_keys:
                raise CheckpointError(f"checkpoint '{d / 'state.json'}' lacks {', '.join(missing_keys)}; it was not "
                                      f"written by this kdkit — delete '{d}' to resume from an older state, or start "
                                      f"afresh without --resume")
            weights = load_file(str(d / "trainable.safetensors"))
            missing, unexpected = trainable.load_state_dict(weights, strict=False)
            # save_model drops tensors that alias others; load_state_dict then reports them missing harmlessly.
            real_missing = [k for k in missing if k not in _aliased(trainable)]
            if real_missing or unexpected:
                raise CheckpointError(
                    f"checkpoint '{d}' does not match the recipe's models (missing {real_missing[:3]}, "
                    f"unexpected {unexpected[:3]}); resume with the recipe that created it")
            if optimizer is not None:
                optimizer.load_state_dict(torch.load(d / "optimizer.pt", weights_only=True))
            torch.set_rng_state(load_file(str(d / "rng.safetensors"))["torch"])
            return state
        except CheckpointError:
            raise
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise CheckpointError(f"checkpoint '{d}' could not be restored ({first}); delete it to resume from an "
                                  f"older state, or start afresh without --resume") from None


def _complete(d: Path) -> bool:
    """A state directory is usable when every file is present and ``state.json`` parses with the keys resume needs."""
    if not all((d / f).is_file() for f in STATE_FILES):
        return False
    try:
        state = json.loads((d / "state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and all(k in state for k in STATE_KEYS)


def _aliased(module: nn.Module) -> set[str]:
    seen: dict[int, str] = {}
    aliased: set[str] = set()
    for name, t in module.state_dict(keep_vars=True).items():
        key = t.data_ptr() if t.numel() else id(t)
        if key in seen:
            aliased.add(name)
        else:
            seen[key] = name
    return aliased
