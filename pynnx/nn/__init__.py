"""Layers, written on pynnx's public API only."""

from . import initializers as initializers
from .linear import Linear as Linear

__all__ = ["Linear", "initializers"]
