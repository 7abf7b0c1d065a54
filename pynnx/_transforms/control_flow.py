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

from .._core.config import resolve_graph
from .._core.errors import StructureChangeError, TraceContextError
from .._core.paths import format_path, jax_path_to_parts
from .._core.variables import Variable, is_variable
from . import graph_adapter
from .lift import (
  InnerFrame,
  SharingCheck,
  _get_raw,
  _kind,
  _new_var,
  changed,
  flatten_args,
  leaf_paths,
  rebuild_arg,
  write_all,
  write_back,
)

__all__ = ["cond", "switch", "while_loop", "fori_loop"]


# --- structure checks (run at trace time only) ----------------------------------------------


def _describe(kind: Any) -> str:
  if kind is None:
    return "a plain value"
  typ, meta = kind
  return f"a {typ.__name__}" + (f" with metadata {dict(meta)}" if meta else "")


def _paths(tree: Any) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)[0]
  return {jax_path_to_parts(p): _kind(leaf) for p, leaf in flat}


def _difference(before: Any, after: Any, root: str) -> str:
  """A sentence naming the first path where ``after``'s Variable structure leaves ``before``'s."""
  b, a = _paths(before), _paths(after)
  for p in b:
    if p not in a:
      return f"{format_path(p, root)} ({_describe(b[p])}) is missing"
  for p in a:
    if p not in b:
      return f"{format_path(p, root)} ({_describe(a[p])}) was added"
  for p in b:
    if b[p] != a[p]:
      return f"{format_path(p, root)} was {_describe(b[p])} and became {_describe(a[p])}"
  return f"the containers of {root} changed type"


def _same_structure(plan: Any, tree: Any) -> tuple[bool, list]:
  leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_variable)
  return treedef == plan.treedef and tuple(map(_kind, leaves)) == plan.kinds, leaves


def _check_args_kept(
  api: str, who: str, plans: Sequence, before: Sequence, after: Sequence, roots: Sequence[str]
) -> None:
  """Raises if ``who`` added/removed Variables or changed their metadata in an argument."""
  for plan, b, a, root in zip(plans, before, after, roots, strict=True):
    if not _same_structure(plan, a)[0]:
      raise StructureChangeError(
        f"{api}: {who} changed the Variable structure of {root}: "
        f"{_difference(b, a, root)}. Inside {api} the Variables may change value but not "
        f"their number, types, metadata or places (no `sow`, new Variables or metadata "
        f"changes). Make such changes outside the {api.split('.')[-1]} call."
      )


def _aval_str(x: Any) -> str:
  t = jax.typeof(x)
  return t.str_short() if hasattr(t, "str_short") else str(t)


def _same_type(x: Any, y: Any) -> bool:
  tx, ty = jax.typeof(x), jax.typeof(y)
  return tx.shape == ty.shape and tx.dtype == ty.dtype


# --- outputs that contain operand Variables --------------------------------------------------


def _split_out(out: Any, fresh_pos: dict) -> tuple[tuple, list]:
  """``(static, values)`` of an output; the operands' fresh Variables become references."""
  leaves, treedef = jax.tree_util.tree_flatten(out, is_leaf=is_variable)
  kinds: list[tuple[str, Any] | None] = []
  values = []
  for leaf in leaves:
    if isinstance(leaf, Variable):
      pos = fresh_pos.get(id(leaf))
      if pos is not None:
        kinds.append(("ref", pos))
        continue
      kinds.append(("var", _kind(leaf)))
      values.append(_get_raw(leaf))
    else:
      kinds.append(None)
      values.append(leaf)
  return (treedef, tuple(kinds)), values


def _join_out(static: tuple, values: Sequence, cells: Sequence) -> Any:
  treedef, kinds = static
  it = iter(values)
  leaves = []
  for kind in kinds:
    if kind is None:
      leaves.append(next(it))
    elif kind[0] == "ref":
      a, i = kind[1]
      leaves.append(cells[a][i])
    else:
      leaves.append(_new_var(kind[1], next(it)))
  return treedef.unflatten(leaves)


