"""On-policy distillation of causal LMs (GKD: Agarwal et al., "On-Policy Distillation of Language Models: Learning
from Self-Generated Mistakes", ICLR 2024): the ``gkd`` scheme.

With probability λ (``lmbda``) per batch, the batch's token blocks are replaced by the *student's own* samples: the
first ``prompt_tokens`` tokens of each block are kept as a prompt, the student continues it with ``max_new_tokens``
sampled tokens (``temperature``, nucleus ``top_p``; eval mode, no gradients), and the loss terms -- usually
``lm_jsd`` with GKD's β -- compare teacher and student on that sequence with the prompt's targets set to -1, so only
the generated continuation counts. Otherwise (probability 1 − λ) the batch is the corpus's, exactly as the ``offline``
scheme trains it. This follows TRL's ``GKDTrainer`` (the reference for the convention): one coin per batch,
``generalized_jsd_loss`` over the completion's tokens, prompt labels masked.

Reproducible and resumable: the coin and the sampling seed are pure functions of (recipe seed, optimiser step,
micro-batch within the step); the sampling seed also takes the process rank, so data-parallel processes sample
different continuations of their own prompts while all of them agree on the coin.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kdkit.errors import ConfigError
from kdkit.lm.generate import continue_prompts
from kdkit.lm.models import CausalLM
from kdkit.registry import SCHEMES
from kdkit.schemes.base import BuildContext, DistillModule
from kdkit.schemes.offline import OfflineScheme, offline_parts
from kdkit.types import Batch, StepOutput, TeacherSource, TrainState

_PARAMS = {"lmbda", "prompt_tokens", "max_new_tokens", "temperature", "top_p"}


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (a fixed polynomial hash: the same on every machine and process)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def on_policy_batch(student: CausalLM, batch: Batch, prompt_tokens: int, max_new_tokens: int, temperature: float,
                    top_p: float, seed: int) -> Batch:
    """``batch`` with its tokens replaced by the student's continuations of each block's first ``prompt_tokens``.

    Args:
        student: the model that samples (unwrapped: sampling needs no gradient synchronisation).
        batch: an LM batch, ``input`` (B, T) ids and ``target`` (B·T,) next-token ids.
        prompt_tokens: P, prompt length (1 <= P <= T).
        max_new_tokens: N, tokens sampled per row.
        temperature, top_p, seed: see :func:`kdkit.lm.generate.continue_prompts`.

    Returns:
        A batch of ``input`` (B, P + N − 1) = the sequence without its last token and ``target`` (B·(P + N − 1),) =
        the sequence shifted by one, -1 at the P − 1 positions whose next token is still the prompt's; other keys
        (``index``, ``view``) are kept.
    """
    x = batch["input"]
    prompt = x[:, :prompt_tokens]
    seq = continue_prompts(student, prompt, max_new_tokens, temperature, top_p, seed)  # (B, P + N)
    target = seq[:, 1:].clone()
    target[:, : prompt_tokens - 1] = -1  # predicting a prompt token is not the student's own text: not counted
    return {**batch, "input": seq[:, :-1].contiguous(), "target": target.reshape(-1)}


@SCHEMES.register("gkd", description="on-policy KD of causal LMs (GKD): student generations replace a batch with "
                  "probability lmbda")
class GKDScheme(OfflineScheme):
    """The offline scheme whose batches are, with probability ``lmbda``, the student's own continuations.

    ``scheme.params``: ``lmbda`` (0.5) -- the per-batch probability of on-policy data (0: exactly ``offline``);
    ``prompt_tokens`` (8) -- the prefix of each block kept as a prompt; ``max_new_tokens`` (default: the rest of the
    block, T + 1 − P, so an on-policy batch has the corpus batch's shape) -- at most that; ``temperature`` (1.0) and
    ``top_p`` (1.0) of the sampling. ``combine``/``teacher_weights``/``teacher_inputs`` as in ``offline``. Reads no
    soft-label store: the teacher must see the generated tokens.
    """

    name = "gkd"
    accepts_store = False
    accepts_named_inputs = False

    def __init__(self, module: DistillModule, teachers: TeacherSource | None, lmbda: float = 0.5,
                 prompt_tokens: int = 8, max_new_tokens: int | None = None, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0) -> None:
        super().__init__(module, teachers)
        if not 0.0 <= float(lmbda) <= 1.0:
            raise ConfigError(f"scheme.params.lmbda must lie in [0, 1] (the share of on-policy batches), got {lmbda}")
        if not isinstance(prompt_tokens, int) or prompt_tokens < 1:
            raise ConfigError(f"scheme.params.prompt_tokens must be a positive integer, got {prompt_tokens!r}")
        if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
            raise ConfigError(f"scheme.params.max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not (float(temperature) > 0 and 0 < float(top_p) <= 1):
            raise ConfigError(f"scheme.params: temperature must be > 0 and top_p in (0, 1]; got temperature="
                              f"{temperature}, top_p={top_p}")
        student = module.student
        if not isinstance(student, CausalLM):
            raise ConfigError(f"scheme 'gkd' samples from the student, which must be a causal LM (`lm:` or an `hf:` "
                              f"causal LM; docs/lm.md); got {type(student).__name__}")
        self.lmbda, self.prompt_tokens, self.max_new_tokens = float(lmbda), prompt_tokens, max_new_tokens
        self.temperature, self.top_p, self.seed = float(temperature), float(top_p), int(seed)
        self._micro = (-1, 0)  # (optimiser step, micro-batches seen at it): gradient accumulation gets fresh draws

    @classmethod
    def build(cls, ctx: BuildContext, **params: Any) -> GKDScheme:
        allowed = _PARAMS | {"combine", "teacher_weights", "teacher_inputs"}
        if set(params) - allowed:
            raise ConfigError(f"scheme 'gkd' has no params {sorted(set(params) - allowed)}; allowed: "
                              f"{', '.join(sorted(allowed))}")
        own = {k: params.pop(k) for k in list(params) if k in _PARAMS}
        module, teachers = offline_parts(ctx, **params)
        if teachers is None:
            raise ConfigError("scheme 'gkd' distils from a teacher; add `teachers:` to the recipe")
        return cls(module, teachers, seed=ctx.recipe.seed, **own)

    def draw(self, state: TrainState) -> tuple[bool, int]:
        """(on-policy?, sampling seed) for the next batch at ``state.step``: pure functions of (seed, step, micro)."""
        step, micro = self._micro
        micro = micro + 1 if step == state.step else 0
        self._micro = (state.step, micro)
        coin = torch.Generator().manual_seed(_mix(self.seed, state.step, micro, 17))
        on = bool(torch.rand((), generator=coin) < self.lmbda)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return on, _mix(self.seed, state.step, micro, rank, 29)

    def step(self, model: nn.Module, batch: Batch, state: TrainState) -> StepOutput:
        on, seed = self.draw(state)
        if not on:
            out = super().step(model, batch, state)
            return StepOutput(out.loss, out.logits, dict(out.terms, on_policy=out.loss.new_zeros(())))
        T = int(batch["input"].shape[1])
        if self.prompt_tokens > T:
            raise ConfigError(f"scheme.params.prompt_tokens={self.prompt_tokens} exceeds the data's block of {T} "
                              f"tokens; lower it or raise data.params.block")
        room = T + 1 - self.prompt_tokens  # the model's context is the data's block: P + N - 1 <= T
        n = room if self.max_new_tokens is None else min(self.max_new_tokens, room)
        gen = on_policy_batch(self.module.student, batch, self.prompt_tokens, n, self.temperature, self.top_p, seed)
        out = super().step(model, gen, state)
        return StepOutput(out.loss, out.logits, dict(out.terms, on_policy=out.loss.new_ones(())), target=gen["target"])


__all__ = ["GKDScheme", "on_policy_batch"]
