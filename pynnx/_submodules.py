"""The Flax submodule names user code reaches through ``nnx.`` (``nnx.graph.split``,
``nnx.rnglib.Rngs``, ``nnx.variablelib.Variable``, ``nnx.module.Module``, ...).

Each is a module object (also importable: ``import pynnx.graph``) holding the pynnx objects
of the names Flax's module of that name exports and pynnx implements; the objects are the
top-level ones (``nnx.graph.split is nnx.split``). Flax modules with nothing pynnx implements
(``tracers``, ``reprlib``, ``proxy_caller``, ``traversals``, ``transforms``, the Linen
``wrappers``) have no alias: an attribute error there is honest.
"""

from __future__ import annotations

import sys
import types
from collections.abc import MutableMapping
from typing import Any

_GRAPH = (
  "ApplyCaller FlatState GraphDef GraphState MergeContext PureState SplitContext State Variable "
  "as_pure cached_partial call clone find_duplicates flatten graphdef iter_children iter_graph "
  "iter_module_children map map_state merge merge_context pop pure recursive_map set_graph_mode "
  "set_graph_updates set_metadata split split_context state unflatten unpack update variables "
  "vars_as with_vars UpdateContext update_context current_update_context"
)
_PYTREE = (
  "Data Object Pytree Static Variable check_pytree data dataclass has_data is_data "
  "register_data_type static"
)

SUBMODULES: dict[str, tuple[str, str]] = {
  # alias: (the Flax module it stands for, the names it holds)
  "graph": ("flax.nnx.graph", _GRAPH),
  "graphlib": ("flax.nnx.graphlib", _GRAPH),
  "module": (
    "flax.nnx.module",
    "M Module Pytree State capture iter_children iter_module_children iter_modules split_state "
    "view view_info with_attributes",
  ),
  "object": ("flax.nnx.object", _PYTREE),
  "pytreelib": ("flax.nnx.pytreelib", _PYTREE),
  "variablelib": (
    "flax.nnx.variablelib",
    "A BatchStat Cache Intermediate Param Perturbation VarDefaults Variable VariableMetadata "
    "register_variable_name use_eager_sharding using_eager_sharding var_defaults "
    "variable_name_from_type variable_type_from_name with_metadata",
  ),
  "rnglib": (
    "flax.nnx.rnglib",
    "Pytree RngCount RngKey RngState RngStream Rngs Variable fork_rngs reseed restore_rngs "
    "split_rngs with_rngs",
  ),
  "statelib": (
    "flax.nnx.statelib",
    "FlatState State filter_state from_flat_state map_state merge_state replace_by_pure_dict "
    "restore_int_paths split_state to_flat_state to_pure_dict",
  ),
  "spmd": (
    "flax.nnx.spmd",
    "PARTITION_NAME abstract_with_sharding as_abstract eval_shape get_abstract_model "
    "get_named_sharding get_partition_spec with_partitioning",
  ),
  "helpers": (
    "flax.nnx.helpers",
    "Dict GraphDef List Module Rngs Sequential State TrainState Variable",
  ),
  "extract": ("flax.nnx.extract", "NodeStates Pytree State from_tree prefix to_tree"),
  "visualization": ("flax.nnx.visualization", "display"),
}


def install(namespace: MutableMapping[str, Any], package: str) -> None:
  """Adds one module object per :data:`SUBMODULES` entry to ``namespace`` (the package's
  globals) and to ``sys.modules`` as ``{package}.{alias}``."""
  for alias, (flax_name, names) in SUBMODULES.items():
    module = types.ModuleType(
      f"{package}.{alias}", f"pynnx's counterpart of {flax_name}: the names of it pynnx has."
    )
    present = [n for n in names.split() if n in namespace]
    for name in present:
      setattr(module, name, namespace[name])
    module.__all__ = present  # type: ignore[attr-defined]
    namespace[alias] = module
    sys.modules[f"{package}.{alias}"] = module
