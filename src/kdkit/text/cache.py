"""Teacher feature cache: run a frozen text teacher once, serve its logits *and* tapped features from disk afterwards.

TinyBERT-style terms read the teacher's embeddings, hidden states and attention maps, so the logits-only soft-label
store cannot replace the teacher forward. Text has no augmentation, so a frozen teacher's outputs for a sentence
are a pure function of its token ids: :func:`build_feature_cache` runs the teacher over a dataset once and stores,
per sentence, the logits and every requested module output trimmed to the real tokens (float16 for features,
float32 for logits). A teacher built with ``hf:PATH`` and ``feature_cache: FILE`` then answers any eval-mode,
no-grad forward whose sentences are all in the cache without running the network: it assembles the batch, zero at
padded positions (the text terms mask padding), and feeds the taps of the requested paths. A batch with an unknown
sentence, or a tap on a path the cache does not hold, runs the real forward, so the cache can never change what is
computed -- only how fast. On first use the cache checks itself against one real forward (same logits within
1e-3), which catches a cache built from other weights.

Sizes: a sentence of l tokens costs 2·l·D bytes per hidden-state path and 2·H·l² bytes per attention path
(MiniLM-L6, l = 27: 21 KB per hidden path, 17 KB per attention path).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdkit.errors import CheckpointError, ConfigError
from kdkit.taps import FeatureTap
from kdkit.text.batches import TextBatchLoader

CACHE_FORMAT = "kdkit-text-feature-cache/1"


def _key(row: Tensor) -> bytes:
    return row.to(torch.int32).numpy().tobytes()


@torch.no_grad()
def build_feature_cache(model: nn.Module, data: Any, paths: Sequence[str], out: str | os.PathLike,
                        batch_size: int = 64, dtype: torch.dtype = torch.float16) -> Path:
    """Run ``model`` (a kdkit text model, put in eval mode) over every sentence of ``data`` and save its outputs.

    Args:
        model: the teacher (``hf:`` or ``textnn:``), with its trained weights.
        data: a :class:`kdkit.text.batches.TextData` (e.g. ``RunData.train``).
        paths: module paths to store (see :meth:`HFTextClassifier.text_layout`); outputs must be (B, L, D) or
            (B, H, L, L).
        out: the ``.safetensors`` file to write (atomically).
        batch_size: sentences per forward.
        dtype: storage type of the features.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    paths = list(dict.fromkeys(paths))
    was = model.training
    model.eval()
    pad = int(data.pad_token_id)
    loader = TextBatchLoader(data, None, batch_size, shuffle=False, seed=0)
    n = len(data)
    logits_all: Tensor | None = None
    chunks: dict[str, list[Tensor]] = {p: [] for p in paths}
    sizes: dict[str, list[int]] = {p: [] for p in paths}
    order: list[int] = []
    try:
        with FeatureTap(model, paths, detach=True, role="teacher") as tap:
            for batch in loader:
                ids = batch["input"]
                logits = model(ids).float()
                feats = tap.pop()
                if logits_all is None:
                    logits_all = torch.zeros(n, logits.shape[-1])
                logits_all[batch["index"]] = logits
                lens = (ids != pad).sum(1).tolist()
                for j, length in enumerate(lens):
                    order.append(int(batch["index"][j]))
                    for p in paths:
                        f = feats[p][j]
                        if f.dim() == 2:  # (L, D)
                            piece = f[:length]
                        elif f.dim() == 3:  # (H, L, L)
                            piece = f[:, :length, :length]
                        else:
                            raise ConfigError(f"feature cache: '{p}' gives {tuple(feats[p].shape)}; only (B, L, D) "
                                              f"and (B, H, L, L) outputs can be cached")
                        chunks[p].append(piece.reshape(-1).to(dtype))
                        sizes[p].append(piece.numel())
    finally:
        model.train(was)
    assert logits_all is not None
    # Re-order rows to dataset order so that row i is sentence i.
    inv = {s: k for k, s in enumerate(order)}
    tensors: dict[str, Tensor] = {"logits": logits_all.contiguous(), "ids": data.ids.to(torch.int32).contiguous(),
                                  "offsets": data.offsets.to(torch.int64).contiguous()}
    meta: dict[str, Any] = {"format": CACHE_FORMAT, "paths": paths, "pad_token_id": pad, "shapes": {}}
    for k, p in enumerate(paths):
        rows = [chunks[p][inv[i]] for i in range(n)]
        offs = torch.zeros(n + 1, dtype=torch.int64)
        offs[1:] = torch.cumsum(torch.tensor([r.numel() for r in rows], dtype=torch.int64), 0)
        tensors[f"f{k}"] = torch.cat(rows).contiguous()
        tensors[f"o{k}"] = offs
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    meta["kinds"] = [_kind_of(model, p) for p in paths]
    save_file(tensors, str(tmp), metadata={"kdkit": json.dumps(meta)})
    os.replace(tmp, out)
    return out


