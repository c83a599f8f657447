"""Deep Mutual Learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018): N >= 2 peers teach each other.

Peer k minimises ``L_k = Σ_terms-without-teacher + (1/(N−1)) Σ_{l≠k} Σ_terms-with-teacher(z_k ← z_l)``; with the
default terms ``[ce, kd(T=1)]`` this is the paper's ``L_k = CE(p_k, y) + 1/(N−1) Σ_{l≠k} KL(p_l ‖ p_k)`` except for
kdkit's T² factor (1 at T=1). The other peers' outputs are detached: KL(p_l‖p_k) sends gradient to peer k only,
so the sum over peers is optimised in one optimiser step per batch (the paper alternates peer updates within a
batch; updating all peers from the same forward pass is the common simultaneous variant and halves the cost).

Evaluation reports every peer and their ensemble (the average of the peers' probabilities); peer 0 (the recipe's
``student``) is the exported model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kdkit.errors import ConfigError
from kdkit.losses.logits import kd_kl
from kdkit.recipe import ModelSpec
from kdkit.registry import SCHEMES
from kdkit.schemes.base import BuildContext, Scheme
from kdkit.terms.base import LossTerm, TermInputs, total_loss
from kdkit.types import Batch, ModelOutput, StepOutput, TrainState, logits_of


def mutual_kl(logits: list[Tensor], temperature: float = 1.0) -> list[Tensor]:
    """DML's mimicry losses: for each peer k, ``T² · (1/(N−1)) Σ_{l≠k} KL(softmax(z_l/T) ‖ softmax(z_k/T))``,
    batch-mean, with the targets ``z_l`` detached (gradient reaches peer k only).

    Args:
        logits: N ≥ 2 tensors (B, K), one per peer.

    Returns:
        N scalar losses.
    """
    n = len(logits)
    if n < 2:
        raise ValueError(f"mutual learning needs at least 2 peers, got {n}")
    return [sum(kd_kl(logits[k], logits[j].detach(), temperature) for j in range(n) if j != k) / (n - 1)
            for k in range(n)]


class ProbabilityEnsemble(nn.Module):
    """``log(mean_k softmax(z_k))``: the ensemble's distribution as logits (its softmax is the average)."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, x: Tensor) -> Tensor:
        probs = torch.stack([torch.softmax(logits_of(m(x)).float(), dim=-1) for m in self.models]).mean(0)
        return torch.log(probs.clamp_min(1e-12))


class MutualModule(nn.Module):
    """All peers and their terms: ``forward(batch, state) -> StepOutput`` with terms logged as ``peer{k}_{name}``."""

    def __init__(self, peers: list[nn.Module], terms: list[list[LossTerm]]) -> None:
        super().__init__()
        self.peers = nn.ModuleList(peers)
        self.terms = nn.ModuleList(nn.ModuleList(t) for t in terms)

    def forward(self, batch: Batch, state: TrainState) -> StepOutput:
        outs = [ModelOutput(logits=logits_of(p(batch["input"]))) for p in self.peers]
        n = len(outs)
        loss: Tensor | None = None
        logged: dict[str, Tensor] = {}
        for k, (out, terms) in enumerate(zip(outs, self.terms, strict=True)):
            others = [ModelOutput(logits=outs[j].logits.detach()) for j in range(n) if j != k]

            def value_of(term: LossTerm, out: ModelOutput = out, others: list[ModelOutput] = others) -> Tensor:
                if term.needs_teacher:  # averaged over the other peers, each one a teacher
                    return sum(term(TermInputs(student=out, teacher=o, teachers=[o], batch=batch, state=state))
                               for o in others) / len(others)
                return term(TermInputs(student=out, teacher=None, teachers=[], batch=batch, state=state))

            part, logs = total_loss(terms, state, value_of, like=out.logits, prefix=f"peer{k}_")
            logged.update(logs)
            loss = part if loss is None else loss + part
        assert loss is not None  # at least two peers
        return StepOutput(loss=loss, logits=outs[0].logits, terms=logged)


@SCHEMES.register("mutual", description="Deep Mutual Learning: N peers, each CE + KL towards the others (detached)")
class MutualScheme(Scheme):
    """N ≥ 2 peers trained together.

    ``scheme.params``: ``peers`` -- the other peers' models as ``[{name, params, checkpoint}, ...]`` (default: one
    copy of the student's architecture), or ``num_peers`` -- that many copies of the student's architecture in all.
    Each peer gets its own instance of the recipe's ``terms`` (logit terms only; the default recipe terms for DML are
    ``[{name: ce}, {name: kd, params: {temperature: 1}}]``). Logit standardisation is the terms' own option:
    ``{name: kd, params: {standardize: true}}`` z-scores both peers' logits in every mimicry term.
    """

    name = "mutual"

    def __init__(self, peers: list[nn.Module], terms: list[list[LossTerm]]) -> None:
        if len(peers) < 2:
            raise ConfigError(f"scheme 'mutual' needs at least 2 peers, got {len(peers)}")
        for t in terms[0]:
            if t.needs_teacher_features or t.student_taps():
                raise ConfigError(f"scheme 'mutual': loss term '{t.name}' reads features; mutual learning takes logit "
                                  f"terms (e.g. ce, kd)")
        self.module = MutualModule(peers, terms)

    @classmethod
    def build(cls, ctx: BuildContext, **params: Any) -> MutualScheme:
        r = ctx.recipe
        peers_spec = params.pop("peers", None)
        num_peers = params.pop("num_peers", None)
        if params:
            raise ConfigError(f"scheme 'mutual' has no params {sorted(params)}; allowed: peers, num_peers")
        if r.teachers:
            raise ConfigError("scheme 'mutual' trains peers from scratch; list them under scheme.params.peers, not "
                              "`teachers:`")
        if peers_spec is not None and num_peers is not None:
            raise ConfigError("scheme.params: give either `peers` or `num_peers`, not both")
        if peers_spec is None:
            n = 2 if num_peers is None else int(num_peers)
            if n < 2:
                raise ConfigError(f"scheme.params.num_peers must be >= 2, got {num_peers}")
            specs = [r.student] * (n - 1)
        else:
            if not isinstance(peers_spec, list) or not peers_spec:
                raise ConfigError("scheme.params.peers must be a non-empty list of models ({name, params})")
            try:
                specs = [ModelSpec.model_validate(p if isinstance(p, dict) else {"name": p}) for p in peers_spec]
            except Exception as err:  # pydantic's message names the bad key
                raise ConfigError(f"scheme.params.peers: {str(err).splitlines()[-1].strip()}") from None
        peers = [ctx.make_model(r.student)] + [ctx.make_model(s) for s in specs]
        terms = [ctx.make_terms(r.terms) for _ in peers]
        return cls(peers, terms)

    def trainable(self) -> nn.Module:
        return self.module

    def step(self, model: nn.Module, batch: Batch, state: TrainState) -> StepOutput:
        return model(batch, state)

    def eval_models(self) -> dict[str, nn.Module]:
        peers = list(self.module.peers)
        models: dict[str, nn.Module] = {"student": peers[0]}
        models.update({f"peer{k}": p for k, p in enumerate(peers) if k > 0})
        models["ensemble"] = ProbabilityEnsemble(peers)
        return models


__all__ = ["MutualModule", "MutualScheme", "ProbabilityEnsemble", "mutual_kl"]
