"""Low-rank adaptation (LoRA): ``y = base(x) + x @ A @ B`` with a small rank between A and B.

The adapter matrices are :class:`LoRAParam` Variables (a :class:`~pynnx.Param` subclass), so a
filter such as ``nnx.LoRAParam`` selects just them: train the adapters, keep the base frozen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp

import pynnx as nnx

from . import initializers
from .dtypes import InputShapeError, LayerArgumentError, check_rngs, check_size, promote_dtype
from .linear import Linear

default_a_initializer = initializers.he_uniform()
default_b_initializer = initializers.zeros


class LoRAParam(nnx.Param):
  """A Param that belongs to a LoRA adapter (filter on it to train only the adapters).

  Example:
    >>> import pynnx as nnx
    >>> layer = nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0))
    >>> _, lora_params, rest = nnx.split(layer, nnx.LoRAParam, ...)
    >>> sorted(p for p, _ in lora_params.flat_state())
    [('lora', 'lora_a'), ('lora', 'lora_b')]
  """


class LoRA(nnx.Module):
  """A low-rank update ``x @ lora_a @ lora_b``, optionally added to a ``base_module``'s output.

  Args:
    in_features: size of the last axis of the input.
    lora_rank: the inner rank of the update.
    out_features: size of the last axis of the output.
    base_module: a callable Module whose output the update is added to (optional).
    dtype: computation dtype (``None``: promote the input and the parameters).
    param_dtype: dtype of ``lora_a`` / ``lora_b``.
    a_initializer: initializer of ``lora_a`` (``in_features x lora_rank``).
    b_initializer: initializer of ``lora_b`` (``lora_rank x out_features``); zeros by
      default, so a fresh adapter leaves the base output unchanged.
    lora_param_type: the Variable type of the adapter matrices.
    promote_dtype: ``f((x, a, b), dtype=...)`` casting the arrays to one dtype.
    rngs: random streams (``params`` draws the initial weights).
    a_metadata: metadata stored on ``lora_a`` (e.g. ``sharding_names``).
    b_metadata: metadata stored on ``lora_b``.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> base = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    >>> layer = nnx.LoRA(3, 2, 4, base_module=base, rngs=nnx.Rngs(1))
    >>> layer.lora_a.shape, layer.lora_b.shape
    ((3, 2), (2, 4))
    >>> x = jnp.ones((5, 3))
    >>> bool(jnp.allclose(layer(x), base(x)))   # lora_b starts at zero
    True
  """

  def __init__(
    self,
    in_features: int,
    lora_rank: int,
    out_features: int,
    *,
    base_module: nnx.Module | None = None,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    a_initializer: Callable[..., Any] = default_a_initializer,
    b_initializer: Callable[..., Any] = default_b_initializer,
    lora_param_type: type[nnx.Variable] = LoRAParam,
    promote_dtype: Callable[..., Any] = promote_dtype,
    rngs: nnx.Rngs,
    a_metadata: Mapping[str, Any] = MappingProxyType({}),
    b_metadata: Mapping[str, Any] = MappingProxyType({}),
  ):
    check_rngs("LoRA", rngs)
    check_size("LoRA", "in_features", in_features)
    check_size("LoRA", "lora_rank", lora_rank)
    check_size("LoRA", "out_features", out_features)
    if base_module is not None and (
      isinstance(base_module, nnx.Variable) or not callable(base_module)
    ):
      raise LayerArgumentError(
        f"LoRA: base_module must be callable (a Module with __call__), got "
        f"{type(base_module).__name__}."
      )
    self.in_features = in_features
    self.lora_rank = lora_rank
    self.out_features = out_features
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.lora_param_type = lora_param_type
    self.base_module = base_module
    self.promote_dtype = promote_dtype
    self.lora_a = lora_param_type(
      a_initializer(rngs.params(), (in_features, lora_rank), param_dtype), **a_metadata
    )
    self.lora_b = lora_param_type(
      b_initializer(rngs.params(), (lora_rank, out_features), param_dtype), **b_metadata
    )

  def __call__(self, x: jax.Array, **kwargs: Any) -> jax.Array:
    """Applies the low-rank update (plus ``base_module(x, **kwargs)`` when there is one)."""
    if jnp.shape(x)[-1:] != (self.in_features,):
      raise InputShapeError(
        f"LoRA expects inputs with {self.in_features} features on the last axis, got shape "
        f"{jnp.shape(x)}."
      )
    x, a, b = self.promote_dtype((x, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
    out = x @ a @ b
    if self.base_module is not None:
      base = self.base_module(x, **kwargs)
      out = out + jnp.asarray(base, out.dtype)
    return out


class LoRALinear(Linear):
  """A :class:`~pynnx.Linear` plus a LoRA adapter; its state has Linear's names plus ``lora``.

  Args:
    in_features: size of the last axis of the input.
    out_features: size of the last axis of the output.
    lora_rank: the inner rank of the adapter.
    lora_dtype: computation dtype of the adapter.
    lora_param_dtype: dtype of the adapter matrices.
    a_initializer: initializer of ``lora.lora_a``.
    b_initializer: initializer of ``lora.lora_b`` (zeros by default).
    lora_param_type: the Variable type of the adapter matrices.
    lora_promote_dtype: the adapter's dtype promotion function.
    rngs: random streams.
    a_metadata: metadata stored on ``lora.lora_a``.
    b_metadata: metadata stored on ``lora.lora_b``.
    **kwargs: passed to :class:`~pynnx.Linear` (``use_bias``, ``kernel_init``, ...).

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> layer = nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0))
    >>> layer.kernel.shape, layer.lora.lora_a.shape
    ((3, 4), (3, 2))
    >>> layer(jnp.ones((16, 3))).shape
    (16, 4)
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    lora_rank: int,
    lora_dtype: Any = None,
    lora_param_dtype: Any = jnp.float32,
    a_initializer: Callable[..., Any] = default_a_initializer,
    b_initializer: Callable[..., Any] = default_b_initializer,
    lora_param_type: type[nnx.Variable] = LoRAParam,
    lora_promote_dtype: Callable[..., Any] = promote_dtype,
    rngs: nnx.Rngs,
    a_metadata: Mapping[str, Any] = MappingProxyType({}),
    b_metadata: Mapping[str, Any] = MappingProxyType({}),
    **kwargs: Any,
  ):
    check_rngs("LoRALinear", rngs)
    super().__init__(in_features, out_features, rngs=rngs, **kwargs)
    self.lora = LoRA(
      in_features,
      lora_rank,
      out_features,
      dtype=lora_dtype,
      param_dtype=lora_param_dtype,
      a_initializer=a_initializer,
      b_initializer=b_initializer,
      lora_param_type=lora_param_type,
      promote_dtype=lora_promote_dtype,
      rngs=rngs,
      a_metadata=a_metadata,
      b_metadata=b_metadata,
    )

  def __call__(self, x: jax.Array, out_sharding: Any = None) -> jax.Array:
    """``Linear(x) + x @ lora_a @ lora_b``."""
    y = super().__call__(x, out_sharding=out_sharding)
    delta = self.lora(x)
    return y + jnp.asarray(delta, y.dtype)


__all__ = ["LoRA", "LoRALinear", "LoRAParam"]
