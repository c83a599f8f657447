"""``kdkit cache``: run the recipe's teacher(s) once over V augmented views of every training sample and store the top-k
logits (see :mod:`kdkit.softlabels.store` for the format).

View v of training sample i is ``train_loader.batch_at(i, view=v)`` -- the recipe's :class:`kdkit.data.Augment` (same
parameters, same seed; with mixup/cutmix, mixed with the same partner), on the in-memory or streamed training split --
which is exactly what the student's loader produces in any epoch e with e mod V = v.
Teachers run frozen, in eval mode, in float32, through the same teacher source the offline scheme uses
(:class:`kdkit.teachers.FrozenTeachers`) — so several teachers are combined exactly as online distillation would
combine them (``scheme.params.combine``).

Work is split into chunks of ``chunk_size`` samples of one view. After each chunk the arrays are flushed and the chunk
is recorded in ``progress.json`` atomically; a run that is interrupted resumes from the chunks that were recorded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from kdkit.builder import frozen_teacher_models
from kdkit.data.loader import EpochLoader
from kdkit.data.run import build_data
from kdkit.errors import ConfigError
from kdkit.recipe import Recipe, as_recipe
from kdkit.registry import SCHEMES
from kdkit.softlabels.identity import identity_diff, run_identity, training_source_index
from kdkit.softlabels.store import (
    FORMAT,
    MANIFEST,
    SAMPLES_SPEC,
    VERSION,
    SoftLabelStore,
    bytes_per_row,
    encode_topk,
    human_bytes,
    read_progress,
    write_samples,
)
from kdkit.teachers.frozen import FrozenTeachers
from kdkit.teachers.policy import recipe_policy
from kdkit.utils import DirLock, seed_everything

# ----------------------------------------------------------------------------------------------------------------------
# The cache run


@dataclass
class CacheResult:
    """What ``build_cache`` did.

    Attributes:
        path: the store directory.
        manifest: its manifest.
        chunks_total: chunks in the store (views × ceil(N / chunk_size)).
        chunks_computed: chunks this call computed (0 when the store was already complete).
        seconds: wall time of this call's teacher passes.
        file_bytes: size of the arrays.
    """

    path: Path
    manifest: dict[str, Any]
    chunks_total: int
    chunks_computed: int
    seconds: float
    file_bytes: int


def default_store_path(recipe: Recipe) -> Path:
    """``recipe.soft_labels`` when set (so the same recipe caches and then distils), else output_dir/NAME-softlabels."""
    return Path(recipe.soft_labels) if recipe.soft_labels else Path(recipe.output_dir) / f"{recipe.name}-softlabels"


def _device(recipe: Recipe) -> torch.device:
    if recipe.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("recipe field 'device': cuda requested but no GPU is visible; use device: auto or cpu")
    return torch.device("cuda" if recipe.device != "cpu" and torch.cuda.is_available() else "cpu")


def build_cache(recipe: Recipe | str | Path | dict[str, Any], views: int = 1, topk: int = 10,
                out: str | Path | None = None, *, overrides: list[str] | None = None,
                chunk_size: int = 2048, batch_size: int | None = None, overwrite: bool = False, quiet: bool = False,
                console: Console | None = None, on_chunk: Callable[[int, int], None] | None = None) -> CacheResult:
    """Run the teacher(s) over ``views`` augmented views of every training sample and store the top-``topk`` logits.

    Args:
        recipe: a distillation recipe with ``teachers``: a :class:`Recipe`, a YAML path (or bundled recipe name) or
            a dict, as everywhere in the API.
        views: V, the number of augmented views per sample (1 when the recipe's augmentation is off: every view is
            then the same image).
        topk: k, classes kept per (sample, view); clipped to K.
        out: the store directory (default: :func:`default_store_path`).
        overrides: ``key.path=value`` recipe overrides (as ``--set``).
        chunk_size: samples per resumable chunk.
        batch_size: teacher batch (default ``data.eval_batch_size``).
        overwrite: replace an existing store made for something else.
        quiet: no progress bar and no summary.
        console: where progress and the summary go (default: stderr).
        on_chunk: called as ``on_chunk(chunk_id, chunks_done)`` after each chunk is recorded (tests use it to
            simulate a crash).

    Returns:
        :class:`CacheResult`.
    """
    recipe = as_recipe(recipe, overrides)
    if not recipe.teachers:
        raise ConfigError("kdkit cache: the recipe has no `teachers:`; the store holds teacher outputs")
    if views < 1:
        raise ConfigError(f"--views must be >= 1, got {views}")
    if topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {topk}")
    if chunk_size < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {chunk_size}")
    console = console or Console(stderr=True)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    seed_everything(recipe.seed)
    data = build_data(recipe)
    if not isinstance(data.train_loader, EpochLoader) or data.augment is None:
        raise ConfigError(f"kdkit cache: data '{recipe.data.name}' is not image data with a replayable augmentation; "
                          f"the soft-label store supports image recipes")
    if not getattr(SCHEMES.get(recipe.scheme.name), "accepts_store", False):
        raise ConfigError(f"kdkit cache: scheme '{recipe.scheme.name}' does not read a teacher source that a store "
                          f"can replace; the store works with the offline scheme (one or several frozen teachers)")
    params = recipe.scheme.params
    combine = params.get("combine", "mean_logits")
    if combine == "random" and len(recipe.teachers) > 1:
        raise ConfigError("scheme.params.combine: 'random' draws a teacher per training step, which a store cannot "
                          "replay; cache with mean_logits, mean_probs or weighted")
    models = frozen_teacher_models(recipe, data)
    # The same teacher source the offline scheme distils from, so several teachers combine exactly as online.
    source = FrozenTeachers(models, combine=combine, weights=params.get("teacher_weights"), seed=recipe.seed,
                            policy=recipe_policy(recipe, None), inputs=[t.input for t in recipe.teachers])
    identity = run_identity(recipe, data, models)
    device = _device(recipe)
    source.to(device)

    n, num_classes = len(data.train.targets), int(data.num_classes)
    if not data.augment.is_random and views > 1:
        if not quiet:
            console.print(f"[yellow]note:[/] the recipe's augmentation is off, so all {views} views would be the "
                          f"same image; storing 1 view")
        views = 1
    k = min(topk, num_classes)
    blocks = math.ceil(n / chunk_size)
    path = Path(out) if out is not None else default_store_path(recipe)
    manifest = {
        "format": FORMAT, "version": VERSION, "complete": False,
        "views": views, "topk": k, "num_classes": num_classes, "num_samples": n,
        "chunk_size": chunk_size, "chunks": views * blocks,
        "arrays": SoftLabelStore.array_specs(views, n, k, num_classes),
        "samples": SAMPLES_SPEC | {"shape": [n]},
        "bytes_per_sample_view": bytes_per_row(k, num_classes),
        "reconstruction": "logits: stored value for the top-k classes, `tail` (log-mean-exp of the other K-k "
                          "logits) for every other class",
        "identity": identity,
        "recipe": {"name": recipe.name, "seed": recipe.seed, "soft_labels": recipe.soft_labels},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = DirLock(path.parent / f".{path.name}.lock", lambda pid: ConfigError(
        f"soft-label store '{path}' is being written by another kdkit process (pid {pid}); wait for it to finish, or "
        f"choose another --out")).acquire()
    try:
        return _fill(store_path=path, manifest=manifest, overwrite=overwrite, views=views, blocks=blocks, n=n, k=k,
                     num_classes=num_classes, chunk_size=chunk_size, batch_size=batch_size, recipe=recipe, data=data,
                     source=source, device=device, quiet=quiet, console=console, on_chunk=on_chunk)
    finally:
        lock.release()


def _fill(*, store_path: Path, manifest: dict[str, Any], overwrite: bool, views: int, blocks: int, n: int, k: int,
          num_classes: int, chunk_size: int, batch_size: int | None, recipe: Recipe, data: Any, source: Any,
          device: torch.device, quiet: bool, console: Console, on_chunk: Callable[[int, int], None] | None
          ) -> CacheResult:
    path = store_path
    store = _open_for_writing(path, manifest, overwrite)
    write_samples(path, training_source_index(data))
    done = read_progress(path) if not store.manifest.get("complete") else set(range(views * blocks))
    todo = [c for c in range(views * blocks) if c not in done]
    if not todo:
        if not quiet:
            console.print(f"soft-label store {path} is complete and matches the recipe; nothing to do")
        return CacheResult(path, store.manifest, views * blocks, 0, 0.0, store.file_bytes())
    if done and not quiet:
        console.print(f"[bold]resuming[/] {path}: {len(done)}/{views * blocks} chunks already stored")

    bs = batch_size or recipe.data.eval_batch_size
    t0 = time.perf_counter()
    prog = None
    if not quiet:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        prog = Progress(TextColumn("caching teacher outputs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console, transient=True)
        prog.start()
        task = prog.add_task("cache", total=views * n, info="",
                             completed=sum(_chunk_len(c, blocks, chunk_size, n) for c in done))
    try:
        for c in todo:
            v, blk = divmod(c, blocks)
            lo, hi = blk * chunk_size, min(n, (blk + 1) * chunk_size)
            for s in range(lo, hi, bs):
                pos = torch.arange(s, min(hi, s + bs), dtype=torch.int64)
                # The student's loader makes exactly these inputs (every named input: each teacher reads its own)
                # for sample `pos` in any epoch e with e mod V = v.
                batch = {k: x.to(device) for k, x in data.train_loader.batch_at(pos, v).items()
                         if k == "input" or k.startswith("input.")}
                logits = source.outputs(batch).combined.logits.float().cpu()
                if logits.shape[1] != num_classes:
                    raise ConfigError(f"teachers output {logits.shape[1]} classes, the data has {num_classes}")
                store.write(v, s, *encode_topk(logits, k))
                if prog is not None:
                    rate = (prog.tasks[0].completed + pos.numel()) / max(time.perf_counter() - t0, 1e-9)
                    prog.update(task, advance=pos.numel(), info=f"view {v + 1}/{views} · {rate:,.0f} img/s")
            done.add(c)
            store.commit_chunks(done)
            if on_chunk is not None:
                on_chunk(c, len(done))
    finally:
        if prog is not None:
            prog.stop()
    seconds = time.perf_counter() - t0
    extra: dict[str, Any] = {"seconds": round(float(store.manifest.get("seconds", 0.0)) + seconds, 3)}
    policy = source.teachers[0].policy if source.teachers else None
    if policy is not None and policy.decisions:  # how the teachers ran (a bf16 teacher's logits differ slightly)
        extra["teacher_policy"] = policy.decisions
    store.finalize(extra)
    size = store.file_bytes()
    if not quiet:
        per = bytes_per_row(k, num_classes)
        console.print(f"[bold green]stored[/] {path}: {n} samples × {views} view(s), top-{k} of {num_classes} "
                      f"classes, {len(todo)} chunk(s) in {seconds:.1f} s")
        console.print(f"disk use: {human_bytes(size)} ({per} B per sample-view: {2 * k} values + "
                      f"{store.arrays['indices'].dtype.itemsize * k} indices + 2 tail); distil with "
                      f"`soft_labels: {path}` in the recipe")
    return CacheResult(path, store.manifest, views * blocks, len(todo), seconds, size)


def _chunk_len(c: int, blocks: int, chunk_size: int, n: int) -> int:
    blk = c % blocks
    return min(n, (blk + 1) * chunk_size) - blk * chunk_size


def _open_for_writing(path: Path, manifest: dict[str, Any], overwrite: bool) -> SoftLabelStore:
    """Resume a matching store, or create a new one (an existing, different store needs ``overwrite``)."""
    if not (path / MANIFEST).is_file():
        return SoftLabelStore.create(path, manifest, overwrite=overwrite)
    try:
        old = SoftLabelStore.open(path, writable=True, require_complete=False)
    except ConfigError:
        if overwrite:
            return SoftLabelStore.create(path, manifest, overwrite=True)
        raise
    layout = ("views", "topk", "num_classes", "num_samples", "chunk_size")
    diffs = [f"{key} (store {old.manifest.get(key)}, now {manifest[key]})" for key in layout
             if old.manifest.get(key) != manifest[key]]
    diffs += identity_diff(old.manifest["identity"], manifest["identity"])
    if not diffs:
        return old
    if overwrite:
        del old
        return SoftLabelStore.create(path, manifest, overwrite=True)
    raise ConfigError(f"'{path}' holds a soft-label store made for something else: {'; '.join(diffs)}; pass "
                      f"--overwrite to replace it, or choose another --out")
