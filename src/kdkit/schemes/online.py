"""Online distillation: the teacher trains together with the student.

The seeds' "learning students and teacher together": the student learns from the recipe's terms with the teacher's
current (detached) outputs as the teacher signal, while the teacher learns from the hard labels plus a *small*
weighted term towards the detached student -- the student's knowledge is noisier than the labels, so its pull on
the teacher is kept weak (``teacher_kd_weight``, default 0.1; 0 gives a teacher trained on labels alone, in step
with the student).

Teacher loss:  ``L_t = CE(z_t, y) + w · T² · KL(softmax(z_s/T) ‖ softmax(z_t/T))`` with ``z_s`` detached; with
``standardize: true`` both logits are z-scored per sample first (logit standardisation, Sun et al., CVPR 2024).
Student loss:  the recipe's ``terms`` (e.g. ``ce`` + ``kd``, which take ``standardize`` themselves) with the teacher's
detached logits / features.

One optimiser step per batch updates both networks (one ``nn.Module`` holds both, so DDP syncs both).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdkit.errors import ConfigError
from kdkit.losses.logit_relations import standardize_logits
from kdkit.losses.logits import cross_entropy, kd_kl
from kdkit.registry import SCHEMES
from kdkit.schemes.base import BuildContext, DistillModule, Scheme
from kdkit.taps import FeatureTap
from kdkit.types import Batch, ModelOutput, StepOutput, TeacherSignal, TrainState, logits_of


class OnlineModule(nn.Module):
    """Teacher + student (+ the student's terms): ``forward(batch, state) -> StepOutput``.

    Logged terms: the student's terms under their names, ``teacher_ce`` and ``teacher_kd`` (unweighted).
    """

    def __init__(self, teacher: nn.Module, distill: DistillModule, teacher_kd_weight: float, temperature: float,
                 standardize: bool = False) -> None:
        super().__init__()
        self.teacher = teacher
        self.distill = distill
        taps = distill.teacher_taps.get(0, [])
        self.teacher_tap = FeatureTap(teacher, taps, role="teacher") if taps else None
        self.teacher_kd_weight = float(teacher_kd_weight)
        self.temperature = float(temperature)
        self.standardize = bool(standardize)

    def forward(self, batch: Batch, state: TrainState) -> StepOutput:
        t_logits = logits_of(self.teacher(batch["input"]))
        t_feats = self.teacher_tap.pop() if self.teacher_tap is not None else {}
        # The student sees a constant teacher: its terms must not push the teacher around.
        t_out = ModelOutput(logits=t_logits.detach(), features={k: v.detach() for k, v in t_feats.items()})
        out = self.distill(batch, TeacherSignal(t_out, [t_out]), state)
        t_ce = cross_entropy(t_logits, batch["target"])
        s_logits = out.logits.detach()
        if self.standardize:  # the teacher's KD term on z-scored logits, like the student's `standardize: true`
            t_kd = kd_kl(standardize_logits(t_logits), standardize_logits(s_logits), self.temperature)
        else:
            t_kd = kd_kl(t_logits, s_logits, self.temperature)
        loss = out.loss + t_ce + self.teacher_kd_weight * t_kd
        terms = dict(out.terms, teacher_ce=t_ce.detach(), teacher_kd=t_kd.detach())
        return StepOutput(loss=loss, logits=out.logits, terms=terms)


@SCHEMES.register("online", description="the teacher trains too: CE + a small weighted KD term from the student")
class OnlineScheme(Scheme):
    """Student and teacher trained together in one optimiser.

    Recipe: ``student``, one entry in ``teachers`` (trained from scratch, or fine-tuned from its ``checkpoint``),
    the student's ``terms``; ``scheme.params``: ``teacher_kd_weight`` (default 0.1), ``temperature`` of the teacher's
    KD term (default 4), ``standardize`` (default false: z-score the logits in the teacher's KD term; the student's
    terms take their own ``standardize``).
    """

    name = "online"

    def __init__(self, student: nn.Module, teacher: nn.Module, terms: list, ctx: BuildContext,
                 teacher_kd_weight: float = 0.1, temperature: float = 4.0, standardize: bool = False) -> None:
        if teacher_kd_weight < 0 or temperature <= 0:
            raise ConfigError(f"scheme.params: teacher_kd_weight must be >= 0 and temperature > 0, got "
                              f"{teacher_kd_weight}, {temperature}")
        if not isinstance(standardize, bool):
            raise ConfigError(f"scheme.params.standardize must be true or false, got {standardize!r}")
        distill = DistillModule(student, terms, ctx.setup_context(student, [teacher]))
        self.module = OnlineModule(teacher, distill, teacher_kd_weight, temperature, standardize)

    @classmethod
    def build(cls, ctx: BuildContext, **params: Any) -> OnlineScheme:
        r = ctx.recipe
        if len(r.teachers) != 1:
            raise ConfigError(f"scheme 'online' trains exactly one teacher alongside the student; the recipe has "
                              f"{len(r.teachers)} under `teachers:`")
        student = ctx.make_model(r.student)
        teacher = ctx.make_model(r.teachers[0]).train()
        teacher.requires_grad_(True)  # a checkpointed teacher is fine-tuned, not frozen
        return cls(student, teacher, ctx.make_terms(r.terms), ctx, **params)

    def trainable(self) -> nn.Module:
        return self.module

    def step(self, model: nn.Module, batch: Batch, state: TrainState) -> StepOutput:
        return model(batch, state)

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.module.distill.student, "teacher": self.module.teacher}


__all__ = ["OnlineModule", "OnlineScheme"]
