"""``nnx.pmap``: ``jax.pmap`` over the lift.

Like :mod:`.vmap` with devices instead of a vectorized axis: every positional argument gets an
``in_axes`` entry (int, ``None`` or a prefix of the argument). A mapped Variable's updates come
back stacked along its axis; a broadcast (``None``) Variable's update is taken as replicated
(``out_axes=None`` in ``jax.pmap``), so it must not differ between devices — reduce it over
``axis_name`` first. ``donate_argnums`` donates the buffers of those positional arguments; each
of their Variables then receives a new value. ``static_broadcasted_argnums`` are Python
values closed over, as in ``jax.pmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax

from .axes import (
  EMPTY,
  AxesTransform,
  add_axis_names_out,
  split_by_axis,
  unstack_updates,
)
from .flat import all_values, changed
from .lift import MISSING, Inner, resolve_static, wrap_or_decorate

__all__ = ["pmap"]


class PmapWrapped(AxesTransform):
  """A function transformed by ``nnx.pmap``; call it like the original."""

  transform = "pmap"
  axis_name: Any
  axis_size: int | None
  devices: Any
  backend: str | None
  donate_argnums: Any

  def __init__(self, f: Callable, *, static_broadcasted_argnums: Any, **options: Any):
    super().__init__(f, static_argnums=static_broadcasted_argnums, **options)

  def setup(self) -> None:
    super().setup()
    self.donate = frozenset(resolve_static(self.donate_argnums, None, None)[0])
    self._pmap_kw = dict(devices=self.devices, backend=self.backend, axis_size=self.axis_size)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    call = self.bind(args, kwargs)
    flat, specs = call.flat, self.leaf_specs(call)
    static = self.inner_static(call, specs)
    donated = [isinstance(k, int) and k in self.donate for k in static.layout]
    f = self.f

    def inner(*values: Any):
      with Inner(static, values, "pmap", fixed=True, call=call) as scope:
        out = scope.output(scope.call(f))
        mapped, bcast = split_by_axis(
          specs,
          (
            (all_values if d else changed)(p, fresh, v)
            for d, p, (_, fresh), v in zip(donated, static.plans, scope.rebuilt, values)
          ),
        )
      return out, mapped, bcast

    pmapped = jax.pmap(
      self.named(inner),
      axis_name=self.axis_name,
      in_axes=tuple(list(s) for s in specs),
      out_axes=(call.out_prefix(self.out_axes, 0), 0, None),
      donate_argnums=tuple(s for s, d in enumerate(donated) if d),
      **self._pmap_kw,
    )
    out, mapped, bcast = pmapped(*flat.values)
    out = call.finish(out, unstack_updates(specs, mapped, bcast))
    if self.pname is not None:
      add_axis_names_out(out, self.out_axes, self.api, self.pname)
    return out


def pmap(
  f: Callable = MISSING,
  *,
  axis_name: Any = None,
  in_axes: Any = 0,
  out_axes: Any = 0,
  static_broadcasted_argnums: int | Iterable[int] = (),
  devices: Sequence[Any] | None = None,
  backend: str | None = None,
  axis_size: int | None = None,
  donate_argnums: int | Iterable[int] = (),
  transform_metadata: Mapping[str, Any] = EMPTY,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.pmap``: Modules are mapped over devices along their Variables' axes.

  Args:
    f: the function to map.
    axis_name: names the mapped axis for collectives (``jax.lax.psum(x, axis_name)``).
    in_axes: per positional argument an int, ``None`` (replicated) or a prefix of the
      argument; a single value applies to every argument. Keyword arguments use axis 0.
    out_axes: where the mapped axis goes in the output (a prefix of the output).
    static_broadcasted_argnums: positional arguments passed as Python values.
    devices, backend, axis_size: as in ``jax.pmap``.
    donate_argnums: positional arguments whose buffers are donated.
    transform_metadata: ``{nnx.PARTITION_NAME: name}`` updates Variables'
      ``sharding_names`` for the mapped axis.
    graph: ``None`` for the configured default, ``True`` for graph mode (StateAxes in
      ``in_axes`` opt into it).
    graph_updates: graph mode only: propagate structural changes.

  Example:
    >>> @nnx.pmap(axis_size=2)
    ... def create(key):
    ...   return nnx.Linear(2, 3, rngs=nnx.Rngs(key))
    >>> model = create(jax.random.split(jax.random.key(0), 2))
    >>> model.kernel.shape
    (2, 2, 3)
  """
  return wrap_or_decorate(PmapWrapped, locals())
