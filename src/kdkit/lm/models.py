"""Causal language models: ``hf:PATH`` folders holding one, GPT-2 models from a configuration (``lm:gpt2``), students
cut from a teacher's layers, and saving a trained model back as a ``transformers`` folder.

Model names (:data:`kdkit.registry.MODEL_SOURCES`):

* ``hf:PATH`` -- a local folder saved with ``save_pretrained`` whose ``config.json`` names a causal LM (``*ForCausalLM``
  or ``*LMHeadModel``): loaded with ``AutoModelForCausalLM`` (safetensors, ``local_files_only=True``,
  ``trust_remote_code=False`` always). :func:`kdkit.text.models.build_hf_classifier` sends such folders here.
  Parameters: ``layers`` -- keep these layer indices (or a count, evenly spaced): a *layer-cut student* initialised
  from the teacher's kept layers, embeddings and head (the seeds' "fewer layers"; DistilBERT's initialisation);
  ``config`` -- configuration overrides (``n_layer``, ``n_embd`` ...; one that changes a weight shape implies
  ``init: random``); ``init`` -- ``pretrained`` or ``random`` (the from-scratch baseline of the same shape).
* ``lm:gpt2`` -- a randomly initialised GPT-2 (``GPT2LMHeadModel``) with ``layers``, ``width``, ``heads`` (and
  ``inner``, ``dropout``, ``positions``); its vocabulary is the data's (``num_classes``) and its context at least the
  data's block (``image_size``).

Every model is wrapped in :class:`CausalLM`: ``forward(input_ids (B, T)) -> logits (B·T, V)``, flattened because in
kdkit a token is a sample (:mod:`kdkit.lm`). A checkpoint whose embedding has more rows than the tokenizer has tokens
(vocabularies padded to a multiple of 64 in one model family) is accepted: the logits are cut to the tokenizer's V.
Fewer rows than tokens is refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdkit.errors import CheckpointError, ConfigError
from kdkit.registry import MODEL_SOURCES
from kdkit.text.tokenizers import _quiet_transformers, load_tokenizer, resolve_hf_path

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_SHAPE_FREE_KEYS = {"resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout", "attention_dropout", "hidden_dropout"}


def is_causal_lm_folder(path: str | Path) -> bool:
    """Whether the ``config.json`` in ``path`` names a causal language model."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return any(str(a).endswith(_CAUSAL_SUFFIXES) for a in cfg.get("architectures") or [])


def layer_list_path(hf: nn.Module) -> str:
    """Path (in ``hf``) of the ModuleList of transformer blocks (GPT-2 ``transformer.h``, Llama ``model.layers``)."""
    n = int(hf.config.num_hidden_layers)
    cands = [name for name, m in hf.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n
             and name.split(".")[-1] in ("h", "layers", "layer", "blocks", "block")]
    if not cands:
        raise ConfigError(f"cannot find the {n} transformer blocks of {type(hf).__name__}")
    return min(cands, key=len)


