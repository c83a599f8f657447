"""One CRD term step on the CPU: memory-bank scoring, NCE loss, backward into both heads, bank update (issue 17).

A step is what ``CRDTerm.compute`` plus the backward does for one batch: the two ``CRDHead`` forwards (linear +
L2 normalisation) on random features, the negative draw (other classes only), ``crd_loss`` (scores of each anchor
against its 1 + N memory rows in both directions, the NCE loss, the momentum update of both memories) and the
backward into both heads. No optimiser step, no network: the feature extractor's cost is not CRD's.

Cases (the shapes of the runs in docs/benchmarks.md):

* ``fashion``: n_data 60,000, batch 128, N 4,096 negatives, feat 128; student embedding 32-d, teacher 256-d (the 10k
  CNN against the Fashion-MNIST teacher);
* ``cifar``: n_data 50,000, batch 64, N 4,096, feat 128; both embeddings 256-d (CIFAR-100 students);
* ``cifar_n16384``: the same with the published N = 16,384 (not run by default);
* ``tiny``: n_data 2,000, batch 16, N 256, feat 32 (a crash check, what the docs test runs).

Each case builds one bank per variant from the same seed; steps are interleaved (variant order rotated per step) so
that machine load hits the variants alike, and each variant is fed the same batches and the same negatives. The
median ms of ``--steps`` steps (after ``--warmup``) is reported per variant, and the median over steps of the ratio
first variant / variant; the first step's loss and head gradients (relative to the first variant's) show that the
variants compute the same thing.

Variants: ``old`` -- the code before the gather path (kept here verbatim: scores against all n_data rows, autograd's
dense backward, out-of-place bank update); ``auto`` -- ``crd_loss`` now (each evaluation picked by computed cost);
``gather`` / ``full`` -- ``crd_loss`` with ``MemoryBank.scoring`` forced.

    .venv/bin/python benchmarks/crd_step.py --threads 1 --steps 20
    .venv/bin/python benchmarks/crd_step.py --threads 1 --steps 7 --cases tiny --crossover   # the cost constants

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdkit.deploy.measure import cpu_info  # noqa: E402
from kdkit.losses.contrastive import CRDHead, MemoryBank, _logits, _weighted_rows, crd_loss, crd_nce_loss  # noqa: E402

CASES = {
    "fashion": {"n_data": 60000, "batch": 128, "n_neg": 4096, "feat": 128, "dim_s": 32, "dim_t": 256, "classes": 10},
    "cifar": {"n_data": 50000, "batch": 64, "n_neg": 4096, "feat": 128, "dim_s": 256, "dim_t": 256, "classes": 100},
    "cifar_n16384": {"n_data": 50000, "batch": 64, "n_neg": 16384, "feat": 128, "dim_s": 256, "dim_t": 256,
                     "classes": 100},
    "tiny": {"n_data": 2000, "batch": 16, "n_neg": 256, "feat": 32, "dim_s": 16, "dim_t": 24, "classes": 10},
}
# variant -> MemoryBank.scoring; "old" is the code before this benchmark's change, copied below
VARIANTS = {"old": None, "auto": "auto", "gather": "gather", "full": "full"}


def old_crd_loss(embed_s, embed_t, index, bank: MemoryBank, n_neg: int, generator) -> torch.Tensor:
    """``crd_loss`` as it was before the gather path (kdkit 479aff9), kept to time it side by side: scores against the
    whole memory by one (B, n_data) matmul then gathered (autograd's backward: a dense (B, n_data) gradient, a second
    matmul), the NCE loss through autograd, and an out-of-place bank update (a fresh copy of each memory)."""
    import torch.nn.functional as F

    def scores(anchor, memory, idx):
        mem = memory.detach()
        if idx.shape[1] * mem.shape[1] < mem.shape[0]:
            logits = torch.bmm(mem[idx], anchor[:, :, None]).squeeze(2)
        else:
            logits = (anchor @ mem.t()).gather(1, idx)
        return torch.exp(logits / bank.temperature)

    idx = bank.sample_indices(index, n_neg, generator)
    out_s = scores(embed_s.float(), bank.memory_t, idx)
    out_t = scores(embed_t.float(), bank.memory_s, idx)
    with torch.no_grad():
        if float(bank.z_s) < 0:
            bank.z_s.fill_(float(out_s.mean()) * bank.n_data)
        if float(bank.z_t) < 0:
            bank.z_t.fill_(float(out_t.mean()) * bank.n_data)
    loss = crd_nce_loss(out_s / bank.z_s, bank.n_data) + crd_nce_loss(out_t / bank.z_t, bank.n_data)
    with torch.no_grad():
        for name, v in (("memory_s", embed_s), ("memory_t", embed_t)):
            mem = getattr(bank, name)
            rows = mem[index] * bank.momentum + v.detach().to(mem.dtype) * (1.0 - bank.momentum)
            setattr(bank, name, mem.index_copy(0, index, F.normalize(rows, p=2, dim=1)))
    return loss


def run_case(name: str, steps: int, warmup: int, variants: list[str]) -> dict:
    c = CASES[name]
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, c["classes"], (c["n_data"],), generator=gen)
    setups = {}
    for v in variants:
        torch.manual_seed(1)
        bank = MemoryBank(c["n_data"], c["feat"], labels=labels, generator=torch.Generator().manual_seed(2))
        bank.scoring = VARIANTS[v] or "auto"
        setups[v] = (bank, CRDHead(c["dim_s"], c["feat"]), CRDHead(c["dim_t"], c["feat"]))
    times: dict[str, list[float]] = {v: [] for v in variants}
    first_loss: dict[str, float] = {}
    grads: dict[str, torch.Tensor] = {}
    for step in range(warmup + steps):
        index = torch.randperm(c["n_data"], generator=gen)[:c["batch"]]
        fs = torch.randn(c["batch"], c["dim_s"], generator=gen)
        ft = torch.randn(c["batch"], c["dim_t"], generator=gen)
        neg_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        order = variants[step % len(variants):] + variants[:step % len(variants)]
        for v in order:
            bank, head_s, head_t = setups[v]
            head_s.zero_grad(set_to_none=True)
            head_t.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            step_loss = old_crd_loss if v == "old" else crd_loss
            loss = step_loss(head_s(fs), head_t(ft), index, bank, c["n_neg"], torch.Generator().manual_seed(neg_seed))
            loss.backward()
            dt = time.perf_counter() - t0
            if step == 0:
                first_loss[v] = float(loss.detach())
                grads[v] = torch.cat([p.grad.flatten() for p in (*head_s.parameters(), *head_t.parameters())])
            if step >= warmup:
                times[v].append(dt * 1e3)
    base = variants[0]
    out = {"shape": c, "ms_per_step_median": {v: round(statistics.median(t), 2) for v, t in times.items()},
           "ms_per_step_min": {v: round(min(t), 2) for v, t in times.items()},
           "first_step_loss": first_loss, "paths_auto": dict(zip(("scores", "gradient"),
                                                                    setups[variants[0]][0].paths(c["n_neg"] + 1),
                                                                    strict=True)),
           # the first step's head gradients against the baseline's: max |difference| / max |baseline|
           "first_step_grad_rel_diff": {v: float((grads[v] - grads[variants[0]]).abs().max()
                                                 / grads[variants[0]].abs().max()) for v in variants[1:]}}
    if len(variants) > 1:
        out["speedup_vs_" + base] = {v: round(statistics.median(b / t for b, t in zip(times[base], times[v],
                                                                                          strict=True)), 3)
                                     for v in variants[1:]}
    return out


# (n_data, B, 1 + N) for --crossover: around the cost rule's boundaries (feat 128)
CROSSOVER = [(20000, 128, 4097), (50000, 64, 4097), (60000, 128, 4097), (50000, 64, 16385), (200000, 128, 4097)]


def crossover(reps: int) -> list[dict]:
    """Each of the two evaluations alone, both ways (median ms of ``reps`` after one warm-up call): the scores
    (``_logits``) and the anchors' gradient (``_weighted_rows``), and the cost constant each measurement implies:
    C = (n_data / (1 + N)) · t_gather / t_full (the gather is cheaper when C·(1+N) < n_data)."""
    rows = []
    for n, b, k in CROSSOVER:
        gen = torch.Generator().manual_seed(0)
        mem = torch.nn.functional.normalize(torch.randn(n, 128, generator=gen), dim=1)
        a = torch.randn(b, 128, generator=gen)
        idx = torch.randint(0, n, (b, k), generator=gen)
        w = torch.randn(b, k, generator=gen)
        ws: list[torch.Tensor] = []
        calls = {"scores_gather": partial(_logits, a, mem, idx, "gather"),
                 "scores_full": partial(_logits, a, mem, idx, "full", ws),
                 "gradient_gather": partial(_weighted_rows, mem, idx, w, "gather"),
                 "gradient_full": partial(_weighted_rows, mem, idx, w, "full", ws)}
        ms = {}
        for name, f in calls.items():
            f()
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                f()
                ts.append((time.perf_counter() - t0) * 1e3)
            ms[name] = round(statistics.median(ts), 2)
        bank = MemoryBank(n, 4)
        rows.append({"n_data": n, "batch": b, "cols": k, "ms": ms,
                     "implied_C": {p: round(n / k * ms[f"{p}_gather"] / ms[f"{p}_full"], 1)
                                   for p in ("scores", "gradient")},
                     "auto_picks": dict(zip(("scores", "gradient"), bank.paths(k), strict=True))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: what the training benchmarks use)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant and case")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--cases", nargs="+", default=["fashion", "cifar"], choices=sorted(CASES))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="the first is the baseline of the speed-up")
    ap.add_argument("--crossover", action="store_true",
                    help="also time the scores and the gradient alone, gather vs full, at shapes around the cost "
                         "rule's boundaries (--steps repetitions each)")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--steps and --threads must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    cpu_before = cpu_info()
    cases = {name: run_case(name, args.steps, args.warmup, args.variants) for name in args.cases}
    extra = {"crossover": crossover(args.steps)} if args.crossover else {}
    print(json.dumps({"benchmark": "crd_step", "started": started, "threads": args.threads, "steps": args.steps,
                      "warmup": args.warmup, "torch": torch.__version__, "cpu": cpu_before,
                      "load_average_after": cpu_info()["load_average"], "cases": cases, **extra}, indent=1))


if __name__ == "__main__":
    main()
