"""``nnx.vmap``: ``jax.vmap`` over the lift.

Each positional argument gets an ``in_axes`` entry: an int (map that axis), ``None``
(broadcast) or a prefix of the argument (see :mod:`.prefix`). A mapped Module's Variables
are mapped along their axis; the ones the function updates come back stacked on the same
axis and are written into the caller's Variables. A broadcast Variable may be updated only
with a value that does not vary along the mapped axis. Modules created inside and returned
come out as ordinary Modules whose Variables are stacked along ``out_axes``.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._core.errors import AxisSpecError, PynnxError
from .._core.sharding import sharding_key
from .._core.variables import Variable, aux_from_meta, is_variable, meta_from_aux
from .lift import MISSING, ArgPlan, Inner, Transform, flatten_args, wrap_or_decorate
from .outputs import leaf_paths
from .prefix import broadcast_prefix
from .state_out_axes import jax_out_axes, join_outputs, split_outputs, uses_state_out_axes

__all__ = ["vmap", "PARTITION_NAME"]

PARTITION_NAME = "partition_name"
"""Key of ``transform_metadata``: the mesh axis name of the mapped / scanned axis.

Variables whose ``sharding_names`` metadata is a tuple lose the entry at the mapped axis
inside the transform and get the name inserted at the output axis on the way out.
"""

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


# --- helpers shared with scan ---------------------------------------------------------------


def is_axis(x: Any) -> bool:
  """An int (not a bool) or ``None``: a valid vmap/scan axis leaf."""
  return x is None or (isinstance(x, int) and not isinstance(x, bool))


def per_arg(axes: Any, n: int, api: str, what: str) -> tuple:
  """``in_axes`` as one entry per positional argument (a non-sequence applies to all)."""
  if isinstance(axes, (tuple, list)):
    if len(axes) != n:
      raise AxisSpecError(
        f"{api}: {what} has {len(axes)} entries but the function was called with {n} "
        f"positional arguments; give one entry per positional argument (int, None or a prefix "
        f"of the argument)."
      )
    return tuple(axes)
  return (axes,) * n


def check_mapped_axes(
  api: str,
  args: Sequence[Any],
  names: Sequence[str],
  values: Sequence[Sequence[Any]],
  specs: Sequence[Sequence[Any]],
  what: str = "mapped",
  size: int | None = None,
  keywords: frozenset = frozenset(),
) -> None:
  """Error path only: names the argument leaf whose mapped axis is missing or mis-sized.

  ``keywords``: the indices of keyword slots (always mapped on axis 0).
  """
  first: tuple[str, int] | None = None
  for a, (arg_vals, arg_specs) in enumerate(zip(values, specs)):
    for i, (value, axis) in enumerate(zip(arg_vals, arg_specs)):
      if not isinstance(axis, int) or isinstance(axis, bool):
        continue
      shape = jnp.shape(value)
      if not -len(shape) <= axis < len(shape):
        path = leaf_paths(args[a], names[a])[i]
        hint = (
          " Keys and counts of an Rngs must be split first, e.g. with `@nnx.split_rngs(splits=n)`."
          if "key" in path or "count" in path
          else ""
        )
        fix = (
          "(a keyword argument: keyword arguments are mapped along axis 0; pass it positionally "
          "with None in in_axes to broadcast it instead)."
          if a in keywords
          else "Give it None in in_axes to broadcast it instead."
        )
        raise AxisSpecError(
          f"{api}: in_axes asks for axis {axis} of {path}, but its shape is {shape}.{hint} {fix}"
        )
      n = shape[axis]
      if size is not None and n != size:
        path = leaf_paths(args[a], names[a])[i]
        raise AxisSpecError(
          f"{api}: {path} has size {n} along its {what} axis {axis}, but length={size}."
        )
      if first is None:
        first = (leaf_paths(args[a], names[a])[i], n)
      elif first[1] != n:
        path = leaf_paths(args[a], names[a])[i]
        raise AxisSpecError(
          f"{api}: the {what} axes have different sizes: {first[0]} has {first[1]} and "
          f"{path} has {n}; every {what} leaf needs the same size along its axis."
        )


def strip_axis_names(
  plan: ArgPlan, specs: Sequence[Any], values: Sequence[Any], name: Any
) -> ArgPlan:
  """The plan with ``sharding_names`` losing the entry at each mapped Variable's axis."""
  kinds = list(plan.kinds)
  touched = False
  for i in plan.var_idx:
    axis = specs[i]
    typ, aux = kinds[i]
    meta = meta_from_aux(aux)
    key = sharding_key(meta)
    names = meta.get(key) if key is not None else None
    if key is None or not isinstance(axis, int) or not isinstance(names, tuple):
      continue
    ndim = jnp.ndim(values[i])
    a = axis % ndim if ndim else 0
    if a < len(names):
      meta[key] = names[:a] + names[a + 1 :]
      kinds[i] = (typ, aux_from_meta(meta))
      touched = True
  return ArgPlan(plan.treedef, tuple(kinds), [None] * len(kinds)) if touched else plan


