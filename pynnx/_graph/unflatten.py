"""Graph rebuild: ``GraphDef`` + ``{path: leaf}`` -> a fresh object graph with sharing restored.

Pytree nodes are created with ``object.__new__`` and filled like a pytree unflatten (forced
markers, statics, data, ``_pynnx_meta``, frozen). A node is entered in the index table before
its children are built, so a child that refers back to an ancestor (a cycle) gets the very
object being built.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from .._core.errors import StateMismatchError
from .._core.paths import format_path
from .._core.tree import wrap_plain_value
from .._core.variables import Variable
from .flatten import Plan, store_plan
from .graphdef import (
  ContainerDef,
  GraphDef,
  LeafDef,
  NodeDef,
  NodeRef,
  OuterRef,
  StaticDef,
  VariableDef,
)

Path = tuple[Hashable, ...]
_MISSING = object()


class _Builder:
  def __init__(self, flat: dict[Path, Any], copy: bool, outer: Sequence[dict[int, Any]], api: str):
    self.flat = flat
    self.copy = copy
    self.outer = outer
    self.api = api
    self.table: dict[int, Any] = {}
    self.taken: list[tuple[Path, Any]] = []
    self.missing: list[Path] = []
    self.has_outer = False

  def take(self, path: Path) -> Any:
    leaf = self.flat.pop(path, _MISSING)
    if leaf is _MISSING:
      self.missing.append(path)
      return None
    self.taken.append((path, leaf))
    return leaf

  def build(self, defn: Any, path: Path) -> Any:
    kind = type(defn)
    if kind is NodeDef:
      obj = object.__new__(defn.type)
      d = obj.__dict__
      d["_pynnx_forced"] = dict(defn.forced)
      d.update(defn.meta.statics)
      self.table[defn.index] = obj
      for k, child in zip(defn.meta.data_keys, defn.children, strict=True):
        d[k] = self.build(child, (*path, k))
      d["_pynnx_meta"] = defn.meta
      d["_pynnx_frozen"] = True
      return obj
    if kind is VariableDef:
      var = self.take(path)
      if var is not None and not isinstance(var, Variable):
        var = wrap_plain_value(defn.type, var, defn.metadata)
        self.taken[-1] = (path, var)
      elif self.copy and var is not None:
        var = var.copy()
        self.taken[-1] = (path, var)
      self.table[defn.index] = var
      return var
    if kind is NodeRef:
      return self.table[defn.index]
    if kind is LeafDef:
      return self.take(path)
    if kind is StaticDef:
      return defn.value
    if kind is ContainerDef:
      kids = [self.build(c, (*path, k)) for k, c in zip(defn.keys, defn.children, strict=True)]
      return defn.treedef.unflatten(kids)
    if kind is OuterRef:
      if defn.root >= len(self.outer) or defn.index not in self.outer[defn.root]:
        raise StateMismatchError(
          f"{self.api}: {format_path(path)} refers to an object of another argument (graph "
          f"{defn.root}, node {defn.index}) of a `to_tree` group. Rebuild the whole group "
          "with `from_tree` so shared objects can be found."
        )
      self.has_outer = True
      return self.outer[defn.root][defn.index]
    raise TypeError(f"Unknown graph definition {defn!r}")  # pragma: no cover


def rebuild(
  graphdef: GraphDef,
  flat: dict[Path, Any],
  *,
  copy: bool = False,
  outer: Sequence[dict[int, Any]] = (),
  api: str = "pynnx.merge",
) -> tuple[Any, dict[int, Any]]:
  """``(root, table)``: the rebuilt graph and its objects by index.

  ``flat`` is consumed; every path of the GraphDef must be in it and nothing else.
  """
  if not isinstance(graphdef, GraphDef):
    raise StateMismatchError(
      f"{api} expects a GraphDef from `nnx.split`/`nnx.graphdef` first, got a "
      f"{type(graphdef).__name__}."
    )
  builder = _Builder(flat, copy, outer, api)
  root = builder.build(graphdef.root, ())
  if builder.missing or flat:
    parts = []
    if builder.missing:
      parts.append("missing " + ", ".join(format_path(p) for p in builder.missing[:8]))
    if flat:
      parts.append("unexpected " + ", ".join(format_path(p) for p in list(flat)[:8]))
    raise StateMismatchError(
      f"{api}: the State does not fit the GraphDef (" + "; ".join(parts) + "). Split and "
      "merge must use the same Module structure, and every State from the split must be passed."
    )
  if not builder.has_outer:  # a standalone graph: its next split can reuse this walk
    objects = tuple(builder.table[i] for i in sorted(builder.table))
    store_plan(root, Plan(graphdef, tuple(builder.taken), objects))
  return root, builder.table
