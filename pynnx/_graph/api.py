"""Graph-mode split / merge / state / graphdef / update / clone / pop / iter_graph / flatten.

Graph mode treats Modules as an object graph: a Variable or sub-Module reachable from several
paths is stored once in the State (at its first path in the walk) and referred to elsewhere;
``merge`` restores the sharing, so the same object sits at every path that shared it. The
States hold the original Variables (``merge(..., copy=True)`` copies them). Reference cycles,
such as a child holding its parent, are supported.

**Graph mode for transforms: ``to_tree`` / ``from_tree``.** ``to_tree(args)`` returns ``args``
with every Module / Variable (a *graph root*) replaced by a :class:`GraphNode`, a registered
JAX pytree whose children are the root's deduplicated States (holding the original Variables)
and whose aux data is its hashable :class:`~pynnx._graph.graphdef.GraphDef`. All roots are
walked as one graph: an object shared by two arguments is stored in the first argument's
State only, and the later GraphDef holds an ``OuterRef`` to it. The result contains each
Variable exactly once, so the tree-mode transform machinery runs on it unchanged.
``from_tree(tree)`` rebuilds fresh Modules (with the Variables found in the tree) and restores
sharing within and across arguments; it must see the whole group, in the same order.

  - ``to_tree(tree, /, *, filters=())`` -> tree with ``GraphNode(graphdef, states)`` leaves.
    ``filters`` is a tuple of filters (one State per filter, ``...`` last) or a function
    ``(path, root) -> tuple of filters`` called with each root's key path in ``tree``.
  - ``from_tree(tree, /, *, copy=False)`` -> tree with the GraphNodes merged.

Example:
  >>> import jax, jax.numpy as jnp, pynnx as nnx
  >>> w = nnx.Param(jnp.ones(2))
  >>> a, b = nnx.Dict(w=w), nnx.Dict(w=w)
  >>> tree = to_tree((a, b))
  >>> len(jax.tree.leaves(tree))           # the shared Param travels once
  1
  >>> a2, b2 = from_tree(tree)
  >>> a2['w'] is b2['w'] is w
  True
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any

import jax

from .._core import filters as filterlib
from .._core.errors import FilterError, FrozenModuleError, NotAVariableError, StateMismatchError
from .._core.paths import format_path, jax_path_to_parts, key_to_part
from .._core.pytree import Pytree
from .._core.state import FlatState, State
from .._core.tree import MODE_FUNCTIONS
from .._core.variables import Variable
from .flatten import Plan, is_graph_node, plan
from .graphdef import ContainerDef, GraphDef, LeafDef, NodeDef, VariableDef
from .unflatten import rebuild

Path = tuple[Hashable, ...]


# --- helpers ---------------------------------------------------------------------------------


def _to_state(bucket: list, leaf_root: bool) -> Any:
  if leaf_root and bucket:  # a bare Variable / array: the "State" is the leaf itself
    return bucket[0][1]
  return State.from_flat_path(bucket)


def _partition(p: Plan, filters: Any, api: str, strict: bool = True) -> tuple:
  leaf_root = p.graphdef.leaf_root
  if not filters:
    return (_to_state(list(p.flat), leaf_root),)
  preds = filterlib.filters_to_predicates(tuple(filters))
  buckets: list[list] = [[] for _ in preds]
  unmatched = []
  for path, leaf in p.flat:
    for i, pred in enumerate(preds):
      if pred(path, leaf):
        buckets[i].append((path, leaf))
        break
    else:
      unmatched.append(path)
  if unmatched and strict:
    raise FilterError(
      f"{api}: the filters {tuple(filters)} leave these Variables unmatched: "
      + ", ".join(format_path(q) for q in unmatched[:8])
      + (" ..." if len(unmatched) > 8 else "")
      + ". Every Variable must go to some State; add `...` as the last filter to collect the rest."
    )
  return tuple(_to_state(b, leaf_root) for b in buckets)


def _collect_flat(graphdef: Any, states: tuple, api: str) -> dict[Path, Any]:
  flat: dict[Path, Any] = {}
  leaf_root = isinstance(graphdef, GraphDef) and graphdef.leaf_root
  for s in states:
    if isinstance(s, FlatState):
      flat.update(s)
    elif isinstance(s, State):
      flat.update(s.flat_state())
    elif leaf_root:
      flat[()] = s
    elif isinstance(s, dict):  # a pure dict (`nnx.to_pure_dict`), as Flax accepts
      flat.update(State(s).flat_state())
    else:
      raise StateMismatchError(
        f"{api} expects States after the GraphDef, got a {type(s).__name__}."
      )
  return flat


partition = _partition
collect_flat = _collect_flat


def _one_or_tuple(states: tuple) -> Any:
  return states[0] if len(states) == 1 else states


def _children(x: Any) -> list[tuple[Hashable, Any]] | None:
  """The one-level children of a plain pytree container, or None for a leaf."""
  with_path, treedef = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
  if jax.tree_util.treedef_is_leaf(treedef):
    return None
  return [(key_to_part(kp[0]), c) for kp, c in with_path]


# --- split / merge ----------------------------------------------------------------------------


def split(node: Any, *filters: Any) -> tuple:
  """Graph-mode ``split``: ``(graphdef, state, *states)``, one State per filter.

  Example:
    >>> import pynnx as nnx
    >>> layer = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    >>> class Tied(nnx.Module):
    ...   def __init__(self):
    ...     self.a, self.b = layer, layer
    >>> graphdef, state = nnx.split(Tied(), graph=True)
    >>> sorted(state.keys())                 # the shared Linear is stored once
    ['a']
    >>> model = nnx.merge(graphdef, state)
    >>> model.a is model.b
    True
  """
  p = plan(node)
  return (p.graphdef, *_partition(p, filters, "pynnx.split"))


def merge(graphdef: GraphDef, state: Any, /, *states: Any, copy: bool = False) -> Any:
  """Rebuilds the graph of ``graphdef`` from ``states``, restoring shared references.

  The rebuilt Modules are frozen and hold the States' Variables themselves (copies of them
  with ``copy=True``).
  """
  flat = _collect_flat(graphdef, (state, *states), "pynnx.merge")
  return rebuild(graphdef, flat, copy=copy)[0]


def state(node: Any, *filters: Any) -> Any:
  """The State of ``node`` (a tuple of States if several filters are given).

  Unlike ``split``, Variables that match none of the filters are simply left out.
  """
  return _one_or_tuple(_partition(plan(node), filters, "pynnx.state", strict=False))


def graphdef(node: Any) -> GraphDef:
  """The graph-mode GraphDef of ``node``."""
  return plan(node).graphdef


def update(node: Any, state: Any, /, *states: Any) -> None:
  """Writes the values of ``states`` into the Variables of ``node`` at the same paths."""
  p = plan(node)
  targets = dict(p.flat)
  writes = []  # every path is checked before any is written: a failed update changes nothing
  for path, leaf in _collect_flat(p.graphdef, (state, *states), "pynnx.update").items():
    target = targets.get(path)
    if target is None:
      raise StateMismatchError(
        f"update: {format_path(path)} is not a State path of the {type(node).__name__} being "
        "updated (a shared Variable lives at its first path only; see `nnx.state(node, "
        "graph=True)`)."
      )
    if not isinstance(target, Variable):
      if leaf is target:  # the very array the node already holds: nothing to write
        continue
      raise NotAVariableError(
        f"update: {format_path(path)} holds a plain {type(target).__name__}, not a Variable, "
        "so it cannot be updated in place; store it in a Variable."
      )
    writes.append((target, leaf.get_value() if isinstance(leaf, Variable) else leaf))
  for target, value in writes:
    target.set_value(value)


def clone(node: Any) -> Any:
  """A copy of ``node`` with new Variables; sharing inside ``node`` is kept."""
  p = plan(node)
  return rebuild(p.graphdef, dict(p.flat), copy=True)[0]


def flatten(node: Any) -> tuple[GraphDef, FlatState]:
  """``(graphdef, flat_state)``: the State leaves with their paths, in walk order."""
  p = plan(node)
  return p.graphdef, FlatState(p.flat)


def paths(graphdef: GraphDef) -> list[Path]:
  """The State paths of ``graphdef`` in walk order (the order of ``flatten``'s leaves)."""
  out: list[Path] = []

  def walk(d: Any, path: Path) -> None:
    if isinstance(d, (VariableDef, LeafDef)):
      out.append(path)
    elif isinstance(d, NodeDef):
      for k, c in zip(d.meta.data_keys, d.children, strict=True):
        walk(c, (*path, k))
    elif isinstance(d, ContainerDef):
      for k, c in zip(d.keys, d.children, strict=True):
        walk(c, (*path, k))

  walk(graphdef.root, ())
  return out


def unflatten(graphdef: GraphDef, flat_state: Any) -> Any:
  """Inverse of :func:`flatten`."""
  flat = flat_state if isinstance(flat_state, FlatState) else FlatState(flat_state)
  return rebuild(graphdef, dict(flat), api="pynnx.unflatten")[0]


MODE_FUNCTIONS[True] = (merge, split)


# --- pop / iter_graph -------------------------------------------------------------------------


def pop(node: Any, *filters: Any) -> Any:
  """Removes the Variables matching ``filters`` from every place in the graph that holds them.

  Returns them as State(s), each at its first path.
  """
  p = plan(node)
  preds = filterlib.filters_to_predicates(filters)
  buckets: list[list] = [[] for _ in preds]
  chosen: set[int] = set()
  for path, leaf in p.flat:
    if isinstance(leaf, Variable) and path:
      for i, pred in enumerate(preds):
        if pred(path, leaf):
          buckets[i].append((path, leaf))
          chosen.add(id(leaf))
          break
  removals: list[tuple[Pytree, Any]] = []  # keys: attribute names or List indices
  seen: set[int] = set()

  def walk(x: Any, path: Path) -> None:
    if isinstance(x, Pytree):
      if id(x) in seen:
        return
      seen.add(id(x))
      d = x.__dict__
      for k in x._pynnx_get_meta().data_keys:
        v = d[k]
        if isinstance(v, Variable) and id(v) in chosen:
          removals.append((x, k))
        else:
          walk(v, (*path, k))
      return
    if isinstance(x, Variable) or x is None:
      return
    for k, v in _children(x) or ():
      if isinstance(v, Variable) and id(v) in chosen:
        raise FrozenModuleError(
          f"pynnx.pop: {format_path((*path, k))} is inside a {type(x).__name__}, which cannot "
          "be changed in place, so the Variable cannot be removed from it. Keep Variables that "
          "will be popped in Module attributes, nnx.List or nnx.Dict."
        )
      walk(v, (*path, k))

  if chosen:
    walk(node, ())
  # Delete list items from the back so earlier indices stay valid.
  # (A str key of a List is an attribute, e.g. a sown Variable: `_pynnx_delattr` removes it.)
  for parent, key in sorted(removals, key=lambda r: -r[1] if isinstance(r[1], int) else 0):
    parent._pynnx_delattr(key)
  return _one_or_tuple(tuple(State.from_flat_path(b) for b in buckets))


def iter_graph(node: Any) -> Iterator[tuple[Path, Any]]:
  """Yields ``(path, value)`` for every node and leaf, children before parents.

  A shared Module or Variable is yielded once, at its first path.

  Example:
    >>> import pynnx as nnx
    >>> layer = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    >>> [p for p, _ in nnx.iter_graph([layer, layer], graph=True)]
    [(0, 'bias'), (0, 'kernel'), (0,), ()]
  """
  seen: set[int] = set()

  def walk(x: Any, path: Path) -> Iterator[tuple[Path, Any]]:
    if is_graph_node(x):
      if id(x) in seen:
        return
      seen.add(id(x))
      if isinstance(x, Pytree):
        d = x.__dict__
        for k in x._pynnx_get_meta().data_keys:
          yield from walk(d[k], (*path, k))
    elif x is not None:
      for k, v in _children(x) or ():
        yield from walk(v, (*path, k))
    yield path, x

  return walk(node, ())


# --- to_tree / from_tree ----------------------------------------------------------------------


class GraphNode:
  """A graph root inside a ``to_tree`` result: States as pytree children, GraphDef as aux.

  ``states`` holds one State per filter; for a bare Variable root, its slot holds the
  Variable itself.
  """

  __slots__ = ("graphdef", "states", "_pynnx_lift_plan")

  def __init__(self, graphdef: GraphDef, states: tuple):
    self.graphdef = graphdef
    self.states = tuple(states)
    self._pynnx_lift_plan: Any = None  # the tree lift's cached plan (see _transforms/lift.py)

  def __repr__(self) -> str:
    return f"GraphNode(graphdef={self.graphdef!r}, states={self.states!r})"


jax.tree_util.register_pytree_with_keys(
  GraphNode,
  lambda g: (tuple((jax.tree_util.SequenceKey(i), s) for i, s in enumerate(g.states)), g.graphdef),
  lambda graphdef, states: GraphNode(graphdef, tuple(states)),
  lambda g: (g.states, g.graphdef),
)


def _is_graph_node_wrapper(x: Any) -> bool:
  return isinstance(x, GraphNode)


def to_tree(tree: Any, /, *, filters: tuple | list | Callable[[Path, Any], Any] = ()) -> Any:
  """``tree`` with each Module/Variable root replaced by a :class:`GraphNode` (see above).

  Sharing within and across roots is deduplicated: every Variable appears once in the result.
  """
  treedef: jax.tree_util.PyTreeDef  # jaxlib ships no stub for it: this reads as Any
  with_path, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_graph_node)
  out = [x for _, x in with_path]
  root_idx = [i for i, x in enumerate(out) if is_graph_node(x)]
  outer: dict[int, tuple[int, int]] = {}
  for pos, i in enumerate(root_idx):
    x = out[i]
    p = plan(x)
    if outer and any(id(o) in outer for o in p.objects):
      p = plan(x, outer)  # shares objects with an earlier root: walk against them
    if pos + 1 < len(root_idx):
      for j, o in enumerate(p.objects):
        outer[id(o)] = (pos, j)
    fs = (
      filters
      if isinstance(filters, (tuple, list))
      else filters(jax_path_to_parts(with_path[i][0]), x)
    )
    out[i] = GraphNode(p.graphdef, _partition(p, fs, "pynnx.to_tree"))
  return treedef.unflatten(out)


def from_tree(tree: Any, /, *, copy: bool = False) -> Any:
  """Inverse of :func:`to_tree`: rebuilds each GraphNode, restoring sharing across them."""
  treedef: jax.tree_util.PyTreeDef  # jaxlib ships no stub for it: this reads as Any
  leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=_is_graph_node_wrapper)
  tables: list[dict[int, Any]] = []
  for i, x in enumerate(leaves):
    if isinstance(x, GraphNode):
      flat = _collect_flat(x.graphdef, x.states, "pynnx.from_tree")
      leaves[i], table = rebuild(x.graphdef, flat, copy=copy, outer=tables, api="pynnx.from_tree")
      tables.append(table)
  return treedef.unflatten(leaves)
