"""Small models for 28x28 (MNIST-like) and 8x8 (sklearn digits) inputs: an MLP and a configurable CNN.

* ``mlp``: flatten -> [Linear -> ReLU] per hidden width -> Linear. The quickstart student "MLP 784-64-10" is
  ``mlp(num_classes=10, in_channels=1, image_size=28, hidden=[64])`` (50,890 parameters). Its stages are the hidden
  layers' ReLU modules (``hidden.1``, ``hidden.3``, ...) and ``embed`` is an identity on the last hidden activation.
* ``cnn``: stages of conv-BN-ReLU; every stage after the first starts with a 2x2 max-pool; global average pooling;
  one linear layer. ``kd_stages`` are the stage outputs, so feature-KD terms have maps at H, H/2, H/4.
* ``cnn_teacher``: 32 | 64 | 128 channels, the last map pooled to 3x3 and fed to a 256-wide hidden layer (the
  ``embed``), then the classifier (0.39M parameters at 28x28x1 and 10 classes; ~7.5M multiply-adds per image).
* ``cnn_student``: 16 | 32 | 64 channels, 3x3 grid, 32-wide hidden layer (42k parameters); the same three stages, so
  stages pair one to one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from kdkit.errors import ConfigError, ShapeError
from kdkit.models.base import ClassifierNet, GridAvgPool2d, conv_bn_relu, init_weights
from kdkit.registry import MODELS


class MLP(nn.Module):
    """(B, *input_shape) -> flatten (B, D) -> hidden ReLU layers -> (B, K); any sample shape."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.flatten = nn.Flatten(1)
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.hidden = nn.Sequential(*layers)
        # Stages = the hidden activations; with no hidden layer (logistic regression) the flattened input is all.
        self.kd_stages: tuple[str, ...] = tuple(f"hidden.{2 * i + 1}" for i in range(len(hidden)))
        self.embed = nn.Identity()
        self.fc = nn.Linear(width, num_classes)

    @property
    def num_features(self) -> int:
        return self.fc.in_features

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, S, S) or (B, C*S*S) -> (B, D) last hidden activation."""
        f = self.flatten(x)
        if f.shape[1] != self.in_features:
            raise ShapeError(f"mlp was built for inputs of {self.in_features} values per sample, got a batch of shape "
                             f"{tuple(x.shape)}; pass the model input_shape (kdkit passes the data's)")
        return self.hidden(f)

    def forward_head(self, f: Tensor) -> Tensor:
        return self.fc(self.embed(f))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class SmallCNN(ClassifierNet):
    """Stages of 3x3 conv-BN-ReLU. (B, C, H, W) -> (B, K); stage i runs at H / 2^i.

    Args:
        stages: conv output widths of each stage, e.g. ``[[32, 64], [128], [256]]``.
        dropout: dropout before the classifier (0 = none).
        head_grid: the last feature map is average-pooled to ``head_grid × head_grid`` (1 = global pooling).
        head_hidden: when set, a ``hidden`` layer flatten → linear(C·g², head_hidden) → ReLU sits between the
            pooled grid and ``embed`` (which stays a parameter-free tap point on its output), so the classifier sees a
            learned embedding of the grid instead of channel means (LeNet-style: learns in far fewer steps than
            global pooling on small digits).
    """

    def __init__(self, stages: Sequence[Sequence[int]], num_classes: int = 10, in_channels: int = 1,
                 dropout: float = 0.0, head_grid: int = 1, head_hidden: int | None = None) -> None:
        super().__init__()
        if not stages or any(not s for s in stages):
            raise ConfigError(f"cnn: every stage needs at least one conv width, got {list(map(list, stages))}")
        in_ch = in_channels
        names = []
        for i, widths in enumerate(stages):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            for w in widths:
                layers.append(conv_bn_relu(in_ch, int(w)))
                in_ch = int(w)
            names.append(f"stage{i + 1}")
            self.add_module(names[-1], nn.Sequential(*layers))
        self.kd_stages = tuple(names)
        self._build_head(in_ch, num_classes)
        self.hidden: nn.Module = nn.Identity()
        if head_hidden is not None:
            self.pool = GridAvgPool2d(head_grid)
            self.hidden = nn.Sequential(nn.Flatten(1), nn.Linear(in_ch * head_grid * head_grid, head_hidden), nn.ReLU())
            self.fc = nn.Linear(head_hidden, num_classes)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        for name in self.kd_stages:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, f: Tensor) -> Tensor:
        return self.fc(self.drop(self.embed(self.hidden(self.pool(f)))))


@MODELS.register("mlp", description="MLP: flatten -> hidden ReLU layers (default [64]) -> linear; image_size sets the "
                                    "input width (784-64-10: 50,890 params)")
def mlp(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, hidden: Sequence[int] = (64,),
        input_shape: Sequence[int] | None = None) -> nn.Module:
    """Input width: the product of ``input_shape`` (any sample shape: (D,), (C, L), (C, H, W)) when given (kdkit
    passes the data's), else ``in_channels * image_size**2``."""
    hidden = [int(h) for h in hidden]
    if any(h <= 0 for h in hidden):
        raise ConfigError(f"mlp: hidden widths must be positive, got {hidden}")
    width = math.prod(int(v) for v in input_shape) if input_shape else in_channels * image_size * image_size
    return MLP(width, hidden, num_classes)


@MODELS.register("cnn", description="small CNN: `stages` of conv-BN-ReLU (width, 2x, 4x...), max-pool between stages, "
                                    "global pooling, linear (width 32: 94k params at 1 channel, 10 classes)")
def cnn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int = 32, num_stages: int = 3,
        convs_per_stage: int = 1, channels: Sequence[Sequence[int]] | None = None, dropout: float = 0.0
        ) -> nn.Module:
    """``channels`` (per-stage conv widths) overrides ``width``/``num_stages``/``convs_per_stage``."""
    if channels is None:
        if width < 1 or num_stages < 1 or convs_per_stage < 1:
            raise ConfigError(f"cnn: width, num_stages and convs_per_stage must be >= 1, got {width}, {num_stages}, "
                              f"{convs_per_stage}")
        channels = [[width * 2**i] * convs_per_stage for i in range(num_stages)]
    return SmallCNN(channels, num_classes, in_channels, dropout)


