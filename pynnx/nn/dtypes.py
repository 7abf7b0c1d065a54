"""Dtype handling shared by the layers, plus the layers' argument checks.

A layer keeps its parameters in ``param_dtype`` and computes in ``dtype``; ``dtype=None``
means "the dtype the inputs and parameters promote to". :func:`promote_dtype` does that
promotion explicitly (with JAX's standard lattice, so a layer also works when a program runs
with ``jax_numpy_dtype_promotion='strict'``: the casts are explicit, not implicit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

import pynnx as nnx

T = TypeVar("T")
Dtype = Any


LayerArgumentError = nnx.LayerArgumentError
ArgumentTypeError = nnx.ArgumentTypeError


class InputShapeError(nnx.ShapeError, TypeError):
  """An input's feature axes do not fit a layer's weights.

  Also a ``TypeError``: flax fails there inside ``jax.lax.dot_general`` / broadcasting, which
  raise ``TypeError``, so an ``except TypeError`` written for flax still catches it.
  """


def canonicalize_dtype(*args: Any, dtype: Dtype | None = None, inexact: bool = True) -> Any:
  """The dtype a layer computes in.

  ``dtype`` wins when given; otherwise it is the standard JAX promotion of ``args`` (``None``
  entries are skipped). With ``inexact=True`` an integer result becomes at least ``float32``,
  and an explicit non-inexact ``dtype`` is an error.

  Example:
    >>> from pynnx.nn.dtypes import canonicalize_dtype
    >>> canonicalize_dtype(jnp.ones(2, jnp.bfloat16), jnp.ones(2, jnp.float32))
    dtype('float32')
    >>> canonicalize_dtype(jnp.ones(2, jnp.int32))
    dtype('float32')
  """
  if dtype is None:
    present = [x for x in args if x is not None]
    # Standard promotion on purpose: the caller casts explicitly to the result.
    with jax.numpy_dtype_promotion("standard"):
      dtype = jnp.result_type(*present) if present else jnp.dtype(jnp.float32)
      if inexact and not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.promote_types(jnp.float32, dtype)
  dtype = jnp.dtype(dtype)
  if inexact and not jnp.issubdtype(dtype, jnp.inexact):
    raise LayerArgumentError(
      f"A layer's dtype must be a floating or complex dtype, got {dtype}. Pass e.g. "
      f"dtype=jnp.float32 (or dtype=None to follow the inputs)."
    )
  return dtype


def promote_dtype(args: T, /, *, dtype: Dtype | None = None, inexact: bool = True) -> T:
  """Casts every array in the tuple/list ``args`` to one common dtype (``None`` stays ``None``).

  Example:
    >>> from pynnx.nn.dtypes import promote_dtype
    >>> x, w = promote_dtype((jnp.ones(2, jnp.bfloat16), jnp.ones(2)), dtype=None)
    >>> x.dtype, w.dtype
    (dtype('float32'), dtype('float32'))
  """
  dtype = canonicalize_dtype(*args, dtype=dtype, inexact=inexact)  # type: ignore[misc]
  out = [None if x is None else jnp.asarray(x, dtype) for x in args]  # type: ignore[attr-defined]
  return type(args)(out) if isinstance(args, (tuple, list)) else out  # type: ignore[return-value]


# --- argument checks shared by the layers ------------------------------------------------


def check_size(layer: str, name: str, value: Any, *, minimum: int = 1) -> int:
  """``value`` must be an int >= ``minimum``; returns it."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise LayerArgumentError(f"{layer}: {name} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def numeric_array(x: Any) -> Any:
  """``x`` as an array (``jnp.asarray``) if it holds numbers or bools, else None."""
  try:
    array = jnp.asarray(x)
  except (TypeError, ValueError):
    return None
  if jnp.issubdtype(array.dtype, jnp.number) or array.dtype == jnp.bool_:
    return array
  return None


def as_input_array(layer: str, x: Any) -> Any:
  """``x`` as an array (lists and numpy arrays are converted, as ``jnp.asarray`` does); an
  input that holds no numbers raises ``ArgumentTypeError``."""
  if isinstance(x, jax.Array):
    return x
  array = numeric_array(x)
  if array is None:
    raise ArgumentTypeError(
      f"{layer} takes an array of numbers as input, got {type(x).__name__} {x!r:.40}."
    )
  return array


def check_rngs(layer: str, rngs: Any) -> None:
  """``rngs`` must be an ``nnx.Rngs`` (the layer draws its initial parameters from it)."""
  if not isinstance(rngs, nnx.Rngs):
    raise ArgumentTypeError(
      f"{layer}: rngs must be an nnx.Rngs to draw the initial parameters from, got "
      f"{type(rngs).__name__} {rngs!r:.40}. Pass e.g. `rngs=nnx.Rngs(0)`."
    )


def to_tuple(layer: str, name: str, value: Any, rank: int, *, default: int = 1) -> tuple[int, ...]:
  """An int (or ``None`` → ``default``) repeated ``rank`` times, or a length-``rank`` sequence."""
  if value is None:
    value = default
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    out = (int(value),) * rank
  else:
    try:
      out = tuple(_as_int(v) for v in value)
    except TypeError:
      raise nnx.ConfigError(
        f"{layer}: {name} must be an int or a sequence of ints, got {value!r}."
      ) from None
  if len(out) != rank:
    raise LayerArgumentError(
      f"{layer}: {name} needs one entry per spatial dimension ({rank}), got {value!r}."
    )
  for v in out:
    check_size(layer, name, v)
  return out


def _as_int(v: Any) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
    raise TypeError(v)
  return int(v)


def normalize_axes(axes: int | Sequence[int], ndim: int) -> tuple[int, ...]:
  """Axes as a sorted tuple of non-negative ints (``-1`` → ``ndim - 1``)."""
  if isinstance(axes, (int, np.integer)):
    axes = (int(axes),)
  return tuple(sorted({int(a) % ndim if -ndim <= a < ndim else _bad_axis(a, ndim) for a in axes}))


def _bad_axis(axis: int, ndim: int) -> int:
  raise nnx.ShapeError(f"axis {axis} is out of range for an input with {ndim} dimensions.")


__all__ = ["InputShapeError", "LayerArgumentError", "canonicalize_dtype", "promote_dtype"]
