"""pynnx Variables <-> Flax Linen variable collections (``nnx.bridge.variables``).

Linen keeps a model's state as ``{collection: nested dict}`` (``{'params': {'Dense_0':
{'kernel': ...}}}``); pynnx keeps it as Variables whose *type* is the collection. The
collection name of a type is the one given to :func:`pynnx.register_variable_name`
(``'params'`` <-> :class:`~pynnx.Param`, ``'batch_stats'`` <-> :class:`~pynnx.BatchStat`, ...);
an unknown collection gets a new Variable subclass named after it. A Linen metadata box
(``nn.Partitioned``, ``nn.LogicallyPartitioned``) becomes the Variable's metadata and comes
back as the same box; other Variable metadata travels in an :class:`NNXMeta` box.

This module imports Flax (an optional dependency): ``import pynnx`` does not load it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
from flax import struct
from flax.core import meta

import pynnx as nnx
from pynnx._core.errors import LinenBridgeError

__all__ = [
  "NNXMeta",
  "is_vanilla_variable",
  "linen_vars_to_nnx_attrs",
  "nnx_attrs_to_linen_vars",
  "to_linen_var",
  "to_nnx_var",
  "with_partitioning",
]

# Metadata every Variable carries; it does not make a Variable worth boxing.
_DEFAULT_KEYS = frozenset(nnx.Variable.required_metadata)


class NNXMeta(struct.PyTreeNode, meta.AxisMetadata):
  """A Linen box for a Variable whose metadata Linen has no box for.

  ``unbox()`` gives the array to Linen code; :func:`to_nnx_var` rebuilds the Variable (same
  type, same metadata) from it.

  Example:
    >>> box = nnx.bridge.NNXMeta(nnx.Param, jnp.ones(2), {"note": "x"})
    >>> nnx.bridge.variables.to_nnx_var("params", box).get_metadata()["note"]
    'x'
  """

  var_type: type = struct.field(pytree_node=False)
  value: Any
  metadata: dict = struct.field(pytree_node=False)

  def unbox(self) -> Any:
    return self.value

  def replace_boxed(self, val: Any) -> NNXMeta:
    return self.replace(value=val)

  def add_axis(self, index: int, params: dict) -> NNXMeta:
    return self  # Linen's lifted transforms call this; the Variable keeps its own metadata

  def remove_axis(self, index: int, params: dict) -> NNXMeta:
    return self

  def get_partition_spec(self) -> jax.sharding.PartitionSpec:
    """The PartitionSpec of the Variable's sharding names (``P()`` if it has none)."""
    names = self.metadata.get("out_sharding", self.metadata.get("sharding_names"))
    return jax.sharding.PartitionSpec(*names) if names else jax.sharding.PartitionSpec()

  def to_nnx_variable(self) -> nnx.Variable:
    """The Variable this box stands for."""
    return self.var_type(self.value, **self.metadata)


def is_vanilla_variable(variable: nnx.Variable) -> bool:
  """True if ``variable`` has no metadata beyond the defaults (Linen stores it unboxed)."""
  return all(
    key in _DEFAULT_KEYS or (key.endswith("_hooks") and value == ())
    for key, value in variable.get_metadata().items()
  )


def to_linen_var(variable: nnx.Variable) -> Any:
  """The Linen value of ``variable``: its own box type if it came from one, the bare value
  if it has no extra metadata, else an :class:`NNXMeta`.

  Example:
    >>> nnx.bridge.variables.to_linen_var(nnx.Param(jnp.zeros(2)))
    Array([0., 0.], dtype=float32)
  """
  if not isinstance(variable, nnx.Variable):
    raise LinenBridgeError(
      f"to_linen_var expects an nnx.Variable, got {type(variable).__name__}; wrap the value "
      f"first (`nnx.Param(value)`)."
    )
  metadata = variable.get_metadata()
  value = variable.get_value()
  box_type = metadata.get("linen_meta_type")
  if box_type is not None:
    extra = {k: v for k, v in metadata.items() if k not in _DEFAULT_KEYS | {"linen_meta_type"}}
    if hasattr(box_type, "from_nnx_metadata"):
      return box_type.from_nnx_metadata({"value": value, **extra})
    return box_type(value, **extra)
  if is_vanilla_variable(variable):
    return value
  return NNXMeta(type(variable), value, metadata)


