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
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from kdkit.errors import ConfigError, KdkitError
from kdkit.models.base import count_params
from kdkit.models.ccexam_nets import build_ccexam
from kdkit.registry import MODEL_SOURCES, MODELS, import_object, user_plugin_modules
from kdkit.weights import load_weights, read_metadata, resolve_checkpoint

# A model source: (name after the prefix, num_classes, in_channels, image_size, **kwargs) -> nn.Module. Sources are
# registered in MODEL_SOURCES under their prefix (``@MODEL_SOURCES.register("hf")``), like every other plug-in.
PrefixBuilder = Callable[..., nn.Module]


def known_prefixes() -> list[str]:
    return MODEL_SOURCES.names()


def create_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32,
                 checkpoint: str | os.PathLike | None = None, input_shape: Any = None, **kwargs: Any) -> nn.Module:
    """Build a model by name and optionally load local weights.

    Args:
        name: ``NAME`` / ``kdkit:NAME`` (zoo), ``torchvision:NAME``, ``timm:NAME``, ``ccexam:mnist`` or a prefix
            added with :func:`register_prefix`.
        num_classes: K, width of the logits.
        in_channels: C of the (B, C, H, W) input.
        image_size: H = W of the input (only the MLP's width depends on it).
        input_shape: one sample's shape, e.g. (C, H, W), (C, L) or (D,); passed to zoo and ``py:`` builders whose
            signature takes ``input_shape`` (the ``mlp`` takes any shape through it).
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
    if input_shape is not None and entry.meta.get("input_shape"):
        kwargs["input_shape"] = tuple(int(v) for v in input_shape)
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
    allowed = [p for p in params if p not in ("num_classes", "in_channels", "image_size", "input_shape")]
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
    shape = kwargs.pop("input_shape", None)
    _check_kwargs(fn, kwargs, name)
    if shape is not None and "input_shape" in inspect.signature(fn).parameters:
        kwargs["input_shape"] = shape
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


def _outside_python_installation(obj: Any) -> bool:
    """True when ``obj`` is defined in a file outside the Python installation (the user's own folder)."""
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    file = getattr(module, "__file__", None)
    if not file:
        return False
    here = os.path.realpath(file)
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return not any(here.startswith(r + os.sep) for r in roots)


def check_checkpoint_ref(ref: str, where: str, code_dir: str | None = None) -> None:
    """A ``py:`` name read from a checkpoint is rebuilt only if it is an ``nn.Module`` subclass, or a function of
    the user's own code (a module outside the Python installation, or a ``--plugin`` module): a weights file must
    never make kdkit call an arbitrary function (``py:shutil:rmtree``)."""
    try:
        obj = import_object(ref, where)
    except ConfigError as err:
        if code_dir and "not found" in str(err):
            raise ConfigError(f"{err} (it was imported from '{code_dir}' when the model was trained: run the "
                              f"command there or add that folder to PYTHONPATH)") from None
        raise
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return
    if inspect.isfunction(obj) and (_outside_python_installation(obj) or obj.__module__ in user_plugin_modules()):
        return
    raise ConfigError(f"{where}: the checkpoint names 'py:{ref}', which is neither an nn.Module subclass nor a "
                      f"function of your own code; kdkit will not call it (pass --plugin MODULE to trust its module)")


def _build_py(ref: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    """User code: ``py:package.module:Class`` called with the recipe's params, plus ``num_classes`` /
    ``in_channels`` / ``image_size`` / ``input_shape`` when its signature takes them."""
    fn = import_object(ref, "model")
    if not callable(fn):
        raise ConfigError(f"model 'py:{ref}' is not a class or function")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    given = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size,
             "input_shape": kwargs.pop("input_shape", None)}
    given = {k: v for k, v in given.items() if v is not None}
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


# Models handed to the Python API as objects (``kdkit.distill(student=net, ...)``): a recipe names them
# ``object:ROLE:module.Class`` and this process-local table gives the very instance back (it trains in place).
_OBJECTS: dict[str, nn.Module] = {}


def object_model_name(model: nn.Module, role: str) -> str:
    """Register ``model`` for this process under a stable name (same across processes, so ``resume`` matches)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{role}: expected a torch.nn.Module, got {type(model).__name__}")
    cls = type(model)
    name = f"object:{role}:{cls.__module__}.{cls.__qualname__}"
    _OBJECTS[name[len("object:"):]] = model
    return name


def _build_object(ref: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any) -> nn.Module:
    if ref not in _OBJECTS:
        raise ConfigError(f"model 'object:{ref}' was a Python object of another process; rebuild it yourself and load "
                          f"its weights with kdkit.weights.load_weights(model, PATH)")
    if kwargs:
        raise ConfigError(f"model 'object:{ref}' is an object: it takes no params, got {sorted(kwargs)}")
    return _OBJECTS[ref]


def object_rebuild(name: str, num_classes: int, in_channels: int, image_size: int,
                   input_shape: Any = None) -> dict[str, Any] | None:
    """How ``kdkit eval``/``export`` can rebuild a model that was handed over as an object (``object:ROLE:mod.Class``),
    or None when they cannot.

    Rebuildable means: its class is a top-level class of an importable module (not ``__main__``, not defined inside a
    function), and calling it the way a recipe's ``py:module:Class`` is called -- with no params, only
    ``num_classes``/``in_channels``/``image_size``/``input_shape`` when its signature takes them -- gives a model of
    the very same parameter names and shapes. Then the checkpoint records ``{"name": "py:module:Class", "params":
    {}}``. Constructor arguments kdkit cannot know (``Net(width=64)``) make it None: the weights would not fit.
    """
    ref = name[len("object:"):]
    obj = _OBJECTS.get(ref)
    if obj is None:
        return None
    cls = type(obj)
    if cls.__module__ == "__main__" or "." in cls.__qualname__:
        return None
    py = f"{cls.__module__}:{cls.__qualname__}"
    try:
        if import_object(py, "model") is not cls:
            return None
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the run's RNG untouched
            fresh = _build_py(py, num_classes, in_channels, image_size, input_shape=input_shape)
    except Exception:  # noqa: BLE001 - any failure just means "not rebuildable by name"
        return None
    want = {k: tuple(v.shape) for k, v in obj.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return {"name": f"py:{py}", "params": {}} if want == got else None


MODEL_SOURCES.add("object", _build_object, "a model passed as a Python object to kdkit.train/distill (API only)")
MODEL_SOURCES.add("kdkit", _build_zoo, "the kdkit zoo (`kdkit models`); the default when a name has no prefix",
                  input_shape=True)
MODEL_SOURCES.add("torchvision", _build_torchvision, "torchvision:NAME, torchvision.models.get_model (vision extra)")
MODEL_SOURCES.add("timm", _build_timm, "timm:NAME, timm.create_model (vision extra)")
MODEL_SOURCES.add("ccexam", _build_ccexam, "ccexam:mnist|usps|svhn, trained third-party digit CNNs")
MODEL_SOURCES.add("py", _build_py, "py:package.module:Class, your own nn.Module (called with the recipe's params)",
                  input_shape=True)


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
    name = str(meta["model"]["name"])
    params = meta["model"].get("params", {})
    if name.startswith("object:"):
        rebuild = meta["model"].get("rebuild")
        if not rebuild:
            raise ConfigError(f"checkpoint '{path}' holds a model passed as a Python object ({name[7:]}) that kdkit "
                              f"cannot rebuild by name (its class is in __main__ or takes arguments kdkit does not "
                              f"know); build it yourself and load the weights with kdkit.weights.load_weights(model, "
                              f"'{path}'), or train it from a recipe naming py:module:Class with its params")
        name, params = str(rebuild["name"]), rebuild.get("params", {})
    if name.startswith("py:"):
        check_checkpoint_ref(name[3:], f"checkpoint '{path}'", meta["model"].get("code_dir"))
    model = create_model(name, num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                         image_size=meta["image_size"], checkpoint=str(path), input_shape=meta.get("input_shape"),
                         **params)
    return model.eval(), meta
