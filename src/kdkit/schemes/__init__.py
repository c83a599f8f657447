"""Schemes: who teaches whom, and when. Each registers in :data:`kdkit.registry.SCHEMES`."""

from kdkit.models import students as _students  # noqa: F401  (registers the shrink:, qat:, exits: model prefixes)
from kdkit.schemes import adversarial, mutual, online, pipeline, self_distill, specialists  # noqa: F401  (registration)
from kdkit.schemes.base import BuildContext, DistillModule, FrozenTeacher, Scheme, freeze
from kdkit.schemes.offline import OfflineScheme

__all__ = ["BuildContext", "DistillModule", "FrozenTeacher", "Scheme", "freeze", "OfflineScheme"]
