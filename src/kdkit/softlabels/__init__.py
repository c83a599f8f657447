"""Teacher soft-label store: run the teacher(s) once, distil at the cost of training the student alone.

``kdkit cache RECIPE --views V --topk K`` (or ``kdkit.cache``) stores the top-k teacher logits (fp16) and class
indices of V replayable augmented views of every training sample (:mod:`kdkit.softlabels.cache`, format in
:mod:`kdkit.softlabels.store`, what a store depends on in :mod:`kdkit.softlabels.identity`); ``soft_labels: PATH`` in
a recipe makes ``distill`` read them instead of running the teacher (:class:`kdkit.teachers.StoreTeacher`).
Guide: docs/softlabels.md.
"""

from kdkit.softlabels.identity import identity_diff, run_identity
from kdkit.softlabels.store import SoftLabelStore, bytes_per_row, decode_topk, encode_topk, state_dict_sha256

__all__ = [
    "SoftLabelStore",
    "bytes_per_row",
    "decode_topk",
    "encode_topk",
    "identity_diff",
    "run_identity",
    "state_dict_sha256",
]
