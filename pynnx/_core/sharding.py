"""Sharding metadata on Variables: ``with_partitioning``, ``get_partition_spec``, ...

A Variable's logical sharding is the tuple of mesh axis names (or None) stored in its
metadata under ``out_sharding`` (Flax 0.12's key; the older ``sharding_names`` is read
too). ``get_partition_spec`` turns a tree of Variables into PartitionSpecs,
``get_named_sharding`` into NamedShardings on a mesh, for ``jax.jit``/``nnx.jit``
shardings, ``jax.device_put`` or orbax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from .eager import apply_axis_rules
from .errors import ArgumentTypeError
from .variables import Variable, is_variable

SHARDING_KEYS = ("out_sharding", "sharding_names")


def sharding_key(metadata: Mapping[str, Any]) -> str | None:
  """The metadata key holding the sharding names, if any."""
  for key in SHARDING_KEYS:
    if metadata.get(key) is not None:
      return key
  return None


def sharding_names(var: Variable) -> tuple | None:
  """The sharding names of ``var`` (a tuple of axis names / None), or None."""
  key = sharding_key(var._metadata)
  return None if key is None else tuple(var._metadata[key])


@dataclasses.dataclass(frozen=True)
class VariableMetadata:
  """A value plus metadata, returned by wrapped initializers; Variables unwrap it.

  The ``on_*`` fields are Flax's (deprecated) Variable hooks: ``on_create_value`` hooks map
  the initial value, ``on_add_axis`` / ``on_remove_axis`` hooks run in
  ``Variable.add_axis`` / ``remove_axis``. ``on_get_value`` / ``on_set_value`` are rejected
  when the Variable is built (override ``get_value`` / ``set_value`` in a subclass instead).

  Example:
    >>> boxed = nnx.VariableMetadata(jnp.zeros(2), metadata={"note": "x"})
    >>> nnx.Param(boxed).note
    'x'
  """

  raw_value: Any
  on_set_value: tuple[Callable[..., Any], ...] = ()
  on_get_value: tuple[Callable[..., Any], ...] = ()
  on_create_value: tuple[Callable[..., Any], ...] = ()
  on_add_axis: tuple[Callable[..., Any], ...] = ()
  on_remove_axis: tuple[Callable[..., Any], ...] = ()
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  _pynnx_variable_metadata = True  # what Variable.__init__ looks for


@dataclasses.dataclass(frozen=True)
class _WithMetadata:
  initializer: Callable[..., Any]
  metadata: tuple

  def __call__(self, *args: Any, **kwargs: Any) -> VariableMetadata:
    value = self.initializer(*args, **kwargs)
    if isinstance(value, VariableMetadata):  # nested wrappers: merge, outer wins
      return dataclasses.replace(value, metadata={**value.metadata, **dict(self.metadata)})
    return VariableMetadata(value, metadata=dict(self.metadata))


def with_metadata(initializer: Callable[..., Any], **metadata: Any) -> Callable[..., Any]:
  """Wraps ``initializer`` so the Variable built from its value carries ``metadata``.

  Example:
    >>> import jax, pynnx as nnx
    >>> init = nnx.with_metadata(nnx.initializers.ones, note="tied")
    >>> nnx.Param(init(jax.random.key(0), (2,))).get_metadata("note")
    'tied'
  """
  return _WithMetadata(initializer, tuple(sorted(metadata.items())))


def with_partitioning(
  initializer: Callable[..., Any], sharding: tuple, mesh: Any = None, **metadata: Any
) -> Callable[..., Any]:
  """Wraps ``initializer`` so its Variable records logical sharding names.

  Example:
    >>> import jax, pynnx as nnx
    >>> init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))
    >>> layer = nnx.Linear(2, 4, kernel_init=init, rngs=nnx.Rngs(0))
    >>> nnx.get_partition_spec(nnx.state(layer))["kernel"].value
    P(None, 'model')
  """
  return with_metadata(initializer, out_sharding=tuple(sharding), mesh=mesh, **metadata)


def _spec(x: Any) -> Any:
  if isinstance(x, Variable):
    names = sharding_names(x)
    if names is None:
      return x.replace(PartitionSpec())
    names = apply_axis_rules(names, x._metadata.get("sharding_rules"))
    return x.replace(PartitionSpec(*names))
  return PartitionSpec()


def get_partition_spec(tree: Any) -> Any:
  """``tree`` with each Variable's value replaced by its PartitionSpec (``P()`` if none).

  Logical axis names are renamed to mesh axes by the enclosing ``nnx.logical_axis_rules``
  block and the Variable's own ``sharding_rules`` metadata, as when the Variable is created.

  Example:
    >>> p = nnx.Param(jnp.ones((2, 4)), out_sharding=("embed", "mlp"))
    >>> with nnx.logical_axis_rules([("embed", None), ("mlp", "model")]):
    ...   nnx.get_partition_spec(p).value
    P(None, 'model')
  """
  return jax.tree.map(_spec, tree, is_leaf=is_variable)


def get_named_sharding(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """``tree`` with each value replaced by a NamedSharding on ``mesh`` from its metadata."""
  if not isinstance(mesh, (jax.sharding.Mesh, jax.sharding.AbstractMesh)):
    raise ArgumentTypeError(
      f"nnx.get_named_sharding(tree, mesh) needs a jax.sharding.Mesh, got "
      f"{type(mesh).__name__} {mesh!r:.40}; build one with `jax.make_mesh(...)`."
    )

  def named(x: Any) -> Any:
    spec = _spec(x)
    if isinstance(spec, Variable):
      return spec.replace(NamedSharding(mesh, spec.get_value()))
    return NamedSharding(mesh, spec)

  return jax.tree.map(named, tree, is_leaf=is_variable)
