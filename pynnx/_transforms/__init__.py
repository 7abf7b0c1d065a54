"""The lifted transforms (see README.md in this folder for the lift)."""

from .autodiff import grad, jvp, value_and_grad, vjp
from .capture import capture
from .control_flow import cond, fori_loop, switch, while_loop
from .custom_vjp import custom_vjp
from .eval_shape import eval_shape
from .graph_adapter import DiffState, StateAxes, StateSharding
from .inspect import checkify, make_jaxpr
from .jit import jit
from .metadata import transform_metadata
from .partial import cached_partial, jit_partial
from .pmap import pmap
from .prefixes import prefix
from .remat import remat
from .scan import Carry, scan
from .shard_map import shard_map
from .vmap import PARTITION_NAME, vmap

__all__ = [
  "DiffState",
  "StateAxes",
  "StateSharding",
  "eval_shape",
  "remat",
  "shard_map",
  "vmap",
  "scan",
  "Carry",
  "PARTITION_NAME",
  "cond",
  "switch",
  "while_loop",
  "fori_loop",
  "grad",
  "value_and_grad",
  "jit",
  "vjp",
  "jvp",
  "custom_vjp",
  "checkify",
  "make_jaxpr",
  "pmap",
  "jit_partial",
  "cached_partial",
  "prefix",
  "capture",
  "transform_metadata",
]
