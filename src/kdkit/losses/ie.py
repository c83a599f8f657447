"""Inheritance & exploration KD, IE-KD (Huang, Shen, Xing, Liu, Tian, Li, Deng, Huang & Hua, "Revisiting Knowledge
Distillation: An Inheritance and Exploration Framework", CVPR 2021, arXiv:2107.00181).

The method, in three pieces (the schedule is the term's job):

1. *Compact knowledge.* An auto-encoder (:class:`FactorAutoEncoder`) is trained on a frozen teacher's feature map with
   the reconstruction loss (:func:`ie_reconstruction_loss`); its encoder output is the teacher *factor* ``f_t``.
   (Official code: 30 epochs, then the auto-encoder is frozen.)
2. The student's feature map is split along channels into an *inheritance* half and an *exploration* half
   (:func:`split_channels`); each half gets its own encoder (:class:`FactorEncoder`, trained with the student) giving
   factors ``f_inh`` and ``f_exp`` shaped like ``f_t``.
3. ``L = CE + λ_inh·L_inh(f_inh, f_t) + λ_exp·L_exp(f_exp, f_t)``: :func:`ie_inheritance_loss` pulls ``f_inh`` towards
   ``f_t``; :func:`ie_exploration_loss` pushes ``f_exp`` away from it. Official weights λ_inh = λ_exp = 1.

Convention: the losses follow the authors' code (``loss/factor_transfer.py``), which is factor transfer's (Kim et al.,
NeurIPS 2018) distance: flatten each sample's factor, L2-normalise it, and take the p-norm of the difference averaged
over *all* elements, ``(mean |x̂ − ŷ|^p)^{1/p}`` (p = 1 by default), the exploration loss being its negative. The
``metric="cos"`` variant is the code's alternative (``CosLoss``): ``1 − cos`` for inheritance, ``|cos|`` for
exploration.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.errors import ShapeError


def _check_same(name: str, a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ShapeError(f"{name}: student factor {tuple(a.shape)} and teacher factor {tuple(b.shape)} differ; size "
                         f"the student's factor encoder to the teacher auto-encoder's factor channels")


def factor_distance(x: Tensor, y: Tensor, p: float = 1.0) -> Tensor:
    """``(mean over all B·D elements of |x̂ − ŷ|^p)^{1/p}`` with ``x̂ = x_i/‖x_i‖₂`` per flattened sample."""
    _check_same("factor_distance", x, y)
    xn = F.normalize(x.float().flatten(1), p=2, dim=1)
    yn = F.normalize(y.float().flatten(1), p=2, dim=1)
    return (xn - yn).abs().pow(p).mean().pow(1.0 / p)


def _cosine(x: Tensor, y: Tensor) -> Tensor:
    return F.cosine_similarity(x.float().flatten(1), y.float().flatten(1), dim=1, eps=1e-12)


def ie_reconstruction_loss(feat: Tensor, recon: Tensor, p: float = 1.0) -> Tensor:
    """Auto-encoder reconstruction loss ``(mean |F − D(E(F))|^p)^{1/p}`` (official ``RecLoss``, p = 1: mean |·|).

    Args:
        feat: (B, C, H, W) teacher feature map (the target; no gradient flows into it).
        recon: (B, C, H, W) the auto-encoder's reconstruction.
    """
    if feat.shape != recon.shape:
        raise ShapeError(f"ie_reconstruction_loss: feature {tuple(feat.shape)} and reconstruction "
                         f"{tuple(recon.shape)} differ")
    return (recon.float() - feat.detach().float()).abs().pow(p).mean().pow(1.0 / p)


def ie_inheritance_loss(s_factor: Tensor, t_factor: Tensor, p: float = 1.0, metric: str = "ft") -> Tensor:
    """Inheritance loss: pull the student's inheritance factor towards the teacher factor.

    ``metric="ft"``: :func:`factor_distance` (≥ 0, 0 when the factors are positively proportional);
    ``metric="cos"``: ``mean_i (1 − cos(f_inh,i, f_t,i))``.

    Args:
        s_factor: (B, C_f, H, W) (or any (B, ...)) factor of the student's inheritance half.
        t_factor: same shape, the teacher factor; no gradient flows into it.
    """
    _check_same("ie_inheritance_loss", s_factor, t_factor)
    t_factor = t_factor.detach()
    if metric == "ft":
        return factor_distance(s_factor, t_factor, p)
    if metric == "cos":
        return (1.0 - _cosine(s_factor, t_factor)).mean()
    raise ValueError(f"ie_inheritance_loss: metric must be 'ft' or 'cos', got {metric!r}")


def ie_exploration_loss(s_factor: Tensor, t_factor: Tensor, p: float = 1.0, metric: str = "ft") -> Tensor:
    """Exploration loss: push the student's exploration factor away from the teacher factor.

    ``metric="ft"``: ``−factor_distance`` (bounded below, since normalised factors are at most 2 apart per element);
    ``metric="cos"``: ``mean_i |cos(f_exp,i, f_t,i)|`` (pushes towards orthogonality).
    """
    _check_same("ie_exploration_loss", s_factor, t_factor)
    t_factor = t_factor.detach()
    if metric == "ft":
        return -factor_distance(s_factor, t_factor, p)
    if metric == "cos":
        return _cosine(s_factor, t_factor).abs().mean()
    raise ValueError(f"ie_exploration_loss: metric must be 'ft' or 'cos', got {metric!r}")


def split_channels(feat: Tensor, inh_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Split a (B, C, ...) feature into (inheritance, exploration) parts along channels.

    Without ``inh_index`` the first ⌊C/2⌋ channels inherit and the rest explore (the official "natural" split).
    With it (a fixed permutation's first half, the "random" split), those channels inherit and the others explore.
    """
    c = feat.shape[1]
    if c < 2:
        raise ShapeError(f"split_channels: need at least 2 channels to split, got {tuple(feat.shape)}")
    if inh_index is None:
        h = c // 2
        return feat[:, :h], feat[:, h:]
    mask = torch.zeros(c, dtype=torch.bool, device=feat.device)
    mask[inh_index.to(feat.device)] = True
    return feat[:, mask], feat[:, ~mask]


