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

import difflib
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from kdkit.errors import ConfigError, KdkitError
from kdkit.models.base import count_params
from kdkit.models.ccexam_nets import build_ccexam
from kdkit.registry import MODEL_SOURCES, MODELS, import_object
from kdkit.weights import load_weights, read_metadata, resolve_checkpoint

# A model source: (name after the prefix, num_classes, in_channels, image_size, **kwargs) -> nn.Module. Sources are
# registered in MODEL_SOURCES under their prefix (``@MODEL_SOURCES.register("hf")``), like every other plug-in.
PrefixBuilder = Callable[..., nn.Module]


def known_prefixes() -> list[str]:
    return MODEL_SOURCES.names()


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
    entry = MODEL_SOURCES.find(prefix)
    if entry is None:
        raise ConfigError(f"unknown model prefix '{prefix}:' in '{name}'; known prefixes: "
                          f"{', '.join(p + ':' for p in known_prefixes())}")
    model = entry.obj(rest, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model


def _reject_download(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse download requests; drop the harmless ``pretrained=False`` / ``weights=None``."""
    if kwargs.get("pretrained") or kwargs.get("weights") is not None:
        raise ConfigError(f"model '{name}': kdkit never downloads weights; drop params.pretrained/weights and give "
                          f"the model spec `pretrained: FILE | hf-hub:ORG/NAME | default` (local files and caches "
                          f"only) or a trained `checkpoint`")
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


def _build_py(ref: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    """User code: ``py:package.module:Class`` called with the recipe's params, plus ``num_classes`` /
    ``in_channels`` / ``image_size`` when its signature takes them."""
    fn = import_object(ref, "model")
    if not callable(fn):
        raise ConfigError(f"model 'py:{ref}' is not a class or function")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    given = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = {k: v for k, v in given.items() if (k in params or var_kw) and k not in kwargs}
    _check_kwargs(fn, kwargs, f"py:{ref}")
    try:
        model = fn(**extra, **kwargs)
    except KdkitError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model 'py:{ref}': {err}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model 'py:{ref}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


MODEL_SOURCES.add("kdkit", _build_zoo, "the kdkit zoo (`kdkit models`); the default when a name has no prefix")
MODEL_SOURCES.add("torchvision", _build_torchvision, "torchvision:NAME, torchvision.models.get_model (vision extra)")
MODEL_SOURCES.add("timm", _build_timm, "timm:NAME, timm.create_model (vision extra)")
MODEL_SOURCES.add("ccexam", _build_ccexam, "ccexam:mnist|usps|svhn, trained third-party digit CNNs")
MODEL_SOURCES.add("py", _build_py, "py:package.module:Class, your own nn.Module (called with the recipe's params)")


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


def load_model(checkpoint: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a kdkit weights file (or run directory) using the metadata saved with it.

    Returns:
        (the model in eval mode with its weights loaded, the checkpoint's metadata).
    """
    path = resolve_checkpoint(checkpoint, "checkpoint")
    meta = read_metadata(path)
    if "model" not in meta:
        raise ConfigError(f"checkpoint '{path}' has no kdkit metadata; pass --model NAME (and classes) to evaluate it")
    model = create_model(meta["model"]["name"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                         image_size=meta["image_size"], checkpoint=str(path), **meta["model"].get("params", {}))
    return model.eval(), meta
