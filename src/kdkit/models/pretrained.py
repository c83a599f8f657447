"""Pretrained initial weights from local files: a model spec's ``pretrained:`` -- never a download.

``pretrained`` names where the initial weights come from:

* a file path (``.safetensors``, or a ``.pt/.pth/.bin`` state dict read with ``torch.load(weights_only=True)``), e.g.
  torchvision's ``resnet18-f37072fd.pth`` or a timm / Hugging Face ``model.safetensors``;
* ``hf-hub:ORG/NAME`` -- that repository's ``model.safetensors`` (or ``pytorch_model.bin``) in the local Hugging Face
  cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), found without any network call;
* ``default`` -- the architecture's default ImageNet weights where they are cached locally: for ``torchvision:NAME``
  the file of ``torchvision.models.get_model_weights(NAME).DEFAULT`` in the torch hub cache
  (``TORCH_HOME/hub/checkpoints``), for ``timm:NAME`` the model's ``pretrained_cfg`` Hugging Face repository in the
  local HF cache.

The model is built for the data (K classes, C channels) and the file is loaded into it **non-strictly, but only where
that is meant**: the classifier head (timm's ``pretrained_cfg["classifier"]``, else the last ``Linear`` producing K
outputs) keeps its fresh initialisation when its shape differs (a 1000-class ImageNet head on a 10-class task); a
first convolution pretrained on RGB is adapted to grey input by summing its weights over the colour channels (timm's
convention). Any other missing, unexpected or mis-shaped tensor means the file is for another architecture and is
refused in one line. :func:`load_pretrained` returns a :class:`PretrainedReport` saying what was loaded, replaced
and adapted; the builder prints it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache  # installed with accelerate (core); reads the cache only
from torch import Tensor, nn

from kdkit.errors import CheckpointError, ConfigError
from kdkit.weights import read_state_for

HF_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class PretrainedReport:
    """What :func:`load_pretrained` did.

    Attributes:
        source: the ``pretrained`` value; path: the file read.
        loaded: number of tensors copied from the file.
        replaced: head tensors left freshly initialised because their shape differs (``name: file -> model``).
        adapted: tensors adapted to the model (``name: file -> model``), e.g. an RGB first convolution for grey input.
        skipped: file tensors of the replaced head that have no place in the model.
    """

    source: str
    path: Path
    loaded: int = 0
    replaced: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        parts = [f"pretrained {name} <- {self.source} ({self.path}): {self.loaded} tensors loaded"]
        if self.replaced:
            parts.append(f"new head (fresh): {', '.join(self.replaced)}")
        if self.adapted:
            parts.append(f"adapted: {', '.join(self.adapted)}")
        return "; ".join(parts)


def hf_cache_dir() -> Path:
    """The local Hugging Face hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def hf_cached_file(repo_id: str, field: str) -> Path:
    """The weights file of ``repo_id`` in the local HF cache; never a network call."""
    cache = hf_cache_dir()
    for name in HF_FILES:
        got = try_to_load_from_cache(repo_id, name, cache_dir=str(cache))
        if isinstance(got, str) and Path(got).is_file():
            return Path(got)
    raise CheckpointError(f"{field}: 'hf-hub:{repo_id}' is not in the local Hugging Face cache ({cache}: no "
                          f"{' or '.join(HF_FILES)}); kdkit never downloads -- fetch it where there is a network "
                          f"(`huggingface-cli download {repo_id}`) and copy the cache here, or give the file's path")


def hf_cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot directory of Hub repository ``repo_id`` (the one holding its ``config.json``), or None."""
    got = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(hf_cache_dir()))
    return Path(got).parent if isinstance(got, str) and Path(got).is_file() else None


def torchvision_default_file(arch: str, field: str) -> Path:
    """The torch hub cache file of torchvision's default weights for ``arch`` (not downloaded)."""
    import torchvision.models as tvm

    try:
        weights = tvm.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise ConfigError(f"{field}: torchvision has no pretrained weights for '{arch}'; give a file path") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise CheckpointError(f"{field}: torchvision's {weights} for '{arch}' is not in the torch hub cache ({path}); "
                              f"kdkit never downloads -- copy the file there (from {weights.url}) or give its path")
    return path