def to_nnx_var(collection: str, value: Any) -> nnx.Variable:
  """The Variable for ``value`` found in Linen collection ``collection``.

  Example:
    >>> v = nnx.bridge.variables.to_nnx_var("batch_stats", jnp.zeros(2))
    >>> type(v).__name__
    'BatchStat'
  """
  var_type = nnx.variable_type_from_name(collection, allow_register=True)
  if isinstance(value, NNXMeta):
    if not issubclass(value.var_type, var_type):
      raise LinenBridgeError(
        f"collection {collection!r} holds an NNXMeta box of a {value.var_type.__name__}, but "
        f"{collection!r} is the collection of {var_type.__name__}; register the matching name "
        f"(`nnx.register_variable_name({collection!r}, {value.var_type.__name__}, "
        f"overwrite=True)`) or store the value in its own collection."
      )
    return value.to_nnx_variable()
  if isinstance(value, meta.AxisMetadata):
    fields = value.to_nnx_metadata() if hasattr(value, "to_nnx_metadata") else dict(vars(value))
    fields = dict(fields)
    raw = fields.pop("value")
    return var_type(raw, **fields, linen_meta_type=type(value))
  return var_type(value)


def _flat(tree: Mapping, where: str) -> dict[tuple, Any]:
  if not isinstance(tree, Mapping):
    raise LinenBridgeError(
      f"{where} expects a nested dict, got {type(tree).__name__}; pass e.g. "
      f"`{{'params': {{'kernel': ...}}}}`."
    )
  return nnx.traversals.flatten_mapping(
    tree, is_leaf=lambda _, x: isinstance(x, (nnx.Variable, meta.AxisMetadata))
  )


def linen_vars_to_nnx_attrs(variables: Mapping[str, Any]) -> dict[str, Any]:
  """Linen ``{collection: nested dict}`` -> one nested dict of Variables (collections merged).

  Example:
    >>> attrs = nnx.bridge.variables.linen_vars_to_nnx_attrs(
    ...   {"params": {"w": jnp.ones(2)}, "batch_stats": {"mean": jnp.zeros(2)}})
    >>> sorted((k, type(v).__name__) for k, v in attrs.items())
    [('mean', 'BatchStat'), ('w', 'Param')]
  """
  out: dict[tuple, nnx.Variable] = {}
  owner: dict[tuple, str] = {}
  for (collection, *rest), value in _flat(variables, "linen_vars_to_nnx_attrs").items():
    path = tuple(rest)
    if path in out:
      raise LinenBridgeError(
        f"Linen variable {'/'.join(map(str, path))} is in both collection "
        f"{owner[path]!r} and {collection!r}; a pynnx Module holds one Variable per "
        f"attribute path. Give one of them another name in the Linen module."
      )
    out[path], owner[path] = to_nnx_var(collection, value), collection
  return nnx.traversals.unflatten_mapping(out)


def nnx_attrs_to_linen_vars(nnx_attrs: Mapping[str, Any]) -> dict[str, Any]:
  """A nested dict of Variables -> Linen ``{collection: nested dict}`` of Linen values.

  Example:
    >>> nnx.bridge.variables.nnx_attrs_to_linen_vars({"d": {"w": nnx.Param(jnp.ones(1))}})
    {'params': {'d': {'w': Array([1.], dtype=float32)}}}
  """
  out: dict[tuple, Any] = {}
  for path, value in _flat(nnx_attrs, "nnx_attrs_to_linen_vars").items():
    if not isinstance(value, nnx.Variable):
      raise LinenBridgeError(
        f"nnx_attrs_to_linen_vars: {'.'.join(map(str, path))} is a {type(value).__name__}, "
        f"not an nnx.Variable, so it has no Linen collection; wrap it "
        f"(`nnx.Param(value)`, `nnx.BatchStat(value)`, ...)."
      )
    out[(nnx.variable_name_from_type(type(value), allow_register=True), *path)] = to_linen_var(
      value
    )
  return nnx.traversals.unflatten_mapping(out)


def with_partitioning(
  fn: Callable[..., Any], names: tuple, mesh: jax.sharding.Mesh | None = None
) -> Callable[..., Any]:
  """:func:`pynnx.with_partitioning` whose Variables reach Linen as ``nn.Partitioned`` boxes.

  Use it for the initializers of a pynnx layer wrapped by :class:`~pynnx.bridge.ToLinen`.

  Example:
    >>> init = nnx.bridge.with_partitioning(nnx.initializers.ones, ("a", None))
    >>> layer = nnx.Linear(2, 3, kernel_init=init, rngs=nnx.Rngs(0))
    >>> type(nnx.bridge.variables.to_linen_var(layer.kernel)).__name__
    'Partitioned'
  """
  return nnx.with_partitioning(fn, names, mesh, linen_meta_type=meta.Partitioned)