def add_axis_name(var: Variable, axis: Any, name: Any) -> None:
  """Inserts ``name`` into a fresh output Variable's ``sharding_names`` at ``axis``."""
  key = sharding_key(var._metadata)
  names = var._metadata.get(key) if key is not None else None
  if key is None or not isinstance(axis, int) or not isinstance(names, tuple):
    return
  ndim = jnp.ndim(var._raw_value)
  a = axis % ndim if ndim else 0
  a = min(a, len(names))
  new = names[:a] + (name,) + names[a:]
  object.__setattr__(var, "_metadata", {**var._metadata, key: new})


def add_axis_names_out(out: Any, out_axes: Any, api: str, name: Any) -> None:
  """Applies :func:`add_axis_name` to every Variable of a transform's output."""
  leaves = jax.tree_util.tree_leaves(out, is_leaf=is_variable)
  if not any(isinstance(v, Variable) for v in leaves):
    return
  plan = flatten_args([out]).plans[0]
  specs = broadcast_prefix(out_axes, out, plan, api, "output", what="out_axes")
  for leaf, spec in zip(leaves, specs):
    if isinstance(leaf, Variable):
      add_axis_name(leaf, spec, name)


# --- vmap -----------------------------------------------------------------------------------


class VmapWrapped(Transform):
  """A function transformed by ``nnx.vmap``; call it like the original."""

  transform = "vmap"
  spec_options = ("in_axes", "out_axes")

  def setup(self) -> None:
    self.transform_metadata = dict(self.transform_metadata)
    self._specs: dict = {}

  def slot_spec(self, key: int | str, n_pos: int) -> Any:
    if isinstance(key, str):
      return 0  # keyword arguments are mapped along their leading axis, as in jax.vmap
    return per_arg(self.in_axes, n_pos, self.api, "in_axes")[key]

  def _leaf_specs(self, call: Any) -> tuple:
    key = call.static
    hit = self._specs.get(key)
    if hit is not None:
      return hit
    specs = tuple(
      broadcast_prefix(ax, a, p, self.api, n, leaf_ok=is_axis, leaf_desc="an int or None")
      for ax, a, p, n in zip(self.specs_for(call), call.slots, call.static.plans, call.names)
    )
    if len(self._specs) > 64:
      self._specs.clear()
    self._specs[key] = specs
    return specs

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    call = self.bind(args, kwargs)
    flat, static = call.flat, call.static
    specs = self._leaf_specs(call)
    pname = self.transform_metadata.get(PARTITION_NAME)
    if pname is not None:
      plans = tuple(
        strip_axis_names(p, s, v, pname) for p, s, v in zip(flat.plans, specs, flat.values)
      )
      static = static.replace_plans(plans)
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
    out_spec = jax_out_axes(self.out_axes)
    if call.graph is not None:
      out_spec = (out_spec, 0)  # graph mode's output is (tree, structural changes)

    def inner(values: tuple):
      with Inner(static, values, "vmap", fixed=True, call=call) as scope:
        out = scope.output(scope.call(f))
        if state_out:
          out = (split_outputs(self.api, self.out_axes, out[0], side)[0], out[1])
        mapped: dict[tuple[int, int], Any] = {}
        bcast: dict[tuple[int, int], Any] = {}
        for a, upd in enumerate(scope.updates()):
          for i, new in upd.items():
            (bcast if specs[a][i] is None else mapped)[(a, i)] = new
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
      keywords = frozenset(a for a, k in enumerate(static.layout) if isinstance(k, str))
      check_mapped_axes(
        self.api, call.slots, call.names, flat.values, specs, size=self.axis_size, keywords=keywords
      )
      raise
    updates: list[dict] = [{} for _ in flat.plans]
    for (a, i), value in mapped.items():
      axis = specs[a][i]
      updates[a][i] = value if axis == 0 else jnp.moveaxis(value, 0, axis)
    for (a, i), value in bcast.items():
      updates[a][i] = value
    if state_out:
      out = (join_outputs(self.out_axes, out[0], side), out[1])
    out = call.finish(out, updates)
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
  transform_metadata: Mapping[str, Any] = _EMPTY,
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
