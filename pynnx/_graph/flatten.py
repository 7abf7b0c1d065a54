"""Graph walk: an object graph -> ``Plan(graphdef, flat, objects)``.

The walk is depth-first; a Pytree's data attributes are visited in ``_Meta.data_keys`` order,
a plain container's children in JAX's flatten order. Each Pytree and Variable is described
once, at the first path it is reached by; later paths hold a :class:`NodeRef`. ``flat`` lists
the State leaves (first-seen Variables and directly held arrays) with their paths.

For a frozen root the Plan is cached on the root as
``__dict__['_pynnx_graph_plan'] = (STRUCTURE.epoch, weakref to the root, plan without the
root)``: a built Module's structure only changes through sanctioned setters, which bump the
epoch, and the cache holds no strong reference back to its root.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Hashable
from typing import Any, NamedTuple

import jax
import numpy as np

from .._core.errors import TreeStructureError
from .._core.paths import format_path, key_to_part
from .._core.pytree import Pytree
from .._core.variables import STRUCTURE, Variable
from .graphdef import (
  LEAF,
  ContainerDef,
  GraphDef,
  NodeDef,
  NodeRef,
  OuterRef,
  StaticDef,
  VariableDef,
)

Path = tuple[Hashable, ...]
CACHE_KEY = "_pynnx_graph_plan"


class Plan(NamedTuple):
  """The result of one graph walk."""

  graphdef: GraphDef
  flat: tuple[tuple[Path, Any], ...]  # State leaves in walk order
  objects: tuple[Any, ...]  # the Pytrees and Variables described here, by index


def is_graph_node(x: Any) -> bool:
  """True for objects with identity in a graph: Pytrees (Modules...) and Variables."""
  return isinstance(x, (Pytree, Variable))


def _is_array_leaf(x: Any) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))


def _sort_forced(forced: dict) -> tuple:
  if not forced:
    return ()
  return tuple(sorted(forced.items(), key=lambda kv: str(kv[0])))


class _Walker:
  def __init__(self, outer: dict[int, tuple[int, int]] | None):
    self.outer = outer or {}
    self.ids: dict[int, int] = {}
    self.objects: list[Any] = []
    self.flat: list[tuple[Path, Any]] = []
    self.cacheable = True
    self.max_depth = sys.getrecursionlimit() // 4

  def walk(self, x: Any, path: Path, forced_data: bool = False) -> Any:
    if len(path) > self.max_depth:
      raise TreeStructureError(
        f"{format_path(path[:3], 'model')} ... {format_path(path[-1:], '')} is nested "
        f"{len(path)} levels deep, more than graph "
        f"mode can walk (about {self.max_depth} levels: graphs are walked, hashed and rebuilt "
        f"recursively, and Python's recursion limit is {sys.getrecursionlimit()}). Keep "
        "repeated layers side by side in one `nnx.List` (iterate over it, or stack them and "
        "use `nnx.scan`)."
      )
    if isinstance(x, (Pytree, Variable)):
      i = self.ids.get(id(x))
      if i is not None:
        return NodeRef(i)
      outer = self.outer.get(id(x))
      if outer is not None:
        return OuterRef(*outer)
      i = len(self.objects)
      self.ids[id(x)] = i
      self.objects.append(x)
      if isinstance(x, Variable):
        self.flat.append((path, x))
        return VariableDef(type(x), i, x._metadata)
      d = x.__dict__
      if not d.get("_pynnx_frozen", False):
        self.cacheable = False
      meta = x._pynnx_get_meta()
      forced = d.get("_pynnx_forced") or {}
      # a loop, not a generator: one Python frame per level keeps deep chains in reach
      kids = []
      for k in meta.data_keys:
        kids.append(self.walk(d[k], (*path, k), forced.get(k) == "data"))
      children = tuple(kids)
      return NodeDef(type(x), i, meta, _sort_forced(forced), children)
    if x is None:
      return StaticDef(None)
    if _is_array_leaf(x):
      self.flat.append((path, x))
      return LEAF
    with_path, treedef = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
    if not jax.tree_util.treedef_is_leaf(treedef):
      if type(x) in (list, dict):  # mutable in place without an epoch bump: do not cache
        self.cacheable = False
      keys = tuple(key_to_part(kp[0]) for kp, _ in with_path)
      kids = []
      for k, (_, c) in zip(keys, with_path, strict=True):
        kids.append(self.walk(c, (*path, k)))
      children = tuple(kids)
      return ContainerDef(treedef, keys, children)
    if not forced_data:  # a constant inside data (Sequential's activation, a tuple's int)
      try:
        hash(x)
        return StaticDef(x)
      except TypeError:
        pass
    self.flat.append((path, x))
    return LEAF


def plan(node: Any, outer: dict[int, tuple[int, int]] | None = None) -> Plan:
  """Walks the graph of ``node``; ``outer`` maps ids of objects of earlier roots to refs.

  Without ``outer``, the Plan of a frozen Pytree is cached on it until the structure epoch
  changes.
  """
  if not outer and isinstance(node, Pytree):
    cached = node.__dict__.get(CACHE_KEY)
    # The cache names its root by a weak reference (no node -> cache -> node cycle, so a
    # dropped model is freed at once), which also rejects a copied __dict__ (copy.copy,
    # pickling, view): its cache belongs to another object.
    if cached is not None and cached[0] == STRUCTURE.epoch and cached[1]() is node:
      graphdef, flat, rest = cached[2]
      return Plan(graphdef, flat, (node, *rest))
  walker = _Walker(outer)
  root = walker.walk(node, ())
  graphdef = GraphDef(root, walker.cacheable)
  result = Plan(graphdef, tuple(walker.flat), tuple(walker.objects))
  if not outer and walker.cacheable and isinstance(node, Pytree):
    store_plan(node, result)
  return result


def store_plan(node: Any, result: Plan) -> None:
  """Caches ``result`` (whose ``objects[0]`` is ``node``) on the root ``node``; ``merge``
  seeds a freshly rebuilt root with the Plan it came from."""
  if isinstance(node, Pytree) and result.graphdef.cacheable:
    entry = (result.graphdef, result.flat, result.objects[1:])
    node.__dict__[CACHE_KEY] = (STRUCTURE.epoch, weakref.ref(node), entry)
