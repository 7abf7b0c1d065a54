"""``nnx.scan``: ``jax.lax.scan`` over the lift, and the ``Carry`` marker.

Each positional argument is one of three kinds, given by ``in_axes``:

* ``nnx.Carry`` — the loop carry: the whole argument (its Variables' values and arrays)
  goes around the loop; the function returns the next carry where ``out_axes`` has
  ``Carry``. The final carry is written into the caller's Variables.
* an int (or a prefix of ints / None) — scanned along that axis: each step sees one slice.
  Variables the body updates come back stacked on the same axis and are written back.
* ``None`` — broadcast: every step sees the same value. A broadcast Variable the body
  updates (a Dropout's rng count, running statistics) is threaded through the steps like a
  carry, and its final value written back, as Flax's tree mode does.

Outputs marked with an int in ``out_axes`` are stacked along that axis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .._core.errors import AxisSpecError, PynnxError
from .axes import (
  EMPTY,
  AxesTransform,
  add_axis_name,
  is_axis,
  unstack_updates,
)
from .carry import final_carry, next_carry
from .flat import flatten_args, new_var
from .lift import MISSING, Inner, wrap_or_decorate
from .outputs import leaf_paths
from .prefix import broadcast_prefix
from .state_out_axes import join_outputs, split_outputs, uses_state_out_axes

__all__ = ["scan", "Carry"]


class _Thread(Exception):
  """Raised while tracing: the body updated broadcast Variables ``leaves`` (retrace with
  them in the carry)."""

  def __init__(self, leaves: list):
    self.leaves = leaves


class Carry:
  """Marks the loop carry in :func:`scan`'s ``in_axes`` and ``out_axes`` (use the class).

  Example:
    >>> @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    ... def cumsum(total, x):
    ...   total = total + x
    ...   return total, total
    >>> cumsum(jnp.array(0.0), jnp.arange(4.0))
    (Array(6., dtype=float32), Array([0., 1., 3., 6.], dtype=float32))
  """


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _validate(in_axes: Any, out_axes: Any, api: str) -> None:
  def carries(axes: Any, what: str) -> int:
    top = axes if isinstance(axes, (tuple, list)) else (axes,)
    count = 0
    for i, entry in enumerate(top):
      if entry is Carry:
        count += 1
        continue
      for path, leaf in jax.tree_util.tree_leaves_with_path(
        entry, is_leaf=lambda x: x is None or x is Carry
      ):
        if leaf is Carry:
          where = f"{what}[{i}]{jax.tree_util.keystr(path)}"
          raise AxisSpecError(
            f"{api}: Carry must mark a whole argument / output (a top-level entry of {what}), "
            f"found it nested at {where}. Make the whole argument the carry."
          )
    if count > 1:
      raise AxisSpecError(
        f"{api}: {what}={axes!r} has Carry {count} times; there is one loop carry. Group the "
        f"carried values into one argument (a tuple or a Module)."
      )
    return count

  cin, cout = carries(in_axes, "in_axes"), carries(out_axes, "out_axes")
  if cout and not cin:
    raise AxisSpecError(
      f"{api}: Carry in out_axes without Carry in in_axes ({in_axes=!r}, {out_axes=!r}); mark "
      f"the argument that starts the carry with nnx.Carry in in_axes."
    )
  if cin and not cout:
    raise AxisSpecError(
      f"{api}: Carry in in_axes without Carry in out_axes ({in_axes=!r}, {out_axes=!r}); mark "
      f"the output that holds the next carry with nnx.Carry in out_axes."
    )
  top = out_axes if isinstance(out_axes, tuple) else (out_axes,)
  for entry in top:
    if entry is Carry:
      continue
    for leaf in jax.tree_util.tree_leaves(entry, is_leaf=lambda x: x is None):
      if leaf is None:
        raise AxisSpecError(
          f"{api}: out_axes={out_axes!r} has None: scan outputs cannot be broadcast. Give an "
          f"int (stack the per-step outputs along that axis) or nnx.Carry."
        )


class ScanWrapped(AxesTransform):
  """A function transformed by ``nnx.scan``; call it like the original.

  Keyword arguments are broadcast (every step sees them whole; Variable updates are threaded).
  """

  transform = "scan"
  length: int | None
  reverse: bool
  unroll: Any
  _split_transpose: bool
  keyword_axis = None

  def setup(self) -> None:
    super().setup()
    if not self.forced_graph:
      _validate(self.in_axes, self.out_axes, self.api)
    axes = self.out_axes  # where the next carry sits in a tuple of outputs
    is_tuple = isinstance(axes, tuple)
    self._carry_at = next((i for i, x in enumerate(axes) if x is Carry), None) if is_tuple else None

  def expand(self, call: Any) -> tuple[int | None, tuple]:
    """``(carry slot or None, per slot one axis per leaf)``; the carry's leaves are Carry."""
    carry_idx = None
    specs = []
    for a, (ax, arg, plan, name) in enumerate(
      zip(self.specs_for(call), call.slots, call.static.plans, call.names)
    ):
      if ax is Carry:
        if carry_idx is not None:
          raise AxisSpecError(
            f"{self.api}: in_axes=Carry applies to every argument, but the function was "
            f"called with {call.static.n_pos}; with in_axes=nnx.Carry it takes exactly one "
            f"argument."
          )
        carry_idx = a
        specs.append((Carry,) * len(plan.kinds))
      else:
        specs.append(
          broadcast_prefix(
            ax, arg, plan, self.api, name, leaf_ok=is_axis, leaf_desc="an int, None or nnx.Carry"
          )
        )
    return carry_idx, tuple(specs)

  def _split_out(self, out: Any) -> tuple[Any, Any, Any]:
    """``(carry_out, ys, ys_axes)`` from the function's output."""
    axes, idx = self.out_axes, self._carry_at
    if axes is Carry:
      return out, None, None
    if idx is None:
      return None, out, axes
    if not isinstance(out, tuple) or len(out) != len(axes):
      got = f"a tuple of length {len(out)}" if isinstance(out, tuple) else type(out).__name__
      raise AxisSpecError(
        f"{self.api}: out_axes={axes!r} describes a tuple of {len(axes)} outputs, but the "
        f"function returned {got}."
      )
    return out[idx], (*out[:idx], *out[idx + 1 :]), axes[:idx] + axes[idx + 1 :]

  def _join_out(self, carry: Any, ys: Any) -> Any:
    if self.out_axes is Carry:
      return carry
    idx = self._carry_at
    return ys if idx is None else (*ys[:idx], carry, *ys[idx:])

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    call = self.bind(args, kwargs)
    flat, names, slots, pname = call.flat, call.names, call.slots, self.pname
    carry_idx, specs = self.leaf_specs(call)
    static = self.inner_static(call, specs, keep=carry_idx)
    xs, x_pos = [], []
    for a, (spec, vals) in enumerate(zip(specs, flat.values)):
      if a == carry_idx:
        continue
      for i, s in enumerate(spec):
        if s is not None:
          xs.append(vals[i] if s == 0 else jnp.moveaxis(vals[i], s, 0))
          x_pos.append((a, i))
    carry_init = list(flat.values[carry_idx]) if carry_idx is not None else []
    n_carry = len(carry_init)
    record: dict = {}
    side: dict = {}  # StateAxes outputs: their GraphDefs, by output path
    f, base = self.f, flat.values
    threaded: list = []  # (slot, leaf) of broadcast Variables the body updates

    def body(carry: list, x: list):
      values = [list(v) for v in base]
      if carry_idx is not None:
        values[carry_idx] = list(carry[:n_carry])
      for (a, i), v in zip(threaded, carry[n_carry:]):
        values[a][i] = v
      for (a, i), xv in zip(x_pos, x):
        values[a][i] = xv
      with Inner(static, values, "scan", carry=True) as scope:
        out = scope.output(scope.call(f))
        updates, bcast, found = {}, {}, []
        for a, upd in enumerate(scope.updates()):
          if a == carry_idx:
            continue
          for i, new in upd.items():
            if specs[a][i] is not None:
              updates[(a, i)] = new
            elif (a, i) in threaded:
              bcast[(a, i)] = self._same_aval(new, values[a][i], slots[a], names[a], i)
            else:
              found.append((a, i))
        if found:
          raise _Thread(found)
        carry_out, ys, ys_axes = self._split_out(out)
        if ys_axes is not None and uses_state_out_axes(ys_axes):  # new Modules by substate
          record["state_axes"] = ys_axes
          ys, ys_axes = split_outputs(self.api, ys_axes, ys, side)
        new_carry = []
        if carry_idx is not None:
          rebuilt, fresh = scope.rebuilt[carry_idx]
          plan, root = static.plans[carry_idx], names[carry_idx]
          new_carry = next_carry(
            self.api, "the scan body", plan, fresh, values[carry_idx], rebuilt, carry_out, root
          )
        new_carry = [*new_carry, *(bcast.get(k, values[k[0]][k[1]]) for k in threaded)]
        yflat = flatten_args([ys])
        yplan = yflat.plans[0]
        yspecs = (
          ()
          if ys_axes is None
          else broadcast_prefix(
            ys_axes,
            ys,
            yplan,
            self.api,
            "output",
            what="out_axes",
            leaf_ok=_is_int,
            leaf_desc="an int or nnx.Carry",
          )
        )
        record["ys"] = (yplan, yspecs)
      return new_carry, (yflat.values[0], updates)

    def run() -> Any:
      return jax.lax.scan(
        self.named(body),
        [*carry_init, *(base[a][i] for a, i in threaded)],
        xs,
        length=self.length,
        reverse=self.reverse,
        unroll=self.unroll,
        _split_transpose=self._split_transpose,
      )

    try:
      try:
        carry_final, (ys_vals, updates) = run()
      except _Thread as t:  # retrace with the updated broadcast Variables in the carry
        threaded.extend(t.leaves)
        carry_final, (ys_vals, updates) = run()
    except (ValueError, IndexError) as e:  # JAX's errors about xs: name the leaf instead
      if not isinstance(e, PynnxError):
        scanned = [() if a == carry_idx else s for a, s in enumerate(specs)]
        self.check_mapped_axes(call, scanned, "scanned", self.length)
      raise
    per_slot = unstack_updates(specs, updates, dict(zip(threaded, carry_final[n_carry:])))
    carry_final = carry_final[:n_carry]
    carry = None
    if carry_idx is not None:
      carry, per_slot[carry_idx] = final_carry(
        flat.plans[carry_idx], flat.cells[carry_idx], carry_final, slots[carry_idx]
      )
    yplan, yspecs = record["ys"]
    leaves = []
    for kind, spec, value in zip(yplan.kinds, yspecs, ys_vals):
      if spec != 0:
        value = jnp.moveaxis(value, 0, spec)
      if kind is not None:
        value = new_var(kind, value)
        if pname is not None:
          add_axis_name(value, spec, pname)
      leaves.append(value)
    ys_tree = yplan.treedef.unflatten(leaves)
    if "state_axes" in record:
      ys_tree = join_outputs(record["state_axes"], ys_tree, side)
    out = self._join_out(carry, ys_tree)
    return call.finish(out, per_slot, carry=True)

  def _same_aval(self, new: Any, old: Any, slot: Any, name: str, i: int) -> Any:
    """A threaded broadcast Variable's new value, which must keep its shape and dtype."""
    if jnp.shape(new) != jnp.shape(old) or jnp.result_type(new) != jnp.result_type(old):
      raise AxisSpecError(
        f"{self.api}: the broadcast (in_axes=None) Variable {leaf_paths(slot, name)[i]} was "
        f"updated from {jnp.result_type(old)}{list(jnp.shape(old))} to "
        f"{jnp.result_type(new)}{list(jnp.shape(new))} in the loop body. Its update is carried "
        f"from step to step, so it must keep its shape and dtype; scan it instead (an int in "
        f"in_axes) to keep one value per step."
      )
    return jax.lax.convert_element_type(new, jnp.result_type(old))  # drop a weak type


