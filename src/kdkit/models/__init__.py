"""Model zoo and factory.

The zoo modules (CIFAR ResNet / WRN / VGG / MobileNetV2 / ShuffleNet, small MLP / CNN) register in
:data:`kdkit.registry.MODELS`; :func:`create_model` builds zoo, ``torchvision:``, ``timm:``, ``ccexam:``, ``py:`` and
every other registered source's models by name (:data:`kdkit.registry.MODEL_SOURCES`); :func:`load_model` rebuilds a
saved model from its checkpoint metadata; :func:`default_stages` names a model's stage feature maps for feature-KD
terms. Weights move in and out through :mod:`kdkit.weights`. See :mod:`kdkit.models.base` for the feature contract
every zoo model satisfies.
"""

from kdkit.models.base import ClassifierNet, count_params
from kdkit.models.factory import (
    create_model,
    default_stages,
    known_prefixes,
    load_model,
    model_summary,
    replace_first_conv,
)
from kdkit.weights import LoadReport, load_weights, read_state_dict, save_weights

__all__ = [
    "ClassifierNet",
    "LoadReport",
    "count_params",
    "create_model",
    "default_stages",
    "known_prefixes",
    "load_model",
    "load_weights",
    "model_summary",
    "read_state_dict",
    "replace_first_conv",
    "save_weights",
]
