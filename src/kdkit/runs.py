"""One run, start to end: the run directory, the data, the scheme, the engine, the summary.

``kdkit train``/``distill`` call :func:`run` for a plain recipe and :func:`kdkit.pipeline.run_pipeline` (which calls
:func:`run` per stage) for a recipe with ``stages:``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from kdkit.builder import build_scheme
from kdkit.data.leakage import describe, teachers_on_validation
from kdkit.data.run import build_data
from kdkit.data.stream import StreamLoader
from kdkit.engine.checkpoint import CheckpointManager
from kdkit.engine.loop import Engine, FitResult, make_accelerator
from kdkit.engine.tracking import RunTracker
from kdkit.errors import CheckpointError, ConfigError
from kdkit.models.factory import object_rebuild
from kdkit.recipe import Recipe, save_recipe
from kdkit.utils import DirLock, atomic_write_json, seed_everything
from kdkit.weights import model_meta
from kdkit.yamlio import read_yaml_file

LOCK_NAME = ".kdkit.lock"
# Fields added to the recipe after runs were saved: a saved recipe without them had them empty.
ADDED_FIELDS: dict[str, object] = {"search": {}, "track": [], "channels_last": False,
                                   "teacher_policy": {"precision": "fp32", "channels_last": False, "compile": False,
                                                      "device": None}}


class RunLock(DirLock):
    """One writer per run directory: an exclusive ``fcntl.flock`` on ``RUN/.kdkit.lock``, held for the whole run.

    A second process gets a one-line :class:`~kdkit.errors.ConfigError` at once instead of two runs overwriting each
    other's checkpoints; a killed run never leaves a stale lock (the OS drops it with the process).
    """

    def __init__(self, run_dir: Path) -> None:
        def busy(pid: str) -> ConfigError:
            return ConfigError(f"run directory '{run_dir}' is in use by another kdkit process (pid {pid}); wait for it "
                               f"to finish, or set name=... / output_dir=... for a separate run")

        super().__init__(Path(run_dir) / LOCK_NAME, busy)


def make_run_dir(run_dir: Path) -> Path:
    """Create ``run_dir`` (and parents); an unwritable place is a one-line error naming ``output_dir``."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create run directory '{run_dir}' ({err.strerror or err}); set output_dir=... to a "
                          f"writable place") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"run directory '{run_dir}' is not writable; set output_dir=... to a writable place")
    return run_dir


def prepare_run_dir(recipe: Recipe, resume: bool, clean: bool = True, console: Any = None) -> bool:
    """Decide how the run starts; returns whether it resumes from a checkpoint.

    A run directory is always resumable or restartable: a directory with a complete checkpoint resumes with
    ``--resume`` (and refuses a fresh start, which would overwrite it); one without (a crash during the first
    checkpoint, before any was complete) starts afresh either way. ``clean`` removes what an interrupted save left
    (``*.tmp`` files and directories, a ``latest.json`` pointing nowhere) and, for a fresh start, the leftover
    checkpoints; only the process that holds the run lock cleans.
    """
    run_dir = recipe.run_dir
    ckpt = CheckpointManager(run_dir)
    if clean:
        ckpt.clean_stale()
        for p in run_dir.glob(".*.tmp"):
            p.unlink(missing_ok=True)
    has_state = ckpt.latest() is not None
    if not resume and has_state:
        raise ConfigError(f"run directory '{run_dir}' already holds a run; pass --resume to continue it, or set "
                          f"name=... / output_dir=... for a new one")
    if not resume:
        if clean:
            ckpt.reset()  # leftovers of a run that never completed a checkpoint: a fresh start replaces them
        return False
    if not has_state:
        broken = ckpt.broken()
        if broken:
            raise CheckpointError(f"--resume: checkpoint '{broken[-1]}' {ckpt.why_incomplete(broken[-1])} and no "
                                  f"complete one exists; run without --resume to start afresh")
        if console is not None:
            console.print(f"[yellow]note:[/] '{run_dir}' holds no complete checkpoint yet (the run stopped before its "
                          f"first one); starting from the beginning")
        return False
    return resume


