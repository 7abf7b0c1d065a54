"""What leaves a transform: input Modules / Variables returned (kept as the caller's own
objects), the user-facing paths of leaves, and the tree-mode structure check.

Inside, :func:`mark_inputs` replaces every input object in the output by an
:class:`InputRef` (a pytree with no leaves); outside, :func:`resolve_inputs` puts the
caller's object in its place, found by position in :func:`object_table` (both sides list
their objects in the same order, as they have the same structure).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from .._core.errors import SharedReferenceError, StructureChangeError
from .._core.paths import format_path, jax_path_to_parts
from .._core.pytree import Pytree
from .._core.variables import Variable, is_variable
from .._graph.api import GraphNode


def leaf_paths(arg: Any, argname: str) -> list[str]:
  """The user-facing path of every leaf of ``arg`` (Variables are leaves), for errors.

  Inside a graph-mode GraphNode the index of its State is not part of the user's path.
  """
  is_leaf = lambda x: is_variable(x) or isinstance(x, GraphNode)  # noqa: E731
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(arg, is_leaf=is_leaf)[0]:
    parts = jax_path_to_parts(path)
    if isinstance(leaf, GraphNode):
      for state in leaf.states:
        items = jax.tree_util.tree_flatten_with_path(state, is_leaf=is_variable)[0]
        out += [format_path(parts + jax_path_to_parts(p), argname) for p, _ in items]
    else:
      out.append(format_path(parts, argname))
  return out


class InputRef:
  """Output placeholder for "object ``k`` of input table ``table``" (no pytree leaves).

  An input Module or Variable returned from a transform comes back as the caller's own
  object: inside, it is replaced by this marker; outside, the marker is resolved against
  the caller's objects, listed in the same order (:func:`object_table`).
  """

  __slots__ = ("table", "k")

  def __init__(self, table: int, k: int):
    self.table = table
    self.k = k


jax.tree_util.register_pytree_node(
  InputRef, lambda r: ((), (r.table, r.k)), lambda aux, _: InputRef(*aux)
)


def _is_obj(x: Any) -> bool:
  return isinstance(x, (Pytree, Variable))


def object_table(tree: Any) -> list:
  """Every Pytree and Variable in ``tree``, in a fixed (pre-)order."""
  out: list = []

  def walk(x: Any) -> None:
    for leaf in jax.tree_util.tree_leaves(x, is_leaf=lambda y: y is not x and _is_obj(y)):
      if _is_obj(leaf) and leaf is not x:
        out.append(leaf)
        if isinstance(leaf, Pytree):
          walk(leaf)

  if _is_obj(tree):
    out.append(tree)
    if isinstance(tree, Pytree):
      walk(tree)
  else:
    walk(tree)
  return out


def _map_objects(tree: Any, fn: Callable[[Any], Any], is_obj: Callable[[Any], bool]) -> Any:
  """``tree`` with ``fn`` applied to the objects ``is_obj`` selects; ``fn`` returns None to
  descend into a Pytree instead. A Pytree met twice is rebuilt once, so sharing survives."""
  memo: dict[int, Any] = {}

  def visit(x: Any) -> Any:
    if not is_obj(x):
      return x
    new = fn(x)
    if new is not None:
      return new
    if not isinstance(x, Pytree):
      return x
    if id(x) not in memo:
      memo[id(x)] = jax.tree_util.tree_map(visit, x, is_leaf=lambda y: y is not x and is_obj(y))
    return memo[id(x)]

  return jax.tree_util.tree_map(visit, tree, is_leaf=is_obj)


def mark_inputs(out: Any, tables: Sequence[list]) -> tuple[Any, bool]:
  """``out`` with every object of ``tables`` replaced by its InputRef (``out`` itself when
  it holds none: new Modules are left as they are)."""
  where = {id(o): (t, k) for t, table in enumerate(tables) for k, o in enumerate(table)}
  if not where or not any(id(o) in where for o in object_table(out)):
    return out, False
  marked = _map_objects(out, lambda x: InputRef(*where[id(x)]) if id(x) in where else None, _is_obj)
  return marked, True


def check_output_unique(api: str, out: Any) -> None:
  """Tree mode: a new Variable returned at two places would come back as two arrays, two
  Variables: the aliasing would be lost silently, so it raises SharedReferenceError."""
  leaves = jax.tree_util.tree_leaves(out, is_leaf=is_variable)
  ids = [id(v) for v in leaves if isinstance(v, Variable)]
  if len(set(ids)) == len(ids):
    return
  first: dict[int, str] = {}
  for leaf, where in zip(leaves, leaf_paths(out, "output")):
    if isinstance(leaf, Variable):
      if id(leaf) in first:
        kind = type(leaf).__name__
        raise SharedReferenceError(
          f"{api} returned the same {kind} at two places:\n  {first[id(leaf)]}\n  {where}\n"
          f"Tree mode (the default) returns every Variable as its own array, so the two "
          f"places would come back as two separate {kind}s. Return it once, or opt into "
          f"graph mode for this call: `{api}(..., graph=True)`."
        )
      first[id(leaf)] = where


def resolve_inputs(out: Any, tables: Sequence[list]) -> Any:
  """Replaces every InputRef of ``out`` by the caller's object."""
  return _map_objects(
    out,
    lambda x: tables[x.table][x.k] if isinstance(x, InputRef) else None,
    lambda x: isinstance(x, (InputRef, Pytree, Variable)),
  )


def _only_variables(node: Any) -> bool:
  return all(isinstance(x, Variable) for x in jax.tree_util.tree_leaves(node, is_leaf=is_variable))


def keep_callers(out: Any, caller: Any) -> Any:
  """``out``, rebuilt from ``caller``'s structure with the caller's Variables, with every
  Module whose leaves are all Variables replaced by the caller's own object (its values
  were written back); Modules holding plain arrays stay new objects with the new arrays."""
  return jax.tree_util.tree_map(
    lambda new, old: old if isinstance(old, Pytree) and _only_variables(old) else new,
    out,
    caller,
    is_leaf=_is_obj,
  )


def check_tree_structure(name: str, static: Any, rebuilt: Sequence[tuple]) -> None:
  """Tree mode: an argument whose structure changed inside the transform (e.g. ``sow`` added a
  Variable) raises, since the change could not reach the caller's object."""
  for key, plan, (arg, _) in zip(static.layout, static.plans, rebuilt):
    if jax.tree_util.tree_structure(arg, is_leaf=is_variable) == plan.treedef:
      continue
    where = f"args[{key}]" if isinstance(key, int) else key
    before = set(leaf_paths(plan.treedef.unflatten(range(len(plan.kinds))), where))
    after = set(leaf_paths(arg, where))
    added, removed = sorted(after - before), sorted(before - after)
    if not added and not removed:
      continue  # only static attributes changed (e.g. model.eval() inside a step): allowed
    changes = (("added", added), ("removed", removed))
    what = " " + " and ".join(f"{verb} {', '.join(paths)}" for verb, paths in changes if paths)
    raise StructureChangeError(
      f"pynnx.{name}: the function{what} inside a tree-mode transform; "
      f"tree mode cannot carry structural changes back to the caller, so they would be lost. "
      f"To collect `sow` / `perturb` values use `nnx.capture(f, nnx.Intermediate)` (inside or "
      f"around the transform); to keep new Variables use graph mode "
      f"(`graph=True, graph_updates=True`), or create them before the transform."
    )
