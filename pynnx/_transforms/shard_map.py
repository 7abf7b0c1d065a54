"""``nnx.shard_map``: ``jax.shard_map`` over the lift.

Each argument's spec is a prefix of it (see ``prefix.py``): one ``PartitionSpec`` (or
``None``, meaning replicated) for the whole argument, or a container of its shape, e.g. a
Module built with ``jax.tree.map(lambda _: P(), model)``. Every Variable's value comes back
out of ``jax.shard_map`` with its input spec (a fixed output structure is needed before the
function is traced) and is written into the caller's Variable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import PartitionSpec

from .._core.errors import AxisSpecError
from .axes import AxesTransform
from .flat import _get_raw
from .lift import MISSING, Inner, wrap_or_decorate
from .prefix import broadcast_prefix

__all__ = ["shard_map"]

_REPLICATED = PartitionSpec()


def _spec_ok(spec: Any) -> bool:
  return spec is None or isinstance(spec, PartitionSpec)


def _none_to_replicated(specs: Any) -> Any:
  return jax.tree.map(
    lambda s: _REPLICATED if s is None else s,
    specs,
    is_leaf=lambda s: s is None or isinstance(s, PartitionSpec),
  )


def _fit(spec: Any, value: Any) -> Any:
  """``None`` -> replicated; trailing ``None`` entries beyond a leaf's rank are dropped, so one
  ``P(None)`` can stand for a whole Module holding scalars too."""
  if spec is None:
    return _REPLICATED
  ndim = getattr(value, "ndim", None)
  if ndim is None:
    ndim = len(getattr(value, "shape", ()))
  if len(spec) > ndim and all(e is None for e in spec[ndim:]):
    return PartitionSpec(*spec[:ndim])
  return spec


class ShardMapWrapped(AxesTransform):
  """A function transformed by ``nnx.shard_map``; call it like the original.

  Arguments are positional only (``jax.shard_map`` maps positional arguments).
  """

  transform = "shard_map"
  keywords = "reject"
  spec_options = ("in_specs", "out_specs")
  mesh: Any
  in_specs: Any
  out_specs: Any
  check_vma: bool
  axis_names: Any

  def setup(self) -> None:
    super().setup()
    self.axis_names = frozenset(self.axis_names)

  def slot_spec(self, key: int | str, n_pos: int) -> Any:
    specs = self.in_specs
    if specs is None or isinstance(specs, PartitionSpec):
      return specs
    if isinstance(specs, (tuple, list)):
      if len(specs) != n_pos:
        raise AxisSpecError(
          f"{self.api}: in_specs has {len(specs)} entries but the function was called with "
          f"{n_pos} positional arguments. Give one spec (or spec tree) per argument."
        )
      return specs[key]  # type: ignore[index]  # keywords are rejected: key is a position
    raise AxisSpecError(
      f"{self.api}: in_specs must be a PartitionSpec, None, or a tuple with one spec per "
      f"argument; got {type(specs).__name__}."
    )

  def expand(self, call: Any) -> list:
    """Per slot, one spec per leaf of its plan."""
    return [
      broadcast_prefix(
        spec,
        arg,
        plan,
        self.api,
        name,
        what="in_specs",
        leaf_ok=_spec_ok,
        leaf_desc="a PartitionSpec or None",
      )
      for spec, arg, plan, name in zip(
        self.specs_for(call), call.slots, call.static.plans, call.names, strict=True
      )
    ]

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    call = self.bind(args, kwargs)
    flat, static = call.flat, call.static
    in_specs = tuple(
      [_fit(s, v) for s, v in zip(specs, values, strict=True)]
      for specs, values in zip(self.leaf_specs(call), flat.values, strict=True)
    )
    var_specs = [[in_specs[a][i] for i in plan.var_idx] for a, plan in enumerate(flat.plans)]
    out_specs = (call.out_prefix(_none_to_replicated(self.out_specs), PartitionSpec()), var_specs)
    f = self.f

    def inner(*values: Any):
      with Inner(static, values, "shard_map", fixed=True, call=call) as scope:
        out = scope.output(scope.call(f))
        new = [[_get_raw(v) for v in fresh] for _, fresh in scope.rebuilt]
      return out, new

    mapped = jax.shard_map(
      self.named(inner),
      mesh=self.mesh,
      in_specs=in_specs,
      out_specs=out_specs,
      axis_names=self.axis_names,
      check_vma=self.check_vma,
    )
    out, new = mapped(*flat.values)
    updates = [dict(zip(p.var_idx, vals, strict=True)) for p, vals in zip(flat.plans, new)]
    return call.finish(out, updates)


def shard_map(
  f: Callable = MISSING,
  *,
  mesh: Any,
  in_specs: Any,
  out_specs: Any,
  axis_names: Any = frozenset(),
  check_vma: bool = True,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.shard_map``: Modules are arguments, Variable updates are written back.

  ``in_specs`` has one entry per argument: a ``PartitionSpec`` (or ``None``: replicated)
  for every leaf of it, or a tree of its shape whose leaves are specs. Updated Variables come
  back with their input spec.

  Example:
    >>> import jax, jax.numpy as jnp, pynnx as nnx
    >>> from jax.sharding import PartitionSpec as P
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ('data',))
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> f = nnx.shard_map(lambda m, x: m(x), mesh=mesh, in_specs=(P(), P('data')),
    ...                   out_specs=P('data'))
    >>> f(m, jnp.ones((4, 2))).shape
    (4, 3)
  """
  return wrap_or_decorate(ShardMapWrapped, locals())
