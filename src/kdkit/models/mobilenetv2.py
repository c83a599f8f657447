"""MobileNetV2 (Sandler et al., CVPR 2018) in the CIFAR variant of the CRD / RepDistiller tables.

The tables' "MobileNetV2" is RepDistiller's ``mobile_half``: expansion 6, width multiplier 0.5, a stride-2 3x3 stem
and strides (1, 1, 2, 2, 1, 2, 1) over the seven inverted-residual groups (an overall stride of 16, so a 32x32 input
ends at 2x2), and a 1x1 conv to 1280 channels (kept at 1280 for multipliers <= 1) before pooling.

Stage features (``kd_stages = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")``) are the linear-bottleneck outputs
that RepDistiller returns as features f1..f4 (16, 8, 4 and 2 pixels wide at 32x32). Module names equal the reference;
its ``classifier.0`` is renamed to ``fc`` when a published checkpoint is loaded.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdkit.models.base import ClassifierNet, conv_bn_relu, init_weights
from kdkit.registry import MODELS

# (expansion t, channels c, repeats n, first stride s); t = None means "the model's expansion".
_SETTING: list[tuple[int | None, int, int, int]] = [
    (1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1), (None, 160, 3, 2),
    (None, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    """1x1 expand -> BN-ReLU -> 3x3 depthwise (stride s) -> BN-ReLU -> 1x1 project -> BN, + x when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(ClassifierNet):
    """(B, C, H, W) -> (B, K). ``expand`` is the expansion ratio T, ``width_mult`` scales every group's channels."""

    kd_stages = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")
    legacy_key_aliases = {"classifier.0.": "fc."}

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 0.5, expand: int = 6) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        ch = int(32 * width_mult)
        self.conv1 = conv_bn_relu(in_channels, ch, 3, stride=2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTING:
            out_ch = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(ch, out_ch, s if i == 0 else 1, expand if t is None else t))
                ch = out_ch
            self.blocks.append(nn.Sequential(*layers))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(ch, last, 1)
        self._build_head(last, num_classes)
        init_weights(self, linear_std=0.01)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        return self.conv2(x)


@MODELS.register("mobilenetv2", description="CIFAR MobileNetV2 as in the CRD tables (RepDistiller 'mobile_half': "
                                            "width_mult 0.5, expansion 6; 0.81M params at 100 classes)")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width_mult: float = 0.5,
                expand: int = 6) -> nn.Module:
    return MobileNetV2(num_classes, in_channels, width_mult, expand)
