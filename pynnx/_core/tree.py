"""Tree-mode split / merge and friends: a Module is a plain pytree with Variable leaves.

In tree mode every Variable must be reachable exactly once (graph mode, opt-in, handles
shared references). The transforms do not call these: they flatten through the lift's
cached plans (``_transforms/lift.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable, Iterator, MutableMapping
from typing import Any, ClassVar

import jax

from . import filters as filterlib
from .config import resolve_graph
from .errors import (
  FilterError,
  GraphModeRequiredError,
  MissingStateError,
  NotAVariableError,
  SharedReferenceError,
  StateMismatchError,
  TreeStructureError,
)
from .paths import format_path, jax_path_to_parts
from .pytree import Pytree
from .state import FlatState, State
from .variables import Variable, is_variable

Path = tuple[Hashable, ...]


# --- flatten plans --------------------------------------------------------------------------


def flatten_with_paths(node: Any) -> tuple[list[tuple[Path, Any]], Any]:
  """``([(path, leaf)], treedef)`` with Variables as leaves."""
  check_tree_depth(node)
  with_path, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=is_variable)
  return [(jax_path_to_parts(p), leaf) for p, leaf in with_path], treedef


def _children_of(x: Any) -> list[tuple[str, Any]]:
  """The attributes / items of a Pytree or Python container that may hold Pytrees."""
  if isinstance(x, Pytree):
    return [(f".{k}" if isinstance(k, str) else f"[{k}]", v) for k, v in x._pynnx_items()]
  if isinstance(x, (list, tuple)):
    return [(f"[{i}]", v) for i, v in enumerate(x)]
  if isinstance(x, dict):
    return [(f"[{k!r}]", v) for k, v in x.items()]
  return []


def check_tree_depth(node: Any, root: str = "model") -> None:
  """Raises TreeStructureError for a reference cycle or a nesting deeper than JAX's
  flattening survives (it recurses once per level and, past Python's recursion limit,
  leaves the interpreter unusable). Iterative, so it is safe at any depth.
  """
  limit = sys.getrecursionlimit() // 3
  stack: list[tuple[Any, str, int, frozenset]] = [(node, root, 0, frozenset())]
  while stack:
    x, path, depth, above = stack.pop()
    if not isinstance(x, (Pytree, list, tuple, dict)):
      continue
    if depth > limit:
      raise TreeStructureError(
        f"{path} is nested {depth} levels deep, more than tree mode can flatten (about "
        f"{limit} levels: JAX flattens recursively, and Python's recursion limit is "
        f"{sys.getrecursionlimit()}). Keep repeated layers in one `nnx.List` (iterate over "
        f"it, or stack them and use `nnx.scan`)."
      )
    if isinstance(x, Pytree):
      if id(x) in above:
        raise TreeStructureError(
          f"{path} refers back to an object that contains it (a reference cycle, e.g. a "
          f"child holding its parent). Tree mode cannot flatten cycles. Drop the back "
          f"reference (pass the parent as an argument instead), or use graph mode "
          f"(`graph=True`), which supports cycles."
        )
      above = above | {id(x)}
    for key, child in _children_of(x):
      stack.append((child, path + key, depth + 1, above))


def shared_reference_error(api: str, var: Any, first: str, second: str) -> SharedReferenceError:
  kind = type(var).__name__
  return SharedReferenceError(
    f"{api} received the same {kind} at two places:\n  {first}\n  {second}\n"
    f"Tree mode (the default) needs every Variable to appear exactly once.\n"
    f"To fix this, either\n"
    f"  1. give each use its own {kind} (`pynnx.clone` copies one), or\n"
    f"  2. opt into graph mode for this call: `{api.split('(')[0]}(..., graph=True)`."
  )


def check_no_sharing(flat: list[tuple[Path, Any]], api: str, root: str = "model") -> None:
  seen: dict[int, Path] = {}
  for path, leaf in flat:
    if isinstance(leaf, Pytree):  # only a `pytree=False` object stays a leaf
      raise GraphModeRequiredError(
        f"{api}: {format_path(path, root)} is a {type(leaf).__name__}, declared with "
        "`pytree=False`, so it is not a JAX pytree and tree mode cannot walk it. Use graph "
        f"mode for this call: `{api.split('(')[0]}(..., graph=True)`."
      )
    if isinstance(leaf, Variable):
      first = seen.setdefault(id(leaf), path)
      if first is not path:
        raise shared_reference_error(api, leaf, format_path(first, root), format_path(path, root))


# --- GraphDef: the common base, ApplyCaller ------------------------------------------------

# ``graph_mode -> (merge, split)`` for ``GraphDef.apply``: tree mode registers itself below,
# ``pynnx._graph`` (a higher tier) registers graph mode when it is imported.
MODE_FUNCTIONS: dict[bool, tuple[Callable[..., Any], Callable[..., tuple]]] = {}


class GraphDef:
  """The static half of ``nnx.split``: a hashable JAX pytree with no leaves.

  Both modes' GraphDefs are instances of this class (``isinstance(g, nnx.GraphDef)``), so a
  GraphDef can be passed straight through ``jax.jit`` next to its State.

  Example:
    >>> import jax, jax.numpy as jnp, pynnx as nnx
    >>> graphdef, state = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> jax.tree.leaves(graphdef), isinstance(graphdef, nnx.GraphDef)
    ([], True)
    >>> y, (graphdef, state) = graphdef.apply(state)(jnp.ones((1, 2)))
    >>> y.shape
    (1, 3)
  """

  __slots__ = ()
  graph_mode: ClassVar[bool] = False

  def __init_subclass__(cls, **kwargs: Any):
    super().__init_subclass__(**kwargs)
    # No leaves: the whole GraphDef is aux data, so jit treats it as static.
    jax.tree_util.register_pytree_node(cls, lambda g: ((), g), lambda g, _: g)

  @property
  def num_leaves(self) -> int:
    """The number of State leaves ``merge`` expects (each mode's GraphDef counts its own)."""
    raise NotImplementedError(f"{type(self).__name__} does not define num_leaves")

  def apply(self, state: Any, /, *states: Any, graph: bool | None = None) -> ApplyCaller:
    """A caller that merges, calls a method and re-splits (graphdef and State unchanged).

    ``graphdef.apply(state)(*args)`` calls the Module; ``graphdef.apply(state).encode(x)``
    calls its ``encode`` method (any attribute path works). Each call returns
    ``(output, (graphdef, state))`` with the updated State; ``graph`` picks the mode of the
    re-split (default: ``nnx.set_graph_mode``).
    """
    return ApplyCaller(self, (state, *states), (), graph)


class ApplyCaller:
  """What ``GraphDef.apply`` returns: attribute access and indexing (``caller['b'].f``) build
  a path to a method, a call runs it."""

  __slots__ = ("_graphdef", "_states", "_path", "_graph")

  def __init__(self, graphdef: GraphDef, states: tuple, path: tuple, graph: Any):
    # path: ((is_item, name_or_key), ...)
    self._graphdef, self._states, self._path, self._graph = graphdef, states, path, graph

  def __getattr__(self, name: str) -> ApplyCaller:
    if name.startswith("__"):
      raise AttributeError(name)
    return ApplyCaller(self._graphdef, self._states, (*self._path, (False, name)), self._graph)

  def __getitem__(self, key: Any) -> ApplyCaller:
    return ApplyCaller(self._graphdef, self._states, (*self._path, (True, key)), self._graph)

  def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, tuple[GraphDef, Any]]:
    module = MODE_FUNCTIONS[self._graphdef.graph_mode][0](self._graphdef, *self._states)
    fn = module
    for is_item, key in self._path:
      fn = fn[key] if is_item else getattr(fn, key)
    out = fn(*args, **kwargs)
    graphdef, state = MODE_FUNCTIONS[resolve_graph(self._graph)][1](module)
    return out, (graphdef, state)


