"""ShuffleNetV1 (Zhang et al., CVPR 2018) and ShuffleNetV2 (Ma et al., ECCV 2018), CIFAR variants of the CRD tables.

Both follow RepDistiller's ``ShuffleV1`` / ``ShuffleV2``: a 1x1 stem to 24 channels at full resolution (no max-pool),
three stages that each start with a stride-2 unit (so a 32x32 input ends at 4x4), global pooling, one linear layer.

* ShuffleNetV1, groups g = 3: stage widths 240/480/960 with 4/8/4 units. A stride-2 unit concatenates an average-
  pooled shortcut; the first 1x1 group conv of the net is ungrouped (24 input channels).
* ShuffleNetV2 1x: stage widths 116/232/464 with one down-sampling unit and 3/7/3 basic units, then a 1x1 conv to
  1024 channels.

Stage features (``kd_stages = ("layer1", "layer2", "layer3")``) are the stage outputs (post-ReLU for V1, post-
shuffle for V2), as in the reference. Module names equal the reference; its ``linear`` is renamed to ``fc`` on load.
The reference initialises these nets with PyTorch's defaults, and so does kdkit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdkit.models.base import ClassifierNet
from kdkit.registry import MODELS


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W) with channels reordered g-major -> (C/g)-major, so group convs mix groups."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleV1Unit(nn.Module):
    """1x1 group conv -> shuffle -> 3x3 depthwise (stride s) -> 1x1 group conv; add (s=1) or concat (s=2) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_ch // 4
        g1 = 1 if in_ch == 24 else groups  # the stem output is too narrow to split into groups
        self.g1 = g1
        self.conv1 = nn.Conv2d(in_ch, mid, 1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.act = nn.ReLU()  # input = pre-activation output of the unit

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(self.relu(self.bn1(self.conv1(x))), self.g1)
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return self.act(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(ClassifierNet):
    """(B, C, H, W) -> (B, K); stage maps at H/2, H/4, H/8."""

    kd_stages = ("layer1", "layer2", "layer3")
    legacy_key_aliases = {"linear.": "fc."}

    def __init__(self, num_classes: int = 10, in_channels: int = 3, groups: int = 3,
                 widths: tuple[int, int, int] = (240, 480, 960), units: tuple[int, int, int] = (4, 8, 4)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self._in = 24
        self.layer1 = self._make_layer(widths[0], units[0], groups)
        self.layer2 = self._make_layer(widths[1], units[1], groups)
        self.layer3 = self._make_layer(widths[2], units[2], groups)
        self._build_head(widths[2], num_classes)

    def _make_layer(self, out_ch: int, n: int, groups: int) -> nn.Sequential:
        # The stride-2 unit produces out_ch - in_ch channels and concatenates the in_ch pooled shortcut channels.
        layers = [ShuffleV1Unit(self._in, out_ch - self._in, 2, groups)]
        layers += [ShuffleV1Unit(out_ch, out_ch, 1, groups) for _ in range(n - 1)]
        self._in = out_ch
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


class ShuffleV2Basic(nn.Module):
    """Split channels in half; the right half goes 1x1 -> 3x3 depthwise -> 1x1; concat; shuffle (2 groups)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2
        c = channels - self.split
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x[:, : self.split], x[:, self.split:]
        out = self.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = self.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: both branches see the whole input (left: dw3x3 -> 1x1, right: 1x1 -> dw3x3 -> 1x1)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, 2, 1, groups=in_ch, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        left = self.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.relu(self.bn3(self.conv3(x)))
        right = self.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(ClassifierNet):
    """(B, C, H, W) -> (B, K); stage maps at H/2, H/4, H/8; 1x1 conv to ``widths[3]`` before pooling."""

    kd_stages = ("layer1", "layer2", "layer3")
    legacy_key_aliases = {"linear.": "fc."}

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 widths: tuple[int, int, int, int] = (116, 232, 464, 1024), units: tuple[int, int, int] = (3, 7, 3)
                 ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self._in = 24
        self.layer1 = self._make_layer(widths[0], units[0])
        self.layer2 = self._make_layer(widths[1], units[1])
        self.layer3 = self._make_layer(widths[2], units[2])
        self.conv2 = nn.Conv2d(widths[2], widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self._build_head(widths[3], num_classes)

    def _make_layer(self, out_ch: int, n: int) -> nn.Sequential:
        layers: list[nn.Module] = [ShuffleV2Down(self._in, out_ch)]
        layers += [ShuffleV2Basic(out_ch) for _ in range(n)]
        self._in = out_ch
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.relu(self.bn2(self.conv2(x)))


@MODELS.register("shufflenetv1", description="CIFAR ShuffleNetV1, 3 groups (RepDistiller 'ShuffleV1'; 0.95M params "
                                             "at 100 classes)")
def shufflenetv1(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return ShuffleNetV1(num_classes, in_channels)


@MODELS.register("shufflenetv2", description="CIFAR ShuffleNetV2 1x (RepDistiller 'ShuffleV2'; 1.36M params at 100 "
                                             "classes)")
def shufflenetv2(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return ShuffleNetV2(num_classes, in_channels)
