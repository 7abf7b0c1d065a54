"""Graph mode as three hooks of the tree lift (``lift.Transform.bind``, ``lift.Inner``,
``lift.Call.finish``), plus the graph-only specs. No transform file branches on the mode.

1. :func:`to_tree` (outside, in ``bind``): every Module/Variable among the arguments becomes
   a ``GraphNode`` whose pytree children are deduplicated States holding the *original*
   Variables (``pynnx/_graph/api.py``), so each Variable appears once even if shared across
   arguments; the lift then flattens these pytrees like any tree-mode argument.
2. :func:`enter` (inside, in ``Inner``): Modules are rebuilt around the fresh Variables; the
   ``finish`` it returns converts the user function's output (Modules become GraphNodes)
   and, with ``graph_updates``, re-splits the inputs to report structural changes
   (Variables added by ``sow``, decode caches, ...).
3. :func:`exit` (outside, in ``Call.finish``): rebuilds returned Modules and transplants
   structural changes into the caller's objects.

``DiffState``, ``StateAxes`` and ``StateSharding`` (graph-only) become filters for
:func:`to_tree` plus a ``GraphNode``-shaped prefix for the tree-mode axis/spec logic.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from .._core import filters as filterlib
from .._core.config import resolve_graph_updates
from .._core.errors import AxisSpecError, GraphModeRequiredError, StructureChangeError
from .._core.paths import format_path, jax_path_to_parts
from .._core.pytree import Pytree
from .._core.state import State
from .._core.variables import STRUCTURE, Variable
from .._graph import api as graph_api
from .._graph.api import GraphNode
from .._graph.flatten import plan as graph_plan
from .._graph.graphdef import ContainerDef, NodeDef, StaticDef

__all__ = ["DiffState", "StateAxes", "StateSharding"]


# --- graph-only specs --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DiffState:
  """``argnums`` entry selecting the substate of argument ``argnum`` to differentiate.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> diff = nnx.DiffState(0, nnx.PathContains('kernel'))
    >>> grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))), argnums=diff)(m)
    >>> list(grads.keys())
    ['kernel']
  """

  argnum: int
  filter: Any

  def map_prefix(self, path: tuple, variable: Any) -> bool:
    """Whether the Variable at ``path`` is selected for differentiation."""
    return filterlib.to_predicate(self.filter)(path, variable)


class StateAxes:
  """Per-substate axes for ``vmap``/``scan``: ``StateAxes({nnx.Param: 0, ...: None})``.

  Example:
    >>> axes = nnx.StateAxes({nnx.Param: 0, ...: None})
    >>> axes.get(nnx.Param), axes.map_prefix(('w',), nnx.BatchStat(jnp.zeros(())))
    (0, None)
  """

  def __init__(self, filter_axes: Mapping[Any, Any] | Sequence[tuple[Any, Any]]):
    items = list(filter_axes.items() if isinstance(filter_axes, Mapping) else filter_axes)
    self._filters = tuple(f for f, _ in items)
    self._axes = tuple(a for _, a in items)

  @property
  def filters(self) -> tuple:
    return self._filters

  @property
  def axes(self) -> tuple:
    return self._axes

  def items(self):
    return zip(self.filters, self.axes)

  def keys(self) -> tuple:
    return self.filters

  def values(self) -> tuple:
    return self.axes

  def get(self, key: Any, default: Any = None) -> Any:
    """The axis given for filter ``key`` (``default`` if it has none)."""
    return dict(self.items()).get(key, default)

  def map_prefix(self, path: tuple, variable: Any) -> Any:
    """The axis of the first filter matching the Variable at ``path``."""
    for f, axis in self.items():
      if filterlib.to_predicate(f)(path, variable):
        return axis
    raise AxisSpecError(
      f"{type(self).__name__}: no filter of {list(self.filters)} matches the "
      f"{type(variable).__name__} at {format_path(path, 'model')}; add a catch-all `...` entry."
    )

  def __repr__(self) -> str:
    return f"StateAxes({dict(self.items())!r})"

  def __eq__(self, other: object) -> bool:
    return (
      isinstance(other, StateAxes) and self.filters == other.filters and self.axes == other.axes
    )

  def __hash__(self) -> int:
    return hash((self.filters, self.axes))


class StateSharding(StateAxes):
  """Per-substate PartitionSpecs for ``shard_map``/``jit``: filters or a State of specs.

  ``StateSharding({filter: spec, ...})`` gives every Variable matched by ``filter`` that
  spec (unmatched Variables are replicated); ``StateSharding(nnx.State({...}))`` gives the
  spec at each Variable's path.
  """

  def __init__(self, filter_specs: Any):
    if isinstance(filter_specs, State):
      filter_specs = [(_AtPath(tuple(p)), s) for p, s in filter_specs.flat_state()]
    super().__init__(filter_specs)

  @property
  def shardings(self) -> tuple:
    return self.axes

  def __repr__(self) -> str:
    return f"StateSharding({dict(self.items())!r})"


@dataclasses.dataclass(frozen=True)
class _AtPath:
  path: tuple

  def __call__(self, path: tuple, value: Any) -> bool:
    return tuple(path) == self.path


GRAPH_SPECS = (DiffState, StateAxes)


def uses_graph_specs(*specs: Any) -> bool:
  """Whether any of ``specs`` (pytrees) contains a DiffState / StateAxes / StateSharding."""
  return any(
    isinstance(leaf, GRAPH_SPECS)
    for spec in specs
    for leaf in jax.tree.leaves(spec, is_leaf=lambda x: isinstance(x, GRAPH_SPECS))
  )


def specs_force_graph(api: str, graph: bool | None, *specs: Any) -> bool:
  """Decided once, when a transform is built: do graph-only specs put it in graph mode?

  ``graph=None`` opts in; ``graph=False`` raises with the fix. A call then runs in graph
  mode when this is True or ``resolve_graph(graph)`` is.
  """
  if uses_graph_specs(*specs):
    if graph is False:
      raise GraphModeRequiredError(
        f"{api}: DiffState / StateAxes / StateSharding select substates of a Module's graph "
        f"and need graph mode, but graph=False was given. Pass graph=True (or leave graph "
        f"unset), or use plain ints / PartitionSpecs in tree mode."
      )
    return True
  return False


# --- the adapter -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GraphKey:
  """The static part of a graph-mode call (inside jit's cache key): never the caller's
  objects, so a cached trace keeps no Module alive.

  ``root_filters`` (the filters each root was split with) follow from the transform's specs
  and the argument structure, which the cache key already holds: not compared.
  """

  graph_updates: bool
  api: str
  root_filters: tuple = dataclasses.field(default=(), compare=False, hash=False, repr=False)


class GraphCall:
  """A graph-mode call, outside: its key and the caller's graph roots (for :func:`exit`).

  ``statics``: the static-only changes (``model.eval()``) a fixed transform's function made,
  ``{root index: new GraphDef}``, reported while tracing (their outputs are mapped or
  per-branch, so these travel beside them); None until reported.
  """

  __slots__ = ("key", "roots", "statics")

  def __init__(self, key: GraphKey, roots: tuple):
    self.key = key
    self.roots = roots
    self.statics: dict | None = None

  def report_statics(self, statics: dict) -> None:
    """Every trace of the function (each branch of a cond) must make the same change."""
    if self.statics is None:
      self.statics = statics
      return
    seen = self.statics
    differ = sorted(i for i in {*statics, *seen} if statics.get(i) != seen.get(i))
    if differ:
      raise StructureChangeError(
        f"{self.key.api}: the branches change static attributes of argument root "
        f"{', '.join(map(str, differ))} differently (e.g. one calls model.eval() and another "
        f"does not). A static attribute has one value after the call, so make the same change "
        f"in every branch, or make it before the call."
      )


def _is_root(x: Any) -> bool:
  return isinstance(x, (Pytree, Variable))


def to_tree(
  slots: Sequence[Any], filters: Sequence[tuple], api: str, graph_updates: Any
) -> tuple[list, GraphCall]:
  """The slots with each graph root replaced by a GraphNode (sharing deduplicated).

  ``filters[s]`` splits a root given directly as slot ``s`` into one State per filter.
  """
  slots = list(slots)
  fast = _fast_to_tree(slots, filters)
  if fast is not None:
    wslots, roots, root_filters = fast
  else:

    def by_slot(path: tuple, root: Any) -> tuple:
      return tuple(filters[path[0]]) if len(path) == 1 else ()

    wslots = graph_api.to_tree(slots, filters=by_slot)
    with_path = jax.tree_util.tree_flatten_with_path(slots, is_leaf=_is_root)[0]
    found = [(jax_path_to_parts(p), x) for p, x in with_path if _is_root(x)]
    roots = tuple(x for _, x in found)
    root_filters = tuple(by_slot(p, x) for p, x in found)
  updates = resolve_graph_updates(graph_updates)
  key = _KEYS.get((updates, api, root_filters))
  if key is None:
    if len(_KEYS) > 256:
      _KEYS.clear()
    key = _KEYS[(updates, api, root_filters)] = GraphKey(updates, api, root_filters)
  return list(wslots), GraphCall(key, roots)


_KEYS: dict = {}  # one GraphKey per (graph_updates, api, filters): jit's cache matches by identity


_NODE_CACHE = "_pynnx_graph_nodes"


def _cached_node(root: Pytree, fs: tuple) -> tuple[GraphNode, frozenset] | None:
  """The GraphNode of a frozen root for filters ``fs``, cached until the epoch moves."""
  d = root.__dict__
  if not d.get("_pynnx_frozen", False):
    return None
  epoch = STRUCTURE.epoch
  try:
    cache = d.setdefault(_NODE_CACHE, {})
    hit = cache.get(fs)
  except TypeError:  # unhashable filters: no caching
    return None
  if hit is not None and hit[0] == epoch and hit[3]() is root:
    return hit[1], hit[2]
  node = graph_api.to_tree(root, filters=fs)
  ids = frozenset(id(o) for o in graph_plan(root).objects)
  cache[fs] = (epoch, node, ids, weakref.ref(root))
  return node, ids


def _fast_to_tree(slots: list, filters: Sequence[tuple]) -> tuple | None:
  """Per-root cached GraphNodes when every slot is a disjoint frozen Pytree or holds no root.

  Returns None (the general path) for nested roots, bare Variables or shared objects.
  """
  wslots: list[Any] = []
  roots: list[Any] = []
  root_filters: list[tuple] = []
  seen: frozenset[int] = frozenset()
  for slot, fs in zip(slots, filters):
    if isinstance(slot, Pytree):
      fs = tuple(fs)
      hit = _cached_node(slot, fs)
      if hit is None or not seen.isdisjoint(hit[1]):
        return None
      seen = seen | hit[1] if seen else hit[1]
      wslots.append(hit[0])
      roots.append(slot)
      root_filters.append(fs)
    elif isinstance(slot, jax.Array):
      wslots.append(slot)
    elif _is_root(slot) or any(_is_root(x) for x in jax.tree.leaves(slot, is_leaf=_is_root)):
      return None
    else:
      wslots.append(slot)
  return wslots, tuple(roots), tuple(root_filters)


def _roots(tree: Any) -> list[Any]:
  return [x for x in jax.tree.leaves(tree, is_leaf=_is_root) if _is_root(x)]


def root_tables(call: GraphCall) -> list[list]:
  """Outside: the objects of each of the caller's roots, in graph-walk order."""
  return [list(graph_plan(r).objects) for r in call.roots]


def inner_tables(slots: Sequence[Any]) -> list[list]:
  """Inside: the objects of each rebuilt root, in the same order as :func:`root_tables`."""
  return [list(graph_plan(r).objects) for r in _roots(list(slots))]


def enter(
  key: GraphKey,
  slots: Sequence[Any],
  *,
  carry: bool = False,
  fixed: bool = False,
  outer: GraphCall | None = None,
) -> tuple[list, Callable]:
  """Inside the transform: rebuild Modules around the fresh Variables.

  Returns ``(slots, finish)``; ``finish(out)`` converts the user function's output. With
  ``carry=True`` (loop and scan carries) the output comes back in its input form — an input
  root as a GraphNode with its filters, so the carry keeps its structure — and structural
  changes raise; otherwise ``finish`` returns ``(out, structural_changes)``. ``fixed``
  (vmap, cond...): structural changes raise, the output is converted as usual, and
  static-only changes are reported to ``outer`` (the call's GraphCall).
  """
  in_nodes = _nodes(list(slots))
  slots = list(graph_api.from_tree(list(slots)))
  roots = _roots(slots)
  index = {id(r): i for i, r in enumerate(roots)}

  def structural_changes() -> dict:
    changes: dict[int, GraphNode] = {}
    statics: dict[int, Any] = {}  # fixed transforms: root index -> new GraphDef
    new_nodes = _nodes(graph_api.to_tree(slots))
    for i, (old, new) in enumerate(zip(in_nodes, new_nodes)):
      if old.graphdef == new.graphdef:
        continue
      if _layout(old.graphdef.root) == _layout(new.graphdef.root):
        # only static attributes changed (model.eval() inside): set on the caller with
        # graph_updates, as Flax does: through the output, or beside it where the output is
        # mapped or per-branch (fixed). Loop carries must keep their structure: ignored.
        if key.graph_updates and not carry:
          if fixed:
            statics[i] = new.graphdef
          else:
            changes[i] = new
        continue
      if carry or fixed or not key.graph_updates:
        why = (
          f"but {key.api.split('(')[0]} maps, scans or loops over it, so its structure must "
          f"stay fixed; create the Variables before the transform (e.g. call init_cache "
          f"first)"
          if carry or fixed
          else "but graph_updates=False. Pass graph_updates=True to propagate structural "
          "changes, or keep the structure fixed"
        )
        raise StructureChangeError(
          f"{key.api}: the function changed the structure of argument root {i} (Variables "
          f"or sub-Modules were added, removed or replaced) {why}."
        )
      changes[i] = new
    if fixed and outer is not None and key.graph_updates:
      outer.report_statics(statics)
    return changes

  def finish(out: Any) -> Any:
    if carry:

      def filters(path: tuple, root: Any) -> tuple:
        i = index.get(id(root))
        return key.root_filters[i] if i is not None and i < len(key.root_filters) else ()

      out = graph_api.to_tree(out, filters=filters)
      structural_changes()
      return out
    return graph_api.to_tree(out), structural_changes()

  return slots, finish


def _layout(d: Any) -> Any:
  """A graph definition without its static values: what Variables and nodes sit where."""
  if isinstance(d, NodeDef):
    return (d.type, d.index, d.meta.data_keys, tuple(map(_layout, d.children)))
  if isinstance(d, ContainerDef):
    return (d.treedef, d.keys, tuple(map(_layout, d.children)))
  if isinstance(d, StaticDef):
    return StaticDef
  return d


def _is_graph_node(x: Any) -> bool:
  return isinstance(x, GraphNode)


def _variable_ids(states: Any) -> frozenset:
  return frozenset(
    id(v)
    for v in jax.tree.leaves(states, is_leaf=lambda x: isinstance(x, Variable))
    if isinstance(v, Variable)
  )


def exit(call: GraphCall, out: Any, *, carry: bool = False) -> Any:
  """Outside: rebuild returned Modules and apply structural changes to the caller's roots.

  In carry form, an output GraphNode holding exactly an input root's Variables (a carry
  written back in place) is that root: the caller gets its own object back.
  """
  roots = call.roots
  if carry:
    structural: dict = {}
  else:
    out, structural = out
  for i, node in structural.items():
    _transplant(roots[i], graph_api.from_tree(node))
  for i, graphdef in (call.statics or {}).items():
    states = graph_api.to_tree(roots[i]).states
    _transplant(roots[i], graph_api.from_tree(GraphNode(graphdef, states)))
  treedef: jax.tree_util.PyTreeDef  # jaxlib ships no stub for it: this reads as Any
  leaves, treedef = jax.tree_util.tree_flatten(out, is_leaf=_is_graph_node)
  if not any(isinstance(x, GraphNode) for x in leaves):
    return out  # no Module in the output: nothing to rebuild
  matches: dict[int, Any] = {}
  if carry:
    root_ids = [
      _variable_ids([o for o in graph_plan(r).objects if isinstance(o, Variable)]) for r in roots
    ]
    for k, x in enumerate(leaves):
      if isinstance(x, GraphNode):
        ids = _variable_ids(x.states)
        for r, rid in zip(roots, root_ids):
          if ids == rid and ids:
            matches[k] = r
            break
  rebuilt = graph_api.from_tree([None if k in matches else x for k, x in enumerate(leaves)])
  for k, r in matches.items():
    rebuilt[k] = r
  return treedef.unflatten(rebuilt)


def _transplant(orig: Any, new: Any) -> None:
  """Makes ``orig`` (the caller's object) take the structure of ``new`` (from the transform).

  Existing Variables keep their identity (their values were written back by the lift);
  attributes that appeared are adopted, those that vanished are removed, changed static
  attributes (``model.eval()`` inside the transform) are set.
  """
  if not (isinstance(orig, Pytree) and type(orig) is type(new)):
    return
  od: dict[Any, Any] = orig.__dict__  # keys: attribute names, List indices or Dict keys
  nd: dict[Any, Any] = new.__dict__
  new_keys: list[Any] = [k for k, _ in new._pynnx_items()]
  for k in new_keys:
    nv = nd[k]
    ov = od.get(k, _MISSING)
    if ov is _MISSING:
      orig._pynnx_setattr(k, nv)
    elif isinstance(ov, Pytree) and type(ov) is type(nv):
      _transplant(ov, nv)
    elif isinstance(ov, Variable) and type(ov) is type(nv):
      continue
    elif isinstance(ov, (Pytree, Variable)) or isinstance(nv, (Pytree, Variable)):
      orig._pynnx_setattr(k, nv)
    elif ov is not nv and ov != nv:  # a static attribute, e.g. `deterministic` set by eval()
      orig._pynnx_setattr(k, nv)
  stale: list[Any] = [k for k, _ in orig._pynnx_items() if k not in nd]
  for k in stale:
    orig._pynnx_delattr(k)


_MISSING: Any = object()


def node_prefix(spec: Any, node: Any, *, default: Any = None) -> Any:
  """A GraphNode-shaped prefix giving each of ``node``'s per-filter States its spec."""
  if isinstance(spec, StateAxes) and isinstance(node, GraphNode):
    return GraphNode(
      node.graphdef, tuple(spec.axes) + ((default,) if len(node.states) > len(spec.axes) else ())
    )
  return spec


def spec_filters(spec: Any) -> tuple:
  """The to_tree filters for one argument's spec: one State per filter of a StateAxes.

  A StateSharding leaves unmatched Variables to a last ``...`` State (replicated); a
  StateAxes must match every Variable (to_tree raises naming the unmatched paths).
  """
  if isinstance(spec, StateSharding):
    fs = tuple(spec.filters)
    return fs if any(f is ... for f in fs) else (*fs, ...)
  if isinstance(spec, StateAxes):
    return tuple(spec.filters)
  return ()


def selected_ids(warg: Any) -> frozenset[int]:
  """The ids of the Variables in the first (selected) State of each GraphNode in ``warg``."""
  return frozenset(
    id(leaf)
    for node in jax.tree.leaves(warg, is_leaf=_is_graph_node)
    if isinstance(node, GraphNode)
    for leaf in jax.tree.leaves(node.states[0], is_leaf=lambda x: isinstance(x, Variable))
  )


def selected_state(grads: Any) -> Any:
  """A GraphNode-shaped gradient -> the State of its selected substate (graph mode)."""

  def conv(x: Any) -> Any:
    if isinstance(x, GraphNode):
      state = x.states[0]
      if isinstance(state, Variable):
        return state
      return State.from_flat_path(
        [
          (p, v)
          for p, v in state.flat_state()
          if not (isinstance(v, Variable) and v.raw_value is None)
        ]
      )
    return x

  return jax.tree.map(conv, grads, is_leaf=_is_graph_node)


def _nodes(tree: Any) -> list[GraphNode]:
  return [x for x in jax.tree.leaves(tree, is_leaf=_is_graph_node) if isinstance(x, GraphNode)]


def zero_state(warg: Any) -> Any:
  """The ``input_updates_g`` term of custom_vjp's graph form: the argument's whole State, zeroed.

  A Module argument gives a State of every Variable; anything else gives None.
  """
  nodes = _nodes(warg)
  if not nodes or not isinstance(warg, GraphNode):
    return None

  def zero(v: Any) -> Any:
    return v.replace(jax.numpy.zeros_like(v.raw_value)) if isinstance(v, Variable) else v

  merged = State.merge(*[s for s in warg.states if isinstance(s, State)])
  return jax.tree.map(zero, merged, is_leaf=lambda x: isinstance(x, Variable))


def cotangent_node(api: str, warg: Any, ct: Any) -> Any:
  """A State cotangent (graph form) -> the GraphNode-shaped cotangent of the wrapped arg."""
  if not isinstance(warg, GraphNode):
    return ct
  if not isinstance(ct, State):
    raise StructureChangeError(
      f"{api}: bwd must return a State for a Module argument (as in input_updates_g), got "
      f"{type(ct).__name__}."
    )
  given = dict(ct.flat_state())
  selected = warg.states[0]
  missing = [p for p, _ in selected.flat_state() if p not in given]
  if missing:
    raise StructureChangeError(
      f"{api}: the State bwd returned lacks the differentiable Variables "
      + ", ".join(".".join(map(str, p)) for p in missing)
      + "; return a cotangent for every Variable selected by the DiffState."
    )

  def value(v: Any) -> Any:
    return v.raw_value if isinstance(v, Variable) else v

  first = State.from_flat_path([(p, v.replace(value(given[p]))) for p, v in selected.flat_state()])
  return GraphNode(warg.graphdef, (first, *warg.states[1:]))


def custom_vjp_bwd(
  graph: GraphCall | None, wargs: Sequence[Any], cvjp: Any, bwd: Callable
) -> Callable:
  """custom_vjp's ``bwd`` as its tree-mode core calls it: ``bwd`` itself in tree mode.

  Graph mode turns ``bwd``'s cotangents into cotangents of the GraphNode-wrapped arguments.
  With graph_updates ``bwd(*nondiff, res, (input_updates_g, out_g))`` returns States (the
  DiffState-selected substates); without, ``bwd(*nondiff, res, out_g)`` returns
  Module-shaped cotangents as in tree mode.
  """
  if graph is None:
    return bwd
  api, states = cvjp.api, graph.key.graph_updates
  if cvjp.wrt and not states:
    raise GraphModeRequiredError(
      f"{api}: DiffState in nondiff_argnums needs graph_updates=True (the bwd rule then "
      f"receives and returns States). Pass graph_updates=True, or use integer nondiff_argnums."
    )
  diff_args = [i for i in range(len(wargs)) if i not in cvjp.nondiff]

  def graph_bwd(*rest: Any) -> Any:
    *nd, res, out_g = rest
    if states:
      out_g = (tuple(zero_state(wargs[i]) for i in diff_args), out_g)
    modules = [graph_api.from_tree(x) if isinstance(x, GraphNode) else x for x in nd]
    cts = bwd(*modules, res, out_g)
    ok = isinstance(cts, (tuple, list)) and len(cts) == len(diff_args)
    if not states:  # a mismatch is named by the tree-mode core
      return tuple(_as_node(wargs[i], ct) for i, ct in zip(diff_args, cts)) if ok else cts
    if not ok:
      raise StructureChangeError(
        f"{api}: bwd must return a tuple with one cotangent per differentiable argument "
        f"({len(diff_args)}), got {type(cts).__name__}."
      )
    return tuple(cotangent_node(api, wargs[i], ct) for i, ct in zip(diff_args, cts))

  return graph_bwd


def _as_node(warg: Any, ct: Any) -> Any:
  if isinstance(warg, GraphNode) and isinstance(ct, (Pytree, Variable)):
    return graph_api.to_tree(ct, filters=(...,))
  return ct


def _spec_for(spec: Any, path: tuple, var: Variable) -> Any:
  if isinstance(spec, StateAxes):
    for f, axis in spec.items():
      if filterlib.to_predicate(f)(path, var):
        return axis
    return _MISSING
  return spec


def check_shared_specs(
  transform: Any, slots: Sequence[Any], layout: Sequence[Any], names: Sequence[str], n_pos: int
) -> None:
  """A Variable shared by two arguments must get the same spec from both (graph mode).

  Raises AxisSpecError naming both paths when the two specs disagree.
  """
  specs = [transform.slot_spec(k, n_pos) for k in layout]
  if len(slots) < 2 or all(s is None for s in specs):
    return
  seen: dict[int, tuple[int, str, Any]] = {}
  for i, (arg, spec, name) in enumerate(zip(slots, specs, names)):
    if not _roots(arg) or _is_graph_node(spec):  # nnx.prefix(..., graph=True): deduplicated
      continue
    for path, x in graph_api.iter_graph(arg):
      if not isinstance(x, Variable):
        continue
      mine = _spec_for(spec, path, x)
      where = format_path(path, name)
      first = seen.setdefault(id(x), (i, where, mine))
      if first[0] != i and first[2] != mine:
        what = transform.spec_options[0]
        raise AxisSpecError(
          f"{transform.api}: the same {type(x).__name__} is given two different {what}:\n"
          f"  {first[1]}: {first[2]!r}\n  {where}: {mine!r}\n"
          f"A Variable shared between arguments has one value, so it must be mapped the same "
          f"way everywhere. Give both arguments the same {what} for it."
        )
