"""Using trained checkpoints: loading, held-out evaluation, generation and forecasting (docs/inference.md)."""

from mpirnn.inference.load import load_checkpoint

__all__ = ["load_checkpoint"]
