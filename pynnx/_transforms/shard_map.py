"""``nnx.shard_map``: ``jax.shard_map`` over the lift.

Each argument's spec is a prefix of it (see ``prefix.py``): one ``PartitionSpec`` (or
``None``, meaning replicated) for the whole argument, or a container of its shape, e.g. a
Module built with ``jax.tree.map(lambda _: P(), model)``. Every Variable's value comes back
out of ``jax.shard_map`` with its input spec (a fixed output structure is needed before the
function is traced) and is written into the caller's Variable.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import PartitionSpec

from .._core.config import resolve_graph
from .._core.errors import AxisSpecError
from . import graph_adapter
from .lift import (
  MISSING,
  InnerFrame,
  MethodAware,
  SharingCheck,
  _get_raw,
  arg_names,
  argnames_of,
  check_not_bound,
  flatten_args,
  rebuild_arg,
  wrap_or_decorate,
  write_back,
)
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


class ShardMapWrapped(MethodAware):
  """A function transformed by ``nnx.shard_map``; call it like the original."""

  def __init__(
    self,
    f: Callable,
    *,
    mesh: Any,
    in_specs: Any,
    out_specs: Any,
    axis_names: Any,
    check_vma: bool,
    graph: bool | None,
    graph_updates: bool | None,
  ):
    check_not_bound(f, "shard_map")
    functools.update_wrapper(self, f)
    self.f = f
    self.mesh = mesh
    self.in_specs = in_specs
    self.out_specs = out_specs
    self.axis_names = frozenset(axis_names)
    self.check_vma = check_vma
    self.graph = graph
    self.graph_updates = graph_updates
    self.api = f"pynnx.shard_map({getattr(f, '__name__', 'f')})"
    self.argnames = argnames_of(f)
    self.check = SharingCheck(self.api, self.argnames)
    self.forced_graph = graph_adapter.specs_force_graph(self.api, graph, in_specs, out_specs)
    self._cache: dict = {}

  def _arg_specs(self, n: int) -> list:
    specs = self.in_specs
    if specs is None or isinstance(specs, PartitionSpec):
      return [specs] * n
    if isinstance(specs, (tuple, list)):
      if len(specs) != n:
        raise AxisSpecError(
          f"{self.api}: in_specs has {len(specs)} entries but the function was called with "
          f"{n} positional arguments. Give one spec (or spec tree) per argument."
        )
      return list(specs)
    raise AxisSpecError(
      f"{self.api}: in_specs must be a PartitionSpec, None, or a tuple with one spec per "
      f"argument; got {type(specs).__name__}."
    )

  def _leaf_specs(self, args: tuple, plans: tuple, arg_specs: list) -> list:
    """Per argument, one spec per leaf of its plan (cached by the plans)."""
    leaf_specs = self._cache.get(plans)
    if leaf_specs is None:
      leaf_specs = [
        broadcast_prefix(
          spec,
          arg,
          plan,
          self.api,
          arg_names(self.argnames, i + 1)[i],
          what="in_specs",
          leaf_ok=_spec_ok,
          leaf_desc="a PartitionSpec or None",
        )
        for i, (spec, arg, plan) in enumerate(zip(arg_specs, args, plans, strict=True))
      ]
      if len(self._cache) > 32:
        self._cache.clear()
      self._cache[plans] = leaf_specs
    return leaf_specs

  def __call__(self, *args: Any) -> Any:
    gs = None
    arg_specs = self._arg_specs(len(args))
    if self.forced_graph or resolve_graph(self.graph):
      # Graph mode: the adapter turns Modules into GraphNodes, a StateSharding into one
      # State per filter and a GraphNode-shaped prefix of specs.
      def filters(path: tuple, root: Any) -> tuple:
        if len(path) == 2 and path[0] == 0:
          return graph_adapter.spec_filters(arg_specs[path[1]])
        return ()

      graph_adapter.check_shared_specs(
        self.api, "in_specs", args, arg_specs, arg_names(self.argnames, len(args))
      )
      args, _, gs = graph_adapter.to_tree(args, {}, self.api, self.graph_updates, filters)
      arg_specs = [
        graph_adapter.node_prefix(s, a, default=PartitionSpec()) for s, a in zip(arg_specs, args)
      ]
    flat = flatten_args(args, self.check)
    plans = flat.plans
    leaf_specs = self._leaf_specs(args, plans, arg_specs)
    in_specs = tuple(
      [_fit(s, v) for s, v in zip(specs, values, strict=True)]
      for specs, values in zip(leaf_specs, flat.values, strict=True)
    )
    var_specs = [[in_specs[a][i] for i in plan.var_idx] for a, plan in enumerate(plans)]
    out_specs = (_none_to_replicated(self.out_specs), var_specs)
    f = self.f

    def inner(*values: Any):
      with InnerFrame("shard_map"):
        rebuilt = [rebuild_arg(p, v) for p, v in zip(plans, values, strict=True)]
        call_args = [a for a, _ in rebuilt]
        if gs is not None:
          call_args, _, finish = graph_adapter.enter(gs, call_args, {})
          out = finish(f(*call_args))
        else:
          out = f(*call_args)
        new = [[_get_raw(v) for v in fresh] for _, fresh in rebuilt]
      return out, new

    mapped = jax.shard_map(
      inner,
      mesh=self.mesh,
      in_specs=in_specs,
      out_specs=out_specs,
      axis_names=self.axis_names,
      check_vma=self.check_vma,
    )
    out, new = mapped(*flat.values)
    updates = [dict(zip(p.var_idx, vals, strict=True)) for p, vals in zip(plans, new, strict=True)]
    write_back(flat, updates)
    if gs is not None:
      out = graph_adapter.exit(gs, out)
    return out


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
  kw = dict(
    mesh=mesh,
    in_specs=in_specs,
    out_specs=out_specs,
    axis_names=axis_names,
    check_vma=check_vma,
    graph=graph,
    graph_updates=graph_updates,
  )
  return wrap_or_decorate(ShardMapWrapped, f, kw)
