"""Text classification: Hugging Face encoders and small text students, text data sources, TinyBERT-style terms.

Importing this package registers the ``hf:`` and ``textnn:`` model prefixes, the text data builder and the
TinyBERT/DistilBERT loss terms.
"""

from kdkit.text import (
    data,  # noqa: F401,E402  (registers the text data builder)
    models,  # noqa: F401  (registration)
    terms,  # noqa: F401,E402  (registers the TinyBERT/DistilBERT loss terms)
)
