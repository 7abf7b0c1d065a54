"""Flattening for the lift: each argument becomes a hashable plan and a list of raw values.

A frozen Module caches its plan (treedef + each Variable's type and metadata) and its last
value list on itself, so a call costs reading each cell's value; inside the JAX call the
argument is rebuilt around fresh Variables, and afterwards the changed cells are written back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax

from .._core.errors import GraphModeRequiredError
from .._core.pytree import Pytree
from .._core.tree import check_tree_depth, shared_reference_error
from .._core.variables import FRAMES, STRUCTURE, Variable, is_variable, meta_from_aux
from .._graph.api import GraphNode
from .outputs import leaf_paths
from .tracebacks import hide_frames

hide_frames(__file__)

# slot descriptors: the hot path bypasses __setattr__ (mypy does not model slot members)
_RAW: Any = Variable.__dict__["_raw_value"]  # the slots' member descriptors
_META: Any = Variable.__dict__["_metadata"]
_FRAME: Any = Variable.__dict__["_frame"]
_get_raw = _RAW.__get__


# --- flatten -----------------------------------------------------------------------------------


class ArgPlan:
  """The static half of one flattened argument: treedef and the kind of every leaf.

  ``kinds[i]`` is ``None`` for a plain leaf (an array, a scalar) or ``(type, metadata)``
  for a Variable. Hashable and cheap to compare: it is a jit static argument.
  """

  __slots__ = ("treedef", "kinds", "var_idx", "unique", "_hash")

  def __init__(self, treedef: Any, kinds: tuple, leaves: Sequence[Any]):
    self.treedef = treedef
    self.kinds = kinds
    self.var_idx = tuple(i for i, k in enumerate(kinds) if k is not None)
    # Whether every Variable of this argument appears once (checked once per plan).
    self.unique = len({id(leaves[i]) for i in self.var_idx}) == len(self.var_idx)
    self._hash = hash((treedef, kinds))

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other: object) -> bool:
    return self is other or (
      isinstance(other, ArgPlan)
      and self._hash == other._hash
      and self.treedef == other.treedef
      and self.kinds == other.kinds
    )

  def __repr__(self) -> str:
    return f"ArgPlan({self.treedef})"


def _kind(leaf: Any) -> Any:
  return (type(leaf), leaf._pynnx_aux()) if isinstance(leaf, Variable) else None


_SERIALS = itertools.count()


class _Entry:
  """What a frozen Pytree caches for the lift: its leaves, plan and last value list."""

  __slots__ = ("epoch", "leaves", "plan", "values", "stamp", "serial")

  def __init__(self, epoch: int, leaves: list, plan: ArgPlan):
    self.serial = next(_SERIALS)  # never reused: memo keys need no reference to the Module
    self.epoch = epoch
    self.leaves = leaves
    self.plan = plan
    self.values: list | None = None
    self.stamp = -1


def _plan_of(arg: Any) -> tuple[list, ArgPlan]:
  """``(leaves, plan)`` of one argument (uncached)."""
  check_tree_depth(arg)  # before JAX's recursive flatten can exhaust the stack
  leaves, treedef = jax.tree_util.tree_flatten(arg, is_leaf=is_variable)
  if any(isinstance(x, Pytree) for x in leaves):  # only a `pytree=False` object stays a leaf
    raise GraphModeRequiredError("a `pytree=False` object reached the tree-mode lift")
  return leaves, ArgPlan(treedef, tuple(map(_kind, leaves)), leaves)


def _entry_of(arg: Any) -> _Entry | None:
  """The cached entry of a frozen Pytree (or a cached GraphNode), rebuilt when the
  structure epoch moved. The epoch is read first: a change made meanwhile invalidates it."""
  epoch = STRUCTURE.epoch
  if isinstance(arg, GraphNode):
    entry = arg._pynnx_lift_plan
    if entry is None or entry.epoch != epoch:
      entry = arg._pynnx_lift_plan = _Entry(epoch, *_plan_of(arg))
    return entry
  d = arg.__dict__
  entry = d.get("_pynnx_lift_plan")
  if entry is not None and entry.epoch == epoch:
    return entry
  if not d.get("_pynnx_frozen", False):
    return None
  entry = d["_pynnx_lift_plan"] = _Entry(epoch, *_plan_of(arg))
  return entry


def _values(leaves: list, plan: ArgPlan) -> list:
  if len(plan.var_idx) == len(leaves):
    return list(map(_get_raw, leaves))
  values = list(leaves)
  for i in plan.var_idx:
    values[i] = _get_raw(leaves[i])
  return values


class Flat:
  """Flattened arguments: ``plans`` (static), ``values`` and ``cells`` per argument."""

  __slots__ = ("plans", "values", "cells", "entries", "stamp", "may_share", "share_key")

  def __init__(self, plans, values, cells, entries, stamp, may_share, share_key):
    self.plans = plans
    self.values = values
    self.cells = cells
    self.entries = entries
    self.stamp = stamp
    # Whether a Variable could appear twice: two slots hold Variables, or one repeats one.
    self.may_share = may_share
    # The serials of the cached entries of the slots holding Variables (None: not all cached).
    self.share_key = share_key


class SharingCheck:
  """Raises SharedReferenceError when a Variable appears twice across all arguments.

  Combinations of frozen Modules already checked are remembered by their cache entries'
  serial numbers, so the memo never keeps a discarded model alive.
  """

  def __init__(self, api: str):
    self.api = api
    self._seen: set = set()

  def __call__(self, flat: Flat, args: Sequence[Any], names: Callable[[], Sequence[str]]) -> None:
    key = flat.share_key
    if key is not None and key in self._seen:
      return
    ids = [id(cells[j]) for cells, p in zip(flat.cells, flat.plans) for j in p.var_idx]
    if len(set(ids)) != len(ids):
      self._raise(args, names())
    if key is not None:
      if len(self._seen) > 256:
        self._seen.clear()
      self._seen.add(key)

  def _raise(self, args: Sequence[Any], names: Sequence[str]) -> None:
    first: dict[int, str] = {}
    for arg, name in zip(args, names):
      leaves = jax.tree_util.tree_leaves(arg, is_leaf=is_variable)
      for leaf, where in zip(leaves, leaf_paths(arg, name)):
        if isinstance(leaf, Variable):
          if id(leaf) in first:
            raise shared_reference_error(self.api, leaf, first[id(leaf)], where)
          first[id(leaf)] = where


_ARRAY_PLAN = ArgPlan(jax.tree_util.tree_structure(0), (None,), [0])
_ARRAY_IMPL = type(jax.numpy.zeros(()))
_NO_DICT: dict = {}


def flatten_args(args: Sequence[Any]) -> Flat:
  """Flattens each argument into raw values plus its (cached) static plan.

  A frozen Pytree also caches its value list, valid while no Variable was
  written since (``STRUCTURE.writes``); ``write_back`` keeps it current.
  """
  plans, values, cells = [], [], []
  entries: list[_Entry | None] = []
  stamp = STRUCTURE.writes
  holders, repeats, serials = 0, False, []
  epoch = STRUCTURE.epoch
  for arg in args:
    # the common cases first, without ABC isinstance checks (about 0.2 µs each)
    if type(arg) is _ARRAY_IMPL or (not isinstance(arg, Pytree) and isinstance(arg, jax.Array)):
      plans.append(_ARRAY_PLAN)  # a bare array: a constant plan
      cells.append([arg])
      values.append([arg])
      entries.append(None)
      continue
    entry = getattr(arg, "__dict__", _NO_DICT).get("_pynnx_lift_plan")
    if entry is None or entry.epoch != epoch:  # not cached (yet), or the structure moved
      entry = _entry_of(arg) if isinstance(arg, (Pytree, GraphNode)) else None
    if entry is None:
      leaves, plan = _plan_of(arg)
      vals = _values(leaves, plan) if plan.var_idx else leaves
    else:
      leaves, plan = entry.leaves, entry.plan
      if entry.stamp == stamp:
        vals = entry.values  # type: ignore[assignment]  # set whenever the stamp matches
      else:
        vals = entry.values = _values(leaves, plan)
        entry.stamp = stamp
    if plan.var_idx:
      holders += 1
      repeats = repeats or not plan.unique
      serials.append(entry.serial if entry is not None else None)
    plans.append(plan)
    cells.append(leaves)
    values.append(vals)
    entries.append(entry)
  share_key = None if None in serials else tuple(serials)
  return Flat(tuple(plans), values, cells, entries, stamp, holders > 1 or repeats, share_key)


def new_var(kind: tuple, value: Any) -> Variable:
  """A Variable of ``kind`` (type, metadata) holding ``value``, owned by the current frame."""
  typ, aux = kind
  var = object.__new__(typ)
  _RAW.__set__(var, value)
  _META.__set__(var, meta_from_aux(aux))
  _FRAME.__set__(var, FRAMES.current)
  return var


def rebuild_arg(plan: ArgPlan, values: Sequence[Any]) -> tuple[Any, list]:
  """Inside a transform: the argument rebuilt with fresh Variables, and those Variables."""
  if not plan.var_idx:
    return plan.treedef.unflatten(values), []
  leaves = list(values)
  fresh = []
  for i in plan.var_idx:
    var = new_var(plan.kinds[i], values[i])
    leaves[i] = var
    fresh.append(var)
  return plan.treedef.unflatten(leaves), fresh


def changed(plan: ArgPlan, fresh: list, values: Sequence[Any]) -> dict[int, Any]:
  """``{leaf index: new value}`` for the fresh Variables whose value was replaced."""
  out = {}
  for i, var in zip(plan.var_idx, fresh):
    new = _get_raw(var)
    if new is not values[i]:
      out[i] = new
  return out


def all_values(plan: ArgPlan, fresh: list, values: Sequence[Any]) -> dict[int, Any]:
  """``{leaf index: value}`` for every fresh Variable, changed or not."""
  return {i: _get_raw(var) for i, var in zip(plan.var_idx, fresh)}


def write_back(flat: Flat, updates: Sequence[dict[int, Any] | None]) -> None:
  """Writes ``updates[arg][leaf] = value`` into the caller's Variables.

  Keeps the cached value lists of ``flat``'s Pytrees current when no other Variable write
  happened since ``flatten_args``; otherwise they are simply left stale (and rebuilt). The
  whole write holds the counters' lock, so a concurrent write can never be mistaken for
  this one.
  """
  if not any(updates):
    return
  with STRUCTURE.lock:
    clean = STRUCTURE.writes == flat.stamp
    STRUCTURE.writes += 1
    for leaves, entry, upd in zip(flat.cells, flat.entries, updates):
      if not upd:  # nothing for this argument (jit's extra marker entry is None)
        continue
      for i, value in upd.items():
        _RAW.__set__(leaves[i], value)
      if entry is not None and clean:
        vals = entry.values
        for i, value in upd.items():
          vals[i] = value
    if clean:
      for entry in flat.entries:
        if entry is not None:
          entry.stamp = STRUCTURE.writes
