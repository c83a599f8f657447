"""CIFAR VGG with BatchNorm (Simonyan & Zisserman, ICLR 2015), as RepDistiller's ``vgg{8,11,13,16,19}`` (the ``_bn``
variants): five conv blocks (64, 128, 256, 512, 512 channels), 2x2 max-pooling after the first three, global average
pooling and a single 512 -> K linear layer (the ImageNet FC layers are removed). Convolutions keep their bias, as in
the reference (the published parameter counts include it).

Stage features (``kd_stages = ("block1", "block2", "block3", "block4")``) are the post-ReLU block outputs, which
RepDistiller's AT/FitNet/SP used (``block0`` is the stem). With a 32x32 input they are 16, 8, 4 and 4 pixels wide:
like the reference, there is no pooling between ``block3`` and ``block4`` (RepDistiller pools there only for 64x64
inputs; kdkit never changes the architecture with the input size). The pre-activation map of a block is the input of
its last ReLU (``block4.5`` for vgg8, tap with ``inputs=True``).

Module names equal RepDistiller's; its ``classifier`` is renamed to ``fc`` when a published checkpoint is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdkit.models.base import ClassifierNet, init_weights
from kdkit.registry import MODELS

CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _block(widths: Sequence[int], in_ch: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_ch, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        in_ch = w
    return nn.Sequential(*layers)


class VGG(ClassifierNet):
    """(B, C, H, W) -> (B, K). ``cfg`` lists the conv widths of each of the five blocks."""

    kd_stages = ("block1", "block2", "block3", "block4")
    legacy_key_aliases = {"classifier.": "fc."}

    def __init__(self, cfg: Sequence[Sequence[int]], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if len(cfg) != 5:
            raise ValueError(f"VGG config needs 5 blocks, got {len(cfg)}")
        in_ch = in_channels
        for i, widths in enumerate(cfg):
            self.add_module(f"block{i}", _block(widths, in_ch))
            in_ch = widths[-1]
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self._build_head(in_ch, num_classes)
        init_weights(self, linear_std=0.01)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        return self.block4(self.block3(x))


_PARAMS_M = {"vgg8": 3.97, "vgg11": 9.28, "vgg13": 9.46, "vgg16": 14.77, "vgg19": 20.09}


def _register(name: str) -> None:
    def build(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
        return VGG(CONFIGS[name], num_classes, in_channels)

    build.__name__ = name
    build.__doc__ = f"CIFAR {name.upper()} with BatchNorm ({_PARAMS_M[name]:.2f}M params at 100 classes)."
    MODELS.add(name, build, build.__doc__)


for _name in CONFIGS:
    _register(_name)
