"""Static values of a Pytree in the compile cache key.

A Pytree's static attributes (values holding no arrays, Variables or Modules) are part of its
flattening's static half, which JAX hashes and compares to find a compiled function. Flax
accepts unhashable ones (a list of sizes, a plain dataclass config); so does pynnx, through a
hashable stand-in for each (:func:`static_key`); equality is the values' own ``==``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any


def static_key(value: Any) -> Hashable:
  """A hashable stand-in for a static value in the compile cache key: the value itself when
  it is hashable; for a list, dict, set or (non-frozen) dataclass, a key built from its
  contents; for any other unhashable object, its identity (equal copies then just compile
  again). Computed once per structure, so mutating such a value in place later is not seen:
  reassign it with ``set_attributes`` instead."""
  try:
    hash(value)
    return value
  except TypeError:
    pass
  if isinstance(value, (list, tuple)):
    return (type(value), tuple(static_key(x) for x in value))
  if isinstance(value, dict):
    return (type(value), tuple((static_key(k), static_key(v)) for k, v in value.items()))
  if isinstance(value, (set, frozenset)):
    return (type(value), frozenset(value))
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    fields = dataclasses.fields(value)
    return (type(value), tuple(static_key(getattr(value, f.name)) for f in fields))
  return (type(value), id(value))

