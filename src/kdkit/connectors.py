"""Connectors g(m): small trainable modules mapping a student feature to the teacher's shape (FitNets' regressor).

A term probes both models once (``SetupContext.student_shapes`` / ``teacher_shapes``), then calls
:func:`make_connector` with the two shapes; the connector is a submodule of the term, so it trains and checkpoints
with the student. :func:`pair_stages` pairs CNN stages of two models by spatial size for ``pairs: auto``.

Shapes include the batch dimension, as :func:`kdkit.taps.probe_shapes` returns them: (B, C, H, W) feature maps,
(B, C, L) 1-D conv maps, (B, D) vectors, (B, L, D) token sequences. A 3-axis feature is a 1-D conv map ("BCL") in a
model built of ``Conv1d`` layers, else a token sequence ("BTD"): :func:`feature_layout` tells them apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from kdkit.errors import ShapeError

KINDS = ("identity", "linear", "conv1x1", "conv_bn_relu", "auto")
LAYOUTS = {"BCHW": "(B, C, H, W)", "BCL": "(B, C, L)", "BTD": "(B, T, D)", "BD": "(B, D)"}
_CONV1D = (nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)
_SEQUENCE = (nn.MultiheadAttention, nn.Embedding, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.RNNBase)


def feature_layout(model: nn.Module, shape: Sequence[int]) -> str:
    """The layout of a feature of ``shape`` (batch axis included) tapped in ``model``: ``BCHW``, ``BD``, and for 3
    axes ``BCL`` (a model of 1-D convolutions and no attention/embedding/recurrent layer) or ``BTD`` (tokens)."""
    rank = len(shape)
    if rank == 4:
        return "BCHW"
    if rank == 2:
        return "BD"
    if rank == 3:
        mods = list(model.modules())
        if any(isinstance(m, _CONV1D) for m in mods) and not any(isinstance(m, _SEQUENCE) for m in mods):
            return "BCL"
        return "BTD"
    return f"rank-{rank}"


def _fmt(shape: Sequence[int], name: str | None) -> str:
    return f"{name} {tuple(shape)}" if name else f"{tuple(shape)}"


class ChannelLinear(nn.Module):
    """``nn.Linear`` over the last dimension of (B, D) or (B, L, D) inputs (a named module so repr is readable)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


def _conv_reg(cs: int, ct: int, hs: int, ws: int, ht: int, wt: int, what: str) -> nn.Module:
    """The conv of RepDistiller's ``ConvReg`` (the FitNets regressor), mapping (cs, hs, ws) to (ct, ht, wt)."""
    if (hs, ws) == (2 * ht, 2 * wt):
        return nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
    if (2 * hs, 2 * ws) == (ht, wt):
        return nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
    if hs >= ht and ws >= wt:
        return nn.Conv2d(cs, ct, kernel_size=(1 + hs - ht, 1 + ws - wt))
    raise ShapeError(f"cannot regress {what}: the student map is smaller than the teacher's and not exactly half its "
                     f"size; tap a shallower student layer or a deeper teacher layer")


def _conv_reg_1d(cs: int, ct: int, ls: int, lt: int, what: str) -> nn.Module:
    """The 1-D counterpart of :func:`_conv_reg`: a conv mapping (cs, ls) to (ct, lt)."""
    if ls == 2 * lt:
        return nn.Conv1d(cs, ct, kernel_size=3, stride=2, padding=1)
    if 2 * ls == lt:
        return nn.ConvTranspose1d(cs, ct, kernel_size=4, stride=2, padding=1)
    if ls >= lt:
        return nn.Conv1d(cs, ct, kernel_size=1 + ls - lt)
    raise ShapeError(f"cannot regress {what}: the student map is shorter than the teacher's and not exactly half its "
                     f"length; tap a shallower student layer or a deeper teacher layer")