# The two presets share one shape (three conv stages at full, 1/2 and 1/4 resolution, then a 3x3-pooled grid and a
# hidden linear layer), so their stages pair one to one. Both are cheap per image (the teacher ~7.5M multiply-adds
# at 28x28), which keeps online KD and the quickstart fast on a CPU.
@MODELS.register("cnn_teacher", description="CNN teacher for 28x28 digits: conv 32 | pool, 64 | pool, 128, 3x3 grid "
                                            "-> 256 -> classes (0.39M params at 1 channel, 10 classes; "
                                            "convs_per_stage=2: 0.58M, the Fashion-MNIST teacher)")
def cnn_teacher(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, dropout: float = 0.0,
                convs_per_stage: int = 1) -> nn.Module:
    """``convs_per_stage=2`` doubles each stage's conv (VGG-style, ~29M multiply-adds at 28x28): the Fashion-MNIST
    teacher of recipes/fashion/ (one conv per stage plateaus below the 93.5% it needs)."""
    if convs_per_stage < 1:
        raise ConfigError(f"cnn_teacher: convs_per_stage must be >= 1, got {convs_per_stage}")
    stages = [[w] * convs_per_stage for w in (32, 64, 128)]
    return SmallCNN(stages, num_classes, in_channels, dropout, head_grid=3, head_hidden=256)


@MODELS.register("cnn_student", description="CNN student: conv 16 | pool, 32 | pool, 64, 3x3 grid -> 32 -> classes "
                                            "(42k params at 1 channel, 10 classes)")
def cnn_student(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return SmallCNN([[16], [32], [64]], num_classes, in_channels, head_grid=3, head_hidden=32)
