"""Text classification: Hugging Face encoders and small text students, text data sources, TinyBERT-style terms.

Importing this package registers the ``hf:`` and ``textnn:`` model prefixes (:mod:`kdkit.text.models`), the text
data builder (:mod:`kdkit.text.data`) and the TinyBERT/DistilBERT loss terms (:mod:`kdkit.text.terms`).
"""

from kdkit.text import data, models, terms  # noqa: F401  (registration)
