"""``nnx.cond``, ``nnx.switch``, ``nnx.while_loop`` and ``nnx.fori_loop`` over the lift.

``jax.lax`` control flow needs outputs of a fixed structure, so these transforms carry every
Variable's value through the primitive instead of only the changed ones:

- ``cond`` / ``switch``: each branch returns its output plus the current value of every
  Variable leaf of the operands; the taken branch's values are written back. Branches must
  leave the Variables with the same shapes and dtypes.
- ``while_loop`` / ``fori_loop``: the carry is ``init_val``'s flattened leaves (Variables'
  values and plain arrays). The body gets ``init_val`` rebuilt with fresh Variables and returns
  the next value, which must have the same structure (same Variable types and places). After
  the loop the final values are written into the caller's Variables and the returned value
  holds the caller's Variable objects.

In both cases a Variable returned from inside (an operand's or the loop value's) comes back as
the caller's own Variable, not a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from .._core.errors import StructureChangeError, TraceContextError
from .carry import aval_str, check_kept, final_carry, next_carry, same_type
from .flat import all_values, changed
from .lift import Inner, Transform
from .outputs import leaf_paths

__all__ = ["cond", "switch", "while_loop", "fori_loop"]


# --- cond / switch ----------------------------------------------------------------------------


class _Operands(Transform):
  """The operands of cond / switch / while_loop / fori_loop, bound like any transform's."""

  check_bound = False
  what: str

  def setup(self) -> None:  # options: transform (its public name), what (the operands' name)
    self.api = self.check.api = f"pynnx.{self.transform}"

  def slot_names(self, layout: Sequence[int | str]) -> list[str]:
    if self.what == "init_val":
      return ["init_val"]
    return [f"{self.what}[{k}]" for k in layout]


def _no_function() -> None:  # the control-flow primitives take several functions
  return None


def _branches(
  transform: str,
  names: Sequence[str],
  funs: Sequence[Callable],
  select: Callable,
  operands: tuple,
  graph: Any,
  graph_updates: Any,
) -> Any:
  ops = _Operands(
    _no_function, transform=transform, what="operands", graph=graph, graph_updates=graph_updates
  )
  api = ops.api
  call = ops.bind(tuple(operands), {})
  static, roots = call.static, call.names

  def make(k: int, fun: Callable) -> Callable:
    def branch(*values: Any):
      with Inner(static, values, transform, fixed=True, call=call) as scope:
        out = scope.output(scope.call(fun))
        args = [a for a, _ in scope.rebuilt]
        check_kept(api, names[k], static.plans, call.slots, args, roots)
        new = scope.updates(all_values)
      return out, new

    branch.__name__ = getattr(fun, "__name__", "branch")
    return branch

  fns = [make(k, fun) for k, fun in enumerate(funs)]
  try:
    out, new = select(fns, call.flat.values)
  except TypeError as e:
    _diagnose(api, names, fns, call, e)
    raise
  return call.finish(out, new)


def _diagnose(
  api: str, names: Sequence[str], fns: Sequence[Callable], call: Any, error: Exception
) -> None:
  """After JAX rejected the branches' outputs: name the operand leaf that differs."""
  flat = call.flat
  try:
    shapes = [jax.eval_shape(fn, *flat.values) for fn in fns]
  except Exception:  # the branch itself fails: JAX's error is the better one
    return
  base_out, base_new = shapes[0]
  for k, (_, new) in enumerate(shapes[1:], 1):
    for a, (plan, v0, v1) in enumerate(zip(flat.plans, base_new, new, strict=True)):
      for i in plan.var_idx:
        x, y = v0[i], v1[i]
        if not same_type(x, y):
          where = leaf_paths(call.slots[a], call.names[a])[i]
          raise StructureChangeError(
            f"{api}: {names[0]} leaves {where} as {aval_str(x)} but {names[k]} leaves it as "
            f"{aval_str(y)}. Every branch must keep each Variable's shape and dtype equal."
          ) from error
  for k, (out, _) in enumerate(shapes[1:], 1):
    base_leaves, leaves = jax.tree.leaves(base_out), jax.tree.leaves(out)
    # jaxlib ships no stub for PyTreeDef, so mypy cannot type the comparison (ignore below)
    if jax.tree.structure(out) != jax.tree.structure(base_out) or any(  # type: ignore[operator]
      not same_type(x, y) for x, y in zip(base_leaves, leaves, strict=True)
    ):
      raise StructureChangeError(
        f"{api}: {names[0]} and {names[k]} return outputs of different structure, shapes or "
        f"dtypes:\n  {base_out}\n  {out}\nAll branches must return the same kind of output."
      ) from error


