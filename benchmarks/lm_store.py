"""Token logit store: bytes per token, the loss bias of stored top-k against full teacher logits, and the speed of a
store-fed KD step against an online one (issue 18).

Needs the LM demo's teacher and a student (benchmarks/lm_distill.py makes them, in runs/lm/). The store is written
for the held-out blocks (fast; the same code writes the training split). Bias: the mean token divergence of the student
from the teacher, computed from full teacher logits, from the store's rebuilt logits (top-k exact, tail spread
evenly; what TokenStoreTeacher feeds the dense terms) and from the sparse k + 1 coarsening
(``sparse_token_divergence``). The sampled store (``--samples``: n importance-sampled ids per token, random-sampling
KD) is measured the same way over ``--draws`` independent draws: the mean of its forward-KL estimate (bias: ~0 by
construction), the spread of that whole-split estimate across draws, and the per-token error against the full-logit
KL per token (rms; the top-k store's per-token error is given beside it: bias without variance). Speed: one KD step
(forward KL, AdamW) with the teacher run online vs read from the store (plain and zlib-compressed), alternating step
by step so that load hits all alike; medians of thread CPU time.

    .venv/bin/python benchmarks/lm_store.py --student runs/lm/lee_scratch-seed0 --k 8 32 --samples 8 24 --steps 10

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdkit.lm.data import load_lm_split  # noqa: E402
from kdkit.lm.models import build_causal_lm  # noqa: E402
from kdkit.lm.store import sample_tokens, write_token_store  # noqa: E402
from kdkit.losses import tokens as tl  # noqa: E402
from kdkit.models.factory import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="runs/lm/teacher_hf")
    ap.add_argument("--student", default="runs/lm/lee_scratch-seed0")
    ap.add_argument("--k", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--samples", nargs="+", type=int, default=[8, 24], help="sampled-store draws per token")
    ap.add_argument("--draws", type=int, default=4, help="independent sampled stores per n (bias and spread)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(1)
    student, meta = load_model(a.student)
    params = meta["data"]["params"]
    train, val, _ = load_lm_split(meta["data"]["name"], params["tokenizer"], int(params["block"]),
                                  meta["data"]["val_fraction"], meta["data"]["split_seed"])
    teacher = build_causal_lm(a.teacher, val.vocab_size, image_size=val.block).eval()
    student.eval()
    with torch.no_grad():
        t_logits = torch.cat([teacher(val.blocks[i : i + 32, :-1]) for i in range(0, len(val), 32)])
        s_logits = torch.cat([student(val.blocks[i : i + 32, :-1]) for i in range(0, len(val), 32)])
    full = {kind: float(tl.token_divergence(s_logits, t_logits, kind=kind)) for kind in
            ("forward_kl", "reverse_kl", "generalized_jsd")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in a.k:
            store = write_token_store(teacher, val, Path(tmp) / f"k{k}", k=k)
            idx = torch.arange(len(val))
            rebuilt = store.teacher_logits(idx)
            lp, ids, tail = store.lookup(idx)
            packed = write_token_store(teacher, val, Path(tmp) / f"k{k}z", k=k, compress=True)
            row = {"k": k, "bytes_per_token": store.bytes_per_token,
                   "compressed_bytes_per_token": packed.bytes_per_token}
            for kind, ref in full.items():
                dense = float(tl.token_divergence(s_logits, rebuilt, kind=kind))
                sparse = float(tl.sparse_token_divergence(s_logits, lp, ids, tail.float().exp(), kind=kind))
                row[kind] = {"full": ref, "store_rebuilt": dense, "store_sparse": sparse,
                             "rebuilt_rel_bias": dense / ref - 1, "sparse_rel_bias": sparse / ref - 1}
            rows.append(row)
        # per-token forward KL from full logits, and the top-k (rebuilt) store's per-token error: bias, no variance
        log_p = torch.log_softmax(t_logits.float(), -1)
        log_q = torch.log_softmax(s_logits.float(), -1)
        kl_tok = tl.divergence_from_log_probs("forward_kl", log_p, log_q)
        for row in rows:
            store_k = write_token_store(teacher, val, Path(tmp) / f"k{row['k']}", k=row["k"])
            rebuilt_tok = tl.divergence_from_log_probs(
                "forward_kl", torch.log_softmax(store_k.teacher_logits(torch.arange(len(val))), -1), log_q)
            err = rebuilt_tok - kl_tok
            row["forward_kl"]["rebuilt_token_error"] = {"mean": float(err.mean()),
                                                        "rms": float(err.pow(2).mean().sqrt())}
        sampled_rows = []
        for n in a.samples:
            store_s = write_token_store(teacher, val, Path(tmp) / f"s{n}", k=n, sample=True)
            estimates, token_err = [], []
            for d in range(a.draws):
                ids, ratio, ent = sample_tokens(log_p, n, 1.0, torch.Generator().manual_seed(d))
                # per token: -H - (1/n) sum_j ratio_j log q(x_j), with the store's fp16 rounding of ratio and H
                est_tok = -ent.half().float() - (ratio.half().float() * log_q.gather(-1, ids)).sum(-1) / n
                estimates.append(float(est_tok.mean()))
                token_err.append(est_tok - kl_tok)
            errs = torch.stack(token_err)
            mean_est = statistics.mean(estimates)
            sampled_rows.append({
                "samples": n, "bytes_per_token": store_s.bytes_per_token, "draws": a.draws,
                "forward_kl": {"full": full["forward_kl"], "sampled_mean": mean_est,
                               "sampled_rel_bias": mean_est / full["forward_kl"] - 1,
                               "sampled_std_across_draws": statistics.stdev(estimates) if a.draws > 1 else 0.0,
                               "token_error": {"mean": float(errs.mean()), "rms": float(errs.pow(2).mean().sqrt())}}})
        # speed: online teacher forward vs store lookup, one KD step each, alternating
        sub = train.subset(torch.arange(min(len(train), 8 * a.batch)))
        big = write_token_store(teacher, sub, Path(tmp) / "train", k=max(a.k))
        bigz = write_token_store(teacher, sub, Path(tmp) / "trainz", k=max(a.k), compress=True)
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        student.train()
        times: dict[str, list[float]] = {"online": [], "store": [], "store_compressed": []}
        g = torch.Generator().manual_seed(0)
        for step in range(a.steps + 1):
            pos = torch.randperm(len(big), generator=g)[: a.batch]
            ids_in = train.blocks[pos, :-1]
            for mode in ("online", "store", "store_compressed"):
                t0 = time.thread_time()
                if mode == "online":
                    with torch.no_grad():
                        t = teacher(ids_in)
                else:
                    t = (big if mode == "store" else bigz).teacher_logits(pos)
                loss = tl.forward_kl(student(ids_in), t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if step:  # the first step warms up
                    times[mode].append(time.thread_time() - t0)
    speed = {m: statistics.median(v) for m, v in times.items()}
    print(json.dumps({"val_tokens": val.tokens, "vocab": val.vocab_size, "rows": rows, "sampled": sampled_rows,
                      "step_seconds_median": speed, "store_vs_online": speed["store"] / speed["online"],
                      "compressed_store_vs_online": speed["store_compressed"] / speed["online"],
                      "tokens_per_s": {m: a.batch * val.block / v for m, v in speed.items()}}, indent=1))


if __name__ == "__main__":
    main()
