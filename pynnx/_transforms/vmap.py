"""``nnx.vmap``: ``jax.vmap`` over the lift.

Each positional argument gets an ``in_axes`` entry: an int (map that axis), ``None``
(broadcast) or a prefix of the argument (see :mod:`.prefix`). A mapped Module's Variables
are mapped along their axis; the ones the function updates come back stacked on the same
axis and are written into the caller's Variables. A broadcast Variable may be updated only
with a value that does not vary along the mapped axis. Modules created inside and returned
come out as ordinary Modules whose Variables are stacked along ``out_axes``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

from .._core.errors import AxisSpecError, PynnxError
from .axes import (
  EMPTY,
  PARTITION_NAME,
  AxesTransform,
  add_axis_names_out,
  split_by_axis,
  unstack_updates,
)
from .lift import MISSING, Inner, wrap_or_decorate
from .outputs import leaf_paths
from .state_out_axes import jax_out_axes, join_outputs, split_outputs, uses_state_out_axes

__all__ = ["vmap", "PARTITION_NAME"]


class VmapWrapped(AxesTransform):
  """A function transformed by ``nnx.vmap``; call it like the original."""

  transform = "vmap"
  axis_name: Any
  axis_size: int | None
  spmd_axis_name: Any

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    call = self.bind(args, kwargs)
    flat, specs, pname = call.flat, self.leaf_specs(call), self.pname
    static = self.inner_static(call, specs)
    f = self.f
    seen: dict = {}
    state_out = uses_state_out_axes(self.out_axes)
    if state_out and pname is not None:
      raise AxisSpecError(
        f"{self.api}: transform_metadata={{PARTITION_NAME: {pname!r}}} together with a "
        f"StateAxes in out_axes is not supported; give out_axes as ints (or nnx.prefix) to "
        f"have the partition name added, or drop transform_metadata."
      )
    side: dict = {}  # StateAxes outputs: their GraphDefs, by output path
    out_spec = call.out_prefix(jax_out_axes(self.out_axes), 0)

    def inner(values: tuple):
      with Inner(static, values, "vmap", fixed=True, call=call) as scope:
        out = scope.output(scope.call(f))
        if state_out:
          out = (split_outputs(self.api, self.out_axes, out[0], side)[0], out[1])
        mapped, bcast = split_by_axis(specs, scope.updates())
      seen["bcast"] = sorted(bcast)
      return out, mapped, bcast

    def run(bcast_axes: Any, through: Callable = lambda g, *a: g(*a)) -> Any:
      vmapped = jax.vmap(
        self.named(inner),
        in_axes=(tuple(list(s) for s in specs),),
        out_axes=(out_spec, 0, bcast_axes),
        axis_name=self.axis_name,
        axis_size=self.axis_size,
        spmd_axis_name=self.spmd_axis_name,
      )
      return through(vmapped, tuple(flat.values))

    try:
      out, mapped, bcast = run(None)
    except ValueError as e:
      if isinstance(e, PynnxError):
        raise
      self._explain(e, call, lambda axes: run(axes, jax.eval_shape), seen.get("bcast", []))
      self.check_mapped_axes(call, specs, size=self.axis_size)
      raise
    if state_out:
      out = (join_outputs(self.out_axes, out[0], side), out[1])
    out = call.finish(out, unstack_updates(specs, mapped, bcast))
    if pname is not None and not state_out:
      add_axis_names_out(out, self.out_axes, self.api, pname)
    return out

  def _explain(self, e: ValueError, call: Any, probe: Callable, cands: list) -> None:
    """Turns JAX's out_axes error into one naming the broadcast Variable or out_axes."""
    msg = str(e)
    if "out_axes" not in msg:
      return
    # Which changed broadcast Variable is batched: retrace abstractly with only it at None.
    for cand in cands:
      try:
        probe({k: None if k == cand else 0 for k in cands})
      except ValueError:
        a, i = cand
        path = leaf_paths(call.slots[a], call.names[a])[i]
        raise AxisSpecError(
          f"{self.api}: the broadcast (in_axes=None) Variable {path} was updated with a "
          f"value that varies along the mapped axis; a broadcast Variable holds one value for "
          f"every element. Map it instead (give it an int in in_axes) so each element keeps "
          f"its own value, or reduce the update over the axis (e.g. `jax.lax.psum` with an "
          f"axis_name) before assigning it."
        ) from None
    raise AxisSpecError(
      f"{self.api}: out_axes={self.out_axes!r} does not fit the function's output. JAX "
      f"reported: {msg}"
    ) from None


def vmap(
  f: Callable = MISSING,
  *,
  in_axes: Any = 0,
  out_axes: Any = 0,
  axis_name: Any = None,
  axis_size: int | None = None,
  spmd_axis_name: Any = None,
  transform_metadata: Mapping[str, Any] = EMPTY,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.vmap``: Modules are mapped along their Variables' axes.

  Args:
    f: the function to map.
    in_axes: per positional argument an int, ``None`` or a prefix of the argument; a single
      value applies to every argument. Keyword arguments are mapped along axis 0.
    out_axes: where the mapped axis goes in the output (a prefix of the output).
    axis_name, axis_size, spmd_axis_name: as in ``jax.vmap``.
    transform_metadata: ``{nnx.PARTITION_NAME: name}`` updates Variables'
      ``sharding_names`` for the mapped axis.
    graph: ``None`` for the configured default (tree mode), ``True`` for graph mode.
    graph_updates: graph mode only.

  Example:
    >>> class Ensemble(nnx.Module):
    ...   def __init__(self):
    ...     self.w = nnx.Param(jnp.arange(6.0).reshape(3, 2))
    ...     self.calls = nnx.BatchStat(jnp.zeros(3))
    >>> @nnx.vmap(in_axes=(0, None))
    ... def apply(m, x):
    ...   m.calls[...] += 1
    ...   return m.w[...] @ x
    >>> m = Ensemble()
    >>> apply(m, jnp.ones(2)), m.calls[...]
    (Array([1., 5., 9.], dtype=float32), Array([1., 1., 1.], dtype=float32))
  """
  return wrap_or_decorate(VmapWrapped, locals())
