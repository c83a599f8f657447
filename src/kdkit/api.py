"""The Python API: the same as the CLI in a few lines.

>>> import kdkit
>>> result = kdkit.train("recipes/mnist_teacher.yaml", overrides=["epochs=2"])        # doctest: +SKIP
>>> result = kdkit.distill("recipes/mnist_kd.yaml", overrides=["epochs=2"])            # doctest: +SKIP
>>> kdkit.evaluate(result.best_path, data="mnist_5k")                                   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from kdkit.data import Augment, BatchLoader, load_source
from kdkit.data.split import evaluation_subset
from kdkit.data.views import model_data, model_transform
from kdkit.engine.evaluate import evaluate as run_eval
from kdkit.engine.loop import FitResult
from kdkit.errors import ConfigError
from kdkit.models.factory import load_model
from kdkit.objects import run_objects
from kdkit.pipeline import run_pipeline
from kdkit.recipe import Recipe, as_recipe
from kdkit.runs import run
from kdkit.softlabels.cache import CacheResult, build_cache
from kdkit.softlabels.importer import ImportResult, import_logits
from kdkit.study.seeds import SeedsResult, run_seeds
from kdkit.study.tune import TuneResult, run_tune
from kdkit.teachers.frozen import FrozenTeacher
from kdkit.teachers.policy import PRECISIONS, TeacherPolicy
from kdkit.weights import check_input_shape, read_metadata, resolve_checkpoint


def train(recipe: Recipe | str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None,
          resume: bool = False, quiet: bool = False, *, student: torch.nn.Module | None = None, train: Any = None,
          val: Any = None, terms: Any = None, epochs: int = 10, output_dir: str | Path = "runs",
          name: str | None = None, **fields: Any):
    """Train ``recipe``'s student (supervised when it has no teachers). Returns a :class:`kdkit.engine.FitResult`.

    Without a recipe, with Python objects: ``kdkit.train(student=net, train=data, val=data, epochs=...)`` trains your
    ``nn.Module`` (terms default to ``"ce"``) and returns a :class:`kdkit.objects.ObjectRun`; see :func:`distill`.
    """
    if student is not None or train is not None:
        if recipe is not None:
            raise ConfigError("train: give either a recipe or Python objects (student=..., train=...), not both")
        return run_objects(student=student, teachers=None, train=train, val=val, terms=terms, epochs=epochs,
                           output_dir=output_dir, name=name, resume=resume, quiet=quiet, default_terms="ce",
                           **fields)
    if recipe is None:
        raise ConfigError("train: pass a recipe (YAML path, bundled name, dict) or student=... and train=...")
    return _run(as_recipe(recipe, overrides), resume, quiet)


def _run(recipe: Recipe, resume: bool, quiet: bool) -> FitResult:
    if recipe.stages:  # a pipeline: each stage is a run of its own
        return run_pipeline(recipe, resume=resume, quiet=quiet)
    return run(recipe, resume=resume, quiet=quiet)


def distill(recipe: Recipe | str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None,
            resume: bool = False, quiet: bool = False, *, student: torch.nn.Module | None = None,
            teachers: list[Any] | None = None, train: Any = None, val: Any = None, terms: Any = "kd",
            epochs: int = 10, output_dir: str | Path = "runs", name: str | None = None, **fields: Any):
    """Distil a student from the recipe's teacher(s) (or soft-label store).

    Or from Python objects, no YAML::

        result = kdkit.distill(student=small_net, teachers=[big_net], train=loader, val=(x_val, y_val),
                               terms="kd", epochs=20, output_dir="runs", name="my_kd")

    Args (object form):
        student: your ``nn.Module``; it is trained in place and ends with its best epoch's weights.
        teachers: frozen teachers: ``nn.Module`` objects or kdkit run directories / weights files.
        train, val: a ``Dataset`` or ``DataLoader`` of ``(x, y)``, ``(x, y)`` tensors/arrays, or a dict with ``x``,
            ``y``; inputs of any shape (float data stays float). Without ``val``, ``data={"val_fraction": ...}`` of
            ``train`` is held out (stratified).
        terms: a preset (``"kd"``: 0.5 CE + 0.5 KD at T=4; ``"soft_only"``, ``"dkd"``, ``"ce"``, ``"consistent"``:
            KD at T=1 without labels, for mixup data), a term name, or a list of terms (names or ``{name, weight,
            params}`` dicts, as in a recipe).
        epochs, output_dir, name: as in a recipe; ``**fields``: any other recipe field (``optim={...}``,
            ``schedule={...}``, ``seed``, ``data={"batch_size": 64}``, ``scheme={...}``).
        resume: continue the interrupted run in ``output_dir/name``.

    Returns:
        a :class:`kdkit.objects.ObjectRun` (``student``, ``run_dir``, ``metrics``, ``best``, ``last``,
        ``best_path``) for objects; a :class:`kdkit.engine.FitResult` for a recipe.
    """
    if student is not None or train is not None:
        if recipe is not None:
            raise ConfigError("distill: give either a recipe or Python objects (student=..., train=...), not both")
        if not teachers and not fields.get("soft_labels"):
            raise ConfigError("distill: teachers=[...] is empty; pass your teacher module(s), or use kdkit.train")
        return run_objects(student=student, teachers=teachers, train=train, val=val, terms=terms, epochs=epochs,
                           output_dir=output_dir, name=name, resume=resume, quiet=quiet, default_terms="kd",
                           **fields)
    if recipe is None:
        raise ConfigError("distill: pass a recipe (YAML path, bundled name, dict) or student=..., teachers=..., "
                          "train=...")
    r = as_recipe(recipe, overrides)
    if not r.teachers and not r.soft_labels and not r.stages and r.scheme.name == "offline":
        raise ConfigError("distill: the recipe has no `teachers:` (or `soft_labels:`); use `kdkit train` for "
                          "supervised training")
    return _run(r, resume, quiet)


def seeds(recipes: list[Recipe | str | Path | dict[str, Any]] | Recipe | str | Path | dict[str, Any],
          seeds: list[int] = (0, 1, 2), baseline: Recipe | str | Path | dict[str, Any] | None = None,
          overrides: list[str] | None = None, out: str | Path | None = None, quiet: bool = False) -> SeedsResult:
    """The seeds protocol (``kdkit seeds``): each recipe run once per seed as ``<output_dir>/<name>-seed<k>``
    (finished seeds are read, not rerun), then mean ± sample std of best- and last-epoch validation top-1, the
    paired gain against ``baseline``, images/s and training time, written to ``seeds.json`` and ``seeds.md``.

    Returns a :class:`kdkit.study.seeds.SeedsResult`: ``table`` (the JSON), ``json_path``, ``md_path``, ``trained``
    and ``reused`` run directories."""
    if not isinstance(recipes, (list, tuple)):
        recipes = [recipes]
    return run_seeds(list(recipes), list(seeds), baseline=baseline, overrides=overrides, out=out, quiet=quiet)


def tune(recipe: Recipe | str | Path | dict[str, Any], trials: int = 10, overrides: list[str] | None = None,
         storage: str | None = None, sampler: str = "tpe", pruner: str = "median", sampler_seed: int | None = None,
         quiet: bool = False, store: bool = True, store_views: int | None = None,
         trial_seeds: list[int] | None = None) -> TuneResult:
    """``kdkit tune``: ``trials`` more Optuna trials over the recipe's ``search:`` block (the ``tune`` extra); each
    trial a run directory ``<output_dir>/<name>-tune/trial-<k>``, objective its best-epoch validation top-1. Returns
    a :class:`kdkit.study.tune.TuneResult` (``best_value``, ``best_params``, ``best_run_dir``, ``n_trials``);
    :func:`kdkit.study.tune.load_study` gives the ``optuna.Study``. ``store=False``: no shared soft-label store.
    ``trial_seeds=[0, 1]``: each trial trains once per seed, its value the mean (a study keeps its seeds)."""
    return run_tune(recipe, trials, overrides=overrides, storage=storage, sampler=sampler, pruner=pruner,
                    seed=sampler_seed, quiet=quiet, store=store, store_views=store_views, trial_seeds=trial_seeds)


def load_student(checkpoint: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model from a kdkit weights file (or run directory) using the metadata saved with it."""
    return load_model(checkpoint)