def resolve_pretrained(source: str, model_name: str, model: nn.Module | None = None,
                       field: str = "pretrained") -> Path:
    """The local file that ``source`` names for the model ``model_name`` (see the module docstring)."""
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"{field}: give a file path, 'hf-hub:ORG/NAME' or 'default', got {source!r}")
    if source.startswith("hf-hub:"):
        return hf_cached_file(source[len("hf-hub:"):], field)
    if source == "default":
        prefix, _, arch = model_name.partition(":")
        if prefix == "torchvision":
            return torchvision_default_file(arch, field)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if prefix == "timm" and cfg.get("hf_hub_id"):
            return hf_cached_file(cfg["hf_hub_id"], field)
        raise ConfigError(f"{field}: 'default' weights are known for torchvision: and timm: models, not "
                          f"'{model_name}'; give a file path or 'hf-hub:ORG/NAME'")
    path = Path(source).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{field}: file '{path}' not found; give a local weights file, 'hf-hub:ORG/NAME' (local "
                              f"Hugging Face cache) or 'default'")
    return path


def head_paths(model: nn.Module, num_classes: int) -> list[str]:
    """Module paths of the classifier head: timm's ``pretrained_cfg["classifier"]``, else the last ``nn.Linear``
    (or 1x1-capable ``nn.Conv2d``) producing ``num_classes`` outputs."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    cls = cfg.get("classifier")
    if cls:
        return [cls] if isinstance(cls, str) else list(cls)
    last = None
    for path, m in model.named_modules():
        if (isinstance(m, nn.Linear) and m.out_features == num_classes) or \
                (isinstance(m, nn.Conv2d) and m.out_channels == num_classes):
            last = path
    return [last] if last else []


def _under(key: str, prefixes: list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _adapt_channels(t: Tensor, want: tuple[int, ...]) -> Tensor | None:
    """An RGB conv weight (O, 3, kh, kw) for grey input (O, 1, kh, kw): the sum over colours, so a grey image x
    gives what the RGB image (x, x, x) gave. None when this is not that case."""
    if t.dim() == 4 and len(want) == 4 and t.shape[1] == 3 and want[1] == 1 and \
            (t.shape[0], *t.shape[2:]) == (want[0], *want[2:]):
        return t.sum(dim=1, keepdim=True)
    return None


def load_pretrained(model: nn.Module, source: str, model_name: str, num_classes: int,
                    field: str = "pretrained") -> PretrainedReport:
    """Initialise ``model`` from the pretrained weights ``source`` names, replacing the head where its shape differs.

    Args:
        model: the model built for the data (K classes, C channels), modified in place.
        source: a path, ``hf-hub:ORG/NAME`` or ``default`` (module docstring).
        model_name: the model's name (``timm:resnet18``), for ``default`` and messages.
        num_classes: K, to find the head when the model does not name it.
        field: the recipe field, for messages.

    Returns:
        :class:`PretrainedReport`.

    Raises:
        CheckpointError: the file is missing, unreadable, or does not fit the model beyond its head.
    """
    path = resolve_pretrained(source, model_name, model, field)
    state = read_state_for(model, path)
    own = model.state_dict()
    heads = head_paths(model, num_classes)
    report = PretrainedReport(source=source, path=path)
    load: dict[str, Tensor] = {}
    problems: list[str] = []
    for key, want in own.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):
                continue
            if _under(key, heads):
                report.replaced.append(f"{key} (missing in file)")
            else:
                problems.append(f"missing {key}")
            continue
        got = state[key]
        if tuple(got.shape) == tuple(want.shape):
            load[key] = got
            continue
        adapted = _adapt_channels(got, tuple(want.shape))
        if adapted is not None:
            load[key] = adapted
            report.adapted.append(f"{key} {tuple(got.shape)} -> {tuple(want.shape)}")
        elif _under(key, heads):
            report.replaced.append(f"{key} {tuple(got.shape)} -> {tuple(want.shape)}")
        else:
            problems.append(f"{key} file {tuple(got.shape)} vs model {tuple(want.shape)}")
    for key in state:
        if key not in own:
            if _under(key, heads):
                report.skipped.append(key)
            else:
                problems.append(f"unexpected {key}")
    if problems:
        more = f", ... ({len(problems)} in all)" if len(problems) > 3 else ""
        raise CheckpointError(f"{field}: '{path}' does not fit {model_name} beyond its classifier head: "
                              f"{'; '.join(problems[:3])}{more}. Is it the weights of another architecture?")
    model.load_state_dict(load, strict=False)
    report.loaded = len(load)
    return report


__all__ = ["PretrainedReport", "head_paths", "hf_cache_dir", "hf_cached_file", "hf_cached_snapshot", "load_pretrained",
           "resolve_pretrained"]
