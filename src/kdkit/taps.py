"""Feature taps: capture intermediate tensors by module path with removable forward hooks.

Models are never edited to return feature dicts. A term declares the module paths it reads (e.g. ``"layer2"``,
``"encoder.layer.3.attention"``); the scheme opens one :class:`FeatureTap` per model for all paths, and the captured
tensors land in :attr:`kdkit.types.ModelOutput.features`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdkit.errors import ConfigError


def resolve_module(model: nn.Module, path: str, role: str = "model") -> nn.Module:
    """Return the submodule at dotted ``path`` ("" is the model itself), with a clear error listing candidates."""
    if path == "":
        return model
    modules = dict(model.named_modules())
    if path in modules:
        return modules[path]
    prefix = path.rsplit(".", 1)[0] + "." if "." in path else ""
    siblings = [n for n in modules if n.startswith(prefix) and n.count(".") == path.count(".")][:12]
    raise ConfigError(
        f"{role} has no module '{path}'. Some valid paths: {', '.join(siblings) or '(none)'}; "
        f"run `kdkit models --layers NAME` to list them all"
    )


def _first_tensor(out: Any) -> Tensor:
    """Hooks see whatever a module returns; keep the first tensor (HF layers return tuples)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, Tensor):
                return o
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, dict):
        for o in out.values():
            if isinstance(o, Tensor):
                return o
    raise TypeError(f"cannot tap a module output of type {type(out).__name__}")


class FeatureTap:
    """Removable forward hooks filling ``self.features[path]`` on every forward.

    Usage::

        tap = FeatureTap(model, ["layer1", "layer2"])
        logits = model(x)
        feats = tap.pop()       # {"layer1": Tensor, "layer2": Tensor}; clears the store
        tap.remove()

    With ``detach=True`` (teachers) the stored tensors are detached. Hooks store the module *output*; pass
    ``inputs=True`` to store the first positional input instead (e.g. pre-activation features before a ReLU module).
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], detach: bool = False, role: str = "model",
                 inputs: bool = False) -> None:
        self.paths: list[str] = list(dict.fromkeys(paths))
        self.features: dict[str, Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for path in self.paths:
            module = resolve_module(model, path, role)
            self._handles.append(module.register_forward_hook(self._hook(path, detach, inputs)))

    def _hook(self, path: str, detach: bool, inputs: bool):
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            t = _first_tensor(args if inputs else out)
            self.features[path] = t.detach() if detach else t

        return hook

    def pop(self) -> dict[str, Tensor]:
        feats, self.features = self.features, {}
        return feats

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.features.clear()

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __len__(self) -> int:
        return len(self.paths)


@torch.no_grad()
def probe_shapes(model: nn.Module, example: Tensor | dict, paths: Sequence[str], role: str = "model"
                 ) -> dict[str, tuple[int, ...]]:
    """Run one forward on ``example`` and return the output shape of each module path (batch dim included).

    The model is put in eval mode for the probe and restored afterwards, so BatchNorm statistics are untouched.
    """
    was_training = model.training
    model.eval()
    try:
        with FeatureTap(model, paths, detach=True, role=role) as tap:
            if isinstance(example, dict):
                model(**example)
            else:
                model(example)
            feats = tap.pop()
    finally:
        model.train(was_training)
    return {p: tuple(feats[p].shape) for p in paths}


def leaf_modules(model: nn.Module) -> list[tuple[str, str]]:
    """(path, class name) of every named module, for listing tap points."""
    return [(n, type(m).__name__) for n, m in model.named_modules() if n]
