"""How a Variable's value is read and written through an index (``v[i]``, ``index=``).

``Variable.get_value(index=i)`` is ``value[i]``; ``Variable.set_value(x, index=i)`` writes a
new value with ``x`` at ``i``: ``.at[i].set(x)`` for a JAX array, a modified copy for a
dict, a list or a NumPy array. ``index=...`` fills the whole cell: ``x`` is broadcast to the
value's shape and cast to its dtype, as NumPy's ``a[...] = x`` does.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from .errors import ShapeError, VariableIndexError


class _Missing:
  """The default of ``index=``: no index given (``None`` is an index: a new axis)."""

  __slots__ = ()

  def __repr__(self) -> str:
    return "MISSING"


MISSING: Any = _Missing()


def is_number_list(value: list) -> bool:
  """A (nested) list of Python numbers: stored in a Variable as an array."""
  return all(
    isinstance(x, (bool, int, float, complex)) or (isinstance(x, list) and is_number_list(x))
    for x in value
  )


def as_array(value: Any, kind: str) -> Any:
  """``value`` (a list) as a JAX array, or a ShapeError naming the Variable type ``kind``."""
  try:
    return jax.numpy.asarray(value)
  except (TypeError, ValueError) as e:
    raise ShapeError(
      f"{kind}: cannot store the list {value!r} as an array ({e}). Give an "
      f"array of one shape (`jnp.asarray(...)`), or a tuple / dict for a pytree value."
    ) from None


def fill(kind: str, current: Any, item: Any) -> Any:
  """``item`` broadcast into ``current``'s shape and dtype, for ``var[...] = item``."""
  shape, dtype = getattr(current, "shape", None), getattr(current, "dtype", None)
  if item is None or shape is None or dtype is None or isinstance(current, jax.ShapeDtypeStruct):
    return as_array(item, kind) if isinstance(item, list) else item
  if getattr(item, "shape", None) == shape and getattr(item, "dtype", None) == dtype:
    return item
  if isinstance(item, list):
    item = as_array(item, kind)
  try:
    if isinstance(current, np.ndarray):
      out = np.array(current)  # NumPy stays NumPy (Flax writes into it)
      out[...] = item
      return out
    return jax.numpy.broadcast_to(jax.numpy.asarray(item, dtype=dtype), shape)
  except (TypeError, ValueError) as e:
    got = getattr(item, "shape", ())
    raise ShapeError(
      f"{kind}[...] = x writes into the cell's shape {tuple(shape)} and dtype "
      f"{dtype}, but x has shape {tuple(got)} ({e}). To replace the value with one of another "
      f"shape, assign `.value = x` instead."
    ) from None


def read_index(kind: str, value: Any, index: Any) -> Any:
  """``value[index]`` for ``get_value(index=index)`` (``...`` is the value itself)."""
  if index is Ellipsis:
    return value
  try:
    return value[index]
  except TypeError as e:
    if hasattr(type(value), "__getitem__"):
      raise  # the value is indexable; the index itself is wrong (JAX's / NumPy's error)
    raise VariableIndexError(
      f"{kind}[{index!r}]: the {kind} holds a {type(value).__name__}, which cannot be "
      f"indexed ({e}). Read the whole value with `variable[...]` or `variable.value`."
    ) from None


def write_index(kind: str, current: Any, index: Any, item: Any) -> Any:
  """The value after ``set_value(item, index=index)``: ``current`` itself is not modified."""
  if index is Ellipsis:
    return fill(kind, current, item)
  if isinstance(current, (dict, list)):
    # A pytree-valued Variable (`v['a'] = 1`): a modified copy, written like any other value.
    new: Any = dict(current) if isinstance(current, dict) else list(current)
    new[index] = item
    return new
  if isinstance(current, np.ndarray):
    out = np.array(current)
    out[index] = item
    return out
  if hasattr(current, "at"):
    return current.at[index].set(item)
  raise VariableIndexError(
    f"{kind}[{index!r}] = x: the {kind} holds a {type(current).__name__}, which has no "
    f"items to write. Replace the whole value with `variable.value = x` instead."
  )
