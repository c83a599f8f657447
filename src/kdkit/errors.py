"""User-facing errors.

A :class:`KdkitError` carries one line that names the field, layer or file at fault and says how to fix it. The CLI
prints it without a traceback; library users can catch it.
"""

from __future__ import annotations


class KdkitError(Exception):
    """An error caused by user input (recipe, data, checkpoint, model name), with a one-line message."""


class ConfigError(KdkitError, ValueError):
    """A recipe field is missing, unknown or has a wrong value."""


class DataError(KdkitError, ValueError):
    """A dataset could not be found or read."""


class ShapeError(KdkitError, ValueError):
    """Two tensors that a loss or connector must align have incompatible shapes."""


class CheckpointError(KdkitError, ValueError):
    """A checkpoint is missing, unreadable or does not match the model."""
