"""Training engine: a plain loop on Hugging Face Accelerate. Nothing method-specific lives here."""

from kdkit.engine.evaluate import evaluate
from kdkit.engine.loop import Engine, FitResult
from kdkit.engine.schedule import lr_at

__all__ = ["Engine", "FitResult", "evaluate", "lr_at"]