def scan(
  f: Callable = MISSING,
  *,
  length: int | None = None,
  reverse: bool = False,
  unroll: int | bool = 1,
  _split_transpose: bool = False,
  in_axes: Any = (Carry, 0),
  out_axes: Any = (Carry, 0),
  transform_metadata: Mapping[str, Any] = EMPTY,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.lax.scan``: loop a function over slices of its arguments.

  Args:
    f: the loop body.
    length, reverse, unroll, _split_transpose: as in ``jax.lax.scan``.
    in_axes: per positional argument ``nnx.Carry`` (the loop carry, at most one), an int
      (scan along that axis; a prefix of the argument is allowed) or ``None`` (broadcast).
      Keyword arguments are broadcast.
    out_axes: ``nnx.Carry`` for the output that is the next carry, ints for outputs stacked
      along that axis; ``Carry`` must be in both or neither of in_axes and out_axes.
    transform_metadata: ``{nnx.PARTITION_NAME: name}`` updates ``sharding_names``.
    graph: ``None`` for the configured default (tree mode), ``True`` for graph mode.
    graph_updates: graph mode only.

  Example:
    >>> class Stack(nnx.Module):
    ...   def __init__(self):
    ...     self.w = nnx.Param(jnp.arange(3.0))   # one weight per layer
    ...     self.uses = nnx.BatchStat(jnp.zeros(3))
    >>> @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    ... def forward(layer, x):
    ...   layer.uses[...] += 1
    ...   return x * 2 + layer.w[...]
    >>> m = Stack()
    >>> forward(m, jnp.array(1.0)), m.uses[...]
    (Array(12., dtype=float32), Array([1., 1., 1.], dtype=float32))
  """
  return wrap_or_decorate(ScanWrapped, locals())
