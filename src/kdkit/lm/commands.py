"""``kdkit lm-tokenizer``, ``lm-export``, ``lm-generate`` and ``lm-eval`` (in :data:`kdkit.registry.COMMANDS`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from kdkit.errors import ConfigError
from kdkit.lm.corpora import read_corpus
from kdkit.lm.data import split_documents
from kdkit.lm.evaluate import evaluate_lm
from kdkit.lm.generate import generate_corpus
from kdkit.lm.models import CausalLM, build_causal_lm, save_hf
from kdkit.lm.tokenizer import train_tokenizer
from kdkit.models.factory import load_model
from kdkit.registry import COMMANDS
from kdkit.text.tokenizers import load_tokenizer


@COMMANDS.register("lm-tokenizer")
def lm_tokenizer(
    corpus: Annotated[str, typer.Argument(help="lee_background, enwiki_excerpt, hamlet or textfile:PATH")],
    out: Annotated[str, typer.Option("--out", "-o", help="tokenizer folder to write")],
    vocab: Annotated[int, typer.Option("--vocab", help="vocabulary size (bytes and specials included)")] = 2048,
    val_fraction: Annotated[float, typer.Option(help="documents held out (never seen by the tokenizer); use the "
                                                "recipe's data.val_fraction")] = 0.1,
    split_seed: Annotated[int, typer.Option(help="the recipe's data.split_seed")] = 0,
    max_docs: Annotated[int | None, typer.Option(help="read only the first documents")] = None,
) -> None:
    """Train a byte-level BPE tokenizer on a corpus's training documents (offline, Hugging Face tokenizers)."""
    kind, _, path = corpus.partition(":")
    docs = read_corpus(kind, path or None, max_docs)
    train, _ = split_documents(len(docs), val_fraction, split_seed)
    where = train_tokenizer([docs[i] for i in train], out, vocab)
    Console().print(f"tokenizer ({vocab} tokens, {len(train)} training documents of {corpus}) -> {where}",
                    markup=False, soft_wrap=True)


@COMMANDS.register("lm-cache")
def lm_cache(
    recipe: Annotated[str, typer.Argument(help="language-model recipe (YAML path or bundled name) with one teacher")],
    k: Annotated[int, typer.Option("--topk", "-k", help="log-probabilities kept per token (with --sample: ids "
                                   "drawn per token)")] = 32,
    out: Annotated[str | None, typer.Option("--out", "-o", help="store directory (default: the recipe's "
                                               "soft_labels, else OUTPUT_DIR/NAME-tokens)")] = None,
    sample: Annotated[bool, typer.Option("--sample", help="store importance-sampled ids (unbiased forward KL, "
                                         "term lm_sampled_kl) instead of the top k")] = False,
    proposal_temperature: Annotated[float, typer.Option(help="with --sample: draw from softmax(log p / this)")] = 1.0,
    compress: Annotated[bool, typer.Option("--compress", help="zlib per block (lossless, top-k only)")] = False,
    batch_size: Annotated[int | None, typer.Option(help="blocks per teacher forward")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a store made from something else")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a recipe field: key.path=value")]
    = None,
) -> None:
    """Run the recipe's teacher once over its training blocks and write the token logit store; then distil with
    `soft_labels: PATH` (no teacher forward per step)."""
    from kdkit.lm.cache import cache_lm_recipe  # imports the builder: only when the command runs

    store = cache_lm_recipe(recipe, k=k, out=out, overrides=set_, batch_size=batch_size, compress=compress,
                            sample=sample, proposal_temperature=proposal_temperature, overwrite=overwrite)
    Console().print(f"token store ({'sampled' if store.kind == 'sampled' else 'top'}-{store.k}, {len(store)} blocks "
                    f"of {store.block} tokens, {store.bytes_per_token:.1f} bytes/token) -> {store.path}",
                    markup=False, soft_wrap=True)


@COMMANDS.register("lm-export")
def lm_export(
    checkpoint: Annotated[str, typer.Argument(help="run directory or weights file of a language model")],
    out: Annotated[str, typer.Option("--out", "-o", help="folder to write (transformers format)")],
) -> None:
    """Save a trained language model as a transformers folder (safetensors + tokenizer): `hf:OUT` loads it back."""
    model, meta = load_model(checkpoint)
    if not isinstance(model, CausalLM):
        raise ConfigError(f"'{checkpoint}' holds {meta.get('model', {}).get('name')}, not a causal language model")
    tok = (meta.get("data") or {}).get("params", {}).get("tokenizer")
    where = save_hf(model, out, tok)
    Console().print(f"{checkpoint} -> {where} (load it as hf:{where})", markup=False, soft_wrap=True)


@COMMANDS.register("lm-generate")
def lm_generate(
    model: Annotated[str, typer.Argument(help="the teacher: hf:PATH, a run directory or a weights file")],
    out: Annotated[str, typer.Option("--out", "-o", help="text file to write (a textfile:OUT corpus)")],
    samples: Annotated[int, typer.Option(help="sequences to sample")] = 256,
    length: Annotated[int, typer.Option(help="tokens per sequence")] = 64,
    temperature: Annotated[float, typer.Option(help="softmax temperature")] = 1.0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass (1 = plain sampling)")] = 1.0,
    seed: Annotated[int, typer.Option(help="chunk c is sampled with seed + c")] = 0,
    tokenizer: Annotated[str | None, typer.Option(help="tokenizer folder (default: the model's)")] = None,
) -> None:
    """Sample text from a language model (seeded, resumable): teacher-generated sequences for sequence-level KD."""
    if model.startswith("hf:"):
        tok = load_tokenizer(tokenizer or model)
        net = build_causal_lm(model[3:], len(tok), image_size=1)
    else:
        net, meta = load_model(model)
        if not isinstance(net, CausalLM):
            raise ConfigError(f"'{model}' is not a causal language model")
        tok = load_tokenizer(tokenizer or (meta.get("data") or {}).get("params", {}).get("tokenizer"))
    where = generate_corpus(net, tok, out, samples, length, temperature, top_p, seed)
    Console().print(f"{samples} samples of {length} tokens -> {where} (train on it as textfile:{where})",
                    markup=False, soft_wrap=True)


@COMMANDS.register("lm-eval")
def lm_eval(
    model: Annotated[str, typer.Argument(help="run directory, weights file, or hf:PATH")],
    data: Annotated[str | None, typer.Option(help="corpus (default: the checkpoint's)")] = None,
    split: Annotated[str, typer.Option(help="val (held-out documents) or train")] = "val",
    block: Annotated[int | None, typer.Option(help="tokens per row (default: the checkpoint's)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Held-out perplexity and next-token accuracy of a language model."""
    m = evaluate_lm(model, data=data, split=split, block=block)
    if as_json:
        print(json.dumps(m))
        return
    Console().print(f"{model}: perplexity {m['perplexity']:.2f}, next-token accuracy {m['top1']:.2f}% "
                    f"({int(m['n'])} {split} tokens)", markup=False, soft_wrap=True)


__all__ = ["lm_cache", "lm_eval", "lm_export", "lm_generate", "lm_tokenizer"]
