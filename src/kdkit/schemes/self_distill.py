"""Self-distillation with classifier exits (Zhang et al., "Be Your Own Teacher", ICCV 2019).

The student is a :class:`~kdkit.models.exits.MultiExitNet`: the backbone plus a bottleneck and a classifier at
each shallow tap point. The deepest exit (the backbone's own classifier) teaches the shallow ones; no other teacher.

For the deepest exit C and each shallow exit i (logits z_i, bottleneck feature F_i, deepest feature F_C)::

    L = CE(z_C, y) + Σ_i [ (1 − α) · CE(z_i, y) + α · KL(softmax(z_C/T) ‖ softmax(z_i/T)) + λ · ‖F_i − F_C‖₂ ]

with z_C and F_C detached (the deep exit teaches; the shallow losses do not pull it), α = ``kd_weight`` (0.3),
λ = ``feature_weight`` (0.03), T = ``temperature`` (3).

Conventions (the published code's, which its α, λ, T were tuned for): the KD part is *not* multiplied by T²
(set ``kd_t_squared: true`` for kdkit's usual Hinton scaling), and the feature part is the unsquared Frobenius norm of
the whole batch's difference, ``torch.dist(F_i, F_C)`` -- the paper writes a squared L2 distance.

Evaluation reports every exit (``val_exit{k}_top1``); the exported model is exit ``export_exit`` of the student
(``exits:NAME`` students) or the deepest exit, i.e. the plain backbone (plain students, which are wrapped here).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.errors import ConfigError
from kdkit.losses.logits import cross_entropy
from kdkit.models.exits import ExitView, MultiExitNet, make_multi_exit
from kdkit.registry import SCHEMES
from kdkit.schemes.base import BuildContext, Scheme
from kdkit.types import Batch, StepOutput, TrainState


def exit_losses(logits: list[Tensor], hints: list[Tensor], deep_feature: Tensor, target: Tensor, temperature: float,
                kd_t_squared: bool = False) -> dict[str, Tensor]:
    """Unweighted Be-Your-Own-Teacher terms.

    Args:
        logits: E tensors (B, K), shallow to deep; the last is the teacher exit.
        hints: E-1 bottleneck features, each shaped like ``deep_feature``.
        deep_feature: the deepest feature F_C (any shape; detached here).
        target: (B,) labels (-1 = unlabelled).

    Returns:
        ``{"ce_exit{E}": CE(z_E), "ce_exit{i}": CE(z_i), "kd_exit{i}": KL(q_E^T ‖ q_i^T)[·T²], "feat_exit{i}":
        ‖F_i − F_E‖₂}`` for i in 1..E-1.
    """
    e = len(logits)
    teacher = logits[-1].detach()
    log_p = F.log_softmax(teacher.float() / temperature, dim=-1)
    out = {f"ce_exit{e}": cross_entropy(logits[-1], target)}
    scale = temperature * temperature if kd_t_squared else 1.0
    for i in range(e - 1):
        log_q = F.log_softmax(logits[i].float() / temperature, dim=-1)
        out[f"ce_exit{i + 1}"] = cross_entropy(logits[i], target)
        out[f"kd_exit{i + 1}"] = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * scale
        out[f"feat_exit{i + 1}"] = torch.dist(hints[i].float(), deep_feature.detach().float())
    return out


class SelfDistillModule(nn.Module):
    """The multi-exit student and its loss: ``forward(batch, state) -> StepOutput`` (primary logits: the exported
    exit)."""

    def __init__(self, net: MultiExitNet, kd_weight: float, feature_weight: float, temperature: float,
                 kd_t_squared: bool) -> None:
        super().__init__()
        self.net = net
        self.kd_weight, self.feature_weight = float(kd_weight), float(feature_weight)
        self.temperature, self.kd_t_squared = float(temperature), bool(kd_t_squared)

    def forward(self, batch: Batch, state: TrainState) -> StepOutput:
        logits, hints, deep = self.net.forward_all(batch["input"])
        terms = exit_losses(logits, hints, deep, batch["target"], self.temperature, self.kd_t_squared)
        e = len(logits)
        a, lam = self.kd_weight, self.feature_weight
        loss = terms[f"ce_exit{e}"]
        for i in range(1, e):
            loss = loss + (1 - a) * terms[f"ce_exit{i}"] + a * terms[f"kd_exit{i}"] + lam * terms[f"feat_exit{i}"]
        primary = logits[self.net.export_exit - 1]
        return StepOutput(loss=loss, logits=primary, terms={k: v.detach() for k, v in terms.items()})


@SCHEMES.register("self_distill", description="Be Your Own Teacher: the deepest exit teaches bottleneck+classifier "
                                             "exits at tap points (KD + L2 on features)")
class SelfDistillScheme(Scheme):
    """``scheme.params``: ``kd_weight`` α (0.3), ``feature_weight`` λ (0.03), ``temperature`` (3), ``kd_t_squared``
    (false); for a plain student also ``exits`` (tap paths; default all ``kd_stages`` but the last), ``deep``,
    ``bottleneck_width``. The recipe's ``terms`` are not used (the scheme's loss is fixed); ``teachers`` must be
    empty."""

    name = "self_distill"

    def __init__(self, net: MultiExitNet, export_backbone: bool, kd_weight: float = 0.3, feature_weight: float = 0.03,
                 temperature: float = 3.0, kd_t_squared: bool = False) -> None:
        if not 0.0 <= kd_weight <= 1.0 or feature_weight < 0 or temperature <= 0:
            raise ConfigError(f"scheme 'self_distill': need 0 <= kd_weight <= 1, feature_weight >= 0, temperature > 0; "
                              f"got {kd_weight}, {feature_weight}, {temperature}")
        self.module = SelfDistillModule(net, kd_weight, feature_weight, temperature, kd_t_squared)
        self.export_backbone = export_backbone

    @classmethod
    def build(cls, ctx: BuildContext, **params: Any) -> SelfDistillScheme:
        r = ctx.recipe
        if r.teachers:
            raise ConfigError("scheme 'self_distill' has no external teacher (the deepest exit teaches); remove "
                              "`teachers:`")
        exit_params = {k: params.pop(k) for k in ("exits", "deep", "bottleneck_width") if k in params}
        model = ctx.make_model(r.student)
        if isinstance(model, MultiExitNet):
            if exit_params:
                raise ConfigError(f"scheme.params {sorted(exit_params)}: the student 'exits:...' already defines its "
                                  f"exits; set them in student.params")
            return cls(model, False, **params)
        net = make_multi_exit(model, ctx.num_classes, ctx.in_channels, ctx.image_size, **exit_params)
        return cls(net, True, **params)

    def trainable(self) -> nn.Module:
        return self.module

    def step(self, model: nn.Module, batch: Batch, state: TrainState) -> StepOutput:
        return model(batch, state)

    def eval_models(self) -> dict[str, nn.Module]:
        net = self.module.net
        # A plain recipe student is exported as itself (the backbone = the deepest exit), so its checkpoint loads
        # with the student's own name; an `exits:` student is exported whole, answering with its export exit.
        first: nn.Module = net.backbone if self.export_backbone else net
        models: dict[str, nn.Module] = {"student": first}
        models.update({f"exit{k}": ExitView(net, k) for k in range(1, net.num_exits + 1)})
        return models


__all__ = ["SelfDistillModule", "SelfDistillScheme", "exit_losses"]
