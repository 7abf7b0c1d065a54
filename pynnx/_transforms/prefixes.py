"""``nnx.prefix``: per-Variable axes / specs for a transform, computed from filters.

The tree-mode answer to ``StateAxes``: ``nnx.prefix(model, {nnx.Param: None, nnx.BatchStat: 0})``
returns ``model``'s structure with every leaf replaced by its spec, which ``vmap`` / ``scan``
/ ``shard_map`` / ``jit`` accept as the prefix of that argument (see :mod:`.prefix`). With
``graph=True`` the node is first converted the way a graph-mode transform converts its
arguments (shared objects deduplicated in order), so ``nnx.prefix((m1, m2), ..., graph=True)``
gives one prefix per argument for a graph-mode transform called with ``(m1, m2)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

from .._core import filters as filterlib
from .._core.config import resolve_graph
from .._core.errors import FilterError
from .._core.paths import jax_path_to_parts
from .._core.variables import is_variable
from .._graph import api as graph_api
from .._graph.api import GraphNode

__all__ = ["prefix"]


def _prefix_fn(filter_map: Any) -> Callable[[tuple, Any], Any]:
  if not isinstance(filter_map, Mapping):
    if not callable(filter_map):
      raise FilterError(
        f"nnx.prefix: filter_map must be a callable `(path, leaf) -> prefix` or a mapping "
        f"from filters to prefixes, got {type(filter_map).__name__}."
      )
    return filter_map
  rules = [(f, filterlib.to_predicate(f), value) for f, value in filter_map.items()]

  def by_filter(path: tuple, leaf: Any) -> Any:
    for _, pred, value in rules:
      if pred(path, leaf):
        return value
    raise FilterError(
      f"nnx.prefix: no filter matched the leaf at path {path} ({type(leaf).__name__}); the "
      f"filters were {[f for f, _, _ in rules]}. Add a catch-all entry, e.g. `...: None`."
    )

  return by_filter


def _map_tree(tree: Any, fn: Callable, base: tuple = ()) -> Any:
  return jax.tree_util.tree_map_with_path(
    lambda p, x: fn((*base, *jax_path_to_parts(p)), x), tree, is_leaf=is_variable
  )


def prefix(node, filter_map, /, *, graph: bool | None = None):
  """``node`` with every leaf (Variables are leaves) replaced by ``filter_map``'s value.

  Args:
    node: a Module, Variable or pytree of them (arrays and other leaves are mapped too).
    filter_map: a callable ``(path, leaf) -> prefix``, or a mapping ``{filter: prefix}``
      checked in order (the first matching filter wins; no match raises).
    graph: ``None`` for the configured default. ``True`` converts ``node`` to graph mode's
      argument form first: pass every argument a graph-mode transform receives, in order.

  Returns:
    The prefix: ``node``'s structure with prefix values as leaves.

  Raises:
    FilterError: no filter of the mapping matched a leaf (a ValueError, as in Flax).

  Example:
    >>> m = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    >>> axes = nnx.prefix(m, {nnx.BatchStat: 0, ...: None})
    >>> @nnx.vmap(in_axes=(axes, 0))
    ... def apply(m, x):
    ...   return m(x)
    >>> stats = jax.tree.map(lambda v: jnp.stack([v] * 4), nnx.state(m, nnx.BatchStat))
    >>> nnx.update(m, stats)
    >>> apply(m, jnp.ones((4, 5, 3))).shape
    (4, 5, 3)
  """
  fn = _prefix_fn(filter_map)
  if not resolve_graph(graph):
    return _map_tree(node, fn)
  tree = graph_api.to_tree(node)

  def per_root(path: Any, x: Any) -> Any:
    base = jax_path_to_parts(path)
    if not isinstance(x, GraphNode):
      return fn(base, x)
    states = tuple(_map_tree(s, fn, base) for s in x.states)
    return GraphNode(x.graphdef, states)

  return jax.tree_util.tree_map_with_path(
    per_root, tree, is_leaf=lambda x: isinstance(x, GraphNode)
  )
