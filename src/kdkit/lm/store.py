"""The token logit store: a language-model teacher run once over a corpus; per token its top-k log-probabilities, their
ids and the log of the remaining mass -- the soft-label store's format family (:mod:`kdkit.softlabels.store`) for
tokens. Layout of a store directory::

    manifest.json   format, version, k, vocabulary V, blocks N, block T, tokenizer, corpus, split, teacher SHA-256
    logprobs.npy    (N, T, k) float16  the k largest teacher log-probabilities (T = 1) of each token, descending
    ids.npy         (N, T, k) uint16   their token ids (int32 when V > 65535)
    tail.npy        (N, T)    float16  log of the mass outside the top k: logsumexp of the other V − k log-probs

Plain ``.npy`` files (``np.load(..., mmap_mode="r")`` reads them without kdkit); row i is block i of the split the
store was made from (:class:`kdkit.lm.data.LMData`). At k = 32 and V ≤ 65535 a token costs 32·2 + 32·2 + 2 = 130 bytes.
``compress=True`` writes the same three arrays per block instead, each block's bytes (log-probs, ids, tail, in that
order) compressed with zlib into ``blocks.zlib``, with ``offsets.npy`` ((N + 1,) int64 byte offsets) for random access
by block; the values are identical (the compression is lossless).

A *sampled* store (``write_token_store(..., sample=True)``, ``kdkit lm-cache --sample``; manifest ``kind: sampled``)
keeps instead, per token, k ids drawn with replacement from a proposal r (the teacher itself, or softmax(log p / τ)),
their importance ratios p/r and the teacher's entropy, for an unbiased forward KL (random-sampling KD, Anshumann et
al. 2025; :func:`kdkit.losses.tokens.sampled_forward_kl`, the ``lm_sampled_kl`` term)::

    ids.npy         (N, T, k) uint16   sampled token ids (int32 when V > 65535)
    ratios.npy      (N, T, k) float16  p(x)/r(x) of each draw (exactly 1 when r = p)
    entropy.npy     (N, T)    float16  H(p) in nats

4k + 2 bytes per token (98 at k = 24). Both kinds record the SHA-256 of the token blocks and of the teacher's weights,
which :func:`open_token_store_teacher` checks when a recipe reads the store (``soft_labels: PATH``).

The tail is stored as a log-sum-exp computed from the float32 log-probabilities, not as ``1 − Σ top-k``: that
difference loses every digit when the tail is small and the top-k are rounded to fp16 (the soft-label store's rule).

Two ways to use a store as the teacher:

* :meth:`TokenStore.teacher_logits` rebuilds (B·T, V) logits: the top-k log-probabilities as they are and the tail
  mass spread evenly over the other V − k tokens, so every dense token term (``lm_forward_kl`` ...) runs unchanged
  (:class:`TokenStoreTeacher` serves them through the teacher seam). Exact for the top-k tokens and for the total tail
  mass; the tail's shape is lost.
* :func:`kdkit.losses.tokens.sparse_token_divergence` compares the distributions coarsened to k + 1 outcomes
  (a lower bound of the full divergence); :meth:`TokenStore.lookup` gives its inputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdkit.errors import ConfigError, KdkitError
from kdkit.types import Batch, ModelOutput, TeacherSignal
from kdkit.utils import atomic_write_json

FORMAT = "kdkit-token-logits"
VERSION = 1
MANIFEST = "manifest.json"
# Keys of a sampled store's draws in the teacher signal (``combined.features``), read by ``lm_sampled_kl``.
SAMPLED_IDS, SAMPLED_RATIOS, SAMPLED_ENTROPY = "token_store.ids", "token_store.ratios", "token_store.entropy"


def _sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def blocks_sha256(blocks: Tensor) -> str:
    """SHA-256 of a split's packed token blocks (shape and int64 ids): the identity of the tokens a store covers."""
    h = hashlib.sha256(str(tuple(blocks.shape)).encode())
    h.update(blocks.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def encode_tokens(log_probs: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(…, V) float32 log-probabilities -> top-k log-probs (…, k) fp16, ids (…, k), tail log-mass (…,) fp16."""
    top = log_probs.topk(k, dim=-1)
    rest = log_probs.scatter(-1, top.indices, float("-inf"))
    tail = torch.logsumexp(rest, dim=-1) if k < log_probs.shape[-1] else torch.full(log_probs.shape[:-1],
                                                                                    float("-inf"))
    # fp16 holds log-probabilities down to -65504; a tail below that is 0 for every purpose.
    return top.values.clamp_min(-65504.0).half(), top.indices, tail.clamp_min(-65504.0).half()


class TokenStore:
    """An open token logit store (read-only, memory-mapped)."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.k = int(manifest["k"])
        self.vocab = int(manifest["vocab"])
        self.block = int(manifest["block"])
        self.compressed = bool(manifest.get("compressed"))
        self.id_dtype = np.dtype(manifest.get("id_dtype", "uint16"))
        self.kind = str(manifest.get("kind", "topk"))
        if self.kind == "sampled":
            self.ids = np.load(path / "ids.npy", mmap_mode="r")
            self.ratios = np.load(path / "ratios.npy", mmap_mode="r")
            self.entropy = np.load(path / "entropy.npy", mmap_mode="r")
        elif self.compressed:
            self.offsets = np.load(path / "offsets.npy")
            self.packed = np.memmap(path / "blocks.zlib", dtype=np.uint8, mode="r") if self.offsets[-1] else \
                np.zeros(0, np.uint8)
        else:
            self.logprobs = np.load(path / "logprobs.npy", mmap_mode="r")
            self.ids = np.load(path / "ids.npy", mmap_mode="r")
            self.tail = np.load(path / "tail.npy", mmap_mode="r")

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> TokenStore:
        p = Path(path)
        try:
            manifest = json.loads((p / MANIFEST).read_text())
        except (OSError, ValueError):
            raise ConfigError(f"token store '{p}': no readable {MANIFEST}; make one with kdkit.lm.store."
                              f"write_token_store") from None
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ConfigError(f"token store '{p}' is {manifest.get('format')} v{manifest.get('version')}, not "
                              f"{FORMAT} v{VERSION}")
        if not manifest.get("complete"):
            raise ConfigError(f"token store '{p}' is incomplete (its writer was interrupted); write it again")
        return cls(p, manifest)

    def __len__(self) -> int:
        return int(self.manifest["blocks"])

    @property
    def bytes_per_token(self) -> float:
        """Bytes on disk per stored token (array data; the compressed layout counts its offsets too)."""
        n = len(self) * self.block
        if self.kind == "sampled":
            return (self.ids.nbytes + self.ratios.nbytes + self.entropy.nbytes) / max(1, n)
        if self.compressed:
            return (int(self.offsets[-1]) + self.offsets.nbytes) / max(1, n)
        return (self.logprobs.nbytes + self.ids.nbytes + self.tail.nbytes) / max(1, n)

    def _block(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raw = zlib.decompress(self.packed[int(self.offsets[i]) : int(self.offsets[i + 1])].tobytes())
        t, k = self.block, self.k
        n_lp, n_id = t * k * 2, t * k * self.id_dtype.itemsize
        lp = np.frombuffer(raw, np.float16, t * k).reshape(t, k)
        ids = np.frombuffer(raw, self.id_dtype, t * k, offset=n_lp).reshape(t, k)
        tail = np.frombuffer(raw, np.float16, t, offset=n_lp + n_id)
        return lp, ids, tail

    def _rows(self, index: Tensor) -> np.ndarray:
        idx = index.detach().cpu().numpy().astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise KdkitError(f"token store '{self.path}' holds {len(self)} blocks; asked for block {int(idx.max())}")
        return idx

    def lookup_sampled(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Blocks ``index`` (B,) of a sampled store -> ids (B, T, n) int64, ratios p/r (B, T, n) float32, teacher
        entropy (B, T) float32 -- the inputs of :func:`kdkit.losses.tokens.sampled_forward_kl`."""
        if self.kind != "sampled":
            raise KdkitError(f"token store '{self.path}' holds the top-{self.k}, not sampled ids")
        idx = self._rows(index)
        return (torch.from_numpy(np.ascontiguousarray(self.ids[idx]).astype(np.int64)),
                torch.from_numpy(np.ascontiguousarray(self.ratios[idx]).astype(np.float32)),
                torch.from_numpy(np.ascontiguousarray(self.entropy[idx]).astype(np.float32)))

    def lookup(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Blocks ``index`` (B,) -> log-probs (B, T, k) fp16, ids (B, T, k) int64, tail log-mass (B, T) fp16."""
        if self.kind == "sampled":
            raise KdkitError(f"token store '{self.path}' holds sampled ids; read it with lookup_sampled")
        idx = self._rows(index)
        if self.compressed:
            got = [self._block(int(i)) for i in idx]
            return (torch.from_numpy(np.stack([g[0] for g in got])) if got else torch.zeros(0, self.block, self.k,
                                                                                            dtype=torch.float16),
                    torch.from_numpy(np.stack([g[1] for g in got]).astype(np.int64)) if got else
                    torch.zeros(0, self.block, self.k, dtype=torch.int64),
                    torch.from_numpy(np.stack([g[2] for g in got])) if got else torch.zeros(0, self.block,
                                                                                            dtype=torch.float16))
        return (torch.from_numpy(np.ascontiguousarray(self.logprobs[idx])),
                torch.from_numpy(np.ascontiguousarray(self.ids[idx]).astype(np.int64)),
                torch.from_numpy(np.ascontiguousarray(self.tail[idx])))

    def teacher_logits(self, index: Tensor) -> Tensor:
        """(B·T, V) float32 logits whose softmax is the stored distribution: the top-k log-probabilities, and the tail
        mass spread evenly over the other V − k tokens (see the module docstring). A sampled store gives the logits of
        its importance-weighted empirical distribution Σ_j ρ_j·δ(x_j) / n (normalised by the softmax: a dense term on
        it sees a consistent but not unbiased teacher; ``lm_sampled_kl`` reads the samples themselves)."""
        if self.kind == "sampled":
            ids, ratios, _ = self.lookup_sampled(index)
            mass = torch.zeros(*ids.shape[:-1], self.vocab).scatter_add_(-1, ids, ratios / ids.shape[-1])
            return mass.clamp_min(1e-30).log().clamp_min(-1e4).reshape(-1, self.vocab)
        lp, ids, tail = self.lookup(index)
        rest = self.vocab - self.k
        fill = tail.float() - (math.log(rest) if rest > 0 else 0.0)
        out = fill.unsqueeze(-1).expand(*tail.shape, self.vocab).clone()
        out.scatter_(-1, ids, lp.float())
        return out.reshape(-1, self.vocab)


@torch.no_grad()
def sample_tokens(log_probs: Tensor, n: int, proposal_temperature: float = 1.0,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(…, V) float32 teacher log-probabilities -> n ids drawn i.i.d. with replacement from the proposal
    r = softmax(log p / proposal_temperature) (…, n), their importance ratios p/r (…, n) float32, and the teacher's
    entropy H(p) (…,) -- what :func:`kdkit.losses.tokens.sampled_forward_kl` needs for an unbiased forward KL."""
    flat = log_probs.reshape(-1, log_probs.shape[-1])
    log_r = flat if proposal_temperature == 1.0 else torch.log_softmax(flat / proposal_temperature, dim=-1)
    ids = torch.multinomial(log_r.exp(), n, replacement=True, generator=generator)
    ratio = (flat.gather(-1, ids) - log_r.gather(-1, ids)).exp()
    entropy = -(flat.exp() * flat.clamp_min(-1e4)).sum(-1)
    lead = log_probs.shape[:-1]
    return ids.reshape(*lead, n), ratio.reshape(*lead, n), entropy.reshape(lead)


def write_token_store(teacher: nn.Module, data: Any, out: str | os.PathLike[str], k: int = 32, batch_size: int = 16,
                      extra: dict[str, Any] | None = None, compress: bool = False, sample: bool = False,
                      proposal_temperature: float = 1.0, seed: int = 0) -> TokenStore:
    """Run ``teacher`` (a :class:`kdkit.lm.models.CausalLM`) once over every block of ``data`` (an
    :class:`kdkit.lm.data.LMData`) and write the store to ``out``.

    Args:
        teacher: the frozen teacher (put in eval mode here).
        data: the packed blocks (usually the training split).
        out: the store directory.
        k: log-probabilities kept per token.
        batch_size: blocks per teacher forward.
        extra: more facts for the manifest (corpus, split ...).
        compress: zlib-compress each block (lossless; ~40 % smaller at k = 32 on the demo, see docs/benchmarks.md).
        sample: keep k importance-sampled ids per token instead of the top k (:func:`sample_tokens`; the layout
            ``ids.npy`` (N, T, k), ``ratios.npy`` (N, T, k) fp16 p/r, ``entropy.npy`` (N, T) fp16): an unbiased
            forward KL (``lm_sampled_kl``), 4k + 2 bytes per token.
        proposal_temperature: with ``sample``, draw from softmax(log p / this); 1 draws from the teacher itself
            (every ratio is then exactly 1), larger values reach further into the tail.
        seed: with ``sample``, the draws' seed (the store is reproducible).
    """
    if sample:
        return _write_sampled(teacher, data, Path(out), k, batch_size, extra, compress, proposal_temperature, seed)
    vocab = int(data.vocab_size)
    if not 1 <= k <= vocab:
        raise ConfigError(f"k must lie in 1..{vocab} (the vocabulary), got {k}")
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    n, t = data.blocks.shape[0], data.blocks.shape[1] - 1
    id_dtype = np.uint16 if vocab <= 65535 else np.int32
    if compress:
        offsets = np.zeros(n + 1, dtype=np.int64)
        packed = open(path / "blocks.zlib", "wb")  # noqa: SIM115  (closed below, after the loop)
    else:
        lp_arr = np.lib.format.open_memmap(path / "logprobs.npy", mode="w+", dtype=np.float16, shape=(n, t, k))
        id_arr = np.lib.format.open_memmap(path / "ids.npy", mode="w+", dtype=id_dtype, shape=(n, t, k))
        tail_arr = np.lib.format.open_memmap(path / "tail.npy", mode="w+", dtype=np.float16, shape=(n, t))
    try:
        for a, log_probs in _teacher_log_probs(teacher, data, batch_size):
            lp, top, tail = encode_tokens(log_probs, k)
            lp_np, id_np, tail_np = lp.numpy(), top.numpy().astype(id_dtype), tail.numpy()
            if compress:
                for j in range(log_probs.shape[0]):
                    z = zlib.compress(lp_np[j].tobytes() + id_np[j].tobytes() + tail_np[j].tobytes(), 6)
                    packed.write(z)
                    offsets[a + j + 1] = offsets[a + j] + len(z)
            else:
                rows = slice(a, a + log_probs.shape[0])
                lp_arr[rows], id_arr[rows], tail_arr[rows] = lp_np, id_np, tail_np
    finally:
        if compress:
            packed.close()
    if compress:
        np.save(path / "offsets.npy", offsets)
    else:
        for arr in (lp_arr, id_arr, tail_arr):
            arr.flush()
    manifest = _manifest(teacher, data, k=k, compressed=bool(compress), id_dtype=np.dtype(id_dtype).name,
                         **(extra or {}))
    atomic_write_json(path / MANIFEST, manifest)
    return TokenStore.open(path)


def _teacher_log_probs(teacher: nn.Module, data: Any, batch_size: int) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(first block, log_probs (b, T, V) float32)`` for every ``batch_size`` blocks of ``data``, the teacher in
    eval mode meanwhile (its mode is restored after)."""
    t, vocab = data.blocks.shape[1] - 1, int(data.vocab_size)
    was = teacher.training
    teacher.eval()
    try:
        for a in range(0, data.blocks.shape[0], batch_size):
            ids = data.blocks[a : a + batch_size, :-1]
            yield a, torch.log_softmax(teacher(ids).detach().float(), dim=-1).reshape(ids.shape[0], t, vocab)
    finally:
        teacher.train(was)


def _manifest(teacher: nn.Module, data: Any, /, **fields: Any) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "vocab": int(data.vocab_size), "blocks": int(data.blocks.shape[0]),
            "block": int(data.blocks.shape[1] - 1), "tokenizer": getattr(data, "tokenizer", ""),
            "corpus": getattr(data, "name", ""), "blocks_sha256": blocks_sha256(data.blocks),
            "teacher_sha256": _sha256(teacher), "complete": True, **fields}


@torch.no_grad()
def _write_sampled(teacher: nn.Module, data: Any, path: Path, k: int, batch_size: int, extra: dict[str, Any] | None,
                   compress: bool, proposal_temperature: float, seed: int) -> TokenStore:
    vocab = int(data.vocab_size)
    if compress:
        raise ConfigError("a sampled token store is not compressed (its ids are random: zlib gains little); drop "
                          "compress")
    if k < 1:
        raise ConfigError(f"k (samples per token) must be >= 1, got {k}")
    if not (math.isfinite(proposal_temperature) and proposal_temperature > 0):
        raise ConfigError(f"proposal_temperature must be a finite number > 0, got {proposal_temperature}")
    path.mkdir(parents=True, exist_ok=True)
    n, t = data.blocks.shape[0], data.blocks.shape[1] - 1
    id_dtype = np.uint16 if vocab <= 65535 else np.int32
    id_arr = np.lib.format.open_memmap(path / "ids.npy", mode="w+", dtype=id_dtype, shape=(n, t, k))
    ratio_arr = np.lib.format.open_memmap(path / "ratios.npy", mode="w+", dtype=np.float16, shape=(n, t, k))
    ent_arr = np.lib.format.open_memmap(path / "entropy.npy", mode="w+", dtype=np.float16, shape=(n, t))
    gen = torch.Generator().manual_seed(int(seed))
    for a, log_probs in _teacher_log_probs(teacher, data, batch_size):
        got, ratio, ent = sample_tokens(log_probs, k, proposal_temperature, gen)
        rows = slice(a, a + log_probs.shape[0])
        id_arr[rows] = got.numpy().astype(id_dtype)
        ratio_arr[rows] = ratio.clamp_max(65504.0).half().numpy()
        ent_arr[rows] = ent.half().numpy()
    for arr in (id_arr, ratio_arr, ent_arr):
        arr.flush()
    manifest = _manifest(teacher, data, kind="sampled", k=k, compressed=False, id_dtype=np.dtype(id_dtype).name,
                         proposal_temperature=proposal_temperature, seed=int(seed), **(extra or {}))
    atomic_write_json(path / MANIFEST, manifest)
    return TokenStore.open(path)


class TokenStoreTeacher:
    """A :class:`kdkit.types.TeacherSource` that answers a batch of blocks from a token store (no teacher forward):
    the rebuilt logits of :meth:`TokenStore.teacher_logits` for ``batch["index"]``."""

    has_features = False

    def __init__(self, store: TokenStore) -> None:
        self.store = store
        self.models: list[nn.Module] = []
        self.device: torch.device | None = None

    def outputs(self, batch: Batch) -> TeacherSignal:
        logits = self.store.teacher_logits(batch["index"])
        if logits.shape[0] != batch["target"].shape[0]:
            raise KdkitError(f"token store '{self.store.path}' has blocks of {self.store.manifest['block']} tokens, "
                             f"the batch {batch['input'].shape[-1]}; make the store from the recipe's data")
        logits = logits.to(batch["input"].device)
        features: dict[str, Tensor] = {}
        if self.store.kind == "sampled":  # what lm_sampled_kl reads (dense terms read the logits)
            ids, ratios, entropy = self.store.lookup_sampled(batch["index"])
            features = {SAMPLED_IDS: ids.to(logits.device), SAMPLED_RATIOS: ratios.to(logits.device),
                        SAMPLED_ENTROPY: entropy.to(logits.device)}
        return TeacherSignal(combined=ModelOutput(logits=logits, features=features), each=[])

    def to(self, device: torch.device) -> TokenStoreTeacher:
        self.device = device
        return self


def store_mismatch(store: TokenStore, data: Any, teacher: nn.Module | None = None) -> list[str]:
    """What differs between ``store`` and the training blocks ``data`` (an :class:`kdkit.lm.data.LMData`) -- and
    ``teacher``'s weights when given: one phrase per difference, [] when the store was made from them."""
    m = store.manifest
    diffs = []
    if store.vocab != int(data.vocab_size):
        diffs.append(f"vocabulary {store.vocab} vs the data's {int(data.vocab_size)}")
    if store.block != data.blocks.shape[1] - 1:
        diffs.append(f"blocks of {store.block} tokens vs the recipe's data.params.block {data.blocks.shape[1] - 1}")
    if len(store) != data.blocks.shape[0]:
        diffs.append(f"{len(store)} training blocks vs the recipe's {data.blocks.shape[0]} (data.train_limit, "
                     f"val_fraction, split_seed, max_docs)")
    if not diffs and m.get("blocks_sha256") and m["blocks_sha256"] != blocks_sha256(data.blocks):
        diffs.append("the training tokens differ (corpus, tokenizer or split)")
    if teacher is not None and m.get("teacher_sha256") and m["teacher_sha256"] != _sha256(teacher):
        diffs.append("the teacher's weights differ (SHA-256 of its state dict)")
    return diffs


def open_token_store_teacher(recipe: Any, data: Any, teachers: list[nn.Module] | None = None) -> TokenStoreTeacher:
    """``recipe.soft_labels`` as the teacher source of a language-model recipe, checked against its training blocks
    (count, block length, vocabulary, SHA-256 of the token ids) and -- when the recipe lists its teacher -- that
    teacher's weights; each difference is named in one line with the command that re-creates the store."""
    store = TokenStore.open(recipe.soft_labels)
    if teachers is not None and len(teachers) > 1:
        raise ConfigError(f"soft_labels: a token store holds one teacher; the recipe lists {len(teachers)} teachers "
                          f"(keep one, or drop soft_labels)")
    diffs = store_mismatch(store, data.train, teachers[0] if teachers else None)
    if diffs:
        raise ConfigError(f"soft_labels: token store '{store.path}' does not match the recipe: {'; '.join(diffs)}; "
                          f"re-create it with `kdkit lm-cache RECIPE --overwrite`")
    return TokenStoreTeacher(store)


__all__ = ["FORMAT", "SAMPLED_ENTROPY", "SAMPLED_IDS", "SAMPLED_RATIOS", "TokenStore", "TokenStoreTeacher",
           "blocks_sha256", "encode_tokens", "open_token_store_teacher", "sample_tokens", "store_mismatch",
           "write_token_store"]
