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

from .axes import AxesTransform, add_axis_names_out, strip_static
from .lift import MISSING, Inner, wrap_or_decorate

__all__ = ["transform_metadata"]


class TransformMetadataWrapped(AxesTransform):
  """A function wrapped by ``nnx.transform_metadata``; call it like the original."""

  transform = "transform_metadata"
  partition: Any

  def setup(self) -> None:
    super().setup()
    self.pname = self.partition
    self.graph_updates = False  # metadata only: no structural updates to carry

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    call = self.bind(args, kwargs)
    flat, static = call.flat, call.static
    if self.pname is not None:
      static = strip_static(static, flat, self.leaf_specs(call))
    with Inner(static, flat.values, "transform_metadata", call=call) as scope:
      out = scope.output(scope.call(self.f))
      updates = scope.updates()
    out = call.finish(out, updates)
    if self.pname is not None:  # the caller's own Variables returned are left unchanged
      inputs = [id(c) for cells in flat.cells for c in cells]
      add_axis_names_out(out, self.out_axes, self.api, self.pname, skip=inputs)
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
