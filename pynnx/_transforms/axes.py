"""Axis plumbing shared by ``vmap``, ``pmap``, ``scan`` and ``transform_metadata``.

``in_axes`` has one entry per positional argument (:func:`per_arg`), expanded to one axis per
leaf of the argument's plan (:meth:`AxesTransform.leaf_specs`). With a partition name, the
mapped axis's entry of ``sharding_names`` is removed inside (:func:`strip_axis_names`) and
inserted into returned Variables (:func:`add_axis_names_out`). Updates of mapped leaves come
back stacked on axis 0 and are moved to their leaf's axis (:func:`unstack_updates`).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._core.errors import AxisSpecError
from .._core.sharding import sharding_key
from .._core.variables import Variable, aux_from_meta, is_variable, meta_from_aux
from .flat import ArgPlan, Flat, flatten_args
from .lift import CallStatic, Transform
from .outputs import leaf_paths
from .prefix import broadcast_prefix

__all__ = ["PARTITION_NAME", "AxesTransform"]

PARTITION_NAME = "partition_name"
"""Key of ``transform_metadata``: the mesh axis name of the mapped / scanned axis.

Variables whose ``sharding_names`` metadata is a tuple lose the entry at the mapped axis
inside the transform and get the name inserted at the output axis on the way out.
"""

EMPTY: Mapping[str, Any] = types.MappingProxyType({})


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


class AxesTransform(Transform):
  """Base of the transforms taking ``in_axes`` / ``out_axes`` (and of ``shard_map``, whose
  ``in_specs`` are prefixes too).

  ``keyword_axis`` is the axis of every keyword argument; :meth:`expand` turns the call's
  per-slot ``in_axes`` into one axis per leaf (cached by call structure in :meth:`leaf_specs`).
  """

  spec_options = ("in_axes", "out_axes")
  in_axes: Any
  out_axes: Any
  keyword_axis: Any = 0  # keyword arguments are mapped along their leading axis, as in jax.vmap
  transform_metadata: Mapping[str, Any] = EMPTY  # an option of vmap, pmap and scan

  def setup(self) -> None:
    self._specs: dict = {}
    # the mesh axis name of the mapped axis (transform_metadata's PARTITION_NAME), or None
    self.pname = dict(self.transform_metadata).get(PARTITION_NAME)

  def slot_spec(self, key: int | str, n_pos: int) -> Any:
    if isinstance(key, str):
      return self.keyword_axis
    return per_arg(self.in_axes, n_pos, self.api, "in_axes")[key]

  def expand(self, call: Any) -> Any:
    """Per slot, one axis per leaf of its plan."""
    return tuple(
      broadcast_prefix(ax, a, p, self.api, n, leaf_ok=is_axis, leaf_desc="an int or None")
      for ax, a, p, n in zip(self.specs_for(call), call.slots, call.static.plans, call.names)
    )

  def inner_static(self, call: Any, specs: Sequence, keep: int | None = None) -> CallStatic:
    """``call.static`` as the inner function sees it: with a partition name, the mapped
    Variables' ``sharding_names`` lose the mapped axis (slot ``keep``'s are left as they are)."""
    if self.pname is None:
      return call.static
    return strip_static(call.static, call.flat, specs, keep)

  def check_mapped_axes(
    self, call: Any, specs: Sequence, what: str = "mapped", size: int | None = None
  ) -> None:
    """Error path only: names the argument leaf whose mapped axis is missing or mis-sized."""
    first: tuple[str, int] | None = None
    api, names = self.api, call.names
    for a, (arg_vals, arg_specs) in enumerate(zip(call.flat.values, specs)):
      paths = leaf_paths(call.slots[a], names[a])
      for i, (value, axis) in enumerate(zip(arg_vals, arg_specs)):
        if not isinstance(axis, int) or isinstance(axis, bool):
          continue
        shape, path = jnp.shape(value), paths[i]
        if not -len(shape) <= axis < len(shape):
          hint = (
            " Keys and counts of an Rngs must be split first, e.g. with "
            "`@nnx.split_rngs(splits=n)`."
            if "key" in path or "count" in path
            else ""
          )
          fix = (
            "(a keyword argument: keyword arguments are mapped along axis 0; pass it "
            "positionally with None in in_axes to broadcast it instead)."
            if isinstance(call.static.layout[a], str)
            else "Give it None in in_axes to broadcast it instead."
          )
          raise AxisSpecError(
            f"{api}: in_axes asks for axis {axis} of {path}, but its shape is {shape}.{hint} {fix}"
          )
        n = shape[axis]
        if size is not None and n != size:
          raise AxisSpecError(
            f"{api}: {path} has size {n} along its {what} axis {axis}, but length={size}."
          )
        if first is None:
          first = (path, n)
        elif first[1] != n:
          raise AxisSpecError(
            f"{api}: the {what} axes have different sizes: {first[0]} has {first[1]} and "
            f"{path} has {n}; every {what} leaf needs the same size along its axis."
          )

  def leaf_specs(self, call: Any) -> Any:
    """:meth:`expand` of this call, computed once per call structure."""
    hit = self._specs.get(call.static)
    if hit is None:
      hit = self.expand(call)
      if len(self._specs) > 64:
        self._specs.clear()
      self._specs[call.static] = hit
    return hit


def _axis_names(meta: Any) -> tuple[Any, Any]:
  """``(key, names)`` of the ``sharding_names`` in ``meta``; names is None unless a tuple."""
  key = sharding_key(meta)
  names = meta.get(key) if key is not None else None
  return key, names if isinstance(names, tuple) else None


def strip_axis_names(plan: ArgPlan, specs: Sequence[Any], values: Sequence[Any]) -> ArgPlan:
  """The plan with ``sharding_names`` losing the entry at each mapped Variable's axis."""
  kinds = list(plan.kinds)
  touched = False
  for i in plan.var_idx:
    axis = specs[i]
    typ, aux = kinds[i]
    meta = meta_from_aux(aux)
    key, names = _axis_names(meta)
    if names is None or not isinstance(axis, int):
      continue
    ndim = jnp.ndim(values[i])
    a = axis % ndim if ndim else 0
    if a < len(names):
      meta[key] = names[:a] + names[a + 1 :]
      kinds[i] = (typ, aux_from_meta(meta))
      touched = True
  return ArgPlan(plan.treedef, tuple(kinds), [None] * len(kinds)) if touched else plan


