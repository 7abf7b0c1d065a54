"""Variable metadata helpers: the hashable pytree aux form and creation-time defaults.

A Variable's metadata is the static part of its pytree node, so it must be hashable (a jit
cache key): list / dict / set values are wrapped in :class:`_Frozen`, which hashes by
content and gives the original value back.
"""

from __future__ import annotations

from typing import Any

from . import eager

_UNHASHABLE = (list, dict, set)


class _Frozen:
  """Metadata value that is a list / dict / set, made hashable for the static pytree aux
  (a jit cache key) while the Variable gets the original value back."""

  __slots__ = ("value", "key")

  def __init__(self, value: Any):
    self.value = value
    self.key = _freeze(value)

  def __hash__(self) -> int:
    return hash(self.key)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, _Frozen) and self.key == other.key

  def __repr__(self) -> str:
    return repr(self.value)


def _freeze(v: Any) -> Any:
  if isinstance(v, dict):
    return ("dict", tuple(sorted((repr(k), _freeze(x)) for k, x in v.items())))
  if isinstance(v, (list, tuple)):
    return (type(v).__name__, tuple(_freeze(x) for x in v))
  if isinstance(v, set):
    return ("set", frozenset(_freeze(x) for x in v))
  try:
    hash(v)
  except TypeError:
    return ("id", id(v))
  return v


def aux_from_meta(meta: dict) -> tuple:
  """A Variable's metadata as hashable pytree aux data (lists, dicts and sets frozen)."""
  items = meta.items()
  if any(type(v) in _UNHASHABLE for _, v in items):
    return tuple(sorted((k, _Frozen(v) if type(v) in _UNHASHABLE else v) for k, v in items))
  return tuple(sorted(items))


def meta_from_aux(aux: tuple) -> dict:
  """The metadata dict of a Variable from its pytree aux data (see ``_pynnx_aux``)."""
  meta = dict(aux)
  for k, v in meta.items():
    if type(v) is _Frozen:
      meta[k] = v.value
  return meta


# Metadata every Flax Variable reports; pynnx stores an entry only when it differs.
REPORTED_DEFAULTS = {"hijax": False, "ref": False, "eager_sharding": True}


# Flax 0.12's older names of the `out_sharding` key (`sharding_names` is still answered).
SHARDING_ALIASES = ("sharding_names", "sharding")


def creation_metadata(kind: str, metadata: dict) -> dict:
  """Checks Flax's creation options and drops the ones equal to their defaults."""
  eager.check_var_options(f"nnx.{kind}(...)", metadata.get("hijax"), metadata.get("ref"))
  metadata = {k: v for k, v in metadata.items() if k not in ("hijax", "ref")}
  for alias in SHARDING_ALIASES:
    if alias in metadata and "out_sharding" not in metadata:
      metadata["out_sharding"] = metadata.pop(alias)
  if metadata.get("eager_sharding", False) is True:
    del metadata["eager_sharding"]
  elif "eager_sharding" not in metadata and not eager.using_eager_sharding():
    metadata["eager_sharding"] = False  # created with eager sharding off: remember it
  return metadata


def merged_metadata(base: dict, updates: dict) -> dict:
  """``base`` updated with ``updates`` as a Variable stores it: the sharding aliases become
  ``out_sharding`` and a reported default (``hijax=False``...) is not stored."""
  out = dict(base)
  for k, v in updates.items():
    if k in SHARDING_ALIASES:
      k = "out_sharding"
    if k in REPORTED_DEFAULTS and type(v) is bool and v == REPORTED_DEFAULTS[k]:
      out.pop(k, None)
    else:
      out[k] = v
  return out


def reported_metadata(stored: dict) -> dict:
  """Every metadata entry, in Flax's order: the user's entries, then the required ones."""
  out = {k: v for k, v in stored.items() if k not in REPORTED_DEFAULTS}
  for k, default in REPORTED_DEFAULTS.items():
    out[k] = stored.get(k, default)
  return out
