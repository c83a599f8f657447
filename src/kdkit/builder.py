"""From a validated recipe to a scheme: models, loss terms, the teacher source and the scheme that joins them.

This is the only place that wires the parts together; each part stays ignorant of the others. Whole runs (engine,
run directory) are :mod:`kdkit.runs`; pipelines of runs are :mod:`kdkit.pipeline`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from rich.console import Console
from torch import nn

from kdkit.data.run import RunData
from kdkit.data.sources import resolve_dataset
from kdkit.errors import ConfigError, ShapeError
from kdkit.models.factory import create_model
from kdkit.models.pretrained import load_pretrained
from kdkit.recipe import ModelSpec, Recipe
from kdkit.registry import LOSSES, MODEL_SOURCES, SCHEMES
from kdkit.schemes.base import BuildContext, Scheme
from kdkit.teachers.adapters import build_teachers
from kdkit.teachers.policy import recipe_policy
from kdkit.teachers.store import StoreTeacher, check_recipe_can_use_store, open_store_teacher
from kdkit.terms.base import build_terms
from kdkit.types import TeacherSource, input_key, logits_of
from kdkit.weights import resolve_checkpoint


def make_model_factory(num_classes: int, in_channels: int, image_size: int,
                       input_shape: tuple[int, ...] | None = None) -> Callable[..., nn.Module]:
    """``make(spec, field)``: build a recipe's model with its weights (``field`` names it in errors)."""

    def make(spec: ModelSpec, field: str = "student") -> nn.Module:
        prefix, sep, _ = spec.name.partition(":")
        source = MODEL_SOURCES.find(prefix) if sep and spec.checkpoint else None
        if source is not None and source.meta.get("weights_in_name"):
            raise ConfigError(f"{field}.checkpoint: model '{spec.name}' carries its own weights; drop `checkpoint`")
        ckpt = str(resolve_checkpoint(spec.checkpoint, f"{field}.checkpoint")) if spec.checkpoint else None
        model = create_model(spec.name, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                             checkpoint=ckpt, input_shape=input_shape, **spec.params)
        if spec.pretrained and ckpt is None:  # a checkpoint (e.g. the fine-tuned teacher) replaces every weight anyway
            report = load_pretrained(model, spec.pretrained, spec.name, num_classes, f"{field}.pretrained")
            Console(stderr=True, soft_wrap=True).print(report.line(f"{field} ({spec.name})"), markup=False)
        return model

    return make


