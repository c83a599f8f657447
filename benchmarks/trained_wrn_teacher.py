"""A *trained-like* wrn_40_2 teacher for the wrn_40_2 → wrn_16_2 speed row of benchmarks/step_speed.py (issue 15).

An untrained wrn_40_2's logits are nearly tied on any input, so bf16 rounding flips the argmax of a few percent of a
batch and the teacher policy (rightly) refuses bf16. A trained teacher has margins. No trained wrn_40_2 ships here and a
CIFAR run is out of reach on this CPU, so this script trains one for a few hundred steps on real images: Fashion-MNIST
(Debian's dataset-fashion-mnist) padded from 28×28 to 32×32 and repeated to 3 channels, the CIFAR input shape, 10
classes. It trains in bf16 autocast with channels-last (the mode kdkit's student policy picks for this network on an
AVX-512 BF16 CPU; the speed rows measure every mode anyway), then reports the test top-1 on 1,000 official test images,
the median top-1 − top-2 logit margin, and the argmax agreement of the bf16 forward with the fp32 one. The weights go
to ``--out`` with kdkit metadata, so ``step_speed.py --pairs wrn_40_2-wrn_16_2 --teacher-weights FILE --fashion``
measures the row with this teacher and real images.

    .venv/bin/python benchmarks/trained_wrn_teacher.py --steps 300 --out runs/wrn_40_2_fashion.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdkit.data.sources import fashion_mnist  # noqa: E402
from kdkit.models import create_model  # noqa: E402
from kdkit.utils import cpu_info  # noqa: E402
from kdkit.weights import write_weights  # noqa: E402

# Fashion-MNIST's pixel mean and std on the 0-1 scale (the 60,000 training images)
MEAN, STD = 0.2860, 0.3530


def fashion_32x3(split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images as CIFAR-shaped inputs: (N, 3, 32, 32) float32, normalised, zero-padded by 2 pixels (the
    normalised background value) and repeated to 3 channels; and (N,) int64 labels."""
    data = fashion_mnist(split=split)
    x = torch.as_tensor(data.images[:limit]).float().div_(255.0).sub_(MEAN).div_(STD)
    x = F.pad(x, (2, 2, 2, 2), value=-MEAN / STD).expand(-1, 3, -1, -1).contiguous()
    return x, torch.as_tensor(data.targets[:limit]).long()


def margins(logits: torch.Tensor) -> torch.Tensor:
    top = logits.float().topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/wrn_40_2_fashion.safetensors")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = fashion_32x3("train")
    xt, yt = fashion_32x3("test", 1000)
    model = create_model("wrn_40_2", num_classes=10, in_channels=3, image_size=32).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    losses = []
    model.train()
    for _ in range(args.steps):
        idx = torch.randint(0, len(x), (args.batch,), generator=g)
        xb = x[idx]
        flip = torch.rand(args.batch, generator=g) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(3), xb).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    train_s = time.perf_counter() - t0
    model.eval().to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        z32 = torch.cat([model(xt[i:i + 250]) for i in range(0, len(xt), 250)])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z16 = torch.cat([model(xt[i:i + 250]) for i in range(0, len(xt), 250)]).float()
    out = Path(args.out)
    meta = {"model": {"name": "wrn_40_2", "params": {}}, "num_classes": 10, "in_channels": 3, "image_size": 32,
            "note": f"wrn_40_2 trained {args.steps} steps on Fashion-MNIST padded to 3x32x32 "
                    f"(benchmarks/trained_wrn_teacher.py)"}
    write_weights(model, out, meta)
    print(json.dumps({
        "benchmark": "trained_wrn_teacher", "steps": args.steps, "batch": args.batch, "threads": args.threads,
        "train_seconds": train_s, "loss_first_10": sum(losses[:10]) / len(losses[:10]),
        "loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
        "test_top1_fp32": 100.0 * float((z32.argmax(1) == yt).float().mean()),
        "test_top1_bf16": 100.0 * float((z16.argmax(1) == yt).float().mean()),
        "argmax_agreement_bf16_vs_fp32": float((z16.argmax(1) == z32.argmax(1)).float().mean()),
        "median_margin_fp32": float(margins(z32).median()), "weights": str(out), "cpu": cpu_info()}, indent=2))


if __name__ == "__main__":
    main()