def _write_vars(flat: Any, new: Sequence) -> None:
  pairs = zip(flat.plans, new, strict=True)
  updates = [dict(zip(p.var_idx, vals, strict=True)) for p, vals in pairs]
  write_back(flat, updates)


# --- cond / switch ----------------------------------------------------------------------------


def _branches(
  api: str,
  names: Sequence[str],
  funs: Sequence[Callable],
  select: Callable,
  operands: tuple,
  graph: Any,
  graph_updates: Any,
) -> Any:
  gs = None
  if resolve_graph(graph):
    operands, _, gs = graph_adapter.to_tree(tuple(operands), {}, api, graph_updates)
  roots = [f"operands[{i}]" for i in range(len(operands))]
  flat = flatten_args(operands, SharingCheck(api, roots))
  plans, cells = flat.plans, flat.cells
  statics: list = [None] * len(funs)
  frame_name = api.split(".")[-1]

  def make(k: int, fun: Callable) -> Callable:
    def branch(*values: Any):
      with InnerFrame(frame_name):
        rebuilt = [rebuild_arg(p, v) for p, v in zip(plans, values, strict=True)]
        args = [a for a, _ in rebuilt]
        if gs is not None:
          call_args, _, finish = graph_adapter.enter(gs, list(args), {})
          out = finish(fun(*call_args))
        else:
          out = fun(*args)
        _check_args_kept(api, names[k], plans, operands, args, roots)
        fresh_pos = {
          id(v): (a, i)
          for a, (p, (_, fr)) in enumerate(zip(plans, rebuilt, strict=True))
          for i, v in zip(p.var_idx, fr, strict=True)
        }
        statics[k], out_values = _split_out(out, fresh_pos)
        new = [[_get_raw(v) for v in fr] for _, fr in rebuilt]
      return out_values, new

    return branch

  fns = [make(k, fun) for k, fun in enumerate(funs)]
  try:
    out_values, new = select(fns, flat.values)
  except TypeError as e:
    _diagnose(api, names, fns, flat, operands, roots, e)
    raise
  first = statics[0]
  for k, st in enumerate(statics[1:], 1):
    if st is not None and first is not None and st != first:
      raise StructureChangeError(
        f"{api}: {names[0]} and {names[k]} return outputs of different structure (a Variable "
        f"of the operands in one and a new value in the other, or different Variable types). "
        f"All branches must return the same kind of output."
      )
  _write_vars(flat, new)
  out = _join_out(first, out_values, cells)
  if gs is not None:
    out = graph_adapter.exit(gs, out)
  return out


