"""Paths: the one formatter that turns a key path into what a user would type."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import jax

PathParts = tuple[Hashable, ...]


def format_path(path: Sequence[Any], root: str = "model") -> str:
  """Formats ``('layers', 3, 'kernel')`` as ``model.layers[3].kernel``.

  Example:
    >>> format_path(('layers', 3, 'kernel'))
    'model.layers[3].kernel'
  """
  out = [root]
  for key in path:
    if isinstance(key, str) and key.isidentifier():
      out.append(f".{key}")
    elif isinstance(key, str):
      out.append(f"[{key!r}]")
    else:
      out.append(f"[{key!r}]")
  return "".join(out)


def key_to_part(key: Any) -> Hashable:
  """Converts one JAX key-path entry into a plain str/int path part."""
  if isinstance(key, jax.tree_util.GetAttrKey):
    return key.name
  if isinstance(key, jax.tree_util.DictKey):
    return key.key
  if isinstance(key, jax.tree_util.SequenceKey):
    return key.idx
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return key.key
  return key


def jax_path_to_parts(path: Sequence[Any]) -> PathParts:
  return tuple(key_to_part(k) for k in path)
