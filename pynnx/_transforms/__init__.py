"""The lifted transforms (see README.md in this folder for the lift)."""

from .autodiff import grad as grad
from .autodiff import value_and_grad as value_and_grad
from .jit import jit as jit
from .linearize import jvp as jvp
from .linearize import vjp as vjp
from .custom_vjp import custom_vjp as custom_vjp
from .control_flow import cond as cond
from .control_flow import fori_loop as fori_loop
from .control_flow import switch as switch
from .control_flow import while_loop as while_loop

__all__ = ["cond", "switch", "while_loop", "fori_loop", "grad", "value_and_grad", "jit", "vjp", "jvp", "custom_vjp"]