def _diagnose(
  api: str,
  names: Sequence[str],
  fns: Sequence[Callable],
  flat: Any,
  operands: tuple,
  roots: Sequence[str],
  error: Exception,
) -> None:
  """After JAX rejected the branches' outputs: name the operand leaf that differs."""
  try:
    shapes = [jax.eval_shape(fn, *flat.values) for fn in fns]
  except Exception:  # the branch itself fails: JAX's error is the better one
    return
  base_out, base_new = shapes[0]
  for k, (_, new) in enumerate(shapes[1:], 1):
    for a, (plan, v0, v1) in enumerate(zip(flat.plans, base_new, new, strict=True)):
      for i, x, y in zip(plan.var_idx, v0, v1, strict=True):
        if not _same_type(x, y):
          where = leaf_paths(operands[a], roots[a])[i]
          raise StructureChangeError(
            f"{api}: {names[0]} leaves {where} as {_aval_str(x)} but {names[k]} leaves it as "
            f"{_aval_str(y)}. Every branch must keep each Variable's shape and dtype equal."
          ) from error
  for k, (out, _) in enumerate(shapes[1:], 1):
    base_leaves, leaves = jax.tree.leaves(base_out), jax.tree.leaves(out)
    # jaxlib ships no stub for PyTreeDef, so mypy cannot type the comparison (ignore below)
    if jax.tree.structure(out) != jax.tree.structure(base_out) or any(  # type: ignore[operator]
      not _same_type(x, y) for x, y in zip(base_leaves, leaves, strict=True)
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
    "pynnx.cond",
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
    "pynnx.switch",
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

  def __init__(self, api: str, init_val: Any, graph: Any, graph_updates: Any):
    self.api = api
    self.frame = api.split(".")[-1]
    self.gs = None
    if resolve_graph(graph):
      (init_val,), _, self.gs = graph_adapter.to_tree((init_val,), {}, api, graph_updates)
    self.init_val = init_val
    self.flat = flat = flatten_args([init_val], SharingCheck(api, ["init_val"]))
    self.plan, self.values, self.cells = flat.plans[0], flat.values[0], flat.cells[0]

  def enter(self, carry: Sequence) -> tuple[Any, list, Callable]:
    val, fresh = rebuild_arg(self.plan, carry)
    if self.gs is None:
      return val, fresh, lambda out: out
    (gval,), _, finish = graph_adapter.enter(self.gs, [val], {}, carry=True)
    return gval, fresh, finish

  def cond(self, cond_fun: Callable) -> Callable:
    def cond_(carry: list):
      with InnerFrame(self.frame):
        val, fresh, _ = self.enter(carry)
        pred = cond_fun(val)
        if changed(self.plan, fresh, carry):
          raise TraceContextError(
            f"{self.api}: cond_fun updated a Variable of init_val; that update would be lost "
            f"because cond_fun only decides whether to continue. Move the update into body_fun."
          )
      return pred

    return cond_

  def body(self, body_fun: Callable, with_index: bool) -> Callable:
    def body_(*xs: Any):
      carry = xs[-1]
      with InnerFrame(self.frame):
        val, fresh, finish = self.enter(carry)
        out = finish(body_fun(xs[0], val) if with_index else body_fun(val))
        new = self._next_carry(val, fresh, carry, out)
      return new

    return body_

  def _next_carry(self, val: Any, fresh: list, carry: Sequence, out: Any) -> list:
    api = self.api
    same, leaves = _same_structure(self.plan, out)
    if not same and out is None:
      raise StructureChangeError(
        f"{api}: body_fun returned None; it must return the next loop value, a value with "
        f"the structure of init_val (e.g. `return module, x`)."
      )
    if not same:
      raise StructureChangeError(
        f"{api}: body_fun must return a value with the same structure as init_val (same "
        f"containers, same Variable types and metadata at the same places), but "
        f"{_difference(val, out, 'init_val')} in what it returned."
      )
    returned = {id(leaf) for leaf in leaves if isinstance(leaf, Variable)}
    paths = None
    new = []
    for i, (leaf, old) in enumerate(zip(leaves, carry, strict=True)):
      value = _get_raw(leaf) if isinstance(leaf, Variable) else leaf
      if not _same_type(value, old):
        paths = paths or self._leaf_paths()
        raise StructureChangeError(
          f"{api}: body_fun changed {paths[i]} from {_aval_str(old)} to {_aval_str(value)}. "
          f"The loop carry must keep every leaf's shape and dtype (cast with `.astype` or "
          f"reshape before returning)."
        )
      new.append(value)
    for i, var in zip(self.plan.var_idx, fresh, strict=True):
      if id(var) not in returned and _get_raw(var) is not carry[i]:
        paths = paths or self._leaf_paths()
        raise StructureChangeError(
          f"{api}: body_fun updated {paths[i]} but returned a different object in its place, "
          f"so the update would be lost. Return the value body_fun received (with its "
          f"Variables) instead of a copy."
        )
    return new

  def _leaf_paths(self) -> list[str]:
    return leaf_paths(self.init_val, "init_val")

  def finish(self, final: Sequence) -> Any:
    write_all(self.flat, [final])
    leaves = list(final)
    for i in self.plan.var_idx:
      leaves[i] = self.cells[i]
    out = self.plan.treedef.unflatten(leaves)
    if self.gs is not None:
      out = graph_adapter.exit(self.gs, out, carry=True)
    return out


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
  loop = _Loop("pynnx.while_loop", init_val, graph, graph_updates)
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
  loop = _Loop("pynnx.fori_loop", init_val, graph, graph_updates)
  final = jax.lax.fori_loop(lower, upper, loop.body(body_fun, True), loop.values, unroll=unroll)
  return loop.finish(final)