def call(graphdef_state: tuple, /) -> ApplyCaller:
  """``nnx.call((graphdef, state))`` is ``graphdef.apply(state)``.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> pair = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> y, pair = nnx.call(pair)(jnp.ones((1, 2)))
    >>> y.shape
    (1, 3)
  """
  if not (isinstance(graphdef_state, tuple) and len(graphdef_state) == 2):
    raise StateMismatchError(
      "nnx.call takes one `(graphdef, state)` pair, e.g. `nnx.call(nnx.split(model))`, got a "
      f"{type(graphdef_state).__name__}."
    )
  graphdef, state = graphdef_state
  if not isinstance(graphdef, GraphDef):
    raise StateMismatchError(
      f"nnx.call: the first item must be a GraphDef from `nnx.split`, got a "
      f"{type(graphdef).__name__}."
    )
  return graphdef.apply(state)


class GraphState(MutableMapping):
  """A State bundled with its GraphDef (what ``nnx.unpack`` returns); ``nnx.merge`` takes it.

  It reads and writes like its State and is a pytree whose leaves are the State's.

  Example:
    >>> import pynnx as nnx
    >>> gs = nnx.unpack(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> sorted(gs.keys()), type(nnx.merge(gs)).__name__
    (['bias', 'kernel'], 'Linear')
  """

  __slots__ = ("_graphdef", "_state")

  def __init__(self, graphdef: GraphDef, state: State):
    if not isinstance(graphdef, GraphDef):
      raise StateMismatchError(
        f"GraphState needs a GraphDef from `nnx.split` first, got a {type(graphdef).__name__}."
      )
    if not isinstance(state, State):
      raise StateMismatchError(f"GraphState needs a State, got a {type(state).__name__}.")
    object.__setattr__(self, "_graphdef", graphdef)
    object.__setattr__(self, "_state", state)

  def __getitem__(self, key: Hashable) -> Any:
    return self._state[key]

  def __setitem__(self, key: Hashable, value: Any) -> None:
    self._state[key] = value

  def __delitem__(self, key: Hashable) -> None:
    del self._state[key]

  def __iter__(self) -> Iterator[Hashable]:
    return iter(self._state)

  def __len__(self) -> int:
    return len(self._state)

  def __getattr__(self, name: str) -> Any:
    if name.startswith("__"):
      raise AttributeError(name)
    return getattr(self._state, name)

  def __setattr__(self, name: str, value: Any) -> None:
    setattr(self._state, name, value)

  def __repr__(self) -> str:
    return f"GraphState(graphdef={self._graphdef!r}, state={self._state!r})"


