"""``kdkit cache RECIPE --cross-fit RUN --cross-fit RUN``: cross-fitted (out-of-fold) soft labels.

A teacher fits the images it trained on far more tightly than new ones: on Fashion-MNIST a 94 % teacher is 97 % right
on its own training images with a median entropy of 0.001 nats -- nearly one-hot targets that tell a student little
beyond the label (docs/benchmarks.md, "A softer teacher"). Cross-fitting trains K teachers on K disjoint parts of the
training images (``data.train_limit`` with ``data.held_out``, or any split) and gives each training image the
prediction of the teacher(s) that never saw it, so every target looks like a test-time prediction.

``combine="oof"``: image i's target is the mean probability of the teachers whose training set does not contain i
(stored as its log: at T = 1 KD then matches exactly that mean); an image no teacher trained on gets the mean of all;
an image *every* teacher trained on is refused (one line naming how many). ``combine="mean"``: every image gets the mean
probability of all teachers (an ensemble of the same teachers, not out-of-fold).

Which images a teacher trained on is read from its run directory (``split.json``: the training split and the
``data.train_limit`` positions), so each teacher must be a kdkit run on the recipe's dataset (``data.name``). The
teachers run once over the recipe's training images through :func:`kdkit.softlabels.cache.build_cache` (the same
teacher policy, normalisation and order as ``kdkit cache``), and the combined logits are written through
:func:`kdkit.softlabels.importer.import_logits`, so the store passes every check an imported table does (dataset
fingerprint, split, coverage); its manifest's ``source`` says ``kind: cross-fit`` and lists each teacher's run, weights
SHA-256 and how many of the training images it gave a target for. Like every imported store it has one view of the
plain images (``data.augment`` off) and names no teachers in its identity: distil with ``soft_labels:`` and no
``teachers:``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from kdkit.data.leakage import run_train_indices
from kdkit.errors import ConfigError
from kdkit.recipe import Recipe, load_recipe, recipe_from_dict
from kdkit.softlabels.cache import build_cache
from kdkit.softlabels.importer import ImportResult, import_logits
from kdkit.softlabels.store import SoftLabelStore

COMBINES = ("oof", "mean")


def trained_on(run: str | Path) -> np.ndarray:
    """The dataset indices (positions in the run's ``data.name``) of the images a kdkit run trained on.

    Args:
        run: a run directory (it holds ``split.json`` and ``config.yaml``).

    Returns:
        (N_train,) int64, ascending order not guaranteed.
    """
    got = run_train_indices(run)
    if got is None:
        raise ConfigError(f"--cross-fit '{run}': no split.json; give the run directory of a teacher trained by kdkit")
    return got[1]


def combine_logits(log_probs: torch.Tensor, use: torch.Tensor) -> torch.Tensor:
    """Log of the mean probability over the teachers each image may use.

    Args:
        log_probs: (M, N, K) each teacher's log-probabilities.
        use: (M, N) bool, teacher m may give image n's target; at least one per image.

    Returns:
        (N, K) ``log((1/|U_n|) Σ_{m∈U_n} p_m,n)``, U_n = {m : use[m, n]}.
    """
    w = use.to(log_probs.dtype).unsqueeze(-1)
    return torch.logsumexp(log_probs + torch.log(w), dim=0) - torch.log(w.sum(0))


def cross_fit(recipe: Recipe, teacher_runs: list[str | Path], combine: str = "oof", topk: int = 10,
              out: str | Path | None = None, *, overwrite: bool = False, quiet: bool = False,
              console: Console | None = None) -> ImportResult:
    """Write a store of cross-fitted soft labels for ``recipe``'s training images (see the module docstring).

    Args:
        recipe: the student's recipe (its data decide the training images; ``soft_labels`` the default store path).
        teacher_runs: two or more teacher run directories trained on different parts of the training images.
        combine: ``oof`` (out-of-fold, the default) or ``mean`` (ensemble).
        topk: k classes kept per image (with k = K the store is exact up to fp16).
        out: the store directory (default: the recipe's ``soft_labels``).
        overwrite: replace an existing store.
        quiet: no summary.
        console: where the summary goes.

    Returns:
        :class:`kdkit.softlabels.importer.ImportResult`.
    """
    if combine not in COMBINES:
        raise ConfigError(f"--cross-fit: combine must be one of {', '.join(COMBINES)}, got {combine!r}")
    if len(teacher_runs) < 2:
        raise ConfigError(f"--cross-fit needs two or more teacher runs (trained on different parts of the training "
                          f"images), got {len(teacher_runs)}")
    runs = [Path(r) for r in teacher_runs]
    base = recipe.model_dump(mode="json")
    base["scheme"] = {"name": "offline", "params": {}}
    log_probs, samples, teachers = [], None, []
    with tempfile.TemporaryDirectory(prefix="kdkit-crossfit-") as tmp:
        for i, run in enumerate(runs):
            if not (run / "config.yaml").is_file():
                raise ConfigError(f"--cross-fit '{run}': no config.yaml; give the run directory of a teacher trained "
                                  f"by kdkit")
            spec = load_recipe(run / "config.yaml").student
            if load_recipe(run / "config.yaml").data.name != recipe.data.name:
                raise ConfigError(f"--cross-fit '{run}': trained on another dataset than data.name "
                                  f"'{recipe.data.name}'; its training images cannot be matched")
            part = Path(tmp) / f"teacher{i}"
            r = recipe_from_dict({**base, "teachers": [{"name": spec.name, "params": spec.params,
                                                        "checkpoint": str(run), "input": spec.input}],
                                  "soft_labels": str(part)})
            res = build_cache(r, views=1, topk=1 << 16, quiet=True)  # every class (clipped to K): exact up to fp16
            store = SoftLabelStore.open(res.path)
            s = np.load(res.path / "samples.npy")
            if samples is not None and not np.array_equal(s, samples):  # the same recipe: never expected
                raise ConfigError(f"--cross-fit '{run}': its store rows differ from the first teacher's")
            samples = s
            log_probs.append(torch.log_softmax(store.teacher_logits(torch.arange(len(s)), 0).double(), dim=1))
            teachers.append({"run": str(run), "sha256": store.manifest["identity"]["teachers"][0]["sha256"]})
    assert samples is not None
    lp = torch.stack(log_probs)
    use = torch.ones(lp.shape[:2], dtype=torch.bool)
    if combine == "oof":
        for i, run in enumerate(runs):
            use[i] = torch.from_numpy(~np.isin(samples, trained_on(run)))
        nobody = ~use.any(0)
        if bool(nobody.any()):
            raise ConfigError(f"--cross-fit: {int(nobody.sum())} of {len(samples)} training images were in every "
                              f"teacher's training set; train each teacher on a different part (data.train_limit "
                              f"with data.held_out: true for the other half)")
    for i, t in enumerate(teachers):
        t["targets"] = int(use[i].sum())
    logits = combine_logits(lp, use).float()
    return import_logits(recipe, logits, index=samples, topk=topk, out=out, overwrite=overwrite, quiet=quiet,
                         console=console,
                         source={"kind": "cross-fit", "combine": combine, "teachers": teachers})


__all__ = ["COMBINES", "combine_logits", "cross_fit", "trained_on"]