def strip_static(static: CallStatic, flat: Flat, specs: Sequence, keep: int | None = None):
  """``static`` with :func:`strip_axis_names` applied to every slot's plan but ``keep``'s."""
  plans = tuple(
    p if a == keep else strip_axis_names(p, s, v)
    for a, (p, s, v) in enumerate(zip(flat.plans, specs, flat.values))
  )
  return static.replace_plans(plans)


def add_axis_name(var: Variable, axis: Any, name: Any) -> None:
  """Inserts ``name`` into a fresh output Variable's ``sharding_names`` at ``axis``."""
  key, names = _axis_names(var._metadata)
  if names is None or not isinstance(axis, int):
    return
  ndim = jnp.ndim(var._raw_value)
  a = min(axis % ndim if ndim else 0, len(names))
  object.__setattr__(var, "_metadata", {**var._metadata, key: (*names[:a], name, *names[a:])})


def add_axis_names_out(
  out: Any, out_axes: Any, api: str, name: Any, skip: Iterable[int] = ()
) -> None:
  """Applies :func:`add_axis_name` to every Variable of a transform's output whose id is not
  in ``skip`` (the caller's own Variables, unchanged)."""
  skip = frozenset(skip)
  leaves = jax.tree_util.tree_leaves(out, is_leaf=is_variable)
  if not any(isinstance(v, Variable) and id(v) not in skip for v in leaves):
    return
  plan = flatten_args([out]).plans[0]
  specs = broadcast_prefix(out_axes, out, plan, api, "output", what="out_axes")
  for leaf, spec in zip(leaves, specs):
    if isinstance(leaf, Variable) and id(leaf) not in skip:
      add_axis_name(leaf, spec, name)


def split_by_axis(specs: Sequence, per_slot: Iterable[dict]) -> tuple[dict, dict]:
  """``(mapped, broadcast)`` updates, each ``{(slot, leaf): value}``, by the leaf's axis."""
  mapped: dict[tuple[int, int], Any] = {}
  bcast: dict[tuple[int, int], Any] = {}
  for a, upd in enumerate(per_slot):
    for i, new in upd.items():
      (bcast if specs[a][i] is None else mapped)[(a, i)] = new
  return mapped, bcast


def unstack_updates(specs: Sequence, mapped: dict, bcast: Mapping = EMPTY) -> list[dict]:
  """Per slot ``{leaf: value}``: mapped updates moved from axis 0 to their leaf's axis."""
  updates: list[dict] = [{} for _ in specs]
  for (a, i), value in mapped.items():
    axis = specs[a][i]
    updates[a][i] = value if axis == 0 else jnp.moveaxis(value, 0, axis)
  for (a, i), value in bcast.items():
    updates[a][i] = value
  return updates
