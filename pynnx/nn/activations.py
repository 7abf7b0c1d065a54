"""Activation functions (re-exported from ``jax.nn``) and the learnable :class:`PReLU`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.nn import (
  celu,
  elu,
  gelu,
  glu,
  hard_sigmoid,
  hard_silu,
  hard_swish,
  hard_tanh,
  identity,
  leaky_relu,
  log_sigmoid,
  log_softmax,
  logsumexp,
  one_hot,
  relu,
  relu6,
  selu,
  sigmoid,
  silu,
  soft_sign,
  softmax,
  softplus,
  standardize,
  swish,
)
from jax.numpy import tanh

import pynnx as nnx

from .dtypes import promote_dtype


class PReLU(nnx.Module):
  """Leaky ReLU whose negative slope is a learned scalar ``negative_slope``.

  ``y = x if x >= 0 else negative_slope * x``.

  Example:
    >>> layer = nnx.PReLU(0.1)
    >>> layer(jnp.array([-2.0, 3.0]))
    Array([-0.2,  3. ], dtype=float32)
  """

  def __init__(
    self,
    negative_slope_init: float = 0.01,
    *,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    promote_dtype: Any = promote_dtype,
    negative_slope_metadata: Mapping[str, Any] = {},
  ):  # noqa: B006  (never mutated)
    self.negative_slope = nnx.Param(
      jnp.asarray(negative_slope_init, dtype=param_dtype), **negative_slope_metadata
    )
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.promote_dtype = promote_dtype

  def __call__(self, inputs: jax.Array) -> jax.Array:
    inputs, slope = self.promote_dtype((inputs, self.negative_slope[...]), dtype=self.dtype)
    return jnp.where(inputs >= 0, inputs, slope * inputs)


__all__ = [
  "PReLU",
  "celu",
  "elu",
  "gelu",
  "glu",
  "hard_sigmoid",
  "hard_silu",
  "hard_swish",
  "hard_tanh",
  "identity",
  "leaky_relu",
  "log_sigmoid",
  "log_softmax",
  "logsumexp",
  "one_hot",
  "relu",
  "relu6",
  "selu",
  "sigmoid",
  "silu",
  "soft_sign",
  "softmax",
  "softplus",
  "standardize",
  "swish",
  "tanh",
]
