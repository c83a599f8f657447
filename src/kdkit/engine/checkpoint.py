"""Atomic, resumable checkpoints.

Layout under ``RUN/checkpoints/``::

    step-00001200/            one complete resumable state (older ones are pruned)
        trainable.safetensors   student + connectors/heads (everything the optimiser trains)
        optimizer.pt            optimiser state (tensors and numbers only; loaded with weights_only=True)
        rng.safetensors         torch RNG state
        state.json              epoch, step, step within epoch, best metric, metric history, partial epoch sums
    latest.json               {"dir": "step-00001200"} — replaced atomically after the directory is complete
    best.safetensors          student weights of the best epoch, with model metadata (see ``write_weights``)

A state directory is written under a temporary name and renamed into place, then ``latest.json`` is replaced, so a
crash at any moment leaves the previous complete state readable.
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
from kdkit.utils import atomic_write_json
from kdkit.weights import META_KEY, read_metadata, write_weights  # noqa: F401  (re-exported)


class CheckpointManager:
    """Saves and restores the complete training state of a run directory."""

    def __init__(self, run_dir: Path, keep: int = 1) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep

    @property
    def best_path(self) -> Path:
        return self.dir / "best.safetensors"

    def latest(self) -> Path | None:
        ptr = self.dir / "latest.json"
        if not ptr.is_file():
            return None
        d = self.dir / json.loads(ptr.read_text())["dir"]
        return d if (d / "state.json").is_file() else None

    def save(self, trainable: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        tag = f"step-{int(state['step']):08d}"
        final = self.dir / tag
        tmp = self.dir / f".{tag}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_model(trainable, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_json(self.dir / "latest.json", {"dir": tag})
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
            return json.loads((d / "state.json").read_text())
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"checkpoint '{d}' could not be restored: {err}") from None


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
