"""The lifted transforms (see README.md in this folder for the lift)."""

from .autodiff import grad as grad
from .autodiff import jvp as jvp
from .autodiff import value_and_grad as value_and_grad
from .autodiff import vjp as vjp
from .capture import capture as capture
from .control_flow import cond as cond
from .control_flow import fori_loop as fori_loop
from .control_flow import switch as switch
from .control_flow import while_loop as while_loop
from .custom_vjp import custom_vjp as custom_vjp
from .eval_shape import eval_shape as eval_shape
from .graph_adapter import DiffState as DiffState
from .graph_adapter import StateAxes as StateAxes
from .graph_adapter import StateSharding as StateSharding
from .inspect import checkify as checkify
from .inspect import make_jaxpr as make_jaxpr
from .jit import jit as jit
from .metadata import transform_metadata as transform_metadata
from .partial import cached_partial as cached_partial
from .partial import jit_partial as jit_partial
from .pmap import pmap as pmap
from .prefixes import prefix as prefix
from .remat import remat as remat
from .scan import Carry as Carry
from .scan import scan as scan
from .shard_map import shard_map as shard_map
from .vmap import PARTITION_NAME as PARTITION_NAME
from .vmap import vmap as vmap

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
