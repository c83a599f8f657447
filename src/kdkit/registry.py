"""The one registration mechanism: every model, model source (``hf:``, ``timm:`` ...), dataset, loss term, scheme and
command is found through a :class:`Registry`, and every module that registers something is listed once, in
:data:`PLUGINS`, with the extra it needs.

Things register where they are defined::

    @MODELS.register("resnet8x4", description="CIFAR ResNet-8 with 4x wider stages (1.23M params at 100 classes)")
    def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> nn.Module: ...

Completeness by construction: a lookup that misses imports the plug-in modules in table order until the name appears
(so a recipe naming ``rotten_tomatoes`` finds the text package without anybody importing it first), and a listing
imports them all. A module is skipped only when a package of its extra is missing; :func:`skipped_plugins` and every
listing say which. User code plugs in the same way: :func:`add_plugin` (the CLI's ``--plugin MODULE``), or an installed
package's entry point in the ``kdkit.plugins`` group.

Unknown names and duplicates raise a :class:`~kdkit.errors.ConfigError` that lists what exists.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kdkit.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str
    meta: dict[str, Any] = field(default_factory=dict)  # what a kind of entry declares beyond the object


@dataclass(frozen=True)
class Plugin:
    """A module that registers entries, and the ``pip install kdkit[EXTRA]`` extra its imports need (None: core)."""

    module: str
    extra: str | None = None


# Every module of kdkit that registers something, in the order a missing name is searched for (cheap core first).
PLUGINS: list[Plugin] = [
    Plugin("kdkit.models.resnet"),
    Plugin("kdkit.models.wrn"),
    Plugin("kdkit.models.vgg"),
    Plugin("kdkit.models.mobilenetv2"),
    Plugin("kdkit.models.shufflenet"),
    Plugin("kdkit.models.small"),
    Plugin("kdkit.models.factory"),
    Plugin("kdkit.models.derived"),
    Plugin("kdkit.models.qat"),
    Plugin("kdkit.models.exits"),
    Plugin("kdkit.data.sources"),
    Plugin("kdkit.data.arrays"),
    Plugin("kdkit.terms.logits"),
    Plugin("kdkit.terms.regularizers"),
    Plugin("kdkit.terms.features"),
    Plugin("kdkit.terms.relational"),
    Plugin("kdkit.terms.contrastive"),
    Plugin("kdkit.terms.sobolev"),
    Plugin("kdkit.schemes.offline"),
    Plugin("kdkit.schemes.online"),
    Plugin("kdkit.schemes.mutual"),
    Plugin("kdkit.schemes.self_distill"),
    Plugin("kdkit.schemes.specialists"),
    Plugin("kdkit.schemes.adversarial"),
    Plugin("kdkit.softlabels.commands"),
    Plugin("kdkit.report.commands"),
    Plugin("kdkit.study.commands"),
    Plugin("kdkit.deploy.commands", "deploy"),
    Plugin("kdkit.teachers.onnx", "deploy"),
    Plugin("kdkit.text.models", "text"),
    Plugin("kdkit.text.textnn", "text"),
    Plugin("kdkit.text.data", "text"),
    Plugin("kdkit.text.terms", "text"),
    Plugin("kdkit.lm.models", "text"),
    Plugin("kdkit.lm.data", "text"),
    Plugin("kdkit.lm.terms", "text"),
    Plugin("kdkit.lm.commands", "text"),
    Plugin("kdkit.lm.onpolicy", "text"),
]

_loaded: set[str] = set()
_skipped: dict[str, str] = {}  # module -> why
_loading = False
_entry_points_read = False


_user_plugins: set[str] = set()


def user_plugin_modules() -> set[str]:
    """Modules the user named with ``--plugin`` / :func:`add_plugin` or through the ``kdkit.plugins`` entry points."""
    _read_entry_points()
    return set(_user_plugins)


def add_plugin(module: str, extra: str | None = None) -> None:
    """Add a user module (``--plugin mypkg.kd``) whose import registers models, datasets, terms, schemes or commands.

    The module is imported at once, so that a wrong name fails here with one line.
    """
    if not any(p.module == module for p in PLUGINS):
        PLUGINS.append(Plugin(module, extra))
    _user_plugins.add(module)
    _import(Plugin(module, extra), user=True)


def _read_entry_points() -> None:
    """Installed packages plug in through the ``kdkit.plugins`` entry-point group (``module`` or ``module:attr``)."""
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="kdkit.plugins"):
        module = ep.value.split(":", 1)[0].strip()
        _user_plugins.add(module)
        if not any(p.module == module for p in PLUGINS):
            PLUGINS.append(Plugin(module))


def _import(plugin: Plugin, user: bool = False) -> None:
    if plugin.module in _loaded or plugin.module in _skipped:
        return
    try:
        importlib.import_module(plugin.module)
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        if user and err.name and plugin.module.startswith(err.name):
            raise ConfigError(f"plug-in module '{plugin.module}' not found; put its folder on PYTHONPATH (or next to "
                              f"the recipe) or install its package") from None
        if plugin.extra is None or missing in ("", "kdkit"):
            raise  # a core module's own import is broken: a bug, not a missing extra
        _skipped[plugin.module] = f"needs the '{plugin.extra}' extra (pip install 'kdkit[{plugin.extra}]'): " \
                                  f"no module named '{err.name}'"
        return
    _loaded.add(plugin.module)


def load_plugins(until: Callable[[], bool] | None = None) -> None:
    """Import the plug-in modules in table order; stop early once ``until()`` is true."""
    global _loading
    if _loading:  # a plug-in module looked a name up while being imported: the caller's import finishes the job
        return
    _loading = True
    try:
        _read_entry_points()
        for plugin in list(PLUGINS):
            if until is not None and until():
                return
            _import(plugin)
    finally:
        _loading = False


def skipped_plugins() -> dict[str, str]:
    """Plug-in modules not loaded because their extra is missing: ``{module: why}``."""
    load_plugins()
    return dict(_skipped)


class Registry(Generic[T]):
    """A name -> object map with helpful errors. ``kind`` is used in messages ("model", "loss term", ...).

    Lookups and listings are complete: see the module docstring.
    """

    def __init__(self, kind: str, py_names: bool = False) -> None:
        self.kind = kind
        self.py_names = py_names  # ``py:package.module:attr`` names user code directly (terms, schemes)
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str | None = None, *, description: str | None = None, **meta: Any
                 ) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (default: its ``__name__``); ``meta`` is kept on the entry."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ConfigError(f"cannot register a {self.kind} without a name")
            self.add(key, obj, description, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, description: str | None = None, **meta: Any) -> None:
        if name in self._entries:
            if self._entries[name].obj is obj:  # the same module imported twice (e.g. run as __main__): harmless
                return
            raise ConfigError(f"{self.kind} '{name}' is registered twice; pick another name")
        desc = description or _first_line(getattr(obj, "__doc__", None)) or ""
        self._entries[name] = Entry(name, obj, desc, dict(meta))

    def _user_entry(self, name: str) -> Entry[T] | None:
        """``py:package.module:attr``: the user's object, imported on first use and kept under that name."""
        if not (self.py_names and isinstance(name, str) and name.startswith("py:")):
            return None
        if name not in self._entries:
            obj = import_object(name[3:], f"{self.kind} '{name}'")
            self._entries[name] = Entry(name, obj, _first_line(getattr(obj, "__doc__", None)), {"user": True})
        return self._entries[name]

    def entry(self, name: str) -> Entry[T]:
        user = self._user_entry(name)
        if user is not None:
            return user
        if name not in self._entries:
            load_plugins(until=lambda: name in self._entries)
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def find(self, name: str) -> Entry[T] | None:
        """The entry, or None (after searching every plug-in module)."""
        user = self._user_entry(name)
        if user is not None:
            return user
        if name not in self._entries:
            load_plugins(until=lambda: name in self._entries)
        return self._entries.get(name)

    def unknown_message(self, name: str) -> str:
        load_plugins()
        close = difflib.get_close_matches(name, self._entries, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        skipped = f" (not loaded: {'; '.join(f'{m} {why}' for m, why in _skipped.items())})" if _skipped else ""
        return f"unknown {self.kind} '{name}'.{hint} Known: {', '.join(sorted(self._entries))}{skipped}"

    def entries(self) -> list[Entry[T]]:
        load_plugins()
        return [self._entries[k] for k in sorted(self._entries) if not k.startswith("py:")]

    def names(self) -> list[str]:
        load_plugins()
        return sorted(k for k in self._entries if not k.startswith("py:"))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        load_plugins()
        return len(self._entries)


def _first_line(doc: str | None) -> str:
    if not doc:
        return ""
    for line in doc.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def import_object(ref: str, field: str) -> Any:
    """``package.module:attr`` -> the object (user code named in a recipe as ``py:package.module:attr``).

    The module is imported from ``PYTHONPATH`` (the CLI also puts the recipe's folder there); nothing is ever read
    from a checkpoint or downloaded.
    """
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"{field}: 'py:{ref}' must name 'py:package.module:attribute'")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            raise ConfigError(f"{field}: module '{module}' not found; put its folder on PYTHONPATH or next to the "
                              f"recipe") from None
        raise
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{field}: module '{module}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


# The project's registries.
MODELS: Registry[Callable] = Registry("model")  # the kdkit zoo: name -> builder(num_classes, in_channels, ...)
MODEL_SOURCES: Registry[Callable] = Registry("model source")  # 'PREFIX:' -> builder(rest, num_classes, ...)
DATASETS: Registry[Callable] = Registry("dataset")  # name or 'PREFIX:' -> loader(**params); meta: run_data builder
LOSSES: Registry[type] = Registry("loss term", py_names=True)  # also ``py:module:Class`` (a LossTerm subclass)
SCHEMES: Registry[type] = Registry("scheme", py_names=True)  # also ``py:module:Class`` (a Scheme subclass)
COMMANDS: Registry[Callable] = Registry("command")  # CLI commands beyond the core ones: name -> Typer function