jax.tree_util.register_pytree_with_keys(
  GraphState,
  lambda g: (((jax.tree_util.GetAttrKey("state"), g._state),), g._graphdef),
  lambda graphdef, children: GraphState(graphdef, *children),
  lambda g: ((g._state,), g._graphdef),
)


def split_graph_states(args: tuple) -> tuple[Any, tuple]:
  """``(graphdef, states)`` from merge's arguments: a GraphDef then States, or GraphStates."""
  first, rest = args[0], args[1:]
  if isinstance(first, GraphState):
    graphdef, states = first._graphdef, [first._state]
  else:
    graphdef, states = first, []
  for s in rest:
    if isinstance(s, GraphState):
      if s._graphdef != graphdef:
        raise StateMismatchError(
          "merge: the GraphStates come from different GraphDefs; unpack them from one Module."
        )
      states.append(s._state)
    else:
      states.append(s)
  if not states:
    raise MissingStateError(
      "merge needs at least one State after the GraphDef: `nnx.merge(graphdef, state)`."
    )
  return graphdef, tuple(states)


# --- GraphDef (tree mode) -------------------------------------------------------------------


class TreeGraphDef(GraphDef):
  """The static structure of a Module in tree mode: its treedef and leaf paths/kinds."""

  __slots__ = ("treedef", "paths", "leaf_types", "leaf_metadata", "_hash")

  def __init__(
    self, treedef: Any, paths: tuple[Path, ...], leaf_types: tuple, leaf_metadata: tuple = ()
  ):
    self.treedef = treedef
    self.paths = paths
    self.leaf_types = leaf_types
    # Each Variable's metadata at split time: ``merge`` wraps a plain array with it (as Flax).
    # Not compared or hashed: metadata changes are not structure changes.
    self.leaf_metadata = leaf_metadata
    self._hash = hash((treedef, paths, leaf_types))

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other: object) -> bool:
    return self is other or (
      isinstance(other, TreeGraphDef)
      and self._hash == other._hash
      and self.treedef == other.treedef
      and self.paths == other.paths
      and self.leaf_types == other.leaf_types
    )

  @property
  def num_leaves(self) -> int:
    """The number of State leaves (Variables and arrays) ``merge`` expects.

    Example:
      >>> nnx.graphdef(nnx.Linear(2, 3, rngs=nnx.Rngs(0))).num_leaves
      2
    """
    return len(self.paths)

  def __repr__(self) -> str:
    return f"GraphDef(tree, {len(self.paths)} leaves, {self.treedef})"


