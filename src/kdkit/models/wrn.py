"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis, BMVC 2016) in the CIFAR layout of the CRD / RepDistiller tables.

Depth d = 6n + 4: a 3x3 stem with 16 channels, three groups of n pre-activation blocks with 16k/32k/64k channels
(strides 1, 2, 2), a final BN-ReLU, global pooling and the classifier. No dropout (the tables use none).

Stage features (``kd_stages = ("block1", "block2", "block3")``) are the group outputs, i.e. residual *sums before*
the next BN-ReLU, exactly what RepDistiller's AT/FitNet/SP used for WRN (``preact=False`` there still returns the
raw sums for WRN, since its blocks are pre-activation). Module names equal RepDistiller's (``block1.layer.0.conv1``,
``convShortcut``), so its published WRN teachers load directly.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.models.base import ClassifierNet, init_weights
from kdkit.registry import MODELS


class WideBasic(nn.Module):
    """Pre-activation block: conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut.

    When the width or stride changes, the shortcut is a 1x1 conv of the *activated* input (``convShortcut``);
    otherwise it is the raw input, as in the reference WRN code.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_ch == out_ch and stride == 1
        # camelCase kept so that RepDistiller/mdistiller checkpoints load without renaming
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return out + shortcut


class NetworkBlock(nn.Module):
    """A group of ``n`` WideBasic blocks, held in ``.layer`` (the reference checkpoints' key layout)."""

    def __init__(self, n: int, in_ch: int, out_ch: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasic(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, drop_rate) for i in range(n)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(ClassifierNet):
    """WRN-depth-widen. (B, C, H, W) -> (B, K); stage maps at H, H/2, H/4 with 16k, 32k, 64k channels."""

    kd_stages = ("block1", "block2", "block3")

    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_channels: int = 3,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU()
        self._build_head(ch[3], num_classes)
        init_weights(self)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.relu(self.bn1(x))


def _register(depth: int, widen: int, params_m: float) -> None:
    name = f"wrn_{depth}_{widen}"

    def build(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, drop_rate: float = 0.0) -> nn.Module:
        return WideResNet(depth, widen, num_classes, in_channels, drop_rate)

    build.__name__ = name
    build.__doc__ = f"Wide ResNet WRN-{depth}-{widen} ({params_m:.2f}M params at 100 classes)."
    MODELS.add(name, build, build.__doc__)


for _d, _k, _p in [(16, 1, 0.18), (16, 2, 0.70), (40, 1, 0.57), (40, 2, 2.26)]:
    _register(_d, _k, _p)
