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

import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .lift import (
  MISSING,
  CallStatic,
  Inner,
  Transform,
  all_values,
  changed,
  resolve_static,
  wrap_or_decorate,
)
from .prefix import broadcast_prefix
from .vmap import PARTITION_NAME, add_axis_names_out, is_axis, per_arg, strip_axis_names

__all__ = ["pmap"]

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


class PmapWrapped(Transform):
  """A function transformed by ``nnx.pmap``; call it like the original."""

  transform = "pmap"
  spec_options = ("in_axes", "out_axes")

  def __init__(self, f: Callable, *, static_broadcasted_argnums: Any, **options: Any):
    super().__init__(f, static_argnums=static_broadcasted_argnums, **options)

  def setup(self) -> None:
    self.donate = frozenset(resolve_static(self.donate_argnums, None, None)[0])
    self.transform_metadata = dict(self.transform_metadata)
    self._pmap_kw = dict(devices=self.devices, backend=self.backend, axis_size=self.axis_size)

  def slot_spec(self, key: int | str, n_pos: int) -> Any:
    if isinstance(key, str):
      return 0  # keyword arguments are mapped along their leading axis, as in jax.pmap
    return per_arg(self.in_axes, n_pos, self.api, "in_axes")[key]

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    call = self.bind(args, kwargs)
    flat, static = call.flat, call.static
    specs = tuple(
      broadcast_prefix(ax, a, p, self.api, n, leaf_ok=is_axis, leaf_desc="an int or None")
      for ax, a, p, n in zip(self.specs_for(call), call.slots, static.plans, call.names)
    )
    pname = self.transform_metadata.get(PARTITION_NAME)
    if pname is not None:
      plans = tuple(
        strip_axis_names(p, s, v, pname) for p, s, v in zip(flat.plans, specs, flat.values)
      )
      static = CallStatic(
        plans, static.layout, static.n_pos, static.static_pos, static.static_kw, static.graph
      )
    donated = [isinstance(k, int) and k in self.donate for k in static.layout]
    f = self.f

    def inner(*values: Any):
      with Inner(static, values, "pmap", fixed=True, call=call) as scope:
        out = scope.output(scope.call(f))
        mapped: dict[tuple[int, int], Any] = {}
        bcast: dict[tuple[int, int], Any] = {}
        for a, (p, (_, fresh), v) in enumerate(zip(static.plans, scope.rebuilt, values)):
          for i, new in (all_values if donated[a] else changed)(p, fresh, v).items():
            (bcast if specs[a][i] is None else mapped)[(a, i)] = new
      return out, mapped, bcast

    pmapped = jax.pmap(
      self.named(inner),
      axis_name=self.axis_name,
      in_axes=tuple(list(s) for s in specs),
      out_axes=(self.out_axes, 0, None),
      donate_argnums=tuple(s for s, d in enumerate(donated) if d),
      **self._pmap_kw,
    )
    out, mapped, bcast = pmapped(*flat.values)
    updates: list[dict] = [{} for _ in flat.plans]
    for (a, i), value in mapped.items():
      axis = specs[a][i]
      updates[a][i] = value if axis == 0 else jnp.moveaxis(value, 0, axis)
    for (a, i), value in bcast.items():
      updates[a][i] = value
    out = call.finish(out, updates)
    if pname is not None:
      add_axis_names_out(out, self.out_axes, self.api, pname)
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
  transform_metadata: Mapping[str, Any] = _EMPTY,
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
