"""Distil from a soft-label store: the training loader replays view (epoch mod V) and each batch carries the
reconstructed teacher logits under ``batch["teacher_logits"]``, which makes
:class:`~kdkit.schemes.offline.OfflineScheme` skip the teacher forward entirely.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from kdkit.errors import ConfigError
from kdkit.recipe import Recipe
from kdkit.softlabels.cache import identity_diff, run_identity
from kdkit.softlabels.store import SoftLabelStore
from kdkit.types import Batch


class SoftLabelLoader:
    """Wraps a training :class:`kdkit.data.BatchLoader` so that its batches carry stored teacher logits.

    Setting the loader's ``view_fn`` to ``epoch mod V`` makes epoch e draw, for every sample, the very augmented view
    the teacher saw when view (e mod V) was cached; the store row is then looked up by (``batch["index"]``,
    ``batch["view"]``). Everything else (order, sharding, ``set_epoch``, ``iter_from`` for mid-epoch resume) is the
    wrapped loader's.

    Args:
        loader: the training loader (must have ``view_fn``, ``set_epoch``, ``__len__``, ``__iter__``).
        store: an opened, complete :class:`SoftLabelStore` for the same training split.
    """

    def __init__(self, loader: Any, store: SoftLabelStore) -> None:
        if not hasattr(loader, "view_fn"):
            raise ConfigError(f"soft_labels: the training loader ({type(loader).__name__}) cannot replay views "
                              f"(no view_fn); the store works with kdkit's image BatchLoader")
        self.loader = loader
        self.store = store
        loader.view_fn = store.view_of_epoch

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        return self._with_logits(iter(self.loader))

    def iter_from(self, batch_idx: int) -> Iterator[Batch]:
        return self._with_logits(self.loader.iter_from(batch_idx))

    def _with_logits(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        for batch in batches:
            batch["teacher_logits"] = self.store.teacher_logits(batch["index"], batch["view"])
            yield batch

    def __getattr__(self, name: str) -> Any:
        # Anything else (batch_size, indices, data, epoch, ...) is the wrapped loader's.
        if name in ("loader", "store"):
            raise AttributeError(name)
        return getattr(self.loader, name)


def check_recipe_can_use_store(recipe: Recipe) -> None:
    """Refuse recipes that a store cannot serve: non-offline schemes, terms that read teacher features, and terms that
    differentiate a teacher the recipe does not list."""
    import kdkit.catalog  # noqa: F401  (registers every term and scheme)
    from kdkit.registry import LOSSES, SCHEMES
    from kdkit.schemes.offline import OfflineScheme

    scheme_cls = SCHEMES.get(recipe.scheme.name)
    if not (isinstance(scheme_cls, type) and issubclass(scheme_cls, OfflineScheme)):
        raise ConfigError(f"soft_labels: scheme '{recipe.scheme.name}' does not read stored teacher logits; a "
                          f"soft-label store works with the offline scheme (drop soft_labels for this scheme)")
    for spec in recipe.terms:
        cls = LOSSES.get(spec.name)
        # With a store the offline scheme skips the teacher forward, so no teacher features exist in any case.
        if getattr(cls, "needs_teacher_features", False):
            raise ConfigError(f"loss term '{spec.log_name}' reads teacher features, which a soft-label store does not "
                              f"hold; drop soft_labels to run the teacher online, or drop the term")
        # Derivative matching (Sobolev) differentiates the teacher model itself: it needs it listed under teachers.
        if getattr(cls, "needs_input_grad", False) and cls.needs_teacher and not recipe.teachers:
            raise ConfigError(f"loss term '{spec.log_name}' differentiates the teacher model, which a soft-label store "
                              f"does not hold; list the teacher under `teachers:` or drop the term")


def attach_soft_labels(recipe: Recipe, data: Any) -> SoftLabelStore:
    """Open ``recipe.soft_labels``, check it matches the recipe, and wrap ``data.train_loader`` in place.

    Checks, each failing with one line that names what differs: the store exists and is complete; the scheme and every
    loss term can be fed from stored logits; the training split (pixels, labels, order, split indices), the
    augmentation (crop, flip, normalisation, seed) and — when the recipe lists ``teachers`` — each teacher's model,
    parameters and weights (SHA-256 of its state dict) are the ones the store was computed from.

    Args:
        recipe: the recipe, with ``soft_labels`` set.
        data: :class:`kdkit.build.RunData`; its ``train_loader`` is replaced by a :class:`SoftLabelLoader`.

    Returns:
        The opened store.
    """
    if not recipe.soft_labels:
        raise ConfigError("attach_soft_labels: the recipe has no soft_labels")
    check_recipe_can_use_store(recipe)
    store = SoftLabelStore.open(recipe.soft_labels)
    teachers = None
    if recipe.teachers:
        from kdkit.build import make_model_factory

        make = make_model_factory(data.num_classes, data.in_channels, data.image_size)
        # Building a model draws its initial weights from the global RNG; fork it so that the student the scheme
        # builds next starts from the same weights as in the online run with the same seed.
        with torch.random.fork_rng(devices=[]):
            teachers = [make(spec, f"teachers.{i}") for i, spec in enumerate(recipe.teachers)]
    current = run_identity(recipe, data, teachers)
    del teachers
    diffs = identity_diff(store.manifest["identity"], current)
    if diffs:
        raise ConfigError(f"soft_labels: store '{store.path}' does not match the recipe: {'; '.join(diffs)}; re-create "
                          f"it with `kdkit cache RECIPE --overwrite`")
    data.train_loader = SoftLabelLoader(data.train_loader, store)
    return store
