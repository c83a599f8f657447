"""Peak memory of a language-model KD step against the student's own training step, at a 32k vocabulary (issue 18).

Each variant runs in a fresh Python process (peak RSS is a per-process high-water mark): build a small GPT-2 student
(and a teacher of the same shape), make one batch of random token ids, run one warm-up step, then measure one step:
``peak RSS during the step - RSS before it``. With V = 32k the (B, T, V) logits dominate: one float32 copy is
B·T·V·4 bytes, and the report states every figure in those units too.

Variants:
  ce             the student's own step: cross-entropy on its logits (the baseline)
  kd_chunked     teacher forward (no grad) + kdkit's token forward KL (chunked, checkpointed) + backward
  kd_naive       the same with an unchunked forward KL written the usual way (log_softmax of both, kl_div)
  kd_chunked_ce  kd_chunked plus kdkit's chunked cross-entropy (the lm_ce term)
  ce_chunked     the student's own step with kdkit's chunked cross-entropy

    .venv/bin/python benchmarks/lm_memory.py                       # B=4, T=256, V=32000
    .venv/bin/python benchmarks/lm_memory.py --batch 2 --block 128 --vocab 32000

Prints one JSON object. Absolute RSS depends on the allocator and the machine; compare the variants' ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
VARIANTS = ("ce", "kd_chunked", "kd_naive", "kd_chunked_ce", "ce_chunked")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(variant: str, batch: int, block: int, vocab: int, layers: int, width: int) -> dict:
    import torch
    import torch.nn.functional as F

    from kdkit.lm.models import build_gpt2
    from kdkit.losses.tokens import forward_kl, token_cross_entropy

    torch.set_num_threads(1)
    torch.manual_seed(0)
    student = build_gpt2("gpt2", vocab, image_size=block, layers=layers, width=width, heads=4, dropout=0.0)
    teacher = build_gpt2("gpt2", vocab, image_size=block, layers=layers, width=width, heads=4, dropout=0.0).eval()
    opt = torch.optim.SGD(student.parameters(), lr=1e-3)
    ids = torch.randint(0, vocab, (batch, block))
    target = torch.randint(0, vocab, (batch * block,))
    mask = torch.ones(batch * block, dtype=torch.bool)

    def step() -> None:
        logits = student(ids)
        if variant == "ce":
            loss = F.cross_entropy(logits, target)
        elif variant == "ce_chunked":
            loss = token_cross_entropy(logits, target)
        else:
            with torch.no_grad():
                t = teacher(ids)
            if variant == "kd_naive":
                loss = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(t, -1), log_target=True,
                                reduction="sum") / logits.shape[0]
            else:
                loss = forward_kl(logits, t, mask)
                if variant == "kd_chunked_ce":
                    loss = loss + token_cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: optimiser state, allocator pools
    opt.zero_grad(set_to_none=True)
    before = _rss()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # ru_maxrss is a lifetime high-water mark: when the warm-up already reached it, the step's own peak is not
    # visible; report that instead of a wrong number.
    return {"variant": variant, "rss_before_mb": before / 2**20, "step_peak_mb": (peak - before) / 2**20,
            "hidden_by_warmup": peak <= peak_before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_child(a.child, a.batch, a.block, a.vocab, a.layers, a.width)))
        return
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    rows = []
    for v in a.variants:
        cmd = [sys.executable, __file__, "--child", v, "--batch", str(a.batch), "--block", str(a.block), "--vocab",
               str(a.vocab), "--layers", str(a.layers), "--width", str(a.width)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    copy_mb = a.batch * a.block * a.vocab * 4 / 2**20
    base = next((r["step_peak_mb"] for r in rows if r["variant"] == "ce"), None)
    for r in rows:
        r["step_peak_in_logit_copies"] = r["step_peak_mb"] / copy_mb
        if base:
            r["vs_ce_step"] = r["step_peak_mb"] / base
    print(json.dumps({"batch": a.batch, "block": a.block, "vocab": a.vocab, "student": f"gpt2 {a.layers}x{a.width}",
                      "one_logit_copy_mb": copy_mb, "machine": platform.machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
