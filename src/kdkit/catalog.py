"""Import every module that registers something, so registries are complete (listings, recipe building)."""

from __future__ import annotations

import importlib

_MODULES = [
    "kdkit.terms",
    "kdkit.terms_catalog",
    "kdkit.schemes",
    "kdkit.models",
    "kdkit.data",
]


def load_all() -> None:
    for name in _MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            # Only tolerate modules of this list that do not exist yet; a missing dependency inside one is a bug.
            if err.name != name:
                raise


load_all()
