"""Schemes: who teaches whom, and when. Each registers in :data:`kdkit.registry.SCHEMES`."""

from kdkit.schemes.base import BuildContext, DistillModule, FrozenTeacher, Scheme, freeze
from kdkit.schemes.offline import OfflineScheme

__all__ = ["BuildContext", "DistillModule", "FrozenTeacher", "Scheme", "freeze", "OfflineScheme"]