def cache(recipe: Recipe | str | Path | dict[str, Any], overrides: list[str] | None = None, views: int = 1,
          topk: int = 10, out: str | Path | None = None, from_logits: Any = None, index: Any = None,
          **kwargs: Any) -> CacheResult | ImportResult:
    """Run the recipe's teacher(s) once and store their top-k logits (``kdkit cache``); returns
    :class:`kdkit.softlabels.cache.CacheResult`. Keyword arguments: those of
    :func:`kdkit.softlabels.cache.build_cache` (``chunk_size``, ``batch_size``, ``overwrite``, ``quiet``).

    ``from_logits``: import a teacher that exists only as logits instead (``kdkit cache --from-logits``): a file, or
    an (N, K) array / tensor in dataset order (or with ``index``, the dataset index of each row); returns
    :class:`kdkit.softlabels.importer.ImportResult` (see :func:`kdkit.softlabels.importer.import_logits`)."""
    r = as_recipe(recipe, overrides)
    if from_logits is not None:
        if views != 1:
            raise ConfigError("cache(from_logits=...): imported logits are of the plain samples, one view; drop views")
        return import_logits(r, from_logits, index=index, topk=topk, out=out, **kwargs)
    if index is not None:
        raise ConfigError("cache(index=...) goes with from_logits=...")
    return build_cache(r, views=views, topk=topk, out=out, **kwargs)


