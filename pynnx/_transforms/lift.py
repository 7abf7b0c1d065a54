"""The one lift every pynnx transform uses.

    caller's args ──flatten_args──▶ Flat(static, values, cells)
                                        │ values: per-argument lists of raw arrays
                                        ▼
                      jax.<transform>(inner, values...)      static: hashable plans
                                        │
           inner: rebuild_arg(plan, values) ─▶ fresh Variables (new Frame)
                  out = f(*args)
                  changed(...) ─▶ values of the cells f changed
                                        ▼
    write_back(flat, updates) ◀── outputs

A frozen Module's plan (its leaves with Variables as leaves, the treedef and each
Variable's type and metadata) is computed once and cached on the Module, so a call costs
reading each cell's value, one JAX call and writing back the changed cells.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax

from .._core.paths import format_path, jax_path_to_parts
from .._core.pytree import Pytree
from .._core.tree import shared_reference_error
from .._core.variables import FRAMES, STRUCTURE, Variable, is_variable, pop_frame, push_frame
from .._graph.api import GraphNode

# slot descriptors: the hot path bypasses __setattr__ (mypy does not model slot members)
_RAW = Variable._raw_value  # type: ignore[attr-defined]
_META = Variable._metadata  # type: ignore[attr-defined]
_FRAME = Variable._frame  # type: ignore[attr-defined]
_get_raw = _RAW.__get__


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


class _Entry:
  """What a frozen Pytree caches for the lift: its leaves, plan and last value list."""

  __slots__ = ("epoch", "leaves", "plan", "values", "stamp")

  def __init__(self, epoch: int, leaves: list, plan: ArgPlan):
    self.epoch = epoch
    self.leaves = leaves
    self.plan = plan
    self.values: list | None = None
    self.stamp = -1


def _plan_of(arg: Any) -> tuple[list, ArgPlan]:
  """``(leaves, plan)`` of one argument (uncached)."""
  leaves, treedef = jax.tree_util.tree_flatten(arg, is_leaf=is_variable)
  return leaves, ArgPlan(treedef, tuple(map(_kind, leaves)), leaves)


def _entry_of(arg: Any) -> _Entry | None:
  """The cached entry of a frozen Pytree (or a cached GraphNode), rebuilt when the
  structure epoch moved."""
  if isinstance(arg, GraphNode):
    entry = arg._pynnx_lift_plan
    if entry is None or entry.epoch != STRUCTURE.epoch:
      leaves, plan = _plan_of(arg)
      entry = arg._pynnx_lift_plan = _Entry(STRUCTURE.epoch, leaves, plan)
    return entry
  d = arg.__dict__
  entry = d.get("_pynnx_lift_plan")
  if entry is not None and entry.epoch == STRUCTURE.epoch:
    return entry
  if not d.get("_pynnx_frozen", False):
    return None
  leaves, plan = _plan_of(arg)
  entry = d["_pynnx_lift_plan"] = _Entry(STRUCTURE.epoch, leaves, plan)
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

  __slots__ = ("plans", "values", "cells", "entries", "stamp")

  def __init__(self, plans: tuple, values: list, cells: list, entries: list, stamp: int):
    self.plans = plans
    self.values = values
    self.cells = cells
    self.entries = entries
    self.stamp = stamp


class SharingCheck:
  """Remembers argument combinations already checked for shared Variables (tree mode)."""

  def __init__(self, api: str, argnames: Sequence[str] | None = None):
    self.api = api
    self.argnames = argnames
    self._seen: dict = {}

  def __call__(self, cells: list, plans: Sequence[ArgPlan], args: Sequence[Any]) -> None:
    # Only arguments holding Variables matter; cached plans make their lists stable.
    holders = [leaves for leaves, plan in zip(cells, plans) if plan.var_idx]
    if len(holders) < 2 and all(plan.unique for plan in plans):
      return
    key = tuple(map(id, holders))
    if key in self._seen:
      return
    ids = [id(leaf) for leaves in holders for leaf in leaves if isinstance(leaf, Variable)]
    if len(set(ids)) != len(ids):
      self._raise(args)
    if len(self._seen) > 64:
      self._seen.clear()
    self._seen[key] = tuple(holders)  # keeps the lists alive so their ids stay unique

  def _raise(self, args: Sequence[Any]) -> None:
    first: dict[int, str] = {}
    for arg, name in zip(args, arg_names(self.argnames, len(args))):
      leaves = jax.tree_util.tree_leaves(arg, is_leaf=is_variable)
      for leaf, where in zip(leaves, leaf_paths(arg, name)):
        if isinstance(leaf, Variable):
          if id(leaf) in first:
            raise shared_reference_error(self.api, leaf, first[id(leaf)], where)
          first[id(leaf)] = where


_ARRAY_PLAN = ArgPlan(jax.tree_util.tree_structure(0), (None,), [0])


def flatten_args(args: Sequence[Any], check: SharingCheck | None = None) -> Flat:
  """Flattens each argument into raw values plus its (cached) static plan.

  A frozen Pytree also caches its value list, valid while no Variable was
  written since (``STRUCTURE.writes``); ``write_back`` keeps it current.
  """
  plans, values, cells = [], [], []
  entries: list[_Entry | None] = []
  stamp = STRUCTURE.writes
  for arg in args:
    if isinstance(arg, jax.Array):  # the common bare-array argument: a constant plan
      plans.append(_ARRAY_PLAN)
      cells.append([arg])
      values.append([arg])
      entries.append(None)
      continue
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
    plans.append(plan)
    cells.append(leaves)
    values.append(vals)
    entries.append(entry)
  if check is not None:
    check(cells, plans, args)
  return Flat(tuple(plans), values, cells, entries, stamp)


def _new_var(kind: tuple, value: Any) -> Variable:
  typ, aux = kind
  var = object.__new__(typ)
  _RAW.__set__(var, value)
  _META.__set__(var, dict(aux))
  _FRAME.__set__(var, FRAMES.current)
  return var


def rebuild_arg(plan: ArgPlan, values: Sequence[Any]) -> tuple[Any, list]:
  """Inside a transform: the argument rebuilt with fresh Variables, and those Variables."""
  if not plan.var_idx:
    return plan.treedef.unflatten(values), []
  leaves = list(values)
  fresh = []
  for i in plan.var_idx:
    var = _new_var(plan.kinds[i], values[i])
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


def write_back(flat: Flat, updates: Sequence[dict[int, Any]]) -> None:
  """Writes ``updates[arg][leaf] = value`` into the caller's Variables.

  Keeps the cached value lists of ``flat``'s Pytrees current when no other Variable write
  happened since ``flatten_args``; otherwise they are simply left stale (and rebuilt).
  """
  if not any(updates):
    return
  clean = STRUCTURE.writes == flat.stamp
  STRUCTURE.writes += 1
  for leaves, entry, upd in zip(flat.cells, flat.entries, updates):
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


def write_all(flat: Flat, values: Sequence[Sequence[Any]]) -> None:
  """Writes every Variable leaf's value back (for transforms that return them all)."""
  write_back(flat, [{i: vals[i] for i in plan.var_idx} for plan, vals in zip(flat.plans, values)])


