"""State: a nested mapping of Variables (or arrays), itself a JAX pytree.

``State`` is what ``nnx.split`` / ``nnx.state`` return. Keys are attribute names, list
indices or dict keys; leaves are Variables (or plain arrays held directly by a Module).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import jax

from . import filters as filterlib
from .errors import ArgumentTypeError, FilterError, StateMismatchError
from .paths import format_path
from .reprs import indent, nested_mapping_repr
from .variables import Variable

Path = tuple[Hashable, ...]


def _sort_key(k: Any) -> tuple:
  return (0, k, "") if isinstance(k, int) else (1, 0, str(k))


class State(MutableMapping):
  """A nested, printable, pytree mapping of Variables.

  Example:
    >>> import jax, jax.numpy as jnp, pynnx as nnx
    >>> state = nnx.State({'kernel': nnx.Param(jnp.ones((2, 3)))})
    >>> jax.tree.map(jnp.shape, state)
    State({
      'kernel': Param(
        value=(2, 3)
      )
    })
  """

  __slots__ = ("_mapping",)

  def __init__(self, mapping: Mapping[Hashable, Any] | Sequence[tuple[Hashable, Any]] = (), /):
    items = mapping.items() if isinstance(mapping, Mapping) else mapping
    object.__setattr__(
      self,
      "_mapping",
      {k: State(v) if type(v) is dict else v for k, v in items},
    )

  # -- mapping protocol ------------------------------------------------------------------
  def __getitem__(self, key: Hashable) -> Any:
    return self._mapping[key]

  def __setitem__(self, key: Hashable, value: Any) -> None:
    self._mapping[key] = State(value) if type(value) is dict else value

  def __delitem__(self, key: Hashable) -> None:
    del self._mapping[key]

  def __iter__(self) -> Iterator[Hashable]:
    return iter(sorted(self._mapping, key=_sort_key))

  def __len__(self) -> int:
    return len(self._mapping)

  def __getattr__(self, name: str) -> Any:
    if name.startswith("__"):
      raise AttributeError(name)
    try:
      return self._mapping[name]
    except KeyError:
      raise AttributeError(f"State has no key {name!r}; its keys are {list(self)}.") from None

  def __setattr__(self, name: str, value: Any) -> None:
    self[name] = value

  def __delattr__(self, name: str) -> None:
    del self[name]

  def __repr__(self) -> str:
    items = [(k, self._mapping[k]) for k in self]
    return nested_mapping_repr(type(self).__name__, items, lambda v: isinstance(v, State))

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, State):
      return NotImplemented
    mine, theirs = self.flat_state()._items, other.flat_state()._items
    # Same paths holding the same objects (Variables compare elementwise, so use identity).
    return len(mine) == len(theirs) and all(
      p == q and a is b for (p, a), (q, b) in zip(mine, theirs)
    )

  __hash__ = None  # type: ignore[assignment]

  def __getstate__(self) -> dict:
    return {"mapping": self._mapping}

  def __setstate__(self, state: dict) -> None:
    object.__setattr__(self, "_mapping", state["mapping"])

  # -- flat views ---------------------------------------------------------------------------
  def flat_state(self) -> FlatState:
    """The leaves with their paths, in sorted path order."""
    out: list[tuple[Path, Any]] = []

    def walk(node: State, prefix: Path) -> None:
      for k in node:
        v = node._mapping[k]
        if isinstance(v, State):
          walk(v, (*prefix, k))
        else:
          out.append(((*prefix, k), v))

    walk(self, ())
    return FlatState(out)

  @classmethod
  def from_flat_path(cls, flat: Any) -> State:
    """Builds a nested State from ``(path, leaf)`` pairs (or a FlatState / mapping)."""
    items = flat.items() if isinstance(flat, Mapping) else flat
    root: dict = {}
    for path, leaf in items:
      node = root
      for k in path[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
          raise StateMismatchError(f"Path {format_path(path, 'state')} passes through a leaf.")
      node[path[-1]] = leaf
    return cls(root)

  from_flat_state = from_flat_path

  # -- filtering -----------------------------------------------------------------------------
  def split(self, first: Any, /, *filters: Any) -> Any:
    """Splits into one State per filter; every leaf must be matched by some filter."""
    all_filters = (first, *filters)
    preds = filterlib.filters_to_predicates(all_filters)
    buckets: list[list] = [[] for _ in preds]
    unmatched = []
    for path, leaf in self.flat_state():
      for i, p in enumerate(preds):
        if p(path, leaf):
          buckets[i].append((path, leaf))
          break
      else:
        unmatched.append(path)
    if unmatched:
      raise FilterError(
        "State.split: these leaves match none of the filters "
        f"{all_filters}: "
        + ", ".join(format_path(p, "state") for p in unmatched[:8])
        + (" ..." if len(unmatched) > 8 else "")
        + ". Add `...` as the last filter to collect the rest."
      )
    states = tuple(State.from_flat_path(b) for b in buckets)
    return states[0] if len(states) == 1 else states

  def filter(self, first: Any, /, *filters: Any) -> Any:
    """Like ``split`` but leaves unmatched leaves out instead of raising."""
    preds = filterlib.filters_to_predicates((first, *filters))
    buckets: list[list] = [[] for _ in preds]
    for path, leaf in self.flat_state():
      for i, p in enumerate(preds):
        if p(path, leaf):
          buckets[i].append((path, leaf))
          break
    states = tuple(State.from_flat_path(b) for b in buckets)
    return states[0] if len(states) == 1 else states

  @staticmethod
  def merge(state: State, /, *states: State) -> State:
    """Merges States; later ones win on equal paths."""
    flat: dict = {}
    for s in (state, *states):
      flat.update(s.flat_state())
    return State.from_flat_path(sorted(flat.items(), key=lambda kv: [_sort_key(k) for k in kv[0]]))

  def map(self, f: Callable[[Path, Any], Any]) -> State:
    """``nnx.map_state(f, self)``; deprecated in Flax (same warning), kept for old code.

    Example:
      >>> import warnings
      >>> s = nnx.State({"w": nnx.Param(jnp.ones(2))})
      >>> with warnings.catch_warnings():
      ...   warnings.simplefilter("ignore")
      ...   s.map(lambda path, v: v.shape)
      State({
        'w': (2,)
      })
    """
    warnings.warn(
      "`flax.nnx.State` will be deprecated and be replaced by the built-in Python dict. "
      "Please use the equivalent `nnx.map_state` instead.",
      DeprecationWarning,
      stacklevel=2,
    )
    return map_state(f, self)

  @property
  def raw_mapping(self) -> dict[Hashable, Any]:
    """The State's own top-level dict (nested levels are States, which are Mappings).

    Example:
      >>> type(nnx.State({"w": nnx.Param(jnp.ones(2))}).raw_mapping)
      <class 'dict'>
    """
    return self._mapping

  # -- pure dicts ----------------------------------------------------------------------------
  def to_pure_dict(self, extract_fn: Callable[[Path, Any], Any] | None = None) -> dict:
    """A nested dict of raw values (Variables replaced by their values), e.g. for orbax."""

    def conv(path: Path, leaf: Any) -> Any:
      if extract_fn is not None:
        return extract_fn(path, leaf)
      return leaf.get_value() if isinstance(leaf, Variable) else leaf

    def walk(node: State, prefix: Path) -> dict:
      return {
        k: walk(v, (*prefix, k)) if isinstance(v, State) else conv((*prefix, k), v)
        for k, v in ((k, node._mapping[k]) for k in node)
      }

    return walk(self, ())

  def replace_by_pure_dict(
    self, pure_dict: Mapping, replace_fn: Callable[[Any, Any], Any] | None = None
  ) -> None:
    """Sets every leaf's value from ``pure_dict``; its keys must match exactly.

    Each Variable of the State is replaced by a copy holding the new value (its metadata
    kept), so a State taken from a live Module leaves the Module unchanged until
    ``nnx.update(module, state)``.
    """
    flat_pure = dict(_flatten_mapping(pure_dict))
    mine = dict(self.flat_state())

    # Keys may have been stringified (e.g. by a checkpoint format): match int keys as str.
    def norm(path: Path) -> Path:
      return tuple(str(k) for k in path)

    pure_by_norm = {norm(p): v for p, v in flat_pure.items()}
    mine_by_norm = {norm(p): p for p in mine}
    missing = [mine_by_norm[n] for n in mine_by_norm if n not in pure_by_norm]
    extra = [p for p in flat_pure if norm(p) not in mine_by_norm]
    if missing or extra:
      parts = []
      if missing:
        parts.append("missing: " + ", ".join(format_path(p, "state") for p in missing))
      if extra:
        parts.append("not in the State: " + ", ".join(format_path(p, "state") for p in extra))
      raise StateMismatchError(
        "replace_by_pure_dict: the pure dict does not match the State ("
        + "; ".join(parts)
        + "). Every leaf must be given exactly once so no value is left stale."
      )
    for n, path in mine_by_norm.items():
      value = pure_by_norm[n]
      leaf = mine[path]
      if replace_fn is not None:
        new = replace_fn(leaf, value)
      elif isinstance(leaf, Variable):
        # A new Variable, as Flax does: the State may hold a live Module's Variables
        # (`nnx.state(model)`), which must not change until `nnx.update(model, state)`.
        new = leaf.replace(value)
      else:
        new = value
      _set_path(self, path, new)


def _flatten_mapping(m: Mapping, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
  for k, v in m.items():
    if isinstance(v, Mapping):
      yield from _flatten_mapping(v, (*prefix, k))
    else:
      yield (*prefix, k), v


def _set_path(state: State, path: Path, value: Any) -> None:
  node = state
  for k in path[:-1]:
    node = node[k]
  node[path[-1]] = value


class FlatState(Sequence):
  """An ordered sequence of ``(path, leaf)`` pairs."""

  __slots__ = ("_items",)

  def __init__(self, items: Any, /, *, sort: bool = False):
    self._items = list(items.items() if isinstance(items, Mapping) else items)
    if sort:
      self._items.sort(key=lambda kv: [_sort_key(k) for k in kv[0]])

  def __getitem__(self, i: Any) -> Any:
    return self._items[i]

  def __len__(self) -> int:
    return len(self._items)

  @property
  def paths(self) -> tuple[Path, ...]:
    return tuple(p for p, _ in self._items)

  @property
  def leaves(self) -> list[Any]:
    return [v for _, v in self._items]

  def to_nested_state(self) -> State:
    return State.from_flat_path(self._items)

  def _buckets(self, filters: tuple) -> tuple[list[FlatState], FlatState]:
    preds = filterlib.filters_to_predicates(filters)
    buckets: list[list] = [[] for _ in preds]
    rest = []
    for path, leaf in self._items:
      for i, p in enumerate(preds):
        if p(path, leaf):
          buckets[i].append((path, leaf))
          break
      else:
        rest.append((path, leaf))
    return [FlatState(b) for b in buckets], FlatState(rest)

  def filter(self, first: Any, /, *filters: Any) -> Any:
    """One FlatState per filter (a leaf goes to the first filter matching it); leaves no
    filter matches are left out.

    Example:
      >>> flat = nnx.state(nnx.BatchNorm(2, rngs=nnx.Rngs(0))).flat_state()
      >>> flat.filter(nnx.BatchStat).paths
      (('mean',), ('var',))
    """
    buckets, _ = self._buckets((first, *filters))
    return buckets[0] if len(buckets) == 1 else tuple(buckets)

  def split(self, first: Any, /, *filters: Any) -> Any:
    """Like :meth:`filter`, but every leaf must match a filter (end with ``...``).

    Example:
      >>> flat = nnx.state(nnx.BatchNorm(2, rngs=nnx.Rngs(0))).flat_state()
      >>> params, rest = flat.split(nnx.Param, ...)
      >>> params.paths, rest.paths
      ((('bias',), ('scale',)), (('mean',), ('var',)))
    """
    all_filters = (first, *filters)
    buckets, rest = self._buckets(all_filters)
    if len(rest):
      raise FilterError(
        f"FlatState.split: these leaves match none of the filters {all_filters}: "
        + ", ".join(format_path(p, "state") for p in rest.paths[:8])
        + ". Add `...` as the last filter to collect the rest."
      )
    return buckets[0] if len(buckets) == 1 else tuple(buckets)

  @staticmethod
  def from_sorted_keys_values(keys: Sequence[Path], values: Sequence[Any], /) -> FlatState:
    """A FlatState from paths already in sorted order and their leaves (not re-sorted).

    Example:
      >>> nnx.FlatState.from_sorted_keys_values((("a",), ("b",)), [1, 2]).leaves
      [1, 2]
    """
    if len(keys) != len(values):
      raise StateMismatchError(
        f"FlatState.from_sorted_keys_values: got {len(keys)} keys but {len(values)} values; "
        "pass one value per key."
      )
    return FlatState(zip(keys, values))

  @staticmethod
  def merge(flat_state: Any, /, *flat_states: Any) -> FlatState:
    """One FlatState, sorted by path, from several sequences of ``(path, leaf)`` pairs.

    Example:
      >>> nnx.FlatState.merge([(("b",), 2)], [(("a",), 1)]).paths
      (('a',), ('b',))
    """
    if not flat_states and isinstance(flat_state, FlatState):
      return flat_state
    return FlatState([kv for fs in (flat_state, *flat_states) for kv in fs], sort=True)

  def __repr__(self) -> str:
    entries = "".join(f"  ({p!r}, {indent(repr(v))}),\n" for p, v in self._items)
    return "FlatState([\n" + entries + "])"


# --- module-level forms of the State methods (Flax's statelib functions) -----------------


def to_pure_dict(state: State, extract_fn: Callable[[Path, Any], Any] | None = None) -> dict:
  """``state.to_pure_dict(extract_fn)``: a nested dict of raw values.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> nnx.to_pure_dict(nnx.State({'w': nnx.Param(jnp.ones(1))}))
    {'w': Array([1.], dtype=float32)}
  """
  if not isinstance(state, State):
    raise ArgumentTypeError(
      f"pynnx.to_pure_dict takes a State, got {type(state).__name__} {state!r:.40}; for a "
      "Module pass its state: `nnx.to_pure_dict(nnx.state(model))`."
    )
  return state.to_pure_dict(extract_fn)


def replace_by_pure_dict(
  state: State, pure_dict: Mapping, replace_fn: Callable[[Any, Any], Any] | None = None
) -> None:
  """``state.replace_by_pure_dict(pure_dict, replace_fn)``: sets every leaf's value."""
  state.replace_by_pure_dict(pure_dict, replace_fn)