class CausalLM(nn.Module):
    """A ``transformers`` causal LM with kdkit's interface: ``forward(input_ids) -> (B·T, V)`` logits.

    Args:
        hf_model: an ``AutoModelForCausalLM`` model.
        vocab_size: V, the data's vocabulary (the tokenizer's length); logits beyond it (padded rows) are cut.
        pad_token_id: positions holding it are masked out of attention (None: nothing is masked).
        source: where it came from (for messages).
    """

    kd_task = "causal_lm"

    def __init__(self, hf_model: nn.Module, vocab_size: int, pad_token_id: int | None, source: str = "lm") -> None:
        super().__init__()
        self.hf = hf_model
        self.vocab_size = int(vocab_size)
        self.pad_token_id = None if pad_token_id is None else int(pad_token_id)
        self.source = source
        rows = int(hf_model.get_output_embeddings().weight.shape[0])
        if rows < self.vocab_size:
            raise ConfigError(f"model '{source}' predicts {rows} tokens but the tokenizer has {self.vocab_size}; it "
                              f"was made for another (smaller) vocabulary")

    @property
    def config(self) -> Any:
        return self.hf.config

    @property
    def kd_stages(self) -> list[str]:
        path = layer_list_path(self.hf)
        return [f"hf.{path}.{i}" for i in range(int(self.config.num_hidden_layers))]

    def text_layout(self) -> Any:
        """Where the decoder's hidden states are (:class:`kdkit.text.layout.TextLayout`): each block's output, for
        the hidden-state terms (``lm_hidden_mse``, ``lm_hidden_cosine``, ``tinybert_hidden``); no attention maps."""
        from kdkit.text.layout import TextLayout

        emb = self.hf.get_input_embeddings()
        path = next(name for name, m in self.named_modules() if m is emb)
        return TextLayout(embedding=path, hidden=self.kd_stages, attention_scores=None, attention_probs=None,
                          hidden_size=int(getattr(self.config, "hidden_size", 0) or self.config.n_embd),
                          num_heads=None, pad_token_id=-1 if self.pad_token_id is None else self.pad_token_id)

    def attention_mask(self, input_ids: Tensor) -> Tensor | None:
        if self.pad_token_id is None:
            return None
        return (input_ids != self.pad_token_id).long()

    def token_logits(self, input_ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, V) logits."""
        if input_ids.dtype not in (torch.int64, torch.int32) or input_ids.dim() != 2:
            raise ConfigError(f"{self.source} expects (B, T) integer token ids, got a {input_ids.dtype} tensor of "
                              f"shape {tuple(input_ids.shape)}; use a language-model dataset (docs/lm.md)")
        out = self.hf(input_ids=input_ids, attention_mask=self.attention_mask(input_ids), use_cache=False)
        logits = out.logits
        return logits[..., : self.vocab_size] if logits.shape[-1] != self.vocab_size else logits

    def forward(self, input_ids: Tensor) -> Tensor:
        """(B, T) ids -> (B·T, V) logits (a token is a sample)."""
        logits = self.token_logits(input_ids)
        return logits.reshape(-1, logits.shape[-1])


def pick_layers(layers: int | Sequence[int], n: int, source: str) -> list[int]:
    """Layer indices to keep: a list as given, or a count ``k`` spread evenly over ``n`` (first and last kept)."""
    if isinstance(layers, bool):
        raise ConfigError(f"model '{source}': layers must be a list of layer indices or a count, got {layers!r}")
    if isinstance(layers, int):
        if not 1 <= layers <= n:
            raise ConfigError(f"model '{source}': layers={layers} must lie in 1..{n} (the checkpoint has {n} layers)")
        if layers == 1:
            return [n - 1]
        return sorted({round(i * (n - 1) / (layers - 1)) for i in range(layers)})
    picked = [int(i) for i in layers]
    if not picked or any(not 0 <= i < n for i in picked) or len(set(picked)) != len(picked):
        raise ConfigError(f"model '{source}': layers {picked} must be distinct indices in 0..{n - 1} (the checkpoint "
                          f"has {n} layers)")
    return picked


def cut_layers(hf: nn.Module, keep: list[int]) -> None:
    """Keep only blocks ``keep`` (in that order), in place; the config and each block's ``layer_idx`` follow."""
    path = layer_list_path(hf)
    old = hf.get_submodule(path)
    parent_path, _, attr = path.rpartition(".")
    parent = hf.get_submodule(parent_path) if parent_path else hf
    setattr(parent, attr, nn.ModuleList(old[i] for i in keep))
    for new_idx, block in enumerate(getattr(parent, attr)):
        for m in block.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx
    hf.config.num_hidden_layers = len(keep)
    hf.config.kdkit_kept_layers = list(keep)


def resolve_init(source: str, config: dict[str, Any] | None, init: str | None,
                 shape_free: set[str]) -> tuple[dict[str, Any], str]:
    """The config overrides of an ``hf:`` model and how its weights start: ``init`` defaults to ``random`` when an
    override outside ``shape_free`` (the keys that leave every weight's shape alone, e.g. dropout rates) changes the
    architecture, else ``pretrained``; a pretrained start with such an override is refused (the checkpoint cannot
    fill the new shapes). Shared by the causal-LM and the sequence-classifier builders."""
    overrides = dict(config or {})
    shape_keys = sorted(set(overrides) - shape_free)
    if init is None:
        init = "random" if shape_keys else "pretrained"
    if init not in ("pretrained", "random"):
        raise ConfigError(f"model '{source}': init must be 'pretrained' or 'random', got {init!r}")
    if init == "pretrained" and shape_keys:
        raise ConfigError(f"model '{source}': config overrides {shape_keys} change weight shapes, so the checkpoint "
                          f"cannot initialise it; set init: random (or use layers: [...] for a layer-cut copy)")
    return overrides, init


def _check_positions(cfg: Any, block: int, source: str) -> None:
    max_pos = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if max_pos is not None and block > int(max_pos):
        raise ConfigError(f"model '{source}': data block {block} exceeds the model's context of {max_pos} positions; "
                          f"lower data.params.block")


