"""``recursive_map`` and ``map``: rebuild a Module with some of its nodes or Variables replaced.

Modules are frozen, so both return a new structure; Variables that ``f`` returns unchanged are
the same objects in the result (as in Flax). ``graph=None`` reads ``nnx.set_graph_mode``:
tree mode requires every Variable to be reachable once, graph mode maps a shared node or
Variable once and puts the one result at every place it was reachable from.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar, cast

import jax

from . import _functional as functional
from ._core.config import resolve_graph
from ._core.errors import NotAVariableError, SharedReferenceError
from ._core.paths import format_path, key_to_part
from ._core.pytree import Pytree
from ._core.state import State, map_state
from ._core.tree import check_no_sharing, flatten_with_paths
from ._core.variables import Variable

A = TypeVar("A")
Path = tuple[Hashable, ...]


def _children(x: Any) -> tuple[list[tuple[Hashable, Any]], Any] | None:
  """One level of ``x``'s pytree children and the treedef to rebuild it, or None for a leaf."""
  if isinstance(x, Variable):
    return None
  with_path, treedef = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
  if jax.tree_util.treedef_is_leaf(treedef) and not isinstance(x, Pytree):
    return None
  return [(key_to_part(kp[0]), c) for kp, c in with_path], treedef


def recursive_map(f: Callable[[Path, Any], Any], node: Any, /, *, graph: bool | None = None) -> Any:
  """Rebuilds ``node`` bottom-up, replacing every node and leaf ``x`` at ``path`` by ``f(path, x)``.

  Children are mapped before their parent, so ``f`` sees each parent already rebuilt from
  its mapped children. Only data attributes are visited (static attributes are part of the
  structure). Returns the mapped root; the input is not modified.

  Args:
    f: ``(path, value) -> new_value``; ``path`` is a tuple of attribute names and indices.
    node: a Module, Variable or any pytree holding them.
    graph: ``True``: a node or Variable reachable from several places is mapped once and its
      result shared; ``False``: each Variable must be reachable once (else
      ``SharedReferenceError``); ``None``: ``nnx.set_graph_mode``'s value.

  Example:
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> zeroed = nnx.recursive_map(
    ...   lambda path, x: x.replace(jnp.zeros_like(x[...])) if isinstance(x, nnx.Param) else x,
    ...   model,
    ... )
    >>> float(zeroed.kernel[...].sum()), zeroed is model
    (0.0, False)
  """
  return rebuild(f, node, resolve_graph(graph), "pynnx.recursive_map")


def rebuild(f: Callable[[Path, Any], Any], node: Any, graph: bool, api: str) -> Any:
  """``recursive_map`` with the mode resolved; ``api`` names the caller in errors."""
  root = "model"
  if not graph:  # checked before f runs: a shared Variable must not be half-mapped
    check_no_sharing(flatten_with_paths(node)[0], api, root)
  results: dict[int, Any] = {}
  in_progress: dict[int, Path] = {}

  def walk(x: Any, path: Path) -> Any:
    key = id(x)
    shared = graph and isinstance(x, (Pytree, Variable))
    if shared and key in results:
      return results[key]
    if key in in_progress:
      raise SharedReferenceError(
        f"{api} found a cycle: {format_path(path, root)} is "
        f"{format_path(in_progress[key], root)}, which contains it. It needs an acyclic "
        "graph; break the cycle (store an index or a name instead of the object)."
      )
    split = _children(x)
    if split is not None:
      children, treedef = split
      in_progress[key] = path
      new_children = [walk(c, (*path, k)) for k, c in children]
      del in_progress[key]
      x = treedef.unflatten(new_children)
    out = f(path, x)
    if shared:
      results[key] = out
    return out

  return walk(node, ())


def map(  # noqa: A001  (Flax's name)
  f: Callable[[Path, Any], Any],
  node: A,
  /,
  *,
  graph: bool | None = None,
  recreate_variables: bool = True,
) -> A:
  """A copy of ``node`` whose State leaves are replaced by ``f(path, variable)``.

  ``f`` gets every Variable of ``node`` with its path (as in ``nnx.state(node)``) and returns a
  Variable or, with ``recreate_variables=True`` (the default), a plain value that is stored in
  a new Variable of the original's type and metadata. Variables ``f`` returns are used as is.

  Args:
    f: ``(path, variable) -> new variable or value``.
    node: a Module (or a single Variable, mapped at path ``()``).
    graph: as for :func:`nnx.split`.
    recreate_variables: wrap plain values returned by ``f`` in Variables of the original type;
      with ``False`` they must already be Variables.

  Example:
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> doubled = nnx.map(lambda path, v: v[...] * 2, model)
    >>> type(doubled.kernel).__name__, bool((doubled.kernel[...] == 2 * model.kernel[...]).all())
    ('Param', True)
  """
  if isinstance(node, Variable):
    out = f((), node)
    keep = isinstance(out, Variable) or not recreate_variables
    return cast(A, out if keep else node.replace(out))
  graphdef, state = functional.split(node, graph=graph)

  def apply(path: Path, v: Any) -> Any:
    out = f(path, v)
    if isinstance(v, Variable) and not isinstance(out, Variable):
      if not recreate_variables:
        raise NotAVariableError(
          f"pynnx.map: f returned a {type(out).__name__} for {format_path(path)}, a "
          f"{type(v).__name__}, and recreate_variables=False keeps what f returns, but a "
          f"Module holds Variables. Return `v.replace(value)` from f, or drop "
          "recreate_variables=False."
        )
      out = v.replace(out)
    return out

  return functional.merge(graphdef, map_state(apply, state) if isinstance(state, State) else state)
