"""``nnx.transform_metadata``: the sharding-metadata half of ``vmap``/``scan`` on its own.

For code that maps with raw JAX (``jax.vmap``, ``jax.lax.scan``) over a function of Modules:
inside the wrapped function each argument Variable's ``sharding_names`` lose the entry at its
``in_axes`` axis (the mapped axis is gone there), and Variables the function returns get
``partition`` inserted at their ``out_axes`` axis. Nothing is mapped and values are not
touched; Variable updates are written back like in every transform.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from .._core.variables import Variable, is_variable
from .lift import MISSING, CallStatic, Inner, Transform, flatten_args, wrap_or_decorate
from .prefix import broadcast_prefix
from .vmap import add_axis_name, is_axis, per_arg, strip_axis_names

__all__ = ["transform_metadata"]


class TransformMetadataWrapped(Transform):
  """A function wrapped by ``nnx.transform_metadata``; call it like the original."""

  transform = "transform_metadata"
  spec_options = ("in_axes", "out_axes")

  def setup(self) -> None:
    self.graph_updates = False  # metadata only: no structural updates to carry

  def slot_spec(self, key: int | str, n_pos: int) -> Any:
    if isinstance(key, str):
      return 0
    return per_arg(self.in_axes, n_pos, self.api, "in_axes")[key]

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    call = self.bind(args, kwargs)
    flat, static = call.flat, call.static
    if self.partition is not None:
      specs = [
        broadcast_prefix(ax, a, p, self.api, n, leaf_ok=is_axis, leaf_desc="an int or None")
        for ax, a, p, n in zip(self.specs_for(call), call.slots, static.plans, call.names)
      ]
      plans = tuple(
        strip_axis_names(p, s, v, self.partition) for p, s, v in zip(flat.plans, specs, flat.values)
      )
      static = CallStatic(
        plans, static.layout, static.n_pos, static.static_pos, static.static_kw, static.graph
      )
    with Inner(static, flat.values, "transform_metadata", call=call) as scope:
      out = scope.output(scope.call(self.f))
      updates = scope.updates()
    out = call.finish(out, updates)
    if self.partition is not None:
      inputs = {id(c) for cells in flat.cells for c in cells}
      leaves = jax.tree_util.tree_leaves(out, is_leaf=is_variable)
      if any(isinstance(v, Variable) and id(v) not in inputs for v in leaves):
        plan = flatten_args([out]).plans[0]
        specs = broadcast_prefix(self.out_axes, out, plan, self.api, "output", what="out_axes")
        for leaf, spec in zip(leaves, specs):
          if isinstance(leaf, Variable) and id(leaf) not in inputs:  # caller's own: unchanged
            add_axis_name(leaf, spec, self.partition)
    return out


def transform_metadata(
  f: Callable = MISSING,
  *,
  in_axes: Any = 0,
  out_axes: Any = 0,
  partition: str | None,
  graph: bool | None = None,
) -> Any:
  """Adjusts Variables' sharding metadata for a mapped axis that raw JAX adds or removes.

  Args:
    f: the function (called as is: nothing is mapped).
    in_axes: per positional argument an int, ``None`` or a prefix of it: the axis whose
      ``sharding_names`` entry is removed inside ``f``.
    out_axes: a prefix of the output: where ``partition`` is inserted into the
      ``sharding_names`` of returned Variables.
    partition: the mesh axis name of the mapped axis (``None``: metadata is left alone).
    graph: ``None`` for the configured default, ``True`` for graph mode.

  Example:
    >>> m = nnx.Param(jnp.ones((4, 3)), sharding_names=('data', 'model'))
    >>> @nnx.transform_metadata(in_axes=0, out_axes=0, partition='data')
    ... def f(v):
    ...   return nnx.Param(v[...] * 2, sharding_names=v.sharding_names)
    >>> f(m).sharding_names
    ('data', 'model')
  """
  return wrap_or_decorate(TransformMetadataWrapped, locals())
