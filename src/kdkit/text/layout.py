"""Where a text model keeps what TinyBERT-style terms tap: embeddings, hidden states, attention maps."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from kdkit.errors import ConfigError


@dataclass(frozen=True)
class TextLayout:
    """Where a text model's TinyBERT-style features live (module paths relative to the model).

    Attributes:
        embedding: path whose output is the embedding-layer output, (B, L, D).
        hidden: per layer, path whose output is that layer's hidden states, (B, L, D), shallow to deep.
        attention_scores: per layer, path of the raw attention scores QKᵀ/√d, (B, H, L, L); None if no attention.
        attention_probs: per layer, path of the attention probabilities, (B, H, L, L); None if no attention.
        hidden_size: D.
        num_heads: H (None without attention).
        pad_token_id: id marking padding in ``input_ids``.
    """

    embedding: str
    hidden: list[str]
    attention_scores: list[str] | None
    attention_probs: list[str] | None
    hidden_size: int
    num_heads: int | None
    pad_token_id: int

    @property
    def num_layers(self) -> int:
        return len(self.hidden)


def text_layout(model: nn.Module, role: str = "model") -> TextLayout:
    """The :class:`TextLayout` of a kdkit text model (``hf:`` or ``textnn:``); a clear error for anything else."""
    fn = getattr(model, "text_layout", None)
    if fn is None:
        raise ConfigError(f"{role} ({type(model).__name__}) is not a kdkit text model; TinyBERT-style terms need an "
                          f"hf:PATH or textnn:NAME model")
    return fn()