def cond(
  pred: Any,
  true_fun: Callable,
  false_fun: Callable,
  *operands: Any,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.lax.cond``: Variable updates made in the taken branch persist.

  Both branches take the operands (Modules included) and must return outputs of the same
  structure and keep every Variable's shape and dtype.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> class Counter(nnx.Module):
    ...   def __init__(self):
    ...     self.count = nnx.BatchStat(jnp.array(0))
    >>> def inc(c):
    ...   c.count[...] += 1
    >>> def dec(c):
    ...   c.count[...] -= 1
    >>> c = Counter()
    >>> nnx.cond(jnp.array(True), inc, dec, c); int(c.count[...])
    1
  """
  return _branches(
    "cond",
    ("true_fun", "false_fun"),
    (true_fun, false_fun),
    lambda fns, values: jax.lax.cond(pred, fns[0], fns[1], *values),
    operands,
    graph,
    graph_updates,
  )


def switch(
  index: Any,
  branches: Sequence[Callable],
  *operands: Any,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.lax.switch``: applies ``branches[index]``; its Variable updates persist.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> class Counter(nnx.Module):
    ...   def __init__(self):
    ...     self.count = nnx.BatchStat(jnp.array(0))
    >>> def add(n):
    ...   def f(c):
    ...     c.count[...] += n
    ...   return f
    >>> c = Counter()
    >>> nnx.switch(2, [add(1), add(10), add(100)], c); int(c.count[...])
    100
  """
  branches = tuple(branches)
  names = tuple(f"branches[{k}]" for k in range(len(branches)))
  return _branches(
    "switch",
    names,
    branches,
    lambda fns, values: jax.lax.switch(index, fns, *values),
    operands,
    graph,
    graph_updates,
  )


# --- while_loop / fori_loop ---------------------------------------------------------------------


class _Loop:
  """The shared machinery of while_loop and fori_loop for one call."""

  def __init__(self, transform: str, init_val: Any, graph: Any, graph_updates: Any):
    ops = _Operands(
      _no_function, transform=transform, what="init_val", graph=graph, graph_updates=graph_updates
    )
    self.api = ops.api
    self.frame = transform
    self.call = ops.bind((init_val,), {})
    self.init_val = self.call.slots[0]
    self.plan = self.call.static.plans[0]
    self.values = self.call.flat.values[0]

  def cond(self, cond_fun: Callable) -> Callable:
    def cond_(carry: list):
      with Inner(self.call.static, [carry], self.frame, carry=True) as scope:
        pred = scope.call(cond_fun)
        if changed(self.plan, scope.rebuilt[0][1], carry):
          raise TraceContextError(
            f"{self.api}: cond_fun updated a Variable of init_val; that update would be lost "
            f"because cond_fun only decides whether to continue. Move the update into body_fun."
          )
      return pred

    cond_.__name__ = getattr(cond_fun, "__name__", "cond_fun")
    return cond_

  def body(self, body_fun: Callable, with_index: bool) -> Callable:
    def body_(*xs: Any):
      carry = xs[-1]
      with Inner(self.call.static, [carry], self.frame, carry=True) as scope:
        val = scope.slots[0]
        out = scope.output(body_fun(xs[0], val) if with_index else body_fun(val))
        rebuilt, fresh = scope.rebuilt[0]
        new = next_carry(self.api, "body_fun", self.plan, fresh, carry, rebuilt, out, "init_val")
      return new

    body_.__name__ = getattr(body_fun, "__name__", "body_fun")
    return body_

  def finish(self, final: Sequence) -> Any:
    out, updates = final_carry(self.plan, self.call.flat.cells[0], final, self.call.slots[0])
    return self.call.finish(out, [updates], carry=True)


def while_loop(
  cond_fun: Callable,
  body_fun: Callable,
  init_val: Any,
  *,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.lax.while_loop``: ``init_val`` may hold Modules; their updates persist.

  ``body_fun`` must return a value with the structure of ``init_val`` (same Variables at the
  same places, same shapes and dtypes). The result holds the caller's Variables, updated.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    >>> def body(val):
    ...   m, x, n = val
    ...   return m, m(x), n - 1
    >>> _, y, n = nnx.while_loop(lambda val: val[2] > 0, body, (m, jnp.ones((2,)), 3))
    >>> y.shape, int(n)
    ((2,), 0)
  """
  loop = _Loop("while_loop", init_val, graph, graph_updates)
  final = jax.lax.while_loop(loop.cond(cond_fun), loop.body(body_fun, False), loop.values)
  return loop.finish(final)


def fori_loop(
  lower: Any,
  upper: Any,
  body_fun: Callable,
  init_val: Any,
  *,
  unroll: int | bool | None = None,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.lax.fori_loop``: ``body_fun(i, val)`` returns the next ``val``.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> class Acc(nnx.Module):
    ...   def __init__(self):
    ...     self.total = nnx.BatchStat(jnp.array(0))
    >>> def body(i, acc):
    ...   acc.total[...] += i
    ...   return acc
    >>> acc = Acc()
    >>> _ = nnx.fori_loop(0, 5, body, acc); int(acc.total[...])
    10
  """
  loop = _Loop("fori_loop", init_val, graph, graph_updates)
  final = jax.lax.fori_loop(lower, upper, loop.body(body_fun, True), loop.values, unroll=unroll)
  return loop.finish(final)
