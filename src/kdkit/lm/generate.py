"""Seeded, resumable sampling from a causal LM: teacher-generated text for sequence-level KD (Kim & Rush, EMNLP 2016).

:func:`generate_corpus` samples ``samples`` sequences of ``length`` new tokens after ``<eos>`` (unconditional) with
temperature and nucleus (top-p) sampling through ``transformers``' ``generate``, in chunks of ``chunk`` sequences; chunk
c is drawn with the seed ``seed + c`` and written to ``OUT.parts/c.txt`` atomically, so an interrupted run resumes
where it stopped and gives the same text as an uninterrupted one. The result is one text file, one sequence per
blank-line separated passage: a ``textfile:OUT`` corpus for a student recipe.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from kdkit.errors import ConfigError
from kdkit.lm.models import CausalLM


@torch.no_grad()
def sample(model: CausalLM, tokenizer: object, n: int, length: int, temperature: float = 1.0, top_p: float = 1.0,
           seed: int = 0) -> list[str]:
    """``n`` texts of ``length`` sampled tokens each (after ``<eos>``), reproducible from ``seed``."""
    if not (temperature > 0 and 0 < top_p <= 1 and length >= 1 and n >= 1):
        raise ConfigError(f"generation needs temperature > 0, 0 < top_p <= 1, length >= 1 and n >= 1; got "
                          f"temperature={temperature}, top_p={top_p}, length={length}, n={n}")
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    start = torch.full((n, 1), int(eos), dtype=torch.long)
    was = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            out = model.hf.generate(input_ids=start, attention_mask=torch.ones_like(start), do_sample=True,
                                    temperature=float(temperature), top_p=float(top_p), top_k=0,
                                    max_new_tokens=int(length), min_new_tokens=int(length),
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    finally:
        model.train(was)
    return [tokenizer.decode(row[1:], skip_special_tokens=True).strip() for row in out]


@torch.no_grad()
def continue_prompts(model: CausalLM, prompts: Tensor, new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                     seed: int = 0) -> Tensor:
    """Sample ``new_tokens`` tokens after each row of ``prompts``, reproducible from ``seed`` (on-policy GKD).

    Args:
        model: the causal LM that samples (the student, for on-policy distillation); run in eval mode under no_grad,
            its train/eval mode restored afterwards.
        prompts: (B, P) int64 token ids, no padding (prefixes of packed blocks).
        new_tokens: N, the tokens sampled per row (exactly N: end-of-text does not stop a row early).
        temperature, top_p: softmax temperature and nucleus mass (``top_p = 1``: the whole distribution).
        seed: the sampling seed; the caller's random state is left untouched.

    Returns:
        (B, P + N) int64 ids: the prompts followed by the sampled continuations.
    """
    if not (temperature > 0 and 0 < top_p <= 1 and new_tokens >= 1):
        raise ConfigError(f"generation needs temperature > 0, 0 < top_p <= 1 and max_new_tokens >= 1; got "
                          f"temperature={temperature}, top_p={top_p}, max_new_tokens={new_tokens}")
    was = model.training
    model.eval()
    devices = [prompts.device] if prompts.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            pad = model.pad_token_id if model.pad_token_id is not None else 0
            # exactly N tokens per row, so every row of the batch has the same length and no padding
            out = model.hf.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                    temperature=float(temperature), top_p=float(top_p), top_k=0,
                                    max_new_tokens=int(new_tokens), min_new_tokens=int(new_tokens),
                                    pad_token_id=pad, eos_token_id=None)
    finally:
        model.train(was)
    return out


def generate_corpus(model: CausalLM, tokenizer: object, out: str | os.PathLike[str], samples: int, length: int,
                    temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, chunk: int = 16) -> Path:
    """Write ``samples`` sampled texts to ``out`` (see the module docstring); returns ``out``."""
    path = Path(out)
    parts = path.with_name(path.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    texts: list[str] = []
    for c, start in enumerate(range(0, samples, chunk)):
        part = parts / f"{c}.txt"
        if not part.is_file():
            got = sample(model, tokenizer, min(chunk, samples - start), length, temperature, top_p, seed + c)
            tmp = part.with_suffix(".tmp")
            tmp.write_text("\n\n".join(t.replace("\n\n", "\n") for t in got), "utf-8")
            os.replace(tmp, part)
        texts.append(part.read_text("utf-8"))
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n\n".join(texts) + "\n", "utf-8")
    os.replace(tmp, path)
    return path


__all__ = ["continue_prompts", "generate_corpus", "sample"]