def build_causal_lm(name: str, num_classes: int, in_channels: int = 1, image_size: int = 128,
                    layers: int | list[int] | None = None, config: dict[str, Any] | None = None,
                    init: str | None = None, **kwargs: Any) -> CausalLM:
    """``hf:PATH`` builder for a folder holding a causal LM (see the module docstring)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = f"hf:{name}"
    if kwargs.pop("pretrained", None) or kwargs.pop("weights", None) is not None:
        raise ConfigError(f"model '{source}': kdkit never downloads; hf: models load from a local directory")
    input_tokenizer = kwargs.pop("input_tokenizer", None)
    if kwargs:
        raise ConfigError(f"model '{source}' has no parameter {', '.join(repr(k) for k in sorted(kwargs))}; its "
                          f"parameters: layers, config, init, input_tokenizer")
    if input_tokenizer is not None:  # another tokenizer than the data's: re-tokenise the text (kdkit.lm.crosstok)
        from kdkit.lm.crosstok import RetokenizedLM  # it imports this module

        own = len(load_tokenizer(f"hf:{name}"))
        return RetokenizedLM(build_causal_lm(name, own, in_channels, image_size, layers, config, init), str(
            input_tokenizer), f"hf:{name}")
    path = resolve_hf_path(name)
    overrides, init = resolve_init(source, config, init, _SHAPE_FREE_KEYS)
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model '{source}': cannot read {path}/config.json ({str(err).splitlines()[0]})") from None
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ConfigError(f"model '{source}': config has no field '{k}' (a {type(cfg).__name__})")
        setattr(cfg, k, v)
    _check_positions(cfg, image_size, source)
    full = int(cfg.num_hidden_layers)
    with _quiet_transformers():
        if init == "pretrained":
            if not any(path.glob("*.safetensors")):
                raise CheckpointError(f"model '{source}': no *.safetensors weights in {path}; kdkit reads safetensors "
                                      f"only (save with save_pretrained(safe_serialization=True))")
            try:
                hf = AutoModelForCausalLM.from_pretrained(path, config=cfg, local_files_only=True,
                                                          trust_remote_code=False, use_safetensors=True)
            except (OSError, ValueError) as err:
                raise CheckpointError(f"model '{source}': cannot load the weights in {path} "
                                      f"({str(err).splitlines()[0]})") from None
        else:
            hf = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)
    if layers is not None:
        cut_layers(hf, pick_layers(layers, full, source))
    tok_pad = _pad_id(path)
    return CausalLM(hf, num_classes, tok_pad, source)


def _pad_id(path: Path) -> int | None:
    try:
        return load_tokenizer(str(path)).pad_token_id
    except ConfigError:
        return None  # a folder without a tokenizer: the data's tokenizer is checked elsewhere; mask nothing


def build_gpt2(name: str, num_classes: int, in_channels: int = 1, image_size: int = 128, layers: int = 4,
               width: int = 256, heads: int = 4, inner: int | None = None, dropout: float = 0.1,
               positions: int | None = None, pad_token_id: int | None = 0, **kwargs: Any) -> CausalLM:
    """``lm:gpt2``: a randomly initialised GPT-2 with V = ``num_classes`` and a context of ``positions`` (default
    the data's block, ``image_size``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if name != "gpt2":
        raise ConfigError(f"model 'lm:{name}': the lm: source builds 'lm:gpt2' (for a saved model use hf:PATH)")
    if kwargs:
        raise ConfigError(f"model 'lm:gpt2' has no parameter {', '.join(repr(k) for k in sorted(kwargs))}; its "
                          f"parameters: layers, width, heads, inner, dropout, positions, pad_token_id")
    for key, v in (("layers", layers), ("width", width), ("heads", heads)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"model 'lm:gpt2': {key} must be a positive integer, got {v!r}")
    if width % heads:
        raise ConfigError(f"model 'lm:gpt2': width {width} is not a multiple of heads {heads}")
    n_pos = int(positions or image_size)
    cfg = GPT2Config(vocab_size=num_classes, n_positions=n_pos, n_embd=width, n_layer=layers, n_head=heads,
                     n_inner=inner, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                     bos_token_id=1, eos_token_id=1, pad_token_id=pad_token_id)
    _check_positions(cfg, image_size, "lm:gpt2")
    return CausalLM(GPT2LMHeadModel(cfg), num_classes, pad_token_id, "lm:gpt2")


def save_hf(model: nn.Module, out: str | Path, tokenizer: str | None = None) -> Path:
    """Write ``model`` (a :class:`CausalLM`) as a ``transformers`` folder (safetensors) with ``tokenizer``'s files, so
    that ``hf:OUT`` (and ``AutoModelForCausalLM.from_pretrained(OUT)``) loads it back."""
    if not isinstance(model, CausalLM):
        raise ConfigError(f"only causal language models are saved in transformers format, got "
                          f"{type(model).__name__}")
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        model.hf.save_pretrained(str(path), safe_serialization=True)
    if tokenizer:
        load_tokenizer(tokenizer).save_pretrained(str(path))
    return path


MODEL_SOURCES.add("lm", build_gpt2, "lm:gpt2, a GPT-2 causal LM from a configuration (layers, width, heads; text "
                  "extra)")

__all__ = ["CausalLM", "build_causal_lm", "build_gpt2", "cut_layers", "is_causal_lm_folder", "pick_layers",
           "save_hf"]
