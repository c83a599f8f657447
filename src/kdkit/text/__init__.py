"""Text classification: Hugging Face encoders and small text students, text data sources, TinyBERT-style terms.

:mod:`kdkit.text.models` registers the ``hf:`` and ``textnn:`` model sources, :mod:`kdkit.text.data` the text
datasets (``rotten_tomatoes``, ``csv:``, ``json:``, ``parquet:``, ``hfdisk:``) and :mod:`kdkit.text.terms` the
TinyBERT/DistilBERT loss terms; the registry finds them by itself (``kdkit.registry.PLUGINS``, the ``text`` extra).
"""