def wrap_plain_value(kind: Any, value: Any, meta: Any) -> Variable:
  """A plain value the State holds where the GraphDef has a Variable of type ``kind``:
  wrapped in a new ``kind`` with the metadata it had at split time (as Flax's ``merge``)."""
  return kind.from_metadata(value, dict(meta or {}))


def _leaf_type(leaf: Any) -> Any:
  return type(leaf) if isinstance(leaf, Variable) else None


def split(node: Any, *filters: Any, api: str = "pynnx.split") -> tuple:
  """Tree-mode ``split``: ``(graphdef, state, *states)``, one State per filter."""
  flat, treedef = flatten_with_paths(node)
  check_no_sharing(flat, api)
  graphdef = TreeGraphDef(
    treedef,
    tuple(p for p, _ in flat),
    tuple(_leaf_type(v) for _, v in flat),
    tuple(v._metadata if isinstance(v, Variable) else None for _, v in flat),
  )
  if not filters:
    return graphdef, _as_state(flat)
  preds = filterlib.filters_to_predicates(filters)
  buckets: list[list] = [[] for _ in preds]
  unmatched = []
  for path, leaf in flat:
    for i, p in enumerate(preds):
      if p(path, leaf):
        buckets[i].append((path, leaf))
        break
    else:
      unmatched.append(path)
  if unmatched:
    raise FilterError(
      f"{api}: the filters {filters} leave these Variables unmatched: "
      + ", ".join(format_path(p) for p in unmatched[:8])
      + (" ..." if len(unmatched) > 8 else "")
      + ". Every Variable must go to some State; add `...` as the last filter to collect the rest."
    )
  return (graphdef, *(_as_state(b) for b in buckets))


def _as_state(flat: list) -> Any:
  """A State of ``(path, leaf)`` pairs; a root that is itself a leaf (a Variable passed to
  ``split``) is its own state, as in graph mode and Flax."""
  if len(flat) == 1 and flat[0][0] == ():
    return flat[0][1]
  return State.from_flat_path(flat)


def merge(graphdef: TreeGraphDef, state: Any, /, *states: Any, copy: bool = False) -> Any:
  """Tree-mode ``merge``: rebuilds the Module from its GraphDef and States."""
  flat: dict[Path, Any] = {}
  leaf_root = graphdef.paths == ((),)
  for s in (state, *states):
    if isinstance(s, FlatState):
      flat.update(s)
    elif isinstance(s, State):
      flat.update(s.flat_state())
    elif leaf_root and () not in flat:  # a Variable (or leaf) split on its own
      flat[()] = s
    elif isinstance(s, dict):  # a pure dict (`nnx.to_pure_dict`), as Flax accepts
      flat.update(State(s).flat_state())
    else:
      raise StateMismatchError(
        f"merge expects States after the GraphDef, got a {type(s).__name__}."
      )
  leaves = []
  missing = []
  metadata = graphdef.leaf_metadata or (None,) * len(graphdef.paths)
  for path, kind, meta in zip(graphdef.paths, graphdef.leaf_types, metadata):
    if path not in flat:
      missing.append(path)
      continue
    leaf = flat.pop(path)
    if kind is not None:
      if not isinstance(leaf, Variable):
        leaf = wrap_plain_value(kind, leaf, meta)
      elif copy:
        leaf = leaf.copy()
    leaves.append(leaf)
  if missing or flat:
    parts = []
    if missing:
      parts.append("missing " + ", ".join(format_path(p) for p in missing))
    if flat:
      parts.append("unexpected " + ", ".join(format_path(p) for p in flat))
    raise StateMismatchError(
      "merge: the State does not fit the GraphDef (" + "; ".join(parts) + "). Split and merge "
      "must use the same Module structure."
    )
  return graphdef.treedef.unflatten(leaves)


