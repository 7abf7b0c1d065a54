"""The lifted transforms (see README.md in this folder for the lift)."""

from .autodiff import grad as grad
from .autodiff import value_and_grad as value_and_grad
from .jit import jit as jit

__all__ = ["grad", "value_and_grad", "jit"]
