"""Loss terms, one family per module beside :mod:`kdkit.losses`: ``logits``, ``regularizers``, ``features``,
``relational``, ``contrastive``, ``sobolev`` (and ``kdkit.text.terms`` for transformers). Each registers in
:data:`kdkit.registry.LOSSES`; the machinery every term shares is :mod:`kdkit.terms.base`."""

from kdkit.terms.base import (
    LossTerm,
    SetupContext,
    TermInputs,
    TermSchedule,
    build_term,
    build_terms,
    register_term,
    setup_terms,
    total_loss,
)

__all__ = ["LossTerm", "SetupContext", "TermInputs", "TermSchedule", "build_term", "build_terms", "register_term",
           "setup_terms", "total_loss"]