class InnerFrame:
  """Context manager: a new Frame for the inner function of transform ``name``."""

  __slots__ = ("name", "frame")

  def __init__(self, name: str):
    self.name = name

  def __enter__(self):
    self.frame = push_frame(self.name)
    return self.frame

  def __exit__(self, *exc: Any) -> Literal[False]:
    pop_frame(self.frame)
    return False


# --- decorator plumbing --------------------------------------------------------------------


def arg_names(argnames: Sequence[str] | None, n: int) -> list[str]:
  """Names for ``n`` positional arguments (``args[i]`` past the known names)."""
  names = argnames or []
  return [names[i] if i < len(names) else f"args[{i}]" for i in range(n)]


def leaf_paths(arg: Any, argname: str) -> list[str]:
  """The user-facing path of every leaf of ``arg`` (Variables are leaves), for errors."""
  items = jax.tree_util.tree_flatten_with_path(arg, is_leaf=is_variable)[0]
  return [format_path(jax_path_to_parts(p), argname) for p, _ in items]


class _Missing:
  def __repr__(self) -> str:
    return "MISSING"


MISSING: Any = _Missing()


def wrap_or_decorate(cls: type, f: Any, kw: dict) -> Any:
  """``cls(f, **kw)``, or a decorator building it when ``f`` is MISSING (``@nnx.X(...)``)."""
  if f is MISSING:
    return lambda fn: cls(fn, **kw)
  return cls(f, **kw)


def check_not_bound(f: Any, api: str) -> None:
  if inspect.ismethod(f) and not isinstance(f.__self__, type):
    name = getattr(f, "__name__", "method")
    cls = type(f.__self__).__name__
    raise TypeError(
      f"pynnx.{api} does not accept bound methods such as {cls}(...).{name}: the Module would "
      f"be captured instead of passed, so its updates could not be written back. Use the "
      f"unbound form `pynnx.{api}({cls}.{name})(module, ...)` or decorate the method "
      f"definition with `@pynnx.{api}`."
    )


def argnames_of(f: Callable) -> list[str] | None:
  try:
    params = inspect.signature(f).parameters.values()
  except (TypeError, ValueError):
    return None
  return [
    p.name
    for p in params
    if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
  ]


class MethodAware:
  """Base for transformed callables: binds like a function when used as a method."""

  __call__: Callable[..., Any]  # defined by every subclass

  def __get__(self, obj: Any, objtype: Any = None) -> Any:
    if obj is None:
      return self
    return functools.partial(self, obj)
