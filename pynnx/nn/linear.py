"""Linear layers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

import pynnx as nnx

from . import initializers

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros


class Linear(nnx.Module):
  """``y = x @ kernel + bias`` over the last axis of ``x``.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((4, 2))).shape
    (4, 3)
  """

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
               dtype: Any = None, param_dtype: Any = jnp.float32, precision: Any = None,
               kernel_init: Any = default_kernel_init, bias_init: Any = default_bias_init,
               rngs: nnx.Rngs):
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype))
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias else None
    self.in_features = in_features
    self.out_features = out_features
    self.use_bias = use_bias
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.shape[-1] != self.in_features:
      raise nnx.ShapeError(
        f"Linear expects inputs with {self.in_features} features on the last axis, got shape "
        f"{x.shape}."
      )
    y = jnp.dot(x, self.kernel[...], precision=self.precision)
    if self.bias is not None:
      y = y + self.bias[...]
    return y
