"""Input pipeline throughput at ImageNet shape: kdkit's streamed image folder vs torchvision's standard pipeline.
Prints JSON.

    .venv/bin/python benchmarks/input_pipeline.py --images 600 --workers 2 --rounds 5

Generates a folder of JPEGs of varied sizes (short side 240-500 px, aspect 3:4 to 16:9, like ImageNet's ~400x350
average; smooth random colour fields plus noise, so they compress like photographs, quality 90) in a temp dir, then
times one pass over it (images/s to a normalised float32 224x224 batch of 64) with the same transforms and the same
number of worker processes:

- ``kdkit``: ``imagefolder:PATH`` with ``stream: true`` -- workers decode + random resized crop + flip (one PIL
  ``resize(box=...)``, after libjpeg ``draft`` scaling when the crop allows); colour jitter and normalisation run on
  the whole batch in the training process (the training device);
- ``kdkit_nodraft``: the same with ``draft: false`` (every JPEG decoded at full size), to show what ``draft`` buys;
- ``torchvision``: ``ImageFolder`` + ``transforms.v2.Compose([RandomResizedCrop(224), RandomHorizontalFlip(),
  ColorJitter(0.4, 0.4, 0.4), ToImage(), ToDtype(float32, scale=True), Normalize])`` + ``DataLoader(batch_size=64,
  shuffle=True, num_workers=W)``, jitter on the PIL image as torchvision's references do;
- ``torchvision_tensor_jitter``: the same with ColorJitter after ToImage (on the uint8 tensor).

Variants run interleaved in each round (order rotated per round) so that machine load hits them alike; the ratio
kdkit / best torchvision variant is computed per round and its median reported. Absolute figures on a shared machine
are noise; the ratio measured side by side is the result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdkit.data import Augment, load_source  # noqa: E402
from kdkit.data.stream import StreamLoader  # noqa: E402
from kdkit.deploy.measure import cpu_info  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics, as both pipelines would be given
SIZE, BATCH, JITTER = 224, 64, 0.4


def make_folder(root: Path, n: int, classes: int = 10, seed: int = 0) -> dict:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = 0
    for i in range(n):
        short = int(rng.integers(240, 501))
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(16 / 9))))
        h, w = (short, int(short * aspect)) if aspect >= 1 else (int(short / aspect), short)
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 13, size=img.shape), 0, 255).astype(np.uint8)
        d = root / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:05d}.jpg", quality=90)
        pixels += h * w
    return {"images": n, "classes": classes, "mean_megapixels": round(pixels / n / 1e6, 3)}


def kdkit_pass(root: Path, workers: int, draft: bool, epoch: int) -> tuple[int, float]:
    data = load_source(f"imagefolder:{root}", stream=True, image_size=SIZE, workers=workers, draft=draft)
    aug = Augment(MEAN, STD, flip=True, seed=0, resized_crop=True, jitter=(JITTER, JITTER, JITTER))
    loader = StreamLoader(data, BATCH, aug, shuffle=True, seed=0, train=True)
    loader.set_epoch(epoch)
    t0, n = time.perf_counter(), 0
    for b in loader:
        n += int(b["input"].shape[0])
    return n, time.perf_counter() - t0


def torchvision_pass(root: Path, workers: int, tensor_jitter: bool, epoch: int) -> tuple[int, float]:
    from torchvision import datasets
    from torchvision.transforms import v2

    jitter = v2.ColorJitter(JITTER, JITTER, JITTER)
    head = [v2.RandomResizedCrop(SIZE, antialias=True), v2.RandomHorizontalFlip()]
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    steps = head + ([v2.ToImage(), jitter] if tensor_jitter else [jitter, v2.ToImage()]) + tail
    ds = datasets.ImageFolder(str(root), transform=v2.Compose(steps))
    torch.manual_seed(epoch)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers)
    t0, n = time.perf_counter(), 0
    for x, _ in loader:
        n += int(x.shape[0])
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training process (both pipelines)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = {
        "kdkit": lambda r, e: kdkit_pass(r, args.workers, True, e),
        "kdkit_nodraft": lambda r, e: kdkit_pass(r, args.workers, False, e),
        "torchvision": lambda r, e: torchvision_pass(r, args.workers, False, e),
        "torchvision_tensor_jitter": lambda r, e: torchvision_pass(r, args.workers, True, e),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "jpegs"
        folder = make_folder(root, args.images)
        names = list(variants)
        variants["kdkit"](root, 0)  # warm the page cache and imports once, untimed
        variants["torchvision"](root, 0)
        rates: dict[str, list[float]] = {k: [] for k in names}
        for r in range(args.rounds):
            for k in names[r % len(names):] + names[: r % len(names)]:
                n, sec = variants[k](root, r + 1)
                rates[k].append(n / sec)
    tv_best = [max(a, b) for a, b in zip(rates["torchvision"], rates["torchvision_tensor_jitter"], strict=True)]
    ratios = [k / t for k, t in zip(rates["kdkit"], tv_best, strict=True)]
    out = {
        "benchmark": "input_pipeline",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "folder": folder,
        "workers": args.workers,
        "batch": BATCH,
        "output": [3, SIZE, SIZE],
        "transforms": f"RandomResizedCrop({SIZE}, scale (0.08, 1), ratio (3/4, 4/3)) + flip + ColorJitter({JITTER}, "
                      f"{JITTER}, {JITTER}) + normalise",
        "images_per_s_median": {k: round(statistics.median(v), 1) for k, v in rates.items()},
        "images_per_s_rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "ratio_kdkit_over_best_torchvision_per_round": [round(x, 3) for x in ratios],
        "ratio_kdkit_over_best_torchvision_median": round(statistics.median(ratios), 3),
        "ratio_kdkit_nodraft_over_best_torchvision_median": round(statistics.median(
            [k / t for k, t in zip(rates["kdkit_nodraft"], tv_best, strict=True)]), 3),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
