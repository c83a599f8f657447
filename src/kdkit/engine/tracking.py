"""Experiment trackers (TensorBoard, MLflow, Weights & Biases) through Accelerate's tracking API.

A recipe's ``track: [tensorboard, mlflow, wandb]`` names them; each is an optional package (the ``track`` extra).
:func:`accelerator_kwargs` gives ``Accelerator(log_with=..., project_dir=...)``; :class:`RunTracker` starts them with
the resolved recipe and the teacher policy as the run's configuration (``init_trackers``), logs every epoch's metrics
record (every loss term unweighted, ``train_loss``, ``lr``, ``val_top1`` ...; ``accelerator.log``) and finishes them.
The engine sees it as one more epoch callback, so the loop itself knows nothing about trackers.

Where each writes (the defaults need no server and no network):

- ``tensorboard``: event files in ``RUN/track/<project>/`` (``tensorboard --logdir runs`` finds every run).
- ``mlflow``: the store ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<output_dir>/mlflow.db`` (MLflow's
  recommended local store; its ``file:`` store now needs ``MLFLOW_ALLOW_FILE_STORE=true``); experiment ``<project>``,
  run ``<name>``; the recipe is also stored as the artifact ``recipe.yaml``.
- ``wandb``: ``wandb.init(project=<project>, name=<name>, dir=RUN/track)``; offline with ``WANDB_MODE=offline``
  (then ``wandb sync RUN/track/wandb/offline-run-*`` uploads later), else it needs ``wandb login``.

``<project>`` is the recipe's name, or the study a run belongs to (``kdkit tune``: the study name, so every trial is
one run of one MLflow experiment / W&B project).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kdkit.errors import ConfigError
from kdkit.recipe import Recipe

TRACKERS = ("tensorboard", "mlflow", "wandb")
_PACKAGE = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_trackers(names: list[str]) -> None:
    """Every tracker's package must be importable: one line naming the field and the fix otherwise."""
    import importlib.util

    for name in names:
        if importlib.util.find_spec(_PACKAGE[name]) is None:
            raise ConfigError(f"recipe field 'track': {name} needs the package '{_PACKAGE[name]}', which is not "
                              f"installed; pip install 'kdkit[track]' (or drop {name} from track)")


def accelerator_kwargs(recipe: Recipe) -> dict[str, Any]:
    """``log_with`` and ``project_dir`` for the run's Accelerator (empty without ``track:``)."""
    if not recipe.track:
        return {}
    check_trackers(list(recipe.track))
    return {"log_with": list(recipe.track), "project_dir": str(Path(recipe.run_dir) / "track")}


def teacher_policy(recipe: Recipe) -> dict[str, Any]:
    """Where the teacher signal comes from, in words a tracker can show: ``source`` (``none`` for supervised training,
    ``soft-label store``, or ``frozen teachers``), the teachers (name and checkpoint), the combine rule and store."""
    params = recipe.scheme.params
    source = "none" if not recipe.teachers and not recipe.soft_labels else \
        "soft-label store" if recipe.soft_labels else "frozen teachers"
    return {"source": source, "scheme": recipe.scheme.name,
            "teachers": [f"{t.name}@{t.checkpoint}" if t.checkpoint else t.name for t in recipe.teachers],
            "combine": params.get("combine", "mean_logits") if len(recipe.teachers) > 1 else None,
            "store": recipe.soft_labels}


def flat_config(data: dict[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """Nested recipe data as ``{"terms.1.params.temperature": 4.0, ...}``: the scalar values every tracker takes
    (TensorBoard's hparams reject lists and None; empty containers and None become the string ``"none"``)."""
    out: dict[str, str | int | float | bool] = {}
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (dict, list, tuple)) and v:
            out.update(flat_config(v if isinstance(v, dict) else list(v), key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = "none" if v is None or v in ({}, [], ()) else json.dumps(v)
    return out


class RunTracker:
    """The trackers of one run, on its Accelerator (built with :func:`accelerator_kwargs`).

    Args:
        accelerator: the run's ``accelerate.Accelerator``.
        recipe: the resolved recipe (logged flat, under its field paths, plus ``teacher_policy.*``).
        project: experiment / project name (default: the recipe's name).
    """

    def __init__(self, accelerator: Any, recipe: Recipe, project: str | None = None) -> None:
        self.acc, self.recipe = accelerator, recipe
        self.project = project or recipe.name
        self.names = list(recipe.track)
        self.started = False

    def start(self) -> None:
        if not self.names:
            return
        r = self.recipe
        if "mlflow" in self.names and not os.environ.get("MLFLOW_TRACKING_URI"):
            import mlflow  # the `track` extra

            out = Path(r.output_dir).resolve()
            out.mkdir(parents=True, exist_ok=True)
            mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
        config = flat_config(json.loads(json.dumps(r.model_dump(mode="json"))))
        config.update(flat_config(teacher_policy(r), "teacher_policy."))
        init = {"mlflow": {"run_name": r.name},
                "wandb": {"name": r.name, "dir": str(Path(r.run_dir) / "track")}}
        self.acc.init_trackers(self.project, config=config,
                               init_kwargs={k: v for k, v in init.items() if k in self.names})
        self.started = True
        if self.acc.is_main_process and "mlflow" in self.names:
            import mlflow
            import yaml

            mlflow.log_text(yaml.safe_dump(r.model_dump(mode="json"), sort_keys=False), "recipe.yaml")

    def log(self, record: dict[str, Any]) -> None:
        """One epoch's metrics record, at step = the epoch number (1-based): every numeric field but ``epoch``."""
        if not self.started:
            return
        values = {k: float(v) for k, v in record.items()
                  if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.acc.log(values, step=int(record["epoch"]))

    def end(self) -> None:
        """Flush and close every tracker. (Not ``accelerator.end_training()``: that also tears down the process group,
        which the next stage of a pipeline run under torchrun still needs.)"""
        if not self.started:
            return
        for tracker in self.acc.trackers:
            tracker.finish()
        self.acc.trackers = []
        self.started = False
