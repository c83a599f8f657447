"""A generalist and specialists (Hinton, Vinyals & Dean, 2015, section 5): an ensemble that scales to many classes.

1. **Confusable subsets.** The generalist (``teachers[0]``, trained on all classes) predicts the training set; its
   soft confusion matrix ``C[i, j] = mean over samples of class i of p_j`` is symmetrised into an affinity
   ``A = C + Cᵀ`` (diagonal zeroed) and classes are grouped greedily: a subset starts from the most confused pair of
   unused classes and grows by the unused class with the largest total affinity to the subset, up to
   ``subset_size`` (or until no remaining class is confused with it at all); ``num_specialists`` subsets are
   formed. (The paper clusters the columns of the covariance of the generalist's predictions with k-means; the
   greedy grouping on the confusion matrix is kdkit's deterministic variant and is what the recipe's parameters
   name.)
2. **Specialists.** Each specialist m is a copy of the generalist (weights included, as in the paper) whose classifier
   has |S_m| + 1 outputs: the classes of S_m and one catch-all ("dustbin") class for the rest. It is trained on data
   enriched in its subset: each epoch takes every training sample of S_m plus as many drawn at random from the other
   classes (labelled dustbin). Because the dustbin is under-represented relative to the data, the logit of the
   dustbin class is raised by ``log(n_rest / n_subset)`` at distillation time (the paper's correction).
3. **The target.** For a sample, the active specialists A are those whose subset intersects the generalist's
   ``top_n`` classes. The target distribution q over all K classes minimises

       F(q) = KL(p_g ‖ q) + Σ_{m ∈ A} KL(p_m ‖ q_m),

   where q_m is q seen by specialist m: q's entries on S_m and, for the dustbin, the total mass q puts outside S_m.
   There is no closed form (except with no active specialist: q = p_g). With q = softmax(z), the gradient is
   ``∂F/∂z = (1 + |A|) (q − q̄)``, q̄ = (p_g + Σ_{m∈A} r_m)/(1 + |A|), where ``r_m[c] = p_m[c]`` for c ∈ S_m and
   ``r_m[c] = p_m[dustbin] · q_c / q(outside S_m)`` otherwise (specialist m's dustbin mass shared out in proportion
   to q). Two solvers, both starting from z = log p_g, vectorised over the batch, ``solver_steps`` iterations:

   * ``solver: em`` (default): ``z ← z + log(q̄ / q)``, i.e. q ← q̄ -- a mirror-descent step on the logits with unit
     step, which is the EM / minorise-maximise update for this objective: F never increases, and 20 steps reach
     F within 1e-6 nats of a float64 L-BFGS optimum even for specialists that disagree strongly with the generalist
     (tests/unit/test_schemes_specialists.py);
   * ``solver: gd``: plain gradient descent on z, ``z ← z − η (q − q̄)`` (the gradient divided by 1 + |A|), the
     paper's stated method. It is slow where q must grow from a tiny generalist probability (the gradient there is
     tiny): on the same test it needs ~100 steps at η = 2 to come within 0.2 nats, so it is kept for fidelity, not
     as the default.

The student then learns from q through the recipe's logit terms: the teacher signal handed to them is ``log q``.
Specialists are trained once, when the scheme is built, and cached in the run directory (``specialists/``), so a
resumed run reuses them.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.errors import ConfigError
from kdkit.registry import SCHEMES
from kdkit.schemes.base import BuildContext, DistillModule, Scheme
from kdkit.teachers.frozen import FrozenTeacher, freeze
from kdkit.types import Batch, ModelOutput, StepOutput, TeacherSignal, TrainState, logits_of
from kdkit.utils import atomic_write_json
from kdkit.weights import load_weights, save_weights

# ------------------------------------------------------------------------------------------------- pure math


def soft_confusion(probs: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """(K, K) ``C[i, j]`` = mean of p_j over the samples of true class i (rows of absent classes are 0).

    Args:
        probs: (N, K) predicted probabilities.
        targets: (N,) true classes (-1 = unlabelled: ignored).
    """
    keep = targets >= 0
    probs, targets = probs[keep].float(), targets[keep]
    sums = torch.zeros(num_classes, num_classes, dtype=probs.dtype, device=probs.device)
    sums.index_add_(0, targets, probs)
    counts = torch.bincount(targets, minlength=num_classes).clamp_min(1).to(probs.dtype)
    return sums / counts[:, None]


def confusable_subsets(confusion: Tensor, num_subsets: int, subset_size: int) -> list[list[int]]:
    """Greedy grouping of the most confused classes (see the module docstring). Subsets are disjoint and sorted.

    Args:
        confusion: (K, K) confusion matrix (rows: true class).
        num_subsets: how many subsets to form (fewer if classes run out).
        subset_size: classes per subset (>= 2).
    """
    k = confusion.shape[0]
    if subset_size < 2 or subset_size >= k:
        raise ConfigError(f"scheme.params.subset_size must be in 2..{k - 1} for {k} classes, got {subset_size}")
    aff = (confusion + confusion.T).double().clone()
    aff.fill_diagonal_(0.0)
    unused = set(range(k))
    subsets: list[list[int]] = []
    while len(subsets) < num_subsets and len(unused) >= 2:
        idx = sorted(unused)
        sub = aff[idx][:, idx]
        flat = int(sub.argmax())
        a, b = idx[flat // len(idx)], idx[flat % len(idx)]
        group = [a, b]
        while len(group) < subset_size and len(unused) > len(group):
            rest = [c for c in idx if c not in group]
            scores = aff[rest][:, group].sum(1)
            if float(scores.max()) <= 0.0:  # nothing else is confused with this group: keep it small
                break
            group.append(rest[int(scores.argmax())])
        subsets.append(sorted(group))
        unused -= set(group)
    return subsets


def project_to_specialist(q: Tensor, subset: Tensor) -> Tensor:
    """(B, K) distribution over all classes -> (B, |S| + 1): q on the subset, then the mass outside it (dustbin)."""
    inside = q.index_select(1, subset)
    return torch.cat([inside, (1.0 - inside.sum(1, keepdim=True)).clamp_min(0.0)], dim=1)


def specialist_objective(q: Tensor, p_g: Tensor, p_s: Sequence[Tensor], subsets: Sequence[Tensor], active: Tensor
                         ) -> Tensor:
    """(B,) ``F(q) = KL(p_g ‖ q) + Σ_{m active} KL(p_m ‖ q_m)`` per sample.

    Args:
        q: (B, K) candidate distribution; p_g: (B, K) generalist; p_s[m]: (B, |S_m| + 1) specialist m (dustbin
        last); subsets[m]: (|S_m|,) class indices; active: (B, M) bool.
    """
    eps = 1e-12

    def kl(p: Tensor, r: Tensor) -> Tensor:
        return (p * (torch.log(p.clamp_min(eps)) - torch.log(r.clamp_min(eps)))).sum(1)

    total = kl(p_g, q)
    for m, (p, s) in enumerate(zip(p_s, subsets, strict=True)):
        total = total + active[:, m].to(q.dtype) * kl(p, project_to_specialist(q, s))
    return total


def _mixture_target(q: Tensor, p_g: Tensor, p_s: Sequence[Tensor], masks: Tensor, active: Tensor) -> Tensor:
    """q̄ = (p_g + Σ_{m active} r_m(q)) / (1 + |A|), with r_m as in the module docstring.

    ``masks``: (M, K) bool, True on S_m.
    """
    acc = p_g.clone()
    for m, p in enumerate(p_s):
        a = active[:, m].to(q.dtype).unsqueeze(1)
        if not bool(a.any()):
            continue
        mask = masks[m].to(q.dtype).unsqueeze(0)  # (1, K)
        subset = masks[m].nonzero().squeeze(1)
        r = torch.zeros_like(q)
        r.index_copy_(1, subset, p[:, :-1])
        outside = (q * (1 - mask)).sum(1, keepdim=True).clamp_min(1e-12)
        r = r + (1 - mask) * q * p[:, -1:] / outside
        acc = acc + a * r
    return acc / (1.0 + active.to(q.dtype).sum(1, keepdim=True))


def specialist_target(p_g: Tensor, p_s: Sequence[Tensor], subsets: Sequence[Tensor], active: Tensor,
                      steps: int = 20, lr: float = 1.0, solver: str = "em") -> Tensor:
    """The distribution q minimising :func:`specialist_objective`, per sample (see the module docstring).

    Args:
        p_g: (B, K) generalist probabilities.
        p_s: M tensors (B, |S_m| + 1), specialist probabilities with the dustbin last.
        subsets: M index tensors.
        active: (B, M) bool.
        steps: solver iterations.
        lr: gradient-descent step η on the logits (``gd``), in units of the gradient divided by 1 + |A|.
        solver: ``em`` (mirror descent with unit step = the fixed point q ← q̄) or ``gd`` (plain gradient descent on
            the logits, the paper's method).

    Returns:
        (B, K) q (rows sum to 1); rows with no active specialist are exactly p_g.
    """
    if solver not in ("gd", "em"):
        raise ConfigError(f"scheme.params.solver must be 'gd' or 'em', got '{solver}'")
    p_g = p_g.double()
    p_s = [p.double() for p in p_s]
    k = p_g.shape[1]
    masks = torch.zeros(len(p_s), k, dtype=torch.bool, device=p_g.device)
    for m, s in enumerate(subsets):
        masks[m, s] = True
    q = p_g.clone()
    if active.numel() == 0 or not bool(active.any()):
        return q.float()
    z = torch.log(p_g.clamp_min(1e-12))
    for _ in range(steps):
        target = _mixture_target(q, p_g, p_s, masks, active)
        if solver == "em":
            q = target
        else:
            z = z - lr * (q - target)
            q = torch.softmax(z, dim=1)
    return q.float()


# ------------------------------------------------------------------------------------------------- models


class Specialist(nn.Module):
    """A network with |S| + 1 outputs (subset classes, dustbin last) and the dustbin logit correction.

    ``forward(x)`` -> (B, |S| + 1) corrected logits.
    """

    def __init__(self, net: nn.Module, subset: Sequence[int], dustbin_offset: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("subset", torch.tensor(list(subset), dtype=torch.long))
        self.register_buffer("dustbin_offset", torch.tensor(float(dustbin_offset)))

    def forward(self, x: Tensor) -> Tensor:
        z = logits_of(self.net(x))
        return torch.cat([z[:, :-1], z[:, -1:] + self.dustbin_offset], dim=1)


def specialist_from_generalist(generalist: nn.Module, subset: Sequence[int]) -> nn.Module:
    """A copy of ``generalist`` whose final linear ``fc`` has |S| + 1 outputs, initialised from the generalist's
    rows of S and, for the dustbin, the mean of the other rows (bias: their log-sum-exp, so the dustbin starts with
    the generalist's total probability of the other classes)."""
    net = copy.deepcopy(generalist)
    fc = getattr(net, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise ConfigError(f"scheme 'specialists': the generalist ({type(generalist).__name__}) has no final linear "
                          f"layer `fc` to resize; use a kdkit zoo model or set scheme.params.specialist")
    s = torch.tensor(list(subset))
    rest = torch.tensor([c for c in range(fc.out_features) if c not in set(subset)])
    new = nn.Linear(fc.in_features, len(subset) + 1, bias=True)
    with torch.no_grad():
        new.weight[:-1] = fc.weight[s]
        new.weight[-1] = fc.weight[rest].mean(0)
        b = fc.bias if fc.bias is not None else torch.zeros(fc.out_features)
        new.bias[:-1] = b[s]
        new.bias[-1] = torch.logsumexp(b[rest], 0)
    net.fc = new
    return net.requires_grad_(True).train()


def _predict(model: nn.Module, images: Tensor, augment: Any, batch_size: int = 512) -> Tensor:
    """(N, K) probabilities of ``model`` on un-augmented, normalised ``images``."""
    out = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            idx = torch.arange(i, min(i + batch_size, images.shape[0]))
            x = augment.as_eval()(images[idx], idx, 0) if hasattr(augment, "as_eval") else augment(images[idx], idx, 0)
            out.append(torch.softmax(logits_of(model(x)).float(), 1))
    return torch.cat(out)


def train_specialist(net: nn.Module, data: Any, subset: Sequence[int], epochs: int, lr: float, batch_size: int,
                     seed: int) -> float:
    """Train ``net`` (|S| + 1 outputs) on ``data.train`` enriched in ``subset``; returns log(n_rest / n_subset).

    Each epoch: every sample of the subset (label = its position in the subset) plus an equal number drawn at random
    from the other classes (label = dustbin), shuffled, augmented with the run's augmentation.
    """
    targets = data.train.targets
    s = torch.tensor(list(subset))
    in_s = torch.isin(targets, s)
    idx_s, idx_r = in_s.nonzero().squeeze(1), (~in_s & (targets >= 0)).nonzero().squeeze(1)
    if idx_s.numel() == 0 or idx_r.numel() == 0:
        raise ConfigError(f"scheme 'specialists': subset {list(subset)} has no training samples (or covers all)")
    remap = torch.full((int(targets.max()) + 1,), len(subset), dtype=torch.long)
    remap[s] = torch.arange(len(subset))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for epoch in range(epochs):
        rest = idx_r[torch.randperm(idx_r.numel(), generator=g)[: idx_s.numel()]]
        order = torch.cat([idx_s, rest])[torch.randperm(idx_s.numel() + rest.numel(), generator=g)]
        for i in range(0, order.numel(), batch_size):
            b = order[i: i + batch_size]
            x = data.augment(data.train.images[b], b, epoch)
            loss = F.cross_entropy(logits_of(net(x)), remap[targets[b]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return math.log(idx_r.numel() / idx_s.numel())


# ------------------------------------------------------------------------------------------------- scheme


class SpecialistTeacher(nn.Module):
    """Generalist + frozen specialists as a :class:`~kdkit.types.TeacherSource`: the signal for logit terms is the
    target ``log q``; ``each`` is the generalist's own output (with its taps); ``logs`` carries
    ``active_specialists`` (mean number active per sample)."""

    has_features = True

    def __init__(self, generalist: FrozenTeacher, specialists: list[Specialist], top_n: int, steps: int, lr: float,
                 solver: str) -> None:
        super().__init__()
        self.generalist = generalist
        self.specialists = nn.ModuleList(freeze(s) for s in specialists)
        self.top_n, self.steps, self.lr, self.solver = int(top_n), int(steps), float(lr), solver

    @property
    def models(self) -> list[nn.Module]:
        return [self.generalist.model]

    def train(self, mode: bool = True) -> SpecialistTeacher:  # noqa: ARG002 - always frozen
        self.training = False
        self.generalist.train()
        for s in self.specialists:
            s.eval()
        return self

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[ModelOutput, ModelOutput, Tensor]:
        """Returns (target as logits log q, the generalist's own output, (B, M) active mask)."""
        g = self.generalist(x)
        p_g = torch.softmax(g.logits.float(), 1)
        if not len(self.specialists):
            return g, g, torch.zeros(x.shape[0], 0, dtype=torch.bool, device=x.device)
        top = p_g.topk(min(self.top_n, p_g.shape[1]), dim=1).indices  # (B, n)
        subsets = [s.subset for s in self.specialists]
        active = torch.stack([torch.isin(top, sub).any(1) for sub in subsets], dim=1)  # (B, M)
        p_s = [torch.softmax(s(x).float(), 1) for s in self.specialists]
        q = specialist_target(p_g, p_s, subsets, active, self.steps, self.lr, self.solver)
        return ModelOutput(logits=torch.log(q.clamp_min(1e-12)), features=g.features), g, active

    def outputs(self, batch: Batch) -> TeacherSignal:
        target, g, active = self(batch["input"])
        n_active = active.float().sum(1).mean() if active.numel() else target.logits.new_zeros(())
        return TeacherSignal(target, [g], logs={"active_specialists": n_active})


@SCHEMES.register("specialists", description="generalist + specialists on confusable class subsets (Hinton 2015); "
                                            "the target q minimises KL(p_g‖q) + Σ KL(p_m‖q)")
class SpecialistsScheme(Scheme):
    """``teachers[0]`` is the trained generalist; specialists are derived, trained and cached when the scheme is
    built.

    ``scheme.params``: ``num_specialists`` (2), ``subset_size`` (3), ``top_n`` (classes of the generalist that
    activate specialists, 3), ``specialist_epochs`` (3), ``specialist_lr`` (1e-3, AdamW), ``solver`` (``em`` |
    ``gd``), ``solver_steps`` (20), ``solver_lr`` (1.0, ``gd`` only), ``teacher_inputs`` as for ``offline``.
    Logged: the recipe's terms and ``active_specialists`` (mean number active per sample; not part of the loss).
    """

    name = "specialists"

    def __init__(self, student: nn.Module, generalist: nn.Module, specialists: list[Specialist], terms: list,
                 ctx: BuildContext, top_n: int = 3, solver: str = "em", solver_steps: int = 20,
                 solver_lr: float = 1.0) -> None:
        self.module = DistillModule(student, terms, ctx.setup_context(student, [generalist]))
        taps = self.module.teacher_taps.get(0, [])  # the generalist is the only teacher model (index 0)
        self.teacher = SpecialistTeacher(FrozenTeacher(generalist, taps), specialists, top_n, solver_steps, solver_lr,
                                         solver)

    @classmethod
    def build(cls, ctx: BuildContext, num_specialists: int = 2, subset_size: int = 3, top_n: int = 3,
              specialist_epochs: int = 3, specialist_lr: float = 1e-3, solver: str = "em", solver_steps: int = 20,
              solver_lr: float = 1.0, teacher_inputs: str | list | None = "auto") -> SpecialistsScheme:
        r = ctx.recipe
        if len(r.teachers) != 1:
            raise ConfigError(f"scheme 'specialists' takes the generalist as its one teacher; the recipe has "
                              f"{len(r.teachers)}")
        data = ctx.data
        if data is None:
            raise ConfigError("scheme 'specialists' needs the training data (build it with kdkit.builder.build_scheme)")
        if data.streamed:  # finding and training the specialists indexes data.train.images, held in memory
            raise ConfigError(f"scheme 'specialists' needs its training images in memory, but data '{r.data.name}' is "
                              f"streamed (data.params.stream: true); set stream: false if the set fits in memory, or "
                              f"use scheme 'offline' with several teachers")
        if solver not in ("gd", "em"):
            raise ConfigError(f"scheme.params.solver must be 'gd' or 'em', got '{solver}'")
        student = ctx.make_model(r.student)
        generalist = ctx.make_teachers(teacher_inputs)[0]
        specialists = _specialists(ctx, data, generalist, num_specialists, subset_size, specialist_epochs,
                                   specialist_lr)
        return cls(student, generalist, specialists, ctx.make_terms(r.terms), ctx, top_n, solver, solver_steps,
                   solver_lr)

    def trainable(self) -> nn.Module:
        return self.module

    def to(self, device: torch.device) -> SpecialistsScheme:
        self.teacher.to(device)
        return self

    def step(self, model: nn.Module, batch: Batch, state: TrainState) -> StepOutput:
        return model(batch, self.teacher.outputs(batch), state)

    def eval_models(self) -> dict[str, nn.Module]:
        return {"student": self.module.student}


def _specialists(ctx: BuildContext, data: Any, generalist: nn.Module, num: int, size: int, epochs: int, lr: float
                 ) -> list[Specialist]:
    """Find the subsets, then train the specialists or load them from ``RUN/specialists/`` when cached there."""
    r = ctx.recipe
    generalist.eval()
    probs = _predict(generalist, data.train.images, data.augment)
    conf = soft_confusion(probs, data.train.targets, ctx.num_classes)
    subsets = confusable_subsets(conf, num, size)
    cache = Path(r.run_dir) / "specialists"
    key = {"subsets": subsets, "epochs": epochs, "lr": lr, "teacher": r.teachers[0].model_dump(mode="json"),
           "seed": r.seed}
    manifest = cache / "specialists.json"
    cached = json.loads(manifest.read_text()) if manifest.is_file() else None
    out: list[Specialist] = []
    for m, subset in enumerate(subsets):
        net = specialist_from_generalist(generalist, subset)
        path = cache / f"specialist{m}.safetensors"
        if cached is not None and cached.get("key") == key and path.is_file():
            spec = Specialist(net, subset)
            load_weights(spec, path)
        else:
            offset = train_specialist(net, data, subset, epochs, lr, r.data.batch_size, r.seed + 7 * m + 1)
            spec = Specialist(net, subset, offset)
            save_weights(spec, path)
        out.append(spec)
    atomic_write_json(manifest, {"key": key, "subsets": subsets, "confusion": conf.tolist()})
    return out


__all__ = ["Specialist", "SpecialistTeacher", "SpecialistsScheme", "confusable_subsets", "project_to_specialist",
           "soft_confusion", "specialist_from_generalist", "specialist_objective", "specialist_target",
           "train_specialist"]
