"""Schemes: who teaches whom, and when. Each registers in :data:`kdkit.registry.SCHEMES`: ``offline`` (one or many
frozen teachers, or a soft-label store), ``online``, ``mutual``, ``self_distill``, ``specialists``, ``bss``. Pipelines
of whole runs (born-again, teacher-assistant chains, ...) are :mod:`kdkit.pipeline`, above the builder."""

from kdkit.schemes.base import BuildContext, DistillModule, Scheme

__all__ = ["BuildContext", "DistillModule", "Scheme"]
