"""From a validated recipe to a running job: data, models, terms, scheme, engine.

This is the only place that wires the parts together; each part stays ignorant of the others.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdkit.errors import CheckpointError, ConfigError
from kdkit.recipe import ModelSpec, Recipe, TermSpec, save_recipe
from kdkit.registry import SCHEMES
from kdkit.terms import LossTerm, build_term
from kdkit.utils import atomic_write_json, seed_everything


@dataclass
class RunData:
    """The data side of a run: the split, normalisation and both loaders."""

    train: Any  # kdkit.data.ImageData (the training subset)
    val: Any
    train_loader: Any
    val_loader: Any
    augment: Any
    num_classes: int
    in_channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    classes: list[str]
    split: dict[str, Any]


# Other modalities plug in here: a builder returns RunData for recipes it recognises and None otherwise (the text
# package registers one for CSV/JSON/Parquet/HF-dataset sources). Image data is the fallback.
DataBuilder = Callable[[Recipe, int, int], "RunData | None"]
DATA_BUILDERS: list[DataBuilder] = []


def build_data(recipe: Recipe, num_shards: int = 1, shard: int = 0) -> RunData:
    """Load the source, split it (stratified, duplicates kept on one side), and make the loaders."""
    import kdkit.catalog  # noqa: F401  (lets plug-in modules register data builders)

    for builder in DATA_BUILDERS:
        data = builder(recipe, num_shards, shard)
        if data is not None:
            return data
    return build_image_data(recipe, num_shards, shard)


def build_image_data(recipe: Recipe, num_shards: int = 1, shard: int = 0) -> RunData:
    from kdkit.data import Augment, BatchLoader, dataset_stats, load_source, stratified_split

    d = recipe.data
    full = load_source(d.name, **d.params)
    if d.val:
        train, val = full, load_source(d.val, **d.val_params)
        train_idx = torch.arange(len(full.targets))
        val_idx = torch.arange(len(val.targets))
        split = {"train": d.name, "val": d.val, "n_train": len(train_idx), "n_val": len(val_idx)}
    else:
        tr, va = stratified_split(full.targets, full.groups, d.val_fraction, d.split_seed)
        train_idx, val_idx = torch.as_tensor(tr), torch.as_tensor(va)
        train, val = full.subset(train_idx), full.subset(val_idx)
        split = {"source": d.name, "val_fraction": d.val_fraction, "split_seed": d.split_seed,
                 "train_idx": train_idx.tolist(), "val_idx": val_idx.tolist()}
    if d.train_limit is not None and d.train_limit < len(train.targets):
        # A stratified subset (not the first N: sources are often sorted by class).
        _, keep = stratified_split(train.targets, train.groups, d.train_limit / len(train.targets), d.split_seed + 1)
        if d.held_out:  # the complement of the teacher's subset: a transfer set it never saw
            keep = sorted(set(range(len(train.targets))) - set(int(k) for k in keep))
        train = train.subset(torch.as_tensor(keep))
        split["train_limit"] = d.train_limit
        split["train_limit_positions"] = torch.as_tensor(keep).tolist()
    elif d.held_out:
        raise ConfigError("data.held_out needs data.train_limit (the held-out set is what train_limit leaves out)")
    if d.unlabelled:
        if train.targets.ndim != 1:
            raise ConfigError("data.unlabelled works with single-label data; multi-label targets cannot be dropped")
        train = dataclasses.replace(train, targets=torch.full_like(train.targets, -1))
        split["unlabelled"] = True
    if val.num_classes != train.num_classes and d.val:
        raise ConfigError(f"data.val '{d.val}' has {val.num_classes} classes but data.name '{d.name}' has "
                          f"{train.num_classes}")
    if d.mean is not None and d.std is not None:
        mean, std = list(d.mean), list(d.std)
    else:
        m, s = dataset_stats(train.images)
        mean, std = [float(x) for x in m], [float(x) for x in s]
    if len(mean) != train.in_channels or len(std) != train.in_channels:
        raise ConfigError(f"data.mean/std have {len(mean)}/{len(std)} values for {train.in_channels} channel(s)")
    aug = Augment(mean=mean, std=std, crop_padding=d.augment.crop_padding, flip=d.augment.flip, seed=recipe.seed)
    plain = Augment(mean=mean, std=std, crop_padding=0, flip=False, seed=recipe.seed)
    train_loader = BatchLoader(train, torch.arange(len(train.targets)), d.batch_size, aug, shuffle=True,
                               seed=recipe.seed, drop_last=False, num_shards=num_shards, shard=shard)
    val_loader = BatchLoader(val, torch.arange(len(val.targets)), d.eval_batch_size, plain, shuffle=False,
                             seed=recipe.seed)
    return RunData(train, val, train_loader, val_loader, aug, train.num_classes, train.in_channels,
                   train.image_size, mean, std, list(train.classes), split)


def resolve_checkpoint(path: str, field: str) -> Path:
    """A checkpoint may be a weights file or a run directory (then its best weights are used)."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "checkpoints" / "best.safetensors", p / "last.safetensors"):
            if cand.is_file():
                return cand
        raise CheckpointError(f"{field}: run directory '{p}' has no checkpoints/best.safetensors; train it first")
    if not p.is_file():
        raise CheckpointError(f"{field}: checkpoint file '{p}' not found")
    return p


