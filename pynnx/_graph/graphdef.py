"""Graph-mode GraphDef: the hashable, static description of an object graph.

A graph is described by a tree of small immutable records, built in one depth-first walk:

- :class:`NodeDef` -- a Pytree/Module: its type, its index, its ``_Meta`` (data keys and
  static attributes) and one child description per data key;
- :class:`VariableDef` -- a Variable; its value lives in the State at the current path;
- :class:`NodeRef` -- a Pytree or Variable already described earlier in the walk (sharing);
- :class:`OuterRef` -- one described in an *earlier root* of a :func:`~pynnx._graph.api.to_tree`
  group (sharing across arguments);
- :class:`LeafDef` -- a non-Variable State leaf (an array held directly);
- :class:`StaticDef` -- a constant inside a data container (``None``, ints, strings, functions);
- :class:`ContainerDef` -- a plain pytree container (tuple, list, dict, namedtuple, ...).

Indices count the Pytrees and Variables of one root in walk order, so two structurally equal
graphs have equal GraphDefs. GraphDefs hash once and compare structurally: they are used as
``jax.jit`` static arguments and pytree aux data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any

from .._core.reprs import block
from .._core.tree import GraphDef as BaseGraphDef


@dataclasses.dataclass(frozen=True, slots=True)
class NodeDef:
  """A Pytree node: rebuilt with ``object.__new__(type)`` and its ``__dict__`` filled."""

  type: type
  index: int
  meta: Any  # pytree._Meta: data keys, key objects and static items
  forced: tuple[tuple[Hashable, str], ...]  # the node's nnx.data / nnx.static markers
  children: tuple[Any, ...]  # one definition per meta.data_keys entry

  def __repr__(self) -> str:
    statics = [f"{k}={v!r}" for k, v in self.meta.statics]
    kids = [f"{k}={c!r}" for k, c in zip(self.meta.data_keys, self.children, strict=True)]
    return block(f"{self.type.__name__}#{self.index}(", statics + kids, ")")


@dataclasses.dataclass(frozen=True, slots=True)
class VariableDef:
  """A Variable; the State holds it at this definition's path."""

  type: type
  index: int
  # The Variable's metadata at split time: ``merge`` wraps a plain array with it (as Flax).
  # Not compared or hashed: metadata changes are not structure changes.
  metadata: Any = dataclasses.field(default=None, compare=False, hash=False)

  def __repr__(self) -> str:
    return f"{self.type.__name__}#{self.index}"


@dataclasses.dataclass(frozen=True, slots=True)
class NodeRef:
  """The node or Variable of index ``index``, already seen on an earlier path."""

  index: int

  def __repr__(self) -> str:
    return f"Ref#{self.index}"


@dataclasses.dataclass(frozen=True, slots=True)
class OuterRef:
  """Node ``index`` of the ``root``-th graph of a ``to_tree`` group."""

  root: int
  index: int

  def __repr__(self) -> str:
    return f"OuterRef(root={self.root}, #{self.index})"


@dataclasses.dataclass(frozen=True, slots=True)
class LeafDef:
  """A non-Variable State leaf (an array held directly by a Module or container)."""

  def __repr__(self) -> str:
    return "Leaf"


LEAF = LeafDef()


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class StaticDef:
  """A constant kept in the GraphDef. Equality also compares types (``1 != True`` here)."""

  value: Any

  def __eq__(self, other: object) -> bool:
    return (
      isinstance(other, StaticDef)
      and type(self.value) is type(other.value)
      and self.value == other.value
    )

  def __hash__(self) -> int:
    return hash((type(self.value), self.value))

  def __repr__(self) -> str:
    return f"Static({self.value!r})"


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerDef:
  """A plain pytree container, flattened one level (``treedef`` has one leaf per child)."""

  treedef: Any
  keys: tuple[Hashable, ...]
  children: tuple[Any, ...]

  def __repr__(self) -> str:
    kids = [f"{k!r}: {c!r}" for k, c in zip(self.keys, self.children, strict=True)]
    data = self.treedef.node_data()
    name = getattr(data[0], "__name__", "pytree") if data else "pytree"
    return block(f"{name}(", kids, ")")


class GraphDef(BaseGraphDef):
  """The static structure of an object graph in graph mode (hashable, cheap to compare).

  A registered pytree with no leaves, like the tree-mode GraphDef (see ``nnx.GraphDef``).

  Example:
    >>> import pynnx as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> graphdef, state = nnx.split(model, graph=True)
    >>> graphdef == nnx.graphdef(nnx.Linear(2, 3, rngs=nnx.Rngs(1)), graph=True)
    True
  """

  __slots__ = ("root", "cacheable", "_hash")
  graph_mode = True

  def __init__(self, root: Any, cacheable: bool = False):
    self.root = root
    self.cacheable = cacheable  # no mutable plain containers: a rebuilt graph may cache it
    self._hash = hash(root)

  @property
  def leaf_root(self) -> bool:
    """True when the whole graph is one State leaf (a bare Variable or array)."""
    return isinstance(self.root, (VariableDef, LeafDef))

  @property
  def num_leaves(self) -> int:
    """The number of State leaves (Variables and arrays; a shared one counts once).

    Example:
      >>> nnx.graphdef(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), graph=True).num_leaves
      2
    """
    count, stack = 0, [self.root]
    while stack:
      node = stack.pop()
      if isinstance(node, (VariableDef, LeafDef)):
        count += 1
      elif isinstance(node, (NodeDef, ContainerDef)):
        stack.extend(node.children)
    return count

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other: object) -> bool:
    return self is other or (
      isinstance(other, GraphDef) and self._hash == other._hash and self.root == other.root
    )

  def __repr__(self) -> str:
    return block("GraphDef(", [repr(self.root)], ")")
