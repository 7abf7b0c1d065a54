"""``nnx.eval_shape``: ``jax.eval_shape`` over the lift.

Nothing is computed: the function is traced with abstract values. Modules it builds come out
abstract (their Variables hold ``jax.ShapeDtypeStruct``), which is how a large model is
described before it is materialised (e.g. sharded directly onto devices). The arguments are
never changed: updates made to them while tracing are abstract and are dropped.

A Variable whose metadata has ``sharding_names`` gets a ``NamedSharding`` on its
``ShapeDtypeStruct`` when a mesh is active (``jax.set_mesh``) and the names fit it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from .._core.sharding import sharding_names
from .._core.variables import Variable, is_variable
from .flat import _RAW, _get_raw
from .lift import Transform

__all__ = ["eval_shape"]


def _active_mesh() -> Any:
  """The concrete mesh set with ``jax.set_mesh``, else the abstract one (inside ``jit``)."""
  try:
    mesh = jax.sharding.get_mesh()
  except ValueError:  # under jax.jit only the abstract mesh can be read
    mesh = None
  if mesh is not None and not mesh.empty:
    return mesh
  abstract = jax.sharding.get_abstract_mesh()
  return None if abstract.empty else abstract


def _names_fit(names: Any, ndim: int, mesh: Any) -> bool:
  if not isinstance(names, (tuple, list)) or len(names) > ndim:
    return False
  axes = set(mesh.axis_names)
  for entry in names:
    parts = entry if isinstance(entry, (tuple, list)) else (entry,)
    if any(p is not None and p not in axes for p in parts):
      return False
  return True


def _replicated(sharding: Any) -> bool:
  if sharding is None:
    return True
  spec = getattr(sharding, "spec", None)
  return spec is not None and all(e is None for e in spec)


def add_shardings(tree: Any, mesh: Any) -> None:
  """Gives abstract Variables with ``sharding_names`` a NamedSharding on ``mesh`` (in place)."""
  for leaf in jax.tree_util.tree_leaves(tree, is_leaf=is_variable):
    if not isinstance(leaf, Variable):
      continue
    value = _get_raw(leaf)
    names = sharding_names(leaf)
    if names is None or not isinstance(value, jax.ShapeDtypeStruct):
      continue
    if not _replicated(value.sharding) or not _names_fit(names, len(value.shape), mesh):
      continue
    sharding = NamedSharding(mesh, PartitionSpec(*names))
    _RAW.__set__(
      leaf,
      jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding, weak_type=value.weak_type),
    )


class _EvalShape(Transform):
  transform = "eval_shape"

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    call = self.bind(args, kwargs)
    out, _ = jax.eval_shape(self.run_once(call), *call.flat.values)
    mesh = _active_mesh()
    if mesh is not None:
      add_shardings(out, mesh)
    # The arguments are never changed: abstract updates made while tracing are dropped.
    return call.finish(out, [{} for _ in call.flat.plans])


def eval_shape(
  f: Callable,
  *args: Any,
  graph: bool | None = None,
  graph_updates: bool | None = None,
  **kwargs: Any,
) -> Any:
  """Lifted ``jax.eval_shape``: shapes and dtypes of ``f(*args, **kwargs)`` without FLOPs.

  Arguments may be Modules (concrete or abstract). Modules in the output hold
  ``jax.ShapeDtypeStruct`` values; an input Module returned comes back as the caller's own.

  Example:
    >>> import pynnx as nnx
    >>> abstract = nnx.eval_shape(lambda: nnx.Linear(1000, 1000, rngs=nnx.Rngs(0)))
    >>> abstract.kernel[...]
    ShapeDtypeStruct(shape=(1000, 1000), dtype=float32)
  """
  return _EvalShape(f, graph=graph, graph_updates=graph_updates)(*args, **kwargs)