def _kind_of(model: nn.Module, path: str) -> str:
    """``hidden`` ((L, D) per sentence) or ``attention`` ((H, L, L)), from the model's text layout."""
    layout = model.text_layout() if hasattr(model, "text_layout") else None
    if layout is not None:
        att = (layout.attention_scores or []) + (layout.attention_probs or [])
        if path in att:
            return "attention"
    return "hidden"


class FeatureCache:
    """A cache file written by :func:`build_feature_cache`, answering batches of token ids.

    Args:
        path: the ``.safetensors`` cache file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        self.path = Path(os.path.expanduser(str(path)))
        if not self.path.is_file():
            raise CheckpointError(f"feature cache '{self.path}' not found; build it with "
                                  f"kdkit.text.cache.build_feature_cache")
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("kdkit", "{}"))
            t = load_file(str(self.path))
        except Exception as err:  # noqa: BLE001 - safetensors raises several error types
            raise CheckpointError(f"feature cache '{self.path}' is not readable ({err})") from None
        if meta.get("format") != CACHE_FORMAT:
            raise CheckpointError(f"'{self.path}' is not a kdkit text feature cache")
        self.paths: list[str] = list(meta["paths"])
        self.kinds: list[str] = list(meta["kinds"])
        self.pad_token_id = int(meta["pad_token_id"])
        self.logits = t["logits"]
        ids, offs = t["ids"], t["offsets"]
        self.index = {_key(ids[int(offs[i]) : int(offs[i + 1])]): i for i in range(offs.numel() - 1)}
        self.feats = [t[f"f{k}"] for k in range(len(self.paths))]
        self.offs = [t[f"o{k}"] for k in range(len(self.paths))]
        self.lengths = (offs[1:] - offs[:-1]).tolist()  # tokens per sentence
        self.verified = False
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, input_ids: Tensor) -> list[int] | None:
        """Cache rows of the sentences in ``input_ids`` (B, L), or None if any is missing."""
        lens = (input_ids != self.pad_token_id).sum(1).tolist()
        out = []
        cpu = input_ids.detach().cpu()
        for j, length in enumerate(lens):
            r = self.index.get(_key(cpu[j, :length]))
            if r is None:
                return None
            out.append(r)
        return out

    def assemble(self, rows: list[int], width: int, path_idx: int, device: torch.device) -> Tensor:
        """(B, L, D) or (B, H, L, L) float32 features of ``rows`` padded with zeros to ``width`` tokens."""
        flat, offs, kind = self.feats[path_idx], self.offs[path_idx], self.kinds[path_idx]
        pieces = [flat[int(offs[r]) : int(offs[r + 1])] for r in rows]
        if kind == "attention":
            # numel = H·l²; l from the row's token count.
            out = None
            for j, (r, piece) in enumerate(zip(rows, pieces, strict=True)):
                length = self.lengths[r]
                h = piece.numel() // (length * length)
                if out is None:
                    out = torch.zeros(len(rows), h, width, width)
                out[j, :, :length, :length] = piece.view(h, length, length).float()
            assert out is not None
            return out.to(device)
        out2 = None
        for j, (r, piece) in enumerate(zip(rows, pieces, strict=True)):
            length = self.lengths[r]
            d = piece.numel() // length
            if out2 is None:
                out2 = torch.zeros(len(rows), width, d)
            out2[j, :length] = piece.view(length, d).float()
        assert out2 is not None
        return out2.to(device)

    def serve(self, model: nn.Module, input_ids: Tensor, forward: Any) -> Tensor | None:
        """Logits (B, K) for ``input_ids`` with the taps of cached paths fed, or None to run the real forward."""
        tapped = [name for name, m in model.named_modules() if m._forward_hooks]
        if any(name not in self.paths for name in tapped):
            return None
        rows = self.rows(input_ids)
        if rows is None:
            self.misses += 1
            return None
        if not self.verified:
            real = forward(input_ids).float().cpu()
            if not torch.allclose(real, self.logits[rows], atol=1e-3, rtol=1e-3):
                raise CheckpointError(f"feature cache '{self.path}' does not match the teacher's weights (logits "
                                      f"differ by {float((real - self.logits[rows]).abs().max()):.3g}); rebuild it")
            self.verified = True
        self.hits += 1
        device = input_ids.device
        width = input_ids.shape[1]
        modules = dict(model.named_modules())
        for name in tapped:
            feats = self.assemble(rows, width, self.paths.index(name), device)
            module = modules[name]
            for hook in list(module._forward_hooks.values()):
                hook(module, (), feats)
        return self.logits[rows].to(device)


__all__ = ["FeatureCache", "build_feature_cache", "CACHE_FORMAT"]
