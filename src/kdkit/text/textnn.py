"""``textnn:bilstm`` / ``textnn:cnn``: small BiLSTM and convolutional text students over a tokenizer's ids."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.errors import ConfigError
from kdkit.registry import MODEL_SOURCES
from kdkit.text.layout import TextLayout
from kdkit.text.tokenizers import load_tokenizer


def _masked_pool(h: Tensor, mask: Tensor) -> Tensor:
    """Mean and max over real tokens: h (B, L, D), mask (B, L) bool -> (B, 2D)."""
    m = mask.unsqueeze(-1).to(h.dtype)
    mean = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
    mx = h.masked_fill(~mask.unsqueeze(-1), torch.finfo(h.dtype).min).amax(1)
    mx = torch.where(mask.any(1, keepdim=True), mx, torch.zeros_like(mx))
    return torch.cat([mean, mx], dim=-1)


class _BiLSTMLayer(nn.Module):
    """One bidirectional LSTM layer over padded (B, L, D_in) input -> (B, L, 2H), pads ignored (packed)."""

    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out


class _ConvLayer(nn.Module):
    """Residual 1-D convolution block over (B, L, D): LayerNorm(x + GELU(conv(x)))."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        y = self.conv(x.masked_fill(~mask.unsqueeze(-1), 0.0).transpose(1, 2)).transpose(1, 2)
        return self.norm(x + F.gelu(y[:, : x.shape[1]]))


class TextNN(nn.Module):
    """Small non-transformer text classifier over token ids: ``bilstm`` or ``cnn``.

    tokens (B, L) -> ``tokens`` embedding (B, L, E) -> ``layers.i`` (B, L, D) -> masked mean+max pooling ->
    ``embed`` (B, 2D) -> dropout -> ``fc`` (B, K).

    Args:
        kind: ``bilstm`` (D = 2·hidden) or ``cnn`` (D = embed_dim, residual convolutions of width ``kernel``).
        vocab_size: number of token ids.
        pad_token_id: padding id (its embedding is kept at zero and it is masked from pooling).
        num_classes: K.
        embed_dim: E.
        hidden: LSTM hidden size per direction.
        num_layers: number of layers.
        kernel: convolution width (cnn).
        dropout: dropout before ``fc``.
    """

    def __init__(self, kind: str, vocab_size: int, pad_token_id: int, num_classes: int, embed_dim: int = 128,
                 hidden: int = 128, num_layers: int = 1, kernel: int = 5, dropout: float = 0.1) -> None:
        super().__init__()
        if kind not in ("bilstm", "cnn"):
            raise ConfigError(f"model 'textnn:{kind}': unknown kind; use textnn:bilstm or textnn:cnn")
        if num_layers < 1:
            raise ConfigError(f"model 'textnn:{kind}': num_layers must be >= 1, got {num_layers}")
        self.kind = kind
        self.pad_token_id = int(pad_token_id)
        self.tokens = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_token_id)
        if kind == "bilstm":
            dims = [embed_dim] + [2 * hidden] * num_layers
            self.layers = nn.ModuleList(_BiLSTMLayer(dims[i], hidden) for i in range(num_layers))
            self.width = 2 * hidden
        else:
            self.layers = nn.ModuleList(_ConvLayer(embed_dim, kernel) for _ in range(num_layers))
            self.width = embed_dim
        self.embed = nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * self.width, num_classes)

    @property
    def kd_stages(self) -> list[str]:
        return [f"layers.{i}" for i in range(len(self.layers))]

    def text_layout(self) -> TextLayout:
        return TextLayout(embedding="tokens", hidden=self.kd_stages, attention_scores=None, attention_probs=None,
                          hidden_size=self.width, num_heads=None, pad_token_id=self.pad_token_id)

    def forward(self, input_ids: Tensor) -> Tensor:
        mask = input_ids != self.pad_token_id
        h = self.tokens(input_ids)
        for layer in self.layers:
            h = layer(h, mask.sum(1)) if self.kind == "bilstm" else layer(h, mask)
        return self.fc(self.drop(self.embed(_masked_pool(h, mask))))


def build_textnn(name: str, num_classes: int, in_channels: int = 1, image_size: int = 64,
                 tokenizer: str = "hf:minilm", vocab_size: int | None = None, pad_token_id: int | None = None,
                 **kwargs: Any) -> TextNN:
    """``textnn:bilstm`` / ``textnn:cnn`` builder; vocabulary and padding id come from ``tokenizer`` unless given."""
    allowed = {"embed_dim", "hidden", "num_layers", "kernel", "dropout"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigError(f"model 'textnn:{name}' has no parameter {', '.join(repr(k) for k in unknown)}; its "
                          f"parameters: tokenizer, vocab_size, pad_token_id, {', '.join(sorted(allowed))}")
    if vocab_size is None or pad_token_id is None:
        tok = load_tokenizer(tokenizer)
        vocab_size = len(tok) if vocab_size is None else vocab_size
        pad_token_id = tok.pad_token_id if pad_token_id is None else pad_token_id
    return TextNN(name, int(vocab_size), int(pad_token_id), num_classes, **kwargs)


MODEL_SOURCES.add("textnn", build_textnn, "textnn:bilstm|cnn, small text students over a tokenizer (text extra)")