def evaluate(checkpoint: str | Path | list[str | Path], data: str | None = None, split: str = "val",
             val_fraction: float | None = None, split_seed: int | None = None, batch_size: int = 512,
             params: dict[str, Any] | None = None, precision: str = "fp32", channels_last: bool | str = False,
             combine: str = "mean_probs") -> dict[str, Any]:
    """Top-1/top-5 of a saved student on a dataset: ``split="val"`` re-creates the recipe's held-out split,
    ``"all"`` uses every sample. Normalisation comes from the checkpoint's metadata.

    ``precision`` (``fp32`` | ``bf16`` | ``fp16`` | ``auto``) and ``channels_last`` (False | True | ``auto``) run the
    model as a frozen teacher runs (:mod:`kdkit.teachers.policy`, docs/speed.md): ``auto`` measures every mode on the
    first batch and keeps the fastest whose outputs agree with fp32 (KL ≤ 1e-3 at T = 4, ≥ 99% argmax agreement).
    The result then also holds ``mode`` (what ran) and ``policy`` (the measurements). fp32, the default, gives the
    exact reference figures.

    ``data``, ``val_fraction``, ``split_seed`` and ``params`` default to the recipe the checkpoint was trained with
    (recorded in its metadata), so ``kdkit eval RUN`` re-evaluates on the run's own validation split. Text students
    (``hf:``/``textnn:``) are evaluated by :func:`kdkit.text.evaluate.evaluate_text`.

    A list of two or more checkpoints scores their **ensemble** (``kdkit eval RUN_A RUN_B ...``): every model reads
    the same samples (the data of the first, unless ``data`` is given; each with its own normalisation) and their
    (N, K) logits are combined as multi-teacher distillation combines teachers (``combine``: ``mean_probs``, the
    log of the averaged probabilities, or ``mean_logits``; :func:`kdkit.teachers.frozen.combine_logits`). The result
    is the ensemble's figures plus ``members`` (each model's own) and ``combine``.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: '{precision}' is not one of {', '.join(PRECISIONS)}")
    if isinstance(checkpoint, (list, tuple)):
        if len(checkpoint) > 1:
            return _evaluate_ensemble([str(c) for c in checkpoint], data, split, val_fraction, split_seed,
                                      batch_size, params, precision, channels_last, combine)
        if not checkpoint:
            raise ConfigError("kdkit eval: give a checkpoint (a weights file or a run directory)")
        checkpoint = checkpoint[0]
    saved = read_metadata(resolve_checkpoint(str(checkpoint), "checkpoint"))
    if str(saved.get("model", {}).get("name", "")).startswith(("hf:", "textnn:")):
        if (precision, channels_last) != ("fp32", False):
            raise ConfigError(f"--precision/--channels-last: text models ('{checkpoint}') are evaluated in fp32 only; "
                              f"drop the option")
        from kdkit.text.evaluate import evaluate_text

        data, params, split, val_fraction, split_seed = _eval_data(checkpoint, saved, data, params, split,
                                                                   val_fraction, split_seed)
        return evaluate_text(checkpoint, data=data, split=split, val_fraction=val_fraction, split_seed=split_seed,
                             params=params)
    spec = _eval_data(checkpoint, saved, data, params, split, val_fraction, split_seed)
    model, loader = _eval_loader(checkpoint, spec, batch_size)
    if (precision, channels_last) == ("fp32", False):
        return run_eval(model, loader)
    net, describe = _policy_net(model, precision, channels_last)
    out: dict[str, Any] = dict(run_eval(net, loader))
    out.update(describe())
    return out


_EvalData = tuple[str, "dict[str, Any] | None", str, float, int]


def _eval_data(checkpoint: str | Path, saved: dict[str, Any], data: str | None, params: dict[str, Any] | None,
               split: str, val_fraction: float | None, split_seed: int | None) -> _EvalData:
    """(data, params, split, val_fraction, split_seed) to evaluate ``checkpoint`` on: the arguments given, the rest
    from the recipe recorded in its metadata ``saved``."""
    trained_on = saved.get("data") or {}
    if data is None and split == "val" and trained_on.get("val"):
        # the recipe validated on a separate source (e.g. a CIFAR test split): score all of it
        data, params, split = trained_on["val"], trained_on.get("val_params") if params is None else params, "all"
    if data is None or data == trained_on.get("name"):
        params = trained_on.get("params") if params is None else params
    if data is None:
        data = trained_on.get("name")
        if data is None:
            raise ConfigError(f"checkpoint '{checkpoint}' does not record its dataset (written by an older kdkit); "
                              f"pass --data NAME")
    val_fraction = trained_on.get("val_fraction", 0.2) if val_fraction is None else val_fraction
    split_seed = trained_on.get("split_seed", 0) if split_seed is None else split_seed
    return data, params, split, val_fraction, split_seed


def _eval_loader(checkpoint: str | Path, spec: _EvalData, batch_size: int) -> tuple[torch.nn.Module, BatchLoader]:
    """The saved model and a loader of ``spec``'s samples, in dataset order, normalised as the model was trained."""
    data, params, split, val_fraction, split_seed = spec
    model, meta = load_student(checkpoint)
    src = model_data(meta, load_source(data, **(params or {})))  # a model of another array reads that array
    if src.num_classes != meta["num_classes"]:
        raise ConfigError(f"--data '{data}' has {src.num_classes} classes, the checkpoint '{checkpoint}' predicts "
                          f"{meta['num_classes']}")
    check_input_shape(src, meta, f"--data '{data}'")
    src = evaluation_subset(src, split, val_fraction, split_seed)
    aug = Augment(mean=meta["mean"], std=meta["std"], crop_padding=0, flip=False, seed=0)
    # A student that read a derived named input (data.inputs, e.g. 14x14 digits) is fed that input again.
    loader = BatchLoader(src, torch.arange(len(src.targets)), batch_size, model_transform(meta, aug), shuffle=False,
                         seed=0)
    return model, loader


