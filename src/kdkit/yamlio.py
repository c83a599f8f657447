"""Bounded YAML reading: every YAML file kdkit reads (recipes, ``--set`` values, a run's ``config.yaml``) goes through
:func:`load_yaml`.

PyYAML's ``safe_load`` runs no code, but it still accepts two inputs that hurt at load time or later:

* an *alias bomb* (``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]`` ...): a few hundred bytes whose aliases expand to
  gigabytes when the value is copied, validated or saved;
* *deep nesting* (``[[[[...]]]]``), which exhausts Python's recursion limit inside the composer.

:func:`load_yaml` bounds the text size, the nesting depth (counted while composing, before any recursion can
overflow) and the number of nodes the document would have once every alias is expanded (counted on the composed
graph with memoisation, so the count itself is cheap), and refuses recursive aliases. Anchors and merge keys used the
ordinary way stay fine. Every refusal is a one-line :class:`~kdkit.errors.ConfigError` naming the file.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from kdkit.errors import ConfigError

MAX_BYTES = 1 << 20  # a recipe is a few kB; 1 MB leaves room for long stage lists and generated recipes
MAX_DEPTH = 64  # recipes nest about 5 deep
MAX_NODES = 20_000  # values after alias expansion; the largest bundled recipe has a few hundred


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses nesting deeper than ``MAX_DEPTH`` while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(f"nesting deeper than {MAX_DEPTH} levels at line {mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Refused(Exception):
    pass


def _expanded_size(root: Node) -> int:
    """Nodes the document holds once every alias is expanded; raises :class:`_Refused` on a cycle or the limit."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise _Refused("a recursive alias (a node that contains itself)")
        on_path.add(key)
        if isinstance(node, ScalarNode):
            n = 1
        elif isinstance(node, SequenceNode):
            n = 1 + sum(size(c) for c in node.value)
        elif isinstance(node, MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:  # pragma: no cover - PyYAML has no other node kinds
            n = 1
        on_path.discard(key)
        if n > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES:,} values once its aliases are expanded (an alias bomb?)")
        sizes[key] = n
        return n

    return size(root)


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document safely and within bounds.

    Args:
        text: the YAML text.
        source: how errors name it, e.g. ``"recipe file 'a.yaml'"``.

    Returns:
        The plain Python value (dicts, lists, str, int, float, bool, None).

    Raises:
        ConfigError: not valid YAML, larger than ``MAX_BYTES``, nested deeper than ``MAX_DEPTH``, more than
            ``MAX_NODES`` values after alias expansion, or a recursive alias.
    """
    if len(text.encode("utf-8", errors="replace")) > MAX_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_BYTES // 1024} kB; a recipe is a few kB — is this the right "
                          f"file?")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except _Refused as err:
        raise ConfigError(f"{source}: refused: {err}; write the values out plainly") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    except RecursionError:  # belt and braces: the depth bound should make this unreachable
        raise ConfigError(f"{source}: nested too deeply; write the values out plainly") from None
    finally:
        loader.dispose()


def read_yaml_file(path: Any, source: str | None = None) -> Any:
    """:func:`load_yaml` on a file, refusing files over ``MAX_BYTES`` before reading them."""
    from pathlib import Path

    p = Path(path)
    src = source or f"YAML file '{p}'"
    try:
        if p.stat().st_size > MAX_BYTES:
            raise ConfigError(f"{src}: larger than {MAX_BYTES // 1024} kB; a recipe is a few kB — is this the right "
                              f"file?")
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{src}: not UTF-8 text; is this a YAML file?") from None
    except OSError as err:
        raise ConfigError(f"{src}: cannot be read ({err.strerror or err})") from None
    return load_yaml(text, src)