def make_model_factory(num_classes: int, in_channels: int, image_size: int):
    from kdkit.models import create_model

    def make(spec: ModelSpec, field: str = "student") -> nn.Module:
        ckpt = str(resolve_checkpoint(spec.checkpoint, f"{field}.checkpoint")) if spec.checkpoint else None
        return create_model(spec.name, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                            checkpoint=ckpt, **spec.params)

    return make


def make_terms(specs: Sequence[TermSpec]) -> list[LossTerm]:
    import kdkit.catalog  # noqa: F401  (registers every term)

    return [build_term(s) for s in specs]


def model_meta(spec: ModelSpec, data: RunData, recipe: Recipe | None = None) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its model and re-evaluate it (``kdkit eval`` reads ``data``)."""
    meta = {"model": {"name": spec.name, "params": spec.params}, "num_classes": data.num_classes,
            "in_channels": data.in_channels, "image_size": data.image_size, "mean": data.mean, "std": data.std,
            "classes": data.classes}
    if recipe is not None:
        d = recipe.data
        meta["data"] = {"name": d.name, "params": d.params, "val_fraction": d.val_fraction,
                        "split_seed": d.split_seed, "val": d.val, "val_params": d.val_params}
    return meta


def build_scheme(recipe: Recipe, data: RunData):
    import kdkit.catalog  # noqa: F401
    from kdkit.schemes.base import BuildContext

    make = make_model_factory(data.num_classes, data.in_channels, data.image_size)

    def make_model(spec: ModelSpec) -> nn.Module:
        if spec is recipe.student:
            return make(spec, "student")
        idx = next((i for i, t in enumerate(recipe.teachers) if t is spec), None)
        return make(spec, f"teachers.{idx}" if idx is not None else spec.name)

    example = next(iter(data.val_loader))["input"][:4]
    ctx = BuildContext(recipe=recipe, num_classes=data.num_classes, in_channels=data.in_channels,
                       image_size=data.image_size, example=example, num_train=len(data.train.targets),
                       make_model=make_model, make_terms=make_terms, extras={"data": data})
    cls = SCHEMES.get(recipe.scheme.name)
    return cls.build(ctx, **recipe.scheme.params)


def prepare_run_dir(recipe: Recipe, resume: bool) -> Path:
    run_dir = recipe.run_dir
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if (run_dir / "checkpoints").exists():
            raise ConfigError(f"run directory '{run_dir}' already holds a run; pass --resume to continue it, or set "
                              f"name=... / output_dir=... for a new one")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run(recipe: Recipe, resume: bool = False, quiet: bool = False, console: Any = None):
    """Train or distil as the recipe says; returns :class:`kdkit.engine.FitResult`."""
    from kdkit.engine import Engine
    from kdkit.engine.loop import make_accelerator

    if recipe.stages:  # a pipeline: each stage is a run of its own (kdkit.schemes.pipeline)
        from kdkit.schemes.pipeline import run_pipeline

        return run_pipeline(recipe, resume=resume, quiet=quiet, console=console)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    run_dir = prepare_run_dir(recipe, resume)
    if resume and (run_dir / "config.yaml").is_file():
        _check_same_recipe(recipe, run_dir)
    accelerator = make_accelerator(recipe)
    seed_everything(recipe.seed)
    data = build_data(recipe, accelerator.num_processes, accelerator.process_index)
    if recipe.soft_labels:  # teacher logits read from a store: checks it, wraps data.train_loader (kdkit.softlabels)
        from kdkit.softlabels import attach_soft_labels

        attach_soft_labels(recipe, data)
    scheme = build_scheme(recipe, data)
    if accelerator.is_main_process:
        save_recipe(recipe, run_dir / "config.yaml")
        atomic_write_json(run_dir / "split.json", data.split)
    engine = Engine(recipe, run_dir, model_meta(recipe.student, data, recipe), console=console, quiet=quiet,
                    accelerator=accelerator)
    result = engine.fit(scheme, data.train_loader, data.val_loader, resume=resume)
    if accelerator.is_main_process:
        atomic_write_json(run_dir / "summary.json", {"best": result.best, "last": result.last,
                                                     "best_weights": str(result.best_path)})
    return result


def _check_same_recipe(recipe: Recipe, run_dir: Path) -> None:
    import yaml

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    now = json.loads(json.dumps(recipe.model_dump(mode="json")))
    diff = [k for k in now if saved.get(k) != now[k] and k not in ("epochs", "threads")]
    if diff:
        raise ConfigError(f"--resume: the recipe differs from the one saved in '{run_dir}/config.yaml' in "
                          f"{', '.join(diff)}; resume with the same recipe (only epochs and threads may change)")