def check_forward(model: nn.Module, example: torch.Tensor, num_classes: int, what: str) -> None:
    """Run ``model`` once on a few real inputs (eval mode, no grad): a model that cannot take the data's shape, or
    returns logits of the wrong width, fails here with one line instead of a traceback from the first step."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(example)
        logits = logits_of(out)
    except Exception as err:  # the user's forward may raise anything
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ShapeError(f"{what} cannot take the data's input: a batch of shape {tuple(example.shape)} "
                         f"{str(example.dtype).replace('torch.', '')} raised {type(err).__name__}: {first}; make its "
                         f"forward accept (B, {', '.join(map(str, example.shape[1:]))})") from None
    finally:
        model.train(was_training)
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ShapeError(f"{what} returns logits of shape {tuple(logits.shape)} for a batch of {example.shape[0]}; "
                         f"expected ({example.shape[0]}, {num_classes}): one column per class of the data")


def build_context(recipe: Recipe, data: RunData) -> BuildContext:
    """What a scheme is built from: model and term factories, the teachers, the store (when ``soft_labels``).

    Each model is built for, probed with and fed the named input its spec reads (``input:``; default the main one),
    so a student reading ``data.inputs.small`` is built for 14x14 samples while its teacher reads 28x28."""
    views = {**(getattr(data, "views", None) or {}), **(getattr(data, "arrays", None) or {})}
    if recipe.data.inputs and not views:
        raise ConfigError(f"data.inputs: dataset '{recipe.data.name}' does not make named inputs (text data); drop "
                          f"data.inputs")
    for field, spec in (("student", recipe.student), *((f"teachers.{i}", t) for i, t in enumerate(recipe.teachers))):
        if views:
            data.check_input(spec.input, f"{field}.input")
        elif spec.input not in (None, "input"):
            raise ConfigError(f"{field}.input: unknown input '{spec.input}'; this data makes only 'input' (declare "
                              f"others under data.inputs)")
    first = next(iter(data.val_loader))
    examples = {name: first[input_key(name)][:4] for name in (["input", *views])}

    def make_for(spec: ModelSpec, field: str) -> nn.Module:
        shape = data.shape_of(spec.input) if views else getattr(data, "input_shape", None)
        if shape is None or not views:
            return make_model_factory(data.num_classes, data.in_channels, data.image_size, shape)(spec, field)
        size = int(shape[1] if len(shape) == 3 else shape[-1])  # as ImageData.image_size: H, or the last axis
        return make_model_factory(data.num_classes, int(shape[0]), size, shape)(spec, field)

    def make_model(spec: ModelSpec) -> nn.Module:
        if spec is recipe.student:
            model = make_for(spec, "student")
            if getattr(data, "input_shape", None) is not None and not spec.name.startswith("qat:"):
                check_forward(model, examples[spec.input or "input"], data.num_classes, f"student '{spec.name}'")
            return model
        idx = next((i for i, t in enumerate(recipe.teachers) if t is spec), None)
        return make_for(spec, f"teachers.{idx}" if idx is not None else spec.name)

    ctx = BuildContext(recipe=recipe, num_classes=data.num_classes, in_channels=data.in_channels,
                       image_size=data.image_size, example=examples[recipe.student.input or "input"],
                       num_train=len(data.train.targets), make_model=make_model, make_terms=build_terms, data=data,
                       examples=examples)
    ctx.make_teachers = lambda teacher_inputs="auto": build_teachers(ctx, recipe.teachers, teacher_inputs)
    ctx.teacher_policy = recipe_policy(recipe, recipe.run_dir / "teacher_policy.json")
    if recipe.soft_labels:
        ctx.store = store_teacher(recipe, data, ctx)
    return ctx


def store_teacher(recipe: Recipe, data: RunData, ctx: BuildContext) -> StoreTeacher | TeacherSource:
    """The soft-label store as the run's teacher source, checked against the recipe (and its teachers' weights when
    it lists them). Teacher networks stay loaded only when a term differentiates the teacher (Sobolev). A language-model
    recipe reads a token logit store (:mod:`kdkit.lm.store`) instead."""
    teachers = None
    if recipe.teachers:
        # Building a model draws its initial weights from the global RNG; fork it so that the student the scheme
        # builds next starts from the same weights as in the online run with the same seed.
        with torch.random.fork_rng(devices=[]):
            teachers = ctx.make_teachers(recipe.scheme.params.get("teacher_inputs", "auto"))
    opener = resolve_dataset(recipe.data.name)[0].meta.get("store_teacher")
    if opener is not None:  # the data's own store (language models: kdkit.lm.store's token logit store)
        check_recipe_can_use_store(recipe)
        return opener(recipe, data, teachers)
    store = open_store_teacher(recipe, data, teachers)
    if teachers and any(LOSSES.get(t.name).needs_input_grad for t in recipe.terms):
        store.models = teachers
    return store


def build_scheme(recipe: Recipe, data: RunData) -> Scheme:
    """The recipe's scheme, built from :func:`build_context`."""
    ctx = build_context(recipe, data)
    cls = SCHEMES.get(recipe.scheme.name)
    if not (isinstance(cls, type) and issubclass(cls, Scheme)):
        raise ConfigError(f"scheme.name: '{recipe.scheme.name}' is not a subclass of kdkit.schemes.base.Scheme; see "
                          f"docs/own-models-and-data.md")
    readers = [(f, s) for f, s in (("student", recipe.student), *((f"teachers.{i}", t) for i, t in
                                                                 enumerate(recipe.teachers)))
               if s.input not in (None, "input")]
    if readers and not cls.accepts_named_inputs:
        raise ConfigError(f"{readers[0][0]}.input: scheme '{recipe.scheme.name}' feeds every model the main input; "
                          f"models reading their own named input work with the offline scheme (drop `input:`)")
    return cls.build(ctx, **recipe.scheme.params)


def frozen_teacher_models(recipe: Recipe, data: RunData) -> list[nn.Module]:
    """The recipe's teacher networks as the offline scheme would build them (input adapters included)."""
    ctx = build_context(recipe.model_copy(update={"soft_labels": None}), data)
    return ctx.make_teachers(recipe.scheme.params.get("teacher_inputs", "auto"))


__all__ = ["build_context", "build_scheme", "frozen_teacher_models", "make_model_factory", "store_teacher"]
