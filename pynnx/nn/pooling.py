"""Pooling: :func:`avg_pool`, :func:`max_pool`, :func:`min_pool` and the generic :func:`pool`.

Inputs are channels-last, ``(*batch, *spatial, features)``, with ``len(window_shape)`` spatial
axes; any number of leading batch axes (including none) is accepted. Pooling never mixes
features or batch entries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pynnx as nnx

from .dtypes import LayerArgumentError


def pool(
  inputs: jax.Array,
  init: Any,
  reduce_fn: Callable,
  window_shape: Sequence[int],
  strides: Sequence[int] | None,
  padding: str | Sequence[tuple[int, int]],
) -> jax.Array:
  """Reduces each window of the spatial axes with ``reduce_fn`` (starting from ``init``).

  Example:
    >>> from pynnx.nn.pooling import pool
    >>> pool(jnp.arange(4.0).reshape(4, 1), 0.0, jax.lax.add, (2,), (2,), 'VALID')
    Array([[1.],
           [5.]], dtype=float32)
  """
  window_shape = tuple(int(w) for w in window_shape)
  rank = len(window_shape)
  strides = (1,) * rank if strides is None else tuple(int(s) for s in strides)
  if len(strides) != rank:
    raise LayerArgumentError(
      f"pool: strides {strides} needs one entry per window dimension ({rank})."
    )
  n_batch = jnp.ndim(inputs) - rank - 1
  if n_batch < 0:
    raise nnx.ShapeError(
      f"pool: a window of {rank} dimensions {window_shape} needs inputs of shape "
      f"(*batch, {rank} spatial axes, features), got shape {jnp.shape(inputs)}."
    )
  if not isinstance(padding, str):
    pairs = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pairs) != rank:
      raise LayerArgumentError(
        f"pool: padding {padding!r} needs one (low, high) pair per window dimension ({rank})."
      )
    padding = ((0, 0),) * n_batch + pairs + ((0, 0),)
  dims = (1,) * n_batch + window_shape + (1,)
  full_strides = (1,) * n_batch + strides + (1,)
  # A NumPy scalar (never a jax Array) keeps the init value a compile-time constant even under
  # jit/grad, so JAX picks its differentiable monoid reductions (sum/max/min windows).
  if not isinstance(init, jax.Array):
    init = np.asarray(init, dtype=jnp.result_type(inputs))
  return jax.lax.reduce_window(inputs, init, reduce_fn, dims, full_strides, padding)


def avg_pool(
  inputs: jax.Array,
  window_shape: Sequence[int],
  strides: Sequence[int] | None = None,
  padding: str | Sequence[tuple[int, int]] = "VALID",
  count_include_pad: bool = True,
) -> jax.Array:
  """Mean over each window. ``count_include_pad=False`` divides by the real (unpadded) count.

  Example:
    >>> nnx.avg_pool(jnp.arange(8.0).reshape(1, 4, 2), (2,), strides=(2,))
    Array([[[1., 2.],
            [5., 6.]]], dtype=float32)
  """
  total = pool(inputs, 0, jax.lax.add, window_shape, strides, padding)
  if count_include_pad:
    return total / int(np.prod(window_shape))
  ones = jnp.ones(jnp.shape(inputs)[-len(window_shape) - 1 : -1] + (1,), total.dtype)
  counts = pool(ones, 0, jax.lax.add, window_shape, strides, padding)
  return total / counts


def _extreme(dtype: Any, low: bool) -> Any:
  if jnp.issubdtype(dtype, jnp.floating):
    return -jnp.inf if low else jnp.inf
  if jnp.issubdtype(dtype, jnp.integer):
    info = jnp.iinfo(dtype)
    return info.min if low else info.max
  return not low if dtype == jnp.bool_ else 0


def max_pool(
  inputs: jax.Array,
  window_shape: Sequence[int],
  strides: Sequence[int] | None = None,
  padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jax.Array:
  """Maximum over each window (padding never wins).

  Example:
    >>> nnx.max_pool(jnp.array([[1.0], [3.0], [2.0], [0.0]]), (2,), strides=(2,))
    Array([[3.],
           [2.]], dtype=float32)
  """
  init = _extreme(jnp.result_type(inputs), low=True)
  return pool(inputs, init, jax.lax.max, window_shape, strides, padding)


def min_pool(
  inputs: jax.Array,
  window_shape: Sequence[int],
  strides: Sequence[int] | None = None,
  padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jax.Array:
  """Minimum over each window (padding never wins)."""
  init = _extreme(jnp.result_type(inputs), low=False)
  return pool(inputs, init, jax.lax.min, window_shape, strides, padding)


__all__ = ["avg_pool", "max_pool", "min_pool", "pool"]