class FactorEncoder(nn.Module):
    """Three 3×3 convolutions (C_in→C_in→C_out→C_out) with BatchNorm and LeakyReLU(0.1), spatial size kept.

    The official ``Coder``: it also applies the LeakyReLU to its input first. Used as the teacher auto-encoder's
    encoder and decoder and as each student half's encoder.
    """

    def __init__(self, c_in: int, c_out: int, use_bn: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.LeakyReLU(0.1)]
        for a, b in ((c_in, c_in), (c_in, c_out), (c_out, c_out)):
            layers.append(nn.Conv2d(a, b, 3, padding=1, bias=not use_bn))
            if use_bn:
                layers.append(nn.BatchNorm2d(b))
            layers.append(nn.LeakyReLU(0.1))
        self.layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He init on fan-out, as the reference
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ShapeError(f"FactorEncoder expects a (B, C, H, W) feature map, got {tuple(x.shape)}")
        return self.layers(x)


class FactorAutoEncoder(nn.Module):
    """Teacher-feature auto-encoder: ``factor = E(F)``, ``recon = D(factor)``; ``forward`` returns both.

    Args:
        c_in: channels of the teacher feature map.
        c_factor: factor channels (official: half the teacher's channels, e.g. 64 → 32).
    """

    def __init__(self, c_in: int, c_factor: int, use_bn: bool = True) -> None:
        super().__init__()
        self.encoder = FactorEncoder(c_in, c_factor, use_bn)
        self.decoder = FactorEncoder(c_factor, c_in, use_bn)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)
