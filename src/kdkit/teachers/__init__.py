"""The teacher seam: where the teacher signal comes from, behind one interface (:class:`kdkit.types.TeacherSource`).

* :mod:`kdkit.teachers.frozen` -- frozen, pre-trained networks (one or several, combined);
* :mod:`kdkit.teachers.store` -- logits read back from a soft-label store;
* :mod:`kdkit.teachers.adapters` -- teachers that expect another input (size, channels, normalisation);
* the specialists scheme's generalist + specialists target (:class:`kdkit.schemes.specialists.SpecialistTeacher`).
"""

from kdkit.teachers.frozen import FrozenTeacher, FrozenTeachers, freeze
from kdkit.teachers.store import StoreTeacher

__all__ = ["FrozenTeacher", "FrozenTeachers", "StoreTeacher", "freeze"]
