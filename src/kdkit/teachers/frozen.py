"""Frozen teachers: pre-trained networks that never train, as a :class:`~kdkit.types.TeacherSource`.

:class:`FrozenTeacher` is the one place where a teacher is frozen (eval mode that ``train()`` cannot undo, no
gradients, never handed to the optimiser or to DDP). :class:`FrozenTeachers` runs one or several of them on a batch and
combines their logits for logit terms (multi-teacher KD).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from kdkit.errors import ConfigError
from kdkit.taps import FeatureTap
from kdkit.teachers.policy import FP32, Mode, TeacherPolicy, mode_context, timed_interleaved
from kdkit.types import Batch, ModelOutput, TeacherSignal, input_key, is_logits_only, logits_of

Combine = Literal["mean_logits", "mean_probs", "weighted", "random"]
COMBINES = ("mean_logits", "mean_probs", "weighted", "random")


def freeze(model: nn.Module) -> nn.Module:
    """Stop gradients and put ``model`` in eval mode (BatchNorm uses running statistics, dropout is off)."""
    model.requires_grad_(False)
    return model.eval()


class FrozenTeacher(nn.Module):
    """A teacher that can never train.

    ``train()`` keeps the wrapped model in eval mode, ``forward`` runs under ``torch.inference_mode()`` (no autograd
    state at all), and parameters have ``requires_grad=False``. The wrapper is never handed to the optimiser or to DDP.

    ``policy`` (:class:`~kdkit.teachers.policy.TeacherPolicy`) says how it runs: fp32 by default, otherwise the mode
    the policy forces or measures on the first batch (``index`` names this teacher in its record). Outputs are always
    float32, whatever the mode. A policy ``device`` keeps the teacher there: each batch goes to it and the outputs
    come back to the batch's device (a teacher on another GPU than the student, or on the CPU).
    """

    def __init__(self, model: nn.Module, taps: Sequence[str] = (), policy: TeacherPolicy | None = None,
                 index: int = 0) -> None:
        super().__init__()
        self.model = freeze(model)
        self.tap = FeatureTap(self.model, taps, detach=True, role="teacher") if taps else None
        self.policy, self.index = policy, index
        self.device = None if policy is None or policy.device is None else torch.device(policy.device)
        self.mode: Mode | None = None if policy is not None else FP32
        self._channels_last = False
        object.__setattr__(self, "_compiled", None)  # not a submodule: it shares the teacher's weights

    def train(self, mode: bool = True) -> FrozenTeacher:  # noqa: ARG002 - mode is ignored on purpose
        self.training = False
        self.model.eval()
        return self

    def forward(self, x: Tensor) -> ModelOutput:
        home = x.device
        if self.device is not None and x.device != self.device:
            x = x.to(self.device)
        if self.mode is None:
            self.mode = self.policy.decide(self.index, self.run, x)
            self._try_compile(x, self.mode)
        out = self.run(x, self.mode, self._compiled)

        # Inference tensors cannot be saved for backward; the terms use these outputs in the student's graph, so they
        # leave as ordinary tensors (one copy of the logits and tapped features, small next to the forward): a clone,
        # or the copy to the student's device.
        def back(t: Tensor) -> Tensor:
            return t.clone() if t.device == home else t.to(home)

        return ModelOutput(logits=back(out.logits), features={k: back(v) for k, v in out.features.items()})

    def to(self, *args, **kwargs) -> FrozenTeacher:  # noqa: ANN002, ANN003 - nn.Module.to's signature
        """Move the teacher, unless the policy pins it to a device (then it stays there)."""
        if self.device is not None:
            return super().to(self.device)
        return super().to(*args, **kwargs)

    def run(self, x: Tensor, mode: Mode, net: nn.Module | None = None) -> ModelOutput:
        """One forward of the teacher in ``mode`` (float32 outputs, inference tensors)."""
        # `net or self.model` would call bool() on a compiled module, which asks the model for len(): TypeError
        net = self.model if net is None else net
        cl = mode.channels_last and x.dim() == 4
        if cl != self._channels_last:
            self.model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            self._channels_last = cl
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), mode_context(mode, x.device.type):
            logits = logits_of(net(x)).float()
            feats = self.tap.pop() if self.tap is not None else {}
            feats = {k: v.float().contiguous() for k, v in feats.items()}
        return ModelOutput(logits=logits, features=feats)

    def _try_compile(self, x: Tensor, mode: Mode) -> None:
        """Compile the teacher in its chosen ``mode`` (the policy's ``compile``), time it, and keep it (or not).

        Called after the mode is chosen, so only that mode is compiled. With ``policy.freezing`` (default) Inductor
        folds the weights into the graph as constants (weight casts and layout conversions happen once, not per
        call): safe here, because a frozen teacher's weights never change and it runs without autograd. The first
        call (compilation included) is timed on the wall clock; then the compiled and the eager forward are timed in
        turn on this batch, and the policy records both and whether the compiled one is kept
        (:meth:`TeacherPolicy.compiled`). Any failure runs the teacher eagerly, said in one line.
        """
        if self.policy is None or not self.policy.compile:
            return
        try:
            options = {"freezing": True} if self.policy.freezing else None
            compiled = torch.compile(self.model, options=options)
            t0 = time.perf_counter()
            self.run(x, mode, compiled)  # compilation happens at the first call: fail here, not mid-training
            compile_s = time.perf_counter() - t0
            outs, secs, clock_name = timed_interleaved(lambda net: self.run(x, mode, net), [self.model, compiled],
                                                       self.policy.repeats, x.device)
            if compiled not in secs:
                raise RuntimeError(outs[compiled].error)
        except Exception as err:  # compilation can fail for many reasons (no compiler, unsupported op): run eagerly
            self.policy.compile_failed(self.index, err)
            return
        eager_s, compiled_s = statistics.median(secs[self.model]), statistics.median(secs[compiled])
        if self.policy.compiled(self.index, compile_s, eager_s, compiled_s, clock_name):
            object.__setattr__(self, "_compiled", compiled)


def combine_logits(logits: Sequence[Tensor], rule: str, weights: Sequence[float] | None = None) -> Tensor:
    """(B, K) teacher signal from N teachers' (B, K) logits.

    ``mean_logits``: the average logit; ``mean_probs``: log of the averaged probabilities (softmax of it is the
    ensemble's distribution at T = 1); ``weighted``: the logit average with ``weights`` (normalised to sum 1).
    """
    z = torch.stack([t.float() for t in logits])  # (N, B, K)
    if rule == "mean_probs":
        return torch.log(torch.softmax(z, dim=-1).mean(0).clamp_min(1e-12))
    if rule == "weighted":
        if weights is None or len(weights) != z.shape[0]:
            raise ConfigError(f"scheme.params.teacher_weights: 'weighted' needs one weight per teacher ({z.shape[0]})")
        w = torch.tensor(list(weights), dtype=z.dtype, device=z.device)
        return (z * (w / w.sum()).view(-1, 1, 1)).sum(0)
    return z.mean(0)


class FrozenTeachers:
    """One or several frozen teachers as a :class:`~kdkit.types.TeacherSource`.

    With several teachers, the signal given to logit terms is ``combine``d (:func:`combine_logits`), or ``random``: one
    teacher drawn per step. Every teacher's own output (with its tapped features) is in ``signal.each``.

    Args:
        models: the teacher networks (built, weights loaded, input adapters attached).
        taps: module paths to tap per teacher index (what the loss terms read).
        combine: ``mean_logits`` (default), ``mean_probs``, ``weighted`` or ``random``.
        weights: per-teacher weights for ``weighted``.
        seed: seeds the ``random`` draw.
        policy: how the teachers run (precision, channels-last, compile; :mod:`kdkit.teachers.policy`); fp32 when
            None.
        inputs: the named input each teacher reads (None = the main ``input``); see :mod:`kdkit.data.views`.
    """

    has_features = True

    def __init__(self, models: Sequence[nn.Module], taps: Mapping[int, Sequence[str]] | None = None,
                 combine: str = "mean_logits", weights: Sequence[float] | None = None, seed: int = 0,
                 policy: TeacherPolicy | None = None, inputs: Sequence[str | None] | None = None) -> None:
        if combine not in COMBINES:
            raise ConfigError(f"scheme.params.combine: '{combine}' is not one of {', '.join(COMBINES)}")
        if weights is not None and len(weights) != len(models):
            raise ConfigError(f"scheme.params.teacher_weights has {len(weights)} values for {len(models)} teachers")
        if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ConfigError(f"scheme.params.teacher_weights must be >= 0 with a positive sum, got {list(weights)}")
        if combine == "weighted" and weights is None:
            raise ConfigError("scheme.params.combine 'weighted' needs scheme.params.teacher_weights (one per teacher)")
        taps = taps or {}
        self.teachers = [FrozenTeacher(m, taps.get(i, ()), policy, i) for i, m in enumerate(models)]
        self.models = [t.model for t in self.teachers]
        self.has_features = not any(is_logits_only(m) for m in self.models)  # an ONNX teacher gives logits only
        self.combine, self.weights = combine, None if weights is None else [float(w) for w in weights]
        self._gen = torch.Generator().manual_seed(seed + 7919)
        self.input_keys = [input_key(n) for n in (inputs if inputs is not None else [None] * len(models))]
        if len(self.input_keys) != len(models):
            raise ConfigError(f"FrozenTeachers: {len(self.input_keys)} input names for {len(models)} teachers")

    def outputs(self, batch: Batch) -> TeacherSignal:
        each = [t(batch[k]) for t, k in zip(self.teachers, self.input_keys, strict=True)]
        if len(each) == 1:
            return TeacherSignal(each[0], each)
        if self.combine == "random":
            i = int(torch.randint(len(each), (1,), generator=self._gen))
            return TeacherSignal(each[i], each)
        logits = combine_logits([o.logits for o in each], self.combine, self.weights)
        return TeacherSignal(ModelOutput(logits=logits, features=each[0].features), each)

    def to(self, device: torch.device) -> FrozenTeachers:
        for t in self.teachers:
            t.to(device)
        return self


__all__ = ["COMBINES", "FrozenTeacher", "FrozenTeachers", "combine_logits", "freeze"]
