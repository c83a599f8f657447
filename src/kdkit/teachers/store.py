"""A soft-label store as a :class:`~kdkit.types.TeacherSource`: the teacher's logits read back instead of computed.

The training loader replays view (epoch mod V) -- its ``view_fn`` is set to the store's -- so epoch e draws, for every
sample, the very augmented view the teacher saw when view (e mod V) was cached; :meth:`StoreTeacher.outputs` then
reads the row of (``batch["index"]``, ``batch["view"]``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdkit.errors import ConfigError
from kdkit.registry import LOSSES, SCHEMES
from kdkit.softlabels.identity import identity_diff, run_identity
from kdkit.softlabels.store import SoftLabelStore
from kdkit.types import Batch, ModelOutput, TeacherSignal


class StoreTeacher:
    """Teacher logits from an opened, complete :class:`SoftLabelStore` (no features).

    Args:
        store: the store.
        models: teacher networks still needed beside the store (a Sobolev term differentiates the teacher), else [].
    """

    has_features = False

    def __init__(self, store: SoftLabelStore, models: list[nn.Module] | None = None) -> None:
        self.store = store
        self.models = list(models or [])

    def outputs(self, batch: Batch) -> TeacherSignal:
        x = batch["input"]
        logits = self.store.teacher_logits(batch["index"].cpu(), batch["view"].cpu())
        return TeacherSignal(ModelOutput(logits=logits.to(x.device, non_blocking=True)), [])

    def to(self, device: torch.device) -> StoreTeacher:
        for m in self.models:
            m.to(device)
        return self


def check_recipe_can_use_store(recipe: Any) -> None:
    """Refuse recipes that a store cannot serve: schemes that do not read a teacher source, terms that read teacher
    features, and terms that differentiate a teacher the recipe does not list."""
    scheme_cls = SCHEMES.get(recipe.scheme.name)
    if not getattr(scheme_cls, "accepts_store", False):
        raise ConfigError(f"soft_labels: scheme '{recipe.scheme.name}' does not read stored teacher logits; a "
                          f"soft-label store works with the offline scheme (drop soft_labels for this scheme)")
    for spec in recipe.terms:
        cls = LOSSES.get(spec.name)
        # With a store no teacher forward runs, so no teacher features exist in any case.
        if cls.needs_teacher_features:
            raise ConfigError(f"loss term '{spec.log_name}' reads teacher features, which a soft-label store does not "
                              f"hold; drop soft_labels to run the teacher online, or drop the term")
        # Derivative matching (Sobolev) differentiates the teacher model itself: it needs it listed under teachers.
        if cls.needs_input_grad and cls.needs_teacher and not recipe.teachers:
            raise ConfigError(f"loss term '{spec.log_name}' differentiates the teacher model, which a soft-label store "
                              f"does not hold; list the teacher under `teachers:` or drop the term")


def open_store_teacher(recipe: Any, data: Any, teachers: list[nn.Module] | None = None) -> StoreTeacher:
    """Open ``recipe.soft_labels``, check it matches the recipe, and make the training loader replay its views.

    Checks, each failing with one line that names what differs: the store exists and is complete; the scheme and every
    loss term can be fed from stored logits; the training split (pixels, labels, order, split indices), the
    augmentation (random ops, normalisation, seed) and -- when ``teachers`` are given (the recipe lists them) -- each
    teacher's model, parameters and weights (SHA-256 of its state dict) are the ones the store was computed from.

    Args:
        recipe: the recipe, with ``soft_labels`` set.
        data: :class:`kdkit.data.RunData`; its ``train_loader`` is set to replay the store's views.
        teachers: the recipe's teacher networks, when it lists them (their weights are checked, and they stay
            available to terms that differentiate the teacher).
    """
    if not recipe.soft_labels:
        raise ConfigError("open_store_teacher: the recipe has no soft_labels")
    check_recipe_can_use_store(recipe)
    store = SoftLabelStore.open(recipe.soft_labels)
    diffs = identity_diff(store.manifest["identity"], run_identity(recipe, data, teachers))
    if diffs:
        raise ConfigError(f"soft_labels: store '{store.path}' does not match the recipe: {'; '.join(diffs)}; re-create "
                          f"it with `kdkit cache RECIPE --overwrite`")
    loader = data.train_loader
    if not hasattr(loader, "view_fn"):
        raise ConfigError(f"soft_labels: the training loader ({type(loader).__name__}) cannot replay views "
                          f"(no view_fn); the store works with kdkit's image BatchLoader")
    loader.view_fn = store.view_of_epoch
    return StoreTeacher(store)


__all__ = ["StoreTeacher", "check_recipe_can_use_store", "open_store_teacher"]
