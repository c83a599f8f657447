"""Model factory: one name -> one ``nn.Module``, local weights in and out, default feature stages.

Names:

* ``resnet8x4`` or ``kdkit:resnet8x4`` -- the kdkit zoo (:data:`kdkit.registry.MODELS`);
* ``torchvision:resnet18`` -- ``torchvision.models.get_model(NAME, weights=None, num_classes=K)``; with
  ``in_channels != 3`` the first convolution is replaced by a fresh one taking ``in_channels``;
* ``timm:resnet18`` -- ``timm.create_model(NAME, pretrained=False, num_classes=K, in_chans=C)``;
* ``ccexam:mnist`` / ``ccexam:usps`` / ``ccexam:svhn`` -- trained third-party digit CNNs (:mod:`.ccexam_nets`);
* any prefix added with :func:`register_prefix` (e.g. ``hf:`` for Hugging Face classifiers).

kdkit never downloads anything: ``pretrained=True`` / ``weights=...`` raise a :class:`~kdkit.errors.ConfigError`
asking for a local ``checkpoint`` instead. Weights are read only with safetensors or
``torch.load(..., weights_only=True)`` and written only as safetensors, atomically.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdkit.errors import CheckpointError, ConfigError, KdkitError
from kdkit.models.base import count_params, rename_legacy_keys
from kdkit.registry import MODELS

# A prefix builder: (name after the prefix, num_classes, in_channels, image_size, **kwargs) -> nn.Module.
PrefixBuilder = Callable[..., nn.Module]

_PREFIXES: dict[str, PrefixBuilder] = {}
# Prefixes registered by modules that `import kdkit.models` does not import (heavy or optional dependencies).
_LAZY_PREFIX_MODULES = {"hf": "kdkit.text.models", "textnn": "kdkit.text.models", "shrink": "kdkit.models.students",
                        "qat": "kdkit.models.students", "exits": "kdkit.models.students"}
_NESTED_KEYS = ("state_dict", "model", "model_state_dict")
_STRIP_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
_TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".tar"}


def register_prefix(prefix: str, builder: PrefixBuilder, *, replace: bool = False) -> None:
    """Route ``"PREFIX:NAME"`` model names to ``builder(NAME, num_classes=, in_channels=, image_size=, **kwargs)``.

    Example (the text engineer's Hugging Face loader)::

        register_prefix("hf", build_hf_classifier)   # create_model("hf:/models/minilm", num_classes=2)
    """
    if not prefix or ":" in prefix or not prefix.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"model prefix '{prefix}' must be a plain word such as 'hf'")
    if prefix in _PREFIXES and not replace and _PREFIXES[prefix] is not builder:
        raise ConfigError(f"model prefix '{prefix}:' is registered twice; pass replace=True to override it")
    _PREFIXES[prefix] = builder


def known_prefixes() -> list[str]:
    return sorted(_PREFIXES)


def create_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32,
                 checkpoint: str | os.PathLike | None = None, **kwargs: Any) -> nn.Module:
    """Build a model by name and optionally load local weights.

    Args:
        name: ``NAME`` / ``kdkit:NAME`` (zoo), ``torchvision:NAME``, ``timm:NAME``, ``ccexam:mnist`` or a prefix
            added with :func:`register_prefix`.
        num_classes: K, width of the logits.
        in_channels: C of the (B, C, H, W) input.
        image_size: H = W of the input (only the MLP's width depends on it).
        checkpoint: a ``.safetensors`` or ``.pt/.pth/.bin`` state dict loaded strictly with :func:`load_weights`.
        **kwargs: builder keyword arguments (e.g. ``hidden=[128]`` for ``mlp``, ``width_mult=1.0`` for
            ``mobilenetv2``).

    Returns:
        The model, in training mode (ccexam models: eval mode).

    Raises:
        ConfigError: unknown name or prefix, unknown keyword argument, a download request, a missing extra.
        CheckpointError: the checkpoint is missing, unreadable or does not fit the model.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model name must be a non-empty string, got {name!r}")
    if num_classes < 1 or in_channels < 1 or image_size < 1:
        raise ConfigError(f"model '{name}': num_classes, in_channels and image_size must be >= 1, got "
                          f"{num_classes}, {in_channels}, {image_size}")
    prefix, sep, rest = name.partition(":")
    if not sep:
        prefix, rest = "kdkit", name
    builder = _PREFIXES.get(prefix)
    if builder is None and prefix in _LAZY_PREFIX_MODULES:
        importlib.import_module(_LAZY_PREFIX_MODULES[prefix])
        builder = _PREFIXES.get(prefix)
    if builder is None:
        # A plugin prefix registered by any module the catalog imports.
        import kdkit.catalog  # noqa: F401

        builder = _PREFIXES.get(prefix)
    if builder is None:
        raise ConfigError(f"unknown model prefix '{prefix}:' in '{name}'; known prefixes: "
                          f"{', '.join(p + ':' for p in known_prefixes())}")
    model = builder(rest, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model


def _reject_download(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse download requests; drop the harmless ``pretrained=False`` / ``weights=None``."""
    if kwargs.get("pretrained") or kwargs.get("weights") is not None:
        raise ConfigError(f"model '{name}': kdkit never downloads weights; drop pretrained/weights and pass a local "
                          f"file as `checkpoint` (.safetensors or .pt/.pth state dict)")
    kwargs.pop("pretrained", None)
    kwargs.pop("weights", None)


def _check_kwargs(fn: Callable, kwargs: Mapping[str, Any], name: str) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in params if p not in ("num_classes", "in_channels", "image_size")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        hint = _close(unknown[0], allowed)
        raise ConfigError(f"model '{name}' has no parameter {', '.join(repr(u) for u in unknown)}.{hint} "
                          f"Its parameters: {', '.join(allowed) or '(none)'}")


def _build_zoo(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    _reject_download(f"kdkit:{name}", kwargs)
    if name not in MODELS:
        raise ConfigError(MODELS.unknown_message(name) + "; other sources: torchvision:NAME, timm:NAME, ccexam:mnist")
    fn = MODELS.get(name)
    _check_kwargs(fn, kwargs, name)
    try:
        return fn(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    except KdkitError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model '{name}': {err}") from None


def _close(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _build_torchvision(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    _reject_download(f"torchvision:{name}", kwargs)
    try:
        import torchvision.models as tvm
    except ImportError:
        raise ConfigError(f"model 'torchvision:{name}' needs torchvision: pip install 'kdkit[vision]'") from None
    known = tvm.list_models()
    if name not in known:
        raise ConfigError(f"unknown torchvision model '{name}'.{_close(name, known)} See "
                          f"torchvision.models.list_models()")
    try:
        model = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model 'torchvision:{name}': {err}") from None
    if in_channels != 3:
        replace_first_conv(model, in_channels)
    return model


def _build_timm(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    _reject_download(f"timm:{name}", kwargs)
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model 'timm:{name}' needs timm: pip install 'kdkit[vision]'") from None
    if not timm.is_model(name):
        raise ConfigError(f"unknown timm model '{name}'.{_close(name, timm.list_models())} See timm.list_models()")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model 'timm:{name}': {err}") from None


def _build_ccexam(name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    from kdkit.models.ccexam_nets import build_ccexam

    return build_ccexam(name, num_classes, in_channels, image_size, **kwargs)


def replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the first ``nn.Conv2d`` of ``model`` for a freshly initialised one taking ``in_channels`` channels.

    Used to feed 1-channel images to ImageNet architectures; the rest of the network is untouched.
    """
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return model
            if module.groups != 1:
                raise ConfigError(f"cannot adapt the first convolution '{path}' (grouped) to {in_channels} channels")
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                            module.dilation, 1, module.bias is not None, module.padding_mode)
            parent_path, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, attr, new)
            return model
    raise ConfigError(f"{type(model).__name__} has no Conv2d to adapt to {in_channels} input channels")


register_prefix("kdkit", _build_zoo)
register_prefix("torchvision", _build_torchvision)
register_prefix("timm", _build_timm)
register_prefix("ccexam", _build_ccexam)


# --------------------------------------------------------------------------------------------------- weights I/O


@dataclass
class LoadReport:
    """What :func:`load_weights` did not load (only non-empty with ``strict=False``)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``), on CPU.

    A ``torch.save`` dict that holds the weights under ``"state_dict"``, ``"model"`` or ``"model_state_dict"`` (e.g.
    RepDistiller/mdistiller and Lightning checkpoints) is unwrapped, and a ``module.`` / ``_orig_mod.`` prefix on
    every key (DataParallel, torch.compile) is removed.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' not found" + ("; it is a directory, name the weights file inside"
                                                                if p.is_dir() else ""))
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(p), device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"checkpoint '{p}' is not a readable safetensors file ({_first_line(err)})") from None
    elif suffix in _TORCH_SUFFIXES:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"checkpoint '{p}' holds pickled objects that weights_only loading refuses "
                                  f"({_first_line(err)}); re-save model.state_dict() or use .safetensors") from None
        except Exception as err:
            raise CheckpointError(f"checkpoint '{p}' could not be read ({type(err).__name__}: "
                                  f"{_first_line(err)})") from None
    else:
        raise CheckpointError(f"checkpoint '{p}' has an unknown extension; use .safetensors or .pt/.pth/.bin")
    if isinstance(state, Mapping):
        for key in _NESTED_KEYS:
            inner = state.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        keys = list(state)[:6] if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointError(f"checkpoint '{p}' holds no state dict of tensors (found {keys}); save "
                              f"model.state_dict()")
    state = dict(state)
    for pre in _STRIP_PREFIXES:
        if all(k.startswith(pre) for k in state):
            state = {k[len(pre):]: v for k, v in state.items()}
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _fill_shared(model_state: Mapping[str, Tensor], state: dict[str, Tensor]) -> None:
    """safetensors stores one name per shared tensor (tied weights); give the other names the same tensor."""
    groups: dict[tuple, list[str]] = {}
    for k, t in model_state.items():
        if t.numel() == 0 or t.device.type == "meta":
            continue
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        groups.setdefault(key, []).append(k)
    for names in groups.values():
        present = [n for n in names if n in state]
        if len(names) > 1 and present:
            for n in names:
                state.setdefault(n, state[present[0]])


def _preview(keys: list[str], n: int = 4) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadReport:
    """Load a local state dict into ``model`` (see :func:`read_state_dict` for the formats).

    Keys are renamed with the ``legacy_key_aliases`` of the model's modules (published CIFAR checkpoints name the
    classifier ``linear``/``classifier``), tied weights stored once are filled in, and a missing
    ``num_batches_tracked`` (checkpoints from PyTorch < 0.4.1) is set to 0.

    Args:
        model: the module to fill, in place.
        path: ``.safetensors`` or ``.pt/.pth/.bin`` file.
        strict: if True, any missing, unexpected or shape-mismatched key is an error; if False, only keys whose
            names and shapes match are loaded (e.g. fine-tuning with another number of classes).

    Returns:
        A :class:`LoadReport` of the keys that were not loaded (empty when strict).

    Raises:
        CheckpointError: one line naming the file and the first few missing / unexpected / mismatched keys.
    """
    state = read_state_dict(path)
    for mod_path, module in model.named_modules():
        aliases = getattr(module, "legacy_key_aliases", None)
        if aliases:
            state = rename_legacy_keys(state, aliases, f"{mod_path}." if mod_path else "")
    own = model.state_dict()
    _fill_shared(own, state)
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=torch.long)
    report = LoadReport(
        missing=[k for k in own if k not in state],
        unexpected=[k for k in state if k not in own],
        mismatched=[k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)],
    )
    if strict and (report.missing or report.unexpected or report.mismatched):
        parts = []
        if report.missing:
            parts.append(f"missing {len(report.missing)} key(s): {_preview(report.missing)}")
        if report.unexpected:
            parts.append(f"unexpected {len(report.unexpected)} key(s): {_preview(report.unexpected)}")
        if report.mismatched:
            shapes = [f"{k} file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in report.mismatched]
            parts.append(f"{len(shapes)} shape mismatch(es): {_preview(shapes, 3)}")
        raise CheckpointError(f"checkpoint '{path}' does not fit {type(model).__name__}: {'; '.join(parts)}. Was it "
                              f"saved from another architecture or number of classes/channels?")
    for k in report.mismatched + report.unexpected:
        state.pop(k, None)
    model.load_state_dict(state, strict=strict)
    return report


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model``'s state dict to ``path`` as safetensors, atomically.

    The file is written to a temporary file in the same directory and moved into place with ``os.replace``, so a
    crash never leaves a half-written checkpoint. Shared (tied) tensors are stored once, as
    ``safetensors.torch.save_model`` does; :func:`load_weights` restores them.

    Args:
        model: the module to save.
        path: destination, ending in ``.safetensors``; parent directories are created.
        metadata: optional string -> string header entries.

    Returns:
        The path written.
    """
    from safetensors.torch import save_model

    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise ConfigError(f"save_weights writes safetensors; name the file '{p.with_suffix('.safetensors')}'")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ConfigError("save_weights metadata must map strings to strings")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        save_model(model, tmp, metadata=dict(metadata) if metadata else None)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return p


# --------------------------------------------------------------------------------------------------- introspection


def default_stages(model: nn.Module) -> list[str]:
    """Module paths of the model's stage feature maps, shallow -> deep, for automatic feature-KD pairing.

    * kdkit zoo models (and anything else with a ``kd_stages`` attribute): that attribute;
    * timm models: the modules of ``feature_info``, without the stride-2 stem when deeper stages exist;
    * torchvision ResNet-like models: ``layer1`` .. ``layer4``.

    Raises:
        ConfigError: the stages of this architecture are unknown; name the layers in the recipe instead.
    """
    stages = getattr(model, "kd_stages", None)
    if stages:
        return list(stages)
    info = getattr(model, "feature_info", None)
    if info is not None:
        entries = list(getattr(info, "info", info))
        if entries and all(isinstance(e, Mapping) and e.get("module") for e in entries):
            deep = [e["module"] for e in entries if e.get("reduction", 4) >= 4]
            return deep if len(deep) >= 2 else [e["module"] for e in entries]
    children = dict(model.named_children())
    layers = [f"layer{i}" for i in range(1, 5) if f"layer{i}" in children]
    if len(layers) >= 2:
        return layers
    raise ConfigError(f"cannot tell the feature stages of {type(model).__name__}; name the layers to pair "
                      f"explicitly (module paths; `kdkit models --layers NAME` lists them)")


def model_summary(model: nn.Module) -> dict[str, Any]:
    """Parameter counts and in-memory size of ``model``.

    Returns:
        ``{"params": int, "trainable_params": int, "size_mb": float}`` (parameters + buffers, in 10^6 bytes).
    """
    seen: set[int] = set()
    nbytes = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            nbytes += t.numel() * t.element_size()
    return {"params": count_params(model), "trainable_params": count_params(model, trainable_only=True),
            "size_mb": nbytes / 1e6}
