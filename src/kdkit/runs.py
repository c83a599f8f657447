"""One run, start to end: the run directory, the data, the scheme, the engine, the summary.

``kdkit train``/``distill`` call :func:`run` for a plain recipe and :func:`kdkit.pipeline.run_pipeline` (which calls
:func:`run` per stage) for a recipe with ``stages:``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from kdkit.builder import build_scheme
from kdkit.data.run import build_data
from kdkit.engine.loop import Engine, FitResult, make_accelerator
from kdkit.errors import ConfigError
from kdkit.recipe import Recipe, save_recipe
from kdkit.utils import atomic_write_json, seed_everything
from kdkit.weights import model_meta


def prepare_run_dir(recipe: Recipe, resume: bool) -> Path:
    run_dir = recipe.run_dir
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if (run_dir / "checkpoints").exists():
            raise ConfigError(f"run directory '{run_dir}' already holds a run; pass --resume to continue it, or set "
                              f"name=... / output_dir=... for a new one")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run(recipe: Recipe, resume: bool = False, quiet: bool = False, console: Any = None) -> FitResult:
    """Train or distil as the recipe says; returns :class:`kdkit.engine.FitResult`."""
    if recipe.stages:
        raise ConfigError("a recipe with `stages:` is a pipeline; run it with kdkit.pipeline.run_pipeline (kdkit "
                          "train/distill do)")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    run_dir = prepare_run_dir(recipe, resume)
    if resume and (run_dir / "config.yaml").is_file():
        _check_same_recipe(recipe, run_dir)
    accelerator = make_accelerator(recipe)
    seed_everything(recipe.seed)
    data = build_data(recipe, accelerator.num_processes, accelerator.process_index)
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
