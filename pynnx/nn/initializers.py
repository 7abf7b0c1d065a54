"""Initializers: the ``jax.nn.initializers`` family under Flax's names.

Every initializer is a function ``init(key, shape, dtype=jnp.float32) -> Array``; the
factories (``lecun_normal()``, ``zeros_init()``, ...) return one. ``zeros`` and ``ones`` are
themselves initializers.

Example:
  >>> from pynnx import initializers
  >>> init = initializers.he_uniform()
  >>> init(jax.random.key(0), (3, 4)).shape
  (3, 4)
  >>> initializers.zeros_init()(jax.random.key(0), (2,))
  Array([0., 0.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

from jax.nn.initializers import (
  Initializer,
  constant,
  delta_orthogonal,
  glorot_normal,
  glorot_uniform,
  he_normal,
  he_uniform,
  kaiming_normal,
  kaiming_uniform,
  lecun_normal,
  lecun_uniform,
  normal,
  ones,
  orthogonal,
  truncated_normal,
  uniform,
  variance_scaling,
  xavier_normal,
  xavier_uniform,
  zeros,
)

DtypeLikeInexact = Any
InitializerLike = Union[Initializer, Callable[..., Any]]


def zeros_init() -> Initializer:
  """An initializer that returns zeros (the factory form of :data:`zeros`)."""
  return zeros


def ones_init() -> Initializer:
  """An initializer that returns ones (the factory form of :data:`ones`)."""
  return ones


__all__ = [
  "DtypeLikeInexact",
  "Initializer",
  "constant",
  "delta_orthogonal",
  "glorot_normal",
  "glorot_uniform",
  "he_normal",
  "he_uniform",
  "kaiming_normal",
  "kaiming_uniform",
  "lecun_normal",
  "lecun_uniform",
  "normal",
  "ones",
  "ones_init",
  "orthogonal",
  "truncated_normal",
  "uniform",
  "variance_scaling",
  "xavier_normal",
  "xavier_uniform",
  "zeros",
  "zeros_init",
]
