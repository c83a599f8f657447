"""Causal language models: corpora, tokenizers trained offline, packed token blocks, ``hf:`` causal LMs and GPT-2
students from a configuration, token-level distillation terms and the ``kdkit lm-*`` commands.

The registry finds every part by itself (``kdkit.registry.PLUGINS``, the ``text`` extra): :mod:`kdkit.lm.models`
(the ``lm:`` model source; ``hf:`` folders holding a causal LM are built here through :mod:`kdkit.text.models`),
:mod:`kdkit.lm.data` (the corpora as datasets), :mod:`kdkit.lm.terms` (the token losses) and
:mod:`kdkit.lm.commands`. docs/lm.md is the user's guide.

The one convention the rest of kdkit relies on: **a token is a sample**. A language model's output is flattened to
(B·T, V) logits and a batch's ``target`` to (B·T,) next-token ids (-1 where a token does not count: padding, a
prompt), so the engine's training accuracy, ``evaluate`` (next-token accuracy, mean token cross-entropy -- whose
exponential is the perplexity), checkpoints and reports work unchanged.
"""
