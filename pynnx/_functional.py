"""Public split / merge / state / update / clone / pop / iter_graph / flatten / unflatten.

Each resolves ``graph=`` once (``None`` reads ``nnx.set_graph_mode``) and dispatches to the
tree-mode implementation (``_core/tree.py``) or the graph-mode one (``_graph/api.py``).
``merge`` and ``unflatten`` decide the mode from the GraphDef they are given.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._core import tree
from ._core.config import resolve_graph
from ._graph import api as graph_api


def split(node: Any, *filters: Any, graph: bool | None = None) -> tuple:
  """Splits ``node`` into a GraphDef and one State per filter.

  Example:
    >>> import pynnx as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> graphdef, params = nnx.split(model, nnx.Param)
    >>> sorted(params.keys())
    ['bias', 'kernel']
  """
  if resolve_graph(graph):
    return graph_api.split(node, *filters)
  return tree.split(node, *filters)


def merge(graphdef: Any, state: Any, /, *states: Any, copy: bool = False) -> Any:
  """Rebuilds a Module from a GraphDef and States (mode taken from the GraphDef)."""
  if isinstance(graphdef, tree.TreeGraphDef):
    return tree.merge(graphdef, state, *states, copy=copy)
  return graph_api.merge(graphdef, state, *states, copy=copy)


def state(node: Any, *filters: Any, graph: bool | None = None) -> Any:
  """The State of ``node`` (one per filter if several are given)."""
  if resolve_graph(graph):
    return graph_api.state(node, *filters)
  return tree.state(node, *filters)


def graphdef(node: Any, *, graph: bool | None = None) -> Any:
  """The GraphDef of ``node``."""
  if resolve_graph(graph):
    return graph_api.graphdef(node)
  return tree.graphdef(node)


def update(node: Any, state: Any, /, *states: Any, graph: bool | None = None) -> None:
  """Writes the values of ``states`` into ``node``'s Variables."""
  if resolve_graph(graph):
    return graph_api.update(node, state, *states)
  return tree.update(node, state, *states)


def clone(node: Any, *, graph: bool | None = None) -> Any:
  """A deep copy of ``node``'s structure with new Variables."""
  if resolve_graph(graph):
    return graph_api.clone(node)
  return tree.clone(node)


def pop(node: Any, *filters: Any, graph: bool | None = None) -> Any:
  """Removes the Variables matching ``filters`` from ``node`` and returns them."""
  if resolve_graph(graph):
    return graph_api.pop(node, *filters)
  return tree.pop(node, *filters)


def iter_graph(node: Any, *, graph: bool | None = None) -> Iterator[tuple[tuple, Any]]:
  """Yields ``(path, value)`` for every node and leaf of ``node``."""
  if resolve_graph(graph):
    return graph_api.iter_graph(node)
  return tree.iter_graph(node)


def flatten(node: Any, *, graph: bool | None = None) -> tuple:
  """``(graphdef, flat_state)`` of ``node``."""
  if resolve_graph(graph):
    return graph_api.flatten(node)
  return tree.flatten(node)


def unflatten(graphdef: Any, flat_state: Any) -> Any:
  """Inverse of ``flatten``."""
  if isinstance(graphdef, tree.TreeGraphDef):
    return tree.unflatten(graphdef, flat_state)
  return graph_api.unflatten(graphdef, flat_state)


as_abstract = tree.as_abstract