def _policy_net(model: torch.nn.Module, precision: str, channels_last: bool | str) -> tuple[torch.nn.Module, Any]:
    """The model run like a frozen teacher (inference mode, the policy's precision and memory format, float32
    logits), and a function giving what ran (``mode``) and the policy's measurements (``policy``)."""
    policy = TeacherPolicy(precision, channels_last, log=_stderr_line, role="model")
    net = FrozenTeacher(model, policy=policy)

    def describe() -> dict[str, Any]:
        out: dict[str, Any] = {"mode": net.mode.label if net.mode is not None else "fp32"}
        if policy.decisions:
            out["policy"] = policy.decisions[0]
        return out

    return net, describe


def _evaluate_ensemble(checkpoints: list[str], data: str | None, split: str, val_fraction: float | None,
                       split_seed: int | None, batch_size: int, params: dict[str, Any] | None, precision: str,
                       channels_last: bool | str, combine: str) -> dict[str, Any]:
    """:func:`evaluate` of several checkpoints' combined logits (see there)."""
    from kdkit.teachers.frozen import combine_logits

    if combine not in ("mean_probs", "mean_logits"):
        raise ConfigError(f"--combine: '{combine}' is not one of mean_probs, mean_logits")
    first = read_metadata(resolve_checkpoint(checkpoints[0], "checkpoint"))
    spec = _eval_data(checkpoints[0], first, data, params, split, val_fraction, split_seed)
    members: list[dict[str, Any]] = []
    logits: list[torch.Tensor] = []
    targets: torch.Tensor | None = None
    for ckpt in checkpoints:
        saved = first if ckpt == checkpoints[0] else read_metadata(resolve_checkpoint(ckpt, "checkpoint"))
        if str(saved.get("model", {}).get("name", "")).startswith(("hf:", "textnn:")):
            raise ConfigError(f"kdkit eval: '{ckpt}' is a text model; ensembles of image classifiers only -- "
                              f"evaluate it alone")
        model, loader = _eval_loader(ckpt, spec, batch_size)
        net, describe = (model, None) if (precision, channels_last) == ("fp32", False) else \
            _policy_net(model, precision, channels_last)
        rows, ys = _collect_logits(net, loader)
        if targets is not None and not torch.equal(ys, targets):
            raise ConfigError(f"kdkit eval: '{ckpt}' read other samples than '{checkpoints[0]}'; the models of an "
                              f"ensemble must read the same dataset")
        targets = ys
        if logits and rows.shape != logits[0].shape:
            raise ConfigError(f"kdkit eval: '{ckpt}' gives {rows.shape[1]} logits, '{checkpoints[0]}' "
                              f"{logits[0].shape[1]}; the models of an ensemble must predict the same classes")
        logits.append(rows)
        member = {"checkpoint": ckpt, **_scores(rows, ys)}
        if describe is not None:
            member.update(describe())
        members.append(member)
    assert targets is not None
    out: dict[str, Any] = _scores(combine_logits(logits, combine), targets)
    out.update(combine=combine, members=members)
    return out


@torch.inference_mode()
def _collect_logits(model: torch.nn.Module, loader: BatchLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float32 logits of ``model`` over ``loader`` and the (N,) or (N, K) targets, in loader order."""
    from kdkit.types import logits_of

    was = model.training
    model.eval()
    rows, ys = [], []
    try:
        for batch in loader:
            rows.append(logits_of(model(batch["input"])).float())
            ys.append(batch["target"])
    finally:
        model.train(was)
    return torch.cat(rows), torch.cat(ys)


def _scores(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """:func:`kdkit.engine.evaluate.evaluate`'s figures for precomputed logits."""
    return dict(run_eval(torch.nn.Identity(), [{"input": logits, "target": targets}]))


def _stderr_line(line: str) -> None:
    Console(stderr=True, soft_wrap=True).print(line, markup=False)
