"""Filters select Variables by type, tag, path or predicate.

A filter is any of: a type (``nnx.Param``), ``...`` / ``True`` (everything), ``False`` /
``None`` (nothing), a string (a tag, e.g. an rng stream name), a callable ``(path, value)``,
one of the classes below, or a tuple/list of filters (their union).
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Callable, Hashable
from typing import Any

from .errors import ArgumentTypeError, FilterError
from .varapi import VariableMetadataMethods

Predicate = Callable[[tuple, Any], bool]
Filter = Any


@dataclasses.dataclass(frozen=True)
class WithTag:
  """Matches values whose ``tag`` (e.g. rng stream name) equals ``tag``."""

  tag: str

  def __call__(self, path: tuple, x: Any) -> bool:
    return getattr(x, "tag", None) == self.tag


@dataclasses.dataclass(frozen=True)
class PathContains:
  """Matches values whose path contains ``key`` (``exact=False``: any part containing it)."""

  key: Hashable
  exact: bool = True

  def __call__(self, path: tuple, x: Any) -> bool:
    if self.exact:
      return self.key in path
    return builtins.any(str(self.key) in str(part) for part in path)


@dataclasses.dataclass(frozen=True)
class OfType:
  """Matches instances of ``type`` (also Variables whose declared ``type`` it is)."""

  type: type

  def __post_init__(self) -> None:
    if not isinstance(self.type, type):
      raise ArgumentTypeError(
        f"nnx.OfType takes a class (e.g. nnx.OfType(nnx.Param)), got {self.type!r}."
      )

  def __call__(self, path: tuple, x: Any) -> bool:
    return isinstance(x, self.type) or (
      isinstance(getattr(x, "type", None), type) and issubclass(x.type, self.type)
    )


class Any_:
  """Union of filters."""

  def __init__(self, *filters: Filter):
    self.predicates = tuple(to_predicate(f) for f in filters)

  def __call__(self, path: tuple, x: Any) -> bool:
    return builtins.any(p(path, x) for p in self.predicates)

  def __repr__(self) -> str:
    return f"Any({', '.join(map(repr, self.predicates))})"

  def __eq__(self, other: object) -> bool:
    return isinstance(other, Any_) and self.predicates == other.predicates

  def __hash__(self) -> int:
    return hash(("Any", self.predicates))


class All:
  """Intersection of filters."""

  def __init__(self, *filters: Filter):
    self.predicates = tuple(to_predicate(f) for f in filters)

  def __call__(self, path: tuple, x: Any) -> bool:
    return builtins.all(p(path, x) for p in self.predicates)

  def __repr__(self) -> str:
    return f"All({', '.join(map(repr, self.predicates))})"

  def __eq__(self, other: object) -> bool:
    return isinstance(other, All) and self.predicates == other.predicates

  def __hash__(self) -> int:
    return hash(("All", self.predicates))


class Not:
  """Negation of a filter."""

  def __init__(self, filter: Filter):
    self.predicate = to_predicate(filter)

  def __call__(self, path: tuple, x: Any) -> bool:
    return not self.predicate(path, x)

  def __repr__(self) -> str:
    return f"Not({self.predicate!r})"

  def __eq__(self, other: object) -> bool:
    return isinstance(other, Not) and self.predicate == other.predicate

  def __hash__(self) -> int:
    return hash(("Not", self.predicate))


class _Everything:
  def __call__(self, path: tuple, x: Any) -> bool:
    return True

  def __repr__(self) -> str:
    return "Everything()"


class _Nothing:
  def __call__(self, path: tuple, x: Any) -> bool:
    return False

  def __repr__(self) -> str:
    return "Nothing()"


Everything = _Everything
Nothing = _Nothing
_EVERYTHING = _Everything()
_NOTHING = _Nothing()


def to_predicate(filter: Filter) -> Predicate:
  """Turns any filter into a ``(path, value) -> bool`` predicate.

  Example:
    >>> import pynnx as nnx
    >>> pred = nnx.filterlib.to_predicate(nnx.Param)
    >>> pred(('kernel',), nnx.Param(1.0)), pred(('mean',), nnx.BatchStat(1.0))
    (True, False)
  """
  if filter is ... or filter is True:
    return _EVERYTHING
  if filter is None or filter is False:
    return _NOTHING
  if isinstance(filter, (_Everything, _Nothing, WithTag, PathContains, OfType, Any_, All, Not)):
    return filter
  if isinstance(filter, type):
    return OfType(filter)
  if isinstance(filter, str):
    return WithTag(filter)
  if isinstance(filter, (tuple, list)):
    return Any_(*filter)
  if isinstance(filter, VariableMetadataMethods):  # a Variable is callable (as in Flax)
    kind = type(filter).__name__
    raise FilterError(
      f"A {kind} Variable was given as a filter. Filter by its type (`nnx.{kind}`), or by "
      "its path with `nnx.PathContains('name')`."
    )
  if callable(filter):
    return filter
  raise FilterError(
    f"{filter!r} is not a filter. A filter is a type (nnx.Param), a string tag, ..., True, "
    "False, None, a callable (path, value) -> bool, a tuple of filters, or one of "
    "nnx.PathContains / OfType / WithTag / All / Any / Not / Everything / Nothing."
  )


def filters_to_predicates(filters: tuple[Filter, ...]) -> tuple[Predicate, ...]:
  """Predicates of ``filters``; ``...`` may appear only last."""
  for i, f in enumerate(filters[:-1]):
    if f is ... or f is True:
      raise FilterError(
        f"`...` (everything) can only be the last filter, but it is filter {i} of "
        f"{len(filters)}: the filters after it would never match anything."
      )
  return tuple(to_predicate(f) for f in filters)
