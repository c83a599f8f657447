"""Teacher soft-label store: run the teacher(s) once, distil at the cost of training the student alone.

``kdkit cache RECIPE --views V --topk K`` stores the top-k teacher logits (fp16) and class indices of V replayable
augmented views of every training sample (:mod:`kdkit.softlabels.cache`, format in :mod:`kdkit.softlabels.store`);
``soft_labels: PATH`` in a recipe makes ``distill`` read them instead of running the teacher
(:mod:`kdkit.softlabels.loader`). Guide: docs/softlabels.md.
"""

from kdkit.softlabels.cache import CacheResult, build_cache, default_store_path, identity_diff, run_identity
from kdkit.softlabels.loader import SoftLabelLoader, attach_soft_labels, check_recipe_can_use_store
from kdkit.softlabels.store import SoftLabelStore, bytes_per_row, decode_topk, encode_topk, state_dict_sha256

__all__ = [
    "CacheResult",
    "SoftLabelLoader",
    "SoftLabelStore",
    "attach_soft_labels",
    "build_cache",
    "bytes_per_row",
    "check_recipe_can_use_store",
    "decode_topk",
    "default_store_path",
    "encode_topk",
    "identity_diff",
    "run_identity",
    "state_dict_sha256",
]
