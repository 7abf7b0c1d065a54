"""Nested mappings <-> flat ``{path: leaf}`` dicts (``nnx.traversals`` in Flax).

Useful to compare or convert checkpoints: ``flatten_mapping(nnx.to_pure_dict(state))`` gives
one entry per leaf keyed by its path tuple (or ``'a/b'`` strings with ``sep='/'``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._core.errors import PathConflictError

__all__ = ["empty_node", "flatten_mapping", "flatten_to_sequence", "unflatten_mapping"]


class _EmptyNode:
  """Stands for an empty sub-mapping in a flat dict (``keep_empty_nodes=True``)."""

  _instance: _EmptyNode | None = None

  def __new__(cls) -> _EmptyNode:
    if cls._instance is None:
      cls._instance = super().__new__(cls)
    return cls._instance

  def __repr__(self) -> str:
    return "_EmptyNode()"


empty_node = _EmptyNode()


def _walk(
  xs: Mapping[Any, Any],
  prefix: tuple,
  keep_empty_nodes: bool,
  is_leaf: Callable[[tuple, Any], bool] | None,
) -> Iterable[tuple[tuple, Any]]:
  for key, value in xs.items():
    path = (*prefix, key)
    if isinstance(value, Mapping) and not (is_leaf is not None and is_leaf(path, value)):
      if len(value) == 0:
        if keep_empty_nodes:
          yield path, empty_node
        continue
      yield from _walk(value, path, keep_empty_nodes, is_leaf)
    else:
      yield path, value


def flatten_mapping(
  xs: Mapping[Any, Any],
  /,
  *,
  keep_empty_nodes: bool = False,
  is_leaf: Callable[[tuple, Any], bool] | None = None,
  sep: str | None = None,
) -> dict[Any, Any]:
  """``{path: leaf}`` for the nested mapping ``xs`` (a dict, a ``State``, ...).

  Args:
    xs: the nested mapping.
    keep_empty_nodes: keep empty sub-mappings as :data:`empty_node` leaves.
    is_leaf: ``is_leaf(path, value)``; True stops the descent into that sub-mapping.
    sep: join each path into one string with ``sep`` instead of keeping tuples.

  Example:
    >>> from pynnx import traversals
    >>> traversals.flatten_mapping({"a": {"b": 1}, "c": 2})
    {('a', 'b'): 1, ('c',): 2}
    >>> traversals.flatten_mapping({"a": {"b": 1}}, sep="/")
    {'a/b': 1}
  """
  flat = _walk(xs, (), keep_empty_nodes, is_leaf)
  if sep is None:
    return dict(flat)
  return {sep.join(str(k) for k in path): value for path, value in flat}


def flatten_to_sequence(
  xs: Mapping[Any, Any], /, *, is_leaf: Callable[[tuple, Any], bool] | None = None
) -> list[tuple[Any, Any]]:
  """``[(path, leaf), ...]`` for the nested mapping ``xs``, in its iteration order.

  Example:
    >>> from pynnx import traversals
    >>> traversals.flatten_to_sequence({"a": {"b": 1}, "c": 2})
    [(('a', 'b'), 1), (('c',), 2)]
  """
  return list(_walk(xs, (), False, is_leaf))


def unflatten_mapping(xs: Any, /, *, sep: str | None = None) -> dict[Any, Any]:
  """The nested dict of a flat ``{path: leaf}`` mapping (or ``(path, leaf)`` pairs); the
  inverse of :func:`flatten_mapping` (``empty_node`` leaves become ``{}``).

  Example:
    >>> from pynnx import traversals
    >>> traversals.unflatten_mapping({("a", "b"): 1, ("c",): 2})
    {'a': {'b': 1}, 'c': 2}
    >>> traversals.unflatten_mapping({"a/b": 1}, sep="/")
    {'a': {'b': 1}}
  """
  items = xs.items() if isinstance(xs, Mapping) else xs
  out: dict[Any, Any] = {}
  for key, value in items:
    path = tuple(key.split(sep)) if sep is not None else tuple(key)
    node = out
    for i, part in enumerate(path[:-1]):
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise PathConflictError(
          f"unflatten_mapping: {path!r} passes through {path[: i + 1]!r}, which is a leaf; "
          "a path cannot be both a leaf and the prefix of another path."
        )
    if isinstance(node.get(path[-1]), dict) and value is not empty_node:
      raise PathConflictError(
        f"unflatten_mapping: {path!r} is a leaf but also the prefix of other paths; "
        "a path cannot be both."
      )
    node[path[-1]] = {} if value is empty_node else value
  return out