def run(recipe: Recipe, resume: bool = False, quiet: bool = False, console: Any = None,
        epoch_callbacks: list[Any] | None = None, track_project: str | None = None) -> FitResult:
    """Train or distil as the recipe says; returns :class:`kdkit.engine.FitResult`.

    ``epoch_callbacks``: passed to :class:`~kdkit.engine.loop.Engine` (each gets every epoch's metrics record).
    ``track_project``: the experiment / project the recipe's trackers file this run under (default: its name)."""
    if recipe.stages:
        raise ConfigError("a recipe with `stages:` is a pipeline; run it with kdkit.pipeline.run_pipeline (kdkit "
                          "train/distill do)")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    accelerator = make_accelerator(recipe)
    created = not recipe.run_dir.exists()
    run_dir = make_run_dir(recipe.run_dir)
    lock = RunLock(run_dir) if accelerator.is_main_process else None
    if lock is not None:
        lock.acquire()
    try:
        note = (console or Console(stderr=True)) if accelerator.is_main_process else None
        resume = prepare_run_dir(recipe, resume, clean=lock is not None, console=note)
        if resume and (run_dir / "config.yaml").is_file():
            _check_same_recipe(recipe, run_dir)
        return _run_locked(recipe, run_dir, accelerator, resume, quiet, console, epoch_callbacks, track_project)
    except BaseException:
        if lock is not None:
            _remove_if_untouched(run_dir, created)  # input refused before anything was written: leave no trace
            lock.release()
            lock = None
        raise
    finally:
        if lock is not None:
            lock.release()


def _remove_if_untouched(run_dir: Path, created: bool) -> None:
    if created and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {LOCK_NAME}:
        shutil.rmtree(run_dir, ignore_errors=True)


def _run_locked(recipe: Recipe, run_dir: Path, accelerator: Any, resume: bool, quiet: bool, console: Any,
                epoch_callbacks: list[Any] | None = None, track_project: str | None = None) -> FitResult:
    seed_everything(recipe.seed)
    data = build_data(recipe, accelerator.num_processes, accelerator.process_index)
    if accelerator.device.type == "cuda":
        for loader in (data.train_loader, data.val_loader):
            if isinstance(loader, StreamLoader):  # decoded uint8 crosses from pinned memory; mixing runs on the GPU
                loader.device = accelerator.device
    scheme = build_scheme(recipe, data)
    if accelerator.is_main_process:
        save_recipe(recipe, run_dir / "config.yaml")
        seen = teachers_on_validation(data.split, [t.checkpoint for t in recipe.teachers])
        # recorded with the split, so a reader of the run sees that its validation scores are optimistic
        atomic_write_json(run_dir / "split.json",
                          {**data.split, "teachers_trained_on_val": seen} if seen else data.split)
        if seen and not quiet:
            for s in seen:
                (console or Console(stderr=True)).print(f"[yellow]warning:[/] {describe(s)}", soft_wrap=True)
    # The trackers see each epoch's record first, so an epoch after which a callback stops the run is logged too.
    tracker = RunTracker(accelerator, recipe, track_project)
    meta = model_meta(recipe.student, data, recipe)
    if recipe.student.name.startswith("object:"):  # an API object: record how eval/export can rebuild it, if they can
        rebuild = object_rebuild(recipe.student.name, data.num_classes, data.in_channels, data.image_size,
                                 data.shape_of(recipe.student.input) if hasattr(data, "shape_of") else None)
        if rebuild is not None:
            meta["model"]["rebuild"] = rebuild
    engine = Engine(recipe, run_dir, meta, console=console, quiet=quiet, accelerator=accelerator,
                    epoch_callbacks=[tracker.log, *(epoch_callbacks or [])])
    tracker.start()
    try:
        result = engine.fit(scheme, data.train_loader, data.val_loader, resume=resume)
    finally:
        tracker.end()
    if accelerator.is_main_process:
        atomic_write_json(run_dir / "summary.json", {"best": result.best, "last": result.last,
                                                     "best_weights": str(result.best_path)})
    return result


def _check_same_recipe(recipe: Recipe, run_dir: Path) -> None:
    saved = read_yaml_file(run_dir / "config.yaml", f"saved recipe '{run_dir / 'config.yaml'}'")
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume: '{run_dir}/config.yaml' is not a recipe; start afresh in a new run directory")
    now = json.loads(json.dumps(recipe.model_dump(mode="json")))

    def was(k: str) -> object:
        default = ADDED_FIELDS.get(k)
        if isinstance(default, dict) and isinstance(saved.get(k), dict):  # a field added inside a section since
            return {**default, **saved[k]}
        return saved.get(k, default)

    diff = [k for k in now if was(k) != now[k]
            and k not in ("epochs", "threads", "output_dir", "track")]
    if diff:
        raise ConfigError(f"--resume: the recipe differs from the one saved in '{run_dir}/config.yaml' in "
                          f"{', '.join(diff)}; resume with the same recipe (only epochs, threads, output_dir and "
                          f"track may change)")