def state(node: Any, *filters: Any) -> Any:
  """The State of ``node``; with filters, one State per filter (unmatched leaves left out)."""
  _, full = split(node, api="pynnx.state")
  if not isinstance(full, State):  # a leaf root (a Variable): the leaf, or empty if filtered out
    if not filters:
      return full
    preds = filterlib.filters_to_predicates(filters)
    out = tuple(full if p((), full) else State({}) for p in preds)
    return out[0] if len(out) == 1 else out
  return full.filter(*filters) if filters else full


def graphdef(node: Any) -> TreeGraphDef:
  return split(node, api="pynnx.graphdef")[0]


def update(node: Any, *states: Any) -> None:
  """Writes the values of ``states`` into ``node``'s Variables (paths must exist)."""
  flat, _ = flatten_with_paths(node)
  targets = dict(flat)
  writes = []  # every path is checked before any is written: a failed update changes nothing
  for s in states:
    items: Any
    if isinstance(s, State):
      items = s.flat_state()
    else:  # a FlatState, or the new value of a Variable updated on its own
      items = s if isinstance(s, FlatState) else [((), s)]
    for path, leaf in items:
      target = targets.get(path)
      if target is None:
        raise StateMismatchError(
          f"update: {format_path(path)} is not in the {type(node).__name__} being updated."
        )
      if not isinstance(target, Variable):
        raise NotAVariableError(
          f"update: {format_path(path)} holds a plain {type(target).__name__}, not a Variable, "
          "so it cannot be updated in place; store it in a Variable."
        )
      writes.append((target, leaf.get_value() if isinstance(leaf, Variable) else leaf))
  for target, value in writes:
    target.set_value(value)


def clone(node: Any) -> Any:
  """A copy of ``node`` with new Variables (values are shared: arrays are immutable)."""
  flat, _ = flatten_with_paths(node)
  check_no_sharing(flat, "pynnx.clone")
  return jax.tree.map(lambda x: x, node)


def iter_graph(node: Any) -> Iterator[tuple[Path, Any]]:
  """Yields ``(path, value)`` for every Pytree node, container (list, tuple, dict) and leaf,
  children before parents (the root last, as Flax's tree mode)."""

  def walk(x: Any, path: Path) -> Iterator[tuple[Path, Any]]:
    if isinstance(x, Variable):
      yield path, x
      return
    if isinstance(x, Pytree):
      meta = x._pynnx_get_meta()
      for k in meta.data_keys:
        yield from walk(x.__dict__[k], (*path, k))
      yield path, x
      return
    if isinstance(x, (list, tuple)):
      for i, v in enumerate(x):
        yield from walk(v, (*path, i))
      yield path, x
      return
    if isinstance(x, dict):
      try:  # keys in the order jax flattens a dict
        keys = sorted(x)
      except TypeError:
        keys = list(x)
      for k in keys:
        yield from walk(x[k], (*path, k))
      yield path, x
      return
    if isinstance(x, State):
      for k in x:
        yield from walk(x[k], (*path, k))
      return
    yield path, x

  yield from walk(node, ())


def pop(node: Any, *filters: Any) -> Any:
  """Removes the Variables matching ``filters`` from ``node``; returns them as State(s)."""
  preds = filterlib.filters_to_predicates(filters)
  buckets: list[list] = [[] for _ in preds]
  removals: list[tuple[Any, Hashable]] = []

  def walk(x: Any, path: Path) -> None:
    if isinstance(x, Pytree):
      for k in list(x._pynnx_get_meta().data_keys):
        v = x.__dict__[k]
        p = (*path, k)
        if isinstance(v, Variable):
          for i, pred in enumerate(preds):
            if pred(p, v):
              buckets[i].append((p, v))
              removals.append((x, k))
              break
        else:
          walk(v, p)

  walk(node, ())
  # Last first, so deleting a List item does not shift the indices of those still to go.
  for parent, key in reversed(removals):
    parent._pynnx_delattr(key)
  states = tuple(State.from_flat_path(b) for b in buckets)
  return states[0] if len(states) == 1 else states


def flatten(node: Any) -> tuple[TreeGraphDef, FlatState]:
  graphdef, st = split(node, api="pynnx.flatten")
  return graphdef, st.flat_state()


def unflatten(graphdef: TreeGraphDef, flat_state: Any) -> Any:
  return merge(
    graphdef, FlatState(flat_state) if not isinstance(flat_state, FlatState) else flat_state
  )


MODE_FUNCTIONS[False] = (merge, split)