def _connector_1d(kind: str, s: tuple[int, ...], t: tuple[int, ...], what: str) -> nn.Module:
    (cs, ls), (ct, lt) = s[1:], t[1:]
    if kind == "conv_bn_relu":
        return nn.Sequential(_conv_reg_1d(cs, ct, ls, lt, what), nn.BatchNorm1d(ct), nn.ReLU(inplace=True))
    layers: list[nn.Module] = []
    if ls != lt:
        if ls < lt:
            raise ShapeError(f"cannot connect {what}: the student map is shorter than the teacher's; tap a shallower "
                             f"student layer or a deeper teacher layer, or use connector 'conv_bn_relu' (handles "
                             f"exactly half the length)")
        layers.append(nn.AdaptiveAvgPool1d(lt))
    if kind == "linear":
        layers.append(nn.Conv1d(cs, ct, kernel_size=1))
    else:  # conv1x1
        layers += [nn.Conv1d(cs, ct, kernel_size=1, bias=False), nn.BatchNorm1d(ct)]
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def make_connector(kind: str, s_shape: Sequence[int], t_shape: Sequence[int], s_name: str | None = None,
                   t_name: str | None = None, layout: str | None = None) -> nn.Module:
    """Build g(m) mapping a student feature of ``s_shape`` to the teacher's ``t_shape``.

    Kinds:
        * ``identity`` — shapes must already match.
        * ``linear`` — a purely linear map: ``nn.Linear`` on the last dim for (B, D)/(B, L, D); a 1×1 convolution
          for maps. A larger student map is first average-pooled to the teacher's size (pooling and a 1×1 conv
          commute, so pooling first is the cheaper equivalent).
        * ``conv1x1`` — 1×1 convolution + BatchNorm (RepDistiller ``ConvReg(use_relu=False)`` at equal size; the OFD
          connector); maps only; spatial mismatch handled as for ``linear``.
        * ``conv_bn_relu`` — RepDistiller's FitNets regressor ``ConvReg``: a conv that also fixes the spatial size
          (1×1 at equal size, 3×3 stride 2 when the student map is twice the teacher's, 4×4 transposed stride 2 when
          half, a valid conv otherwise) + BatchNorm + ReLU; maps only. Use it for the FitNets recipes.
        * ``auto`` — ``identity`` when the shapes match, else ``conv1x1`` for maps and ``linear`` otherwise.

    A student map *smaller* than the teacher's (other than exactly half, for ``conv_bn_relu``) and rank mismatches
    raise :class:`ShapeError` naming both layers and shapes.

    Args:
        kind: one of :data:`KINDS`.
        s_shape: student feature shape, batch dim included.
        t_shape: teacher feature shape, batch dim included.
        s_name: student layer path, for error messages.
        t_name: teacher layer path, for error messages.
        layout: ``BCL`` makes 3-axis features 1-D conv maps (``Conv1d`` connectors, the length fixed like H x W);
            default / ``BTD``: token sequences (a linear map on the last axis).
    """
    s, t = tuple(int(x) for x in s_shape), tuple(int(x) for x in t_shape)
    what = f"student {_fmt(s, s_name)} to teacher {_fmt(t, t_name)}"
    if kind not in KINDS:
        raise ShapeError(f"unknown connector kind {kind!r} for {what}; choose one of {', '.join(KINDS)}")
    if len(s) != len(t) or len(s) not in (2, 3, 4):
        raise ShapeError(f"cannot connect {what}: both must be (B, D), (B, L, D) or (B, C, H, W) features of the same "
                         f"rank; tap comparable layers (e.g. both stage outputs or both pooled embeddings)")
    conv_map = len(s) == 4 or (len(s) == 3 and layout == "BCL")
    if kind == "auto":
        kind = "identity" if s[1:] == t[1:] else ("conv1x1" if conv_map else "linear")
    if kind == "identity":
        if s[1:] != t[1:]:
            raise ShapeError(f"identity connector cannot map {what}; use connector 'auto', 'linear' or 'conv1x1'")
        return nn.Identity()
    if len(s) == 3 and layout == "BCL":
        return _connector_1d(kind, s, t, what)

    if len(s) in (2, 3):
        if kind != "linear":
            raise ShapeError(f"connector {kind!r} needs (B, C, H, W) maps, but {what} are vectors; use 'linear'")
        if len(s) == 3 and s[1] != t[1]:
            raise ShapeError(f"cannot connect {what}: sequence lengths differ ({s[1]} vs {t[1]})")
        return ChannelLinear(s[-1], t[-1])

    cs, hs, ws = s[1:]
    ct, ht, wt = t[1:]
    if kind == "conv_bn_relu":
        return nn.Sequential(_conv_reg(cs, ct, hs, ws, ht, wt, what), nn.BatchNorm2d(ct), nn.ReLU(inplace=True))
    layers: list[nn.Module] = []
    if (hs, ws) != (ht, wt):
        if hs < ht or ws < wt:
            raise ShapeError(f"cannot connect {what}: the student map is smaller than the teacher's; tap a shallower "
                             f"student layer or a deeper teacher layer, or use connector 'conv_bn_relu' "
                             f"(handles exactly half the size)")
        layers.append(nn.AdaptiveAvgPool2d((ht, wt)))
    if kind == "linear":
        layers.append(nn.Conv2d(cs, ct, kernel_size=1))
    else:  # conv1x1
        layers += [nn.Conv2d(cs, ct, kernel_size=1, bias=False), nn.BatchNorm2d(ct)]
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def pair_stages(s_shapes: Mapping[str, Sequence[int]], t_shapes: Mapping[str, Sequence[int]],
                strict: bool = False) -> list[tuple[str, str]]:
    """Pair CNN stages of student and teacher by spatial size, deepest with deepest.

    Both mappings are ordered shallow → deep (e.g. ``model.kd_stages`` probed). Walking both lists from the deep end,
    a student stage is paired with the deepest not-yet-used teacher stage of the same (H, W) that is shallower than the
    previous pair's teacher stage; so pairs keep depth order and each stage is used at most once. A student stage
    with no teacher stage of its resolution is left out (``strict=True`` raises instead).

    Returns:
        ``[(student_path, teacher_path), ...]`` shallow → deep.

    Raises:
        ShapeError: a stage is not a (B, C, H, W) map, no pair exists, or (strict) some student stage has no partner;
            the message lists every layer with its shape.
    """
    ranks = {len(shape) for shapes in (s_shapes, t_shapes) for shape in shapes.values()}
    for role, shapes in (("student", s_shapes), ("teacher", t_shapes)):
        for path, shape in shapes.items():
            if len(shape) not in (3, 4) or len(ranks) != 1:
                raise ShapeError(f"pair_stages: {role} layer '{path}' has shape {tuple(shape)}; auto-pairing needs "
                                 f"stage feature maps, all (B, C, H, W) or all (B, C, L)")

    def listing() -> str:
        s_txt = ", ".join(f"{p} {tuple(v)}" for p, v in s_shapes.items()) or "(none)"
        t_txt = ", ".join(f"{p} {tuple(v)}" for p, v in t_shapes.items()) or "(none)"
        return f"student stages: {s_txt}; teacher stages: {t_txt}"

    s_items = list(s_shapes.items())[::-1]
    t_items = list(t_shapes.items())[::-1]
    pairs: list[tuple[str, str]] = []
    unpaired: list[str] = []
    j = 0
    for s_path, s_shape in s_items:
        s_hw = tuple(s_shape[2:])
        # Skip teacher stages deeper (smaller) than this student stage.
        while j < len(t_items) and _area(t_items[j][1]) < _area(s_shape):
            j += 1
        if j < len(t_items) and tuple(t_items[j][1][2:]) == s_hw:
            pairs.append((s_path, t_items[j][0]))
            j += 1
        else:
            unpaired.append(f"{s_path} {tuple(s_shape)}")
    if not pairs:
        raise ShapeError(f"pair_stages: no student stage has the spatial size of a teacher stage; {listing()}. Name "
                         f"the pairs explicitly and use a resizing connector")
    if strict and unpaired:
        raise ShapeError(f"pair_stages: no teacher stage of the same spatial size for {', '.join(unpaired)}; "
                         f"{listing()}")
    return pairs[::-1]


def _area(shape: Sequence[int]) -> int:
    area = 1
    for v in shape[2:]:
        area *= int(v)
    return area
