"""One generic registry for models, datasets, loss terms and schemes.

Things register where they are defined::

    @MODELS.register("resnet8x4", description="CIFAR ResNet-8 with 4x wider stages (1.23M params at 100 classes)")
    def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> nn.Module: ...

Unknown names and duplicates raise a :class:`~kdkit.errors.ConfigError` that lists what exists.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from kdkit.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    """A name -> object map with helpful errors. ``kind`` is used in messages ("model", "loss term", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str | None = None, *, description: str | None = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (default: its ``__name__``)."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ConfigError(f"cannot register a {self.kind} without a name")
            self.add(key, obj, description)
            return obj

        return deco

    def add(self, name: str, obj: T, description: str | None = None) -> None:
        if name in self._entries:
            raise ConfigError(f"{self.kind} '{name}' is registered twice; pick another name")
        desc = description or _first_line(getattr(obj, "__doc__", None)) or ""
        self._entries[name] = Entry(name, obj, desc)

    def get(self, name: str) -> T:
        try:
            return self._entries[name].obj
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._entries, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} '{name}'.{hint} Known: {', '.join(sorted(self._entries))}"

    def entries(self) -> list[Entry[T]]:
        return [self._entries[k] for k in sorted(self._entries)]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _first_line(doc: str | None) -> str:
    if not doc:
        return ""
    for line in doc.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


# The project's registries. Modules register into them at import time; ``kdkit.catalog.load_all()`` imports every
# module that registers something, so listings are complete.
MODELS: Registry[Callable] = Registry("model")
DATASETS: Registry[Callable] = Registry("dataset")
LOSSES: Registry[type] = Registry("loss term")
SCHEMES: Registry[type] = Registry("scheme")