def restore_int_paths(pure_dict: Mapping) -> dict:
  """A copy of ``pure_dict`` whose digit-string keys (``'0'``, from a checkpoint) are ints.

  Example:
    >>> import pynnx as nnx
    >>> nnx.restore_int_paths({'layers': {'0': 1.0, 'name': 2.0}})
    {'layers': {0: 1.0, 'name': 2.0}}
  """

  def key(k: Any) -> Any:
    return int(k) if isinstance(k, str) and k.isdigit() else k

  return {
    key(k): restore_int_paths(v) if isinstance(v, Mapping) else v for k, v in pure_dict.items()
  }


def to_flat_state(state: State) -> FlatState:
  """``state.flat_state()``."""
  return state.flat_state()


def from_flat_state(flat_state: Any, *, cls: type[State] = State) -> State:
  """A nested State (of class ``cls``) from ``(path, leaf)`` pairs or a path mapping."""
  return cls.from_flat_path(flat_state)


def split_state(state: State, first: Any, /, *filters: Any) -> Any:
  """``state.split(first, *filters)``: every leaf must match a filter."""
  return state.split(first, *filters)


def filter_state(state: State, first: Any, /, *filters: Any) -> Any:
  """``state.filter(first, *filters)``: unmatched leaves are left out."""
  return state.filter(first, *filters)


def merge_state(state: Mapping, /, *states: Mapping, cls: type[State] = State) -> State:
  """One State from several (later ones win on equal paths); plain dicts are accepted."""
  as_states = [s if isinstance(s, State) else State(s) for s in (state, *states)]
  merged = State.merge(*as_states)
  return merged if cls is State else cls.from_flat_path(merged.flat_state())


def map_state(f: Callable[[Path, Any], Any], state: State) -> State:
  """A new State with every leaf replaced by ``f(path, leaf)``."""
  return State.from_flat_path([(p, f(p, v)) for p, v in state.flat_state()])


def _state_flatten_with_keys(s: State):
  keys = list(s)
  return [(jax.tree_util.DictKey(k), s._mapping[k]) for k in keys], tuple(keys)


def _state_flatten(s: State):
  keys = tuple(s)
  return [s._mapping[k] for k in keys], keys


def _state_unflatten(keys: tuple, children: Any) -> State:
  new = object.__new__(State)
  object.__setattr__(new, "_mapping", dict(zip(keys, children)))
  return new


jax.tree_util.register_pytree_with_keys(
  State, _state_flatten_with_keys, _state_unflatten, _state_flatten
)
