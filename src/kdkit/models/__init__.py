"""Model zoo and factory.

Importing this package registers every zoo model in :data:`kdkit.registry.MODELS` (CIFAR ResNet / WRN / VGG /
MobileNetV2 / ShuffleNet, small MLP / CNN). :func:`create_model` builds zoo, ``torchvision:``, ``timm:`` and
``ccexam:`` models by name; :func:`load_weights` / :func:`save_weights` move local weights in and out;
:func:`default_stages` names a model's stage feature maps for feature-KD terms. See :mod:`kdkit.models.base` for the
feature contract every zoo model satisfies.
"""

from kdkit.models import mobilenetv2, resnet, shufflenet, small, vgg, wrn  # noqa: F401  (registration)
from kdkit.models.base import ClassifierNet, count_params
from kdkit.models.factory import (
    LoadReport,
    create_model,
    default_stages,
    known_prefixes,
    load_weights,
    model_summary,
    read_state_dict,
    register_prefix,
    replace_first_conv,
    save_weights,
)

__all__ = [
    "ClassifierNet",
    "LoadReport",
    "count_params",
    "create_model",
    "default_stages",
    "known_prefixes",
    "load_weights",
    "model_summary",
    "read_state_dict",
    "register_prefix",
    "replace_first_conv",
    "save_weights",
]
