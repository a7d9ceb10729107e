"""Compile models into edge artifacts: `compile_model(module, example_inputs, target=, backend=, output=)`."""
from .pipeline import compile_model

__all__ = ["compile_model"]
