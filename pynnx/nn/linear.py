"""Linear layers: :class:`Linear`, :class:`LinearGeneral` and :class:`Einsum`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Inexact

import pynnx as nnx

from . import initializers
from .dtypes import (
  InputShapeError,
  LayerArgumentError,
  as_input_array,
  check_rngs,
  check_size,
  promote_dtype,
)

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros_init()

_NO_METADATA: Mapping[str, Any] = {}
_NO_BATCH_AXIS = cast(Mapping[int, int], _NO_METADATA)  # the same empty mapping, typed


def _dot(
  dot_general: Callable,
  x: jax.Array,
  w: jax.Array,
  dims: Any,
  precision: Any,
  preferred_element_type: Any,
  out_sharding: Any,
) -> jax.Array:
  # Only pass out_sharding when asked for, so custom dot_general functions need not take it.
  extra = {} if out_sharding is None else {"out_sharding": out_sharding}
  return dot_general(
    x, w, dims, precision=precision, preferred_element_type=preferred_element_type, **extra
  )


@nnx.typed
class Linear(nnx.Module):
  """``y = x @ kernel + bias`` over the last axis of ``x``.

  Parameters: ``kernel`` of shape ``(in_features, out_features)`` and, with ``use_bias``,
  ``bias`` of shape ``(out_features,)``, both in ``param_dtype``. The product runs in
  ``dtype`` (default: the promotion of the input and parameter dtypes).

  Example:
    >>> layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((4, 2))).shape
    (4, 3)
    >>> layer.kernel.shape, layer.bias.shape
    ((2, 3), (3,))
  """

  kernel: nnx.Param[Inexact[Array, "din dout"]]
  bias: nnx.Param[Inexact[Array, " dout"]] | None

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    use_bias: bool = True,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    precision: Any = None,
    kernel_init: Any = default_kernel_init,
    bias_init: Any = default_bias_init,
    dot_general: Callable = jax.lax.dot_general,
    promote_dtype: Callable = promote_dtype,
    preferred_element_type: Any = None,
    rngs: nnx.Rngs,
    kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("Linear", rngs)
    check_size("Linear", "in_features", in_features)
    check_size("Linear", "out_features", out_features)
    self.kernel = nnx.Param(
      kernel_init(rngs.params(), (in_features, out_features), param_dtype), **kernel_metadata
    )
    self.bias = (
      nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype), **bias_metadata)
      if use_bias
      else None
    )
    self.in_features = in_features
    self.out_features = out_features
    self.use_bias = use_bias
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision
    self.kernel_init = kernel_init
    self.bias_init = bias_init
    self.dot_general = dot_general
    self.promote_dtype = promote_dtype
    self.preferred_element_type = preferred_element_type

  def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
    # The kernel's own first axis, not in_features: inside shard_map a sharded kernel and
    # its input are both local shards.
    expected = jnp.shape(self.kernel[...])[0]
    inputs = as_input_array("Linear", inputs)
    if inputs.ndim == 0:
      raise InputShapeError(
        f"Linear was built for {expected} input features (last axis) but got a scalar input; "
        f"pass an array of shape (..., {expected})."
      )
    if inputs.shape[-1] != expected:
      raise InputShapeError(
        f"Linear was built for {expected} input features (last axis) but got an input of "
        f"shape {inputs.shape} ({inputs.shape[-1]} features). Reshape the input or build "
        f"Linear({inputs.shape[-1]}, ...)."
      )
    bias = self.bias[...] if self.bias is not None else None
    x, kernel, bias = self.promote_dtype((inputs, self.kernel[...], bias), dtype=self.dtype)
    y = _dot(
      self.dot_general,
      x,
      kernel,
      (((x.ndim - 1,), (0,)), ((), ())),
      self.precision,
      self.preferred_element_type,
      out_sharding,
    )
    if bias is not None:
      y = y + jnp.asarray(bias, y.dtype)
    return y


def _as_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
  return (int(x),) if isinstance(x, (int, np.integer)) else tuple(int(v) for v in x)


class LinearGeneral(nnx.Module):
  """A linear map that contracts several input axes and produces several output axes.

  ``kernel`` has shape ``batch_shape + in_features + out_features`` and ``bias``
  ``batch_shape + out_features``, where ``batch_shape`` are the sizes in ``batch_axis``
  (input axes mapped one-to-one onto kernel axes, not contracted). ``axis`` names the input
  axes that are contracted against ``in_features``. The kernel is initialised as a
  ``(prod(batch_shape) * prod(in_features), prod(out_features))`` matrix, so fan-in based
  initializers see the full contraction size.

  Example:
    >>> layer = nnx.LinearGeneral((2, 3), (4, 5), axis=(-2, -1), rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((7, 2, 3))).shape
    (7, 4, 5)
  """

  def __init__(
    self,
    in_features: int | Sequence[int],
    out_features: int | Sequence[int],
    *,
    axis: int | Sequence[int] = -1,
    batch_axis: Mapping[int, int] = _NO_BATCH_AXIS,
    use_bias: bool = True,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    kernel_init: Any = default_kernel_init,
    bias_init: Any = default_bias_init,
    precision: Any = None,
    promote_dtype: Callable = promote_dtype,
    dot_general: Callable | None = None,
    dot_general_cls: Any = None,
    preferred_element_type: Any = None,
    rngs: nnx.Rngs,
    kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("LinearGeneral", rngs)
    in_features, out_features, axis = (
      _as_tuple(in_features),
      _as_tuple(out_features),
      _as_tuple(axis),
    )
    for f in in_features + out_features:
      check_size("LinearGeneral", "every feature size", f)
    if len(axis) != len(in_features):
      raise LayerArgumentError(
        f"LinearGeneral: axis {axis} names {len(axis)} input axes but in_features "
        f"{in_features} has {len(in_features)} sizes; give one axis per input feature size."
      )
    batch_items = tuple(sorted((int(k), int(v)) for k, v in dict(batch_axis).items()))
    batch_shape = tuple(v for _, v in batch_items)
    n_batch, n_in = len(batch_shape), len(in_features)
    kernel_shape = batch_shape + in_features + out_features

    def kernel_init_flat(key: jax.Array, shape: tuple, dtype: Any) -> Any:
      flat = (int(np.prod(shape[: n_batch + n_in])), int(np.prod(shape[n_batch + n_in :])))
      value = kernel_init(key, flat, dtype)
      if isinstance(value, nnx.VariableMetadata):  # from nnx.with_partitioning / with_metadata
        return dataclasses.replace(value, raw_value=jnp.reshape(value.raw_value, shape))
      return jnp.reshape(value, shape)

    self.kernel = nnx.Param(
      kernel_init_flat(rngs.params(), kernel_shape, param_dtype), **kernel_metadata
    )
    if use_bias:
      bias_shape = batch_shape + out_features
      flat_bias = bias_init(rngs.params(), (int(np.prod(bias_shape)),), param_dtype)
      if isinstance(flat_bias, nnx.VariableMetadata):
        flat_bias = dataclasses.replace(
          flat_bias, raw_value=jnp.reshape(flat_bias.raw_value, bias_shape)
        )
      else:
        flat_bias = jnp.reshape(flat_bias, bias_shape)
      self.bias: nnx.Param | None = nnx.Param(flat_bias, **bias_metadata)
    else:
      self.bias = None
    self.in_features = in_features
    self.out_features = out_features
    self.axis = axis
    self.batch_axis = batch_items  # ((input_axis, size), ...): a hashable form of the mapping
    self.use_bias = use_bias
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.kernel_init = kernel_init
    self.bias_init = bias_init
    self.precision = precision
    self.promote_dtype = promote_dtype
    self.dot_general = dot_general
    self.dot_general_cls = dot_general_cls
    self.preferred_element_type = preferred_element_type

  def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
    ndim = jnp.ndim(inputs)
    shape = jnp.shape(inputs)
    batch_dims = tuple(k for k, _ in self.batch_axis)
    if any(not -ndim <= a < ndim for a in self.axis + batch_dims):
      raise nnx.ShapeError(
        f"LinearGeneral: axis {self.axis} / batch_axis {batch_dims} do not fit an input of "
        f"shape {shape}."
      )
    axis = tuple(a % ndim for a in self.axis)
    batch_dims = tuple(a % ndim for a in batch_dims)
    got = tuple(shape[a] for a in axis)
    got_batch = tuple(shape[a] for a in batch_dims)
    want_batch = tuple(v for _, v in self.batch_axis)
    if got != self.in_features or got_batch != want_batch:
      raise InputShapeError(
        f"LinearGeneral expects sizes {self.in_features} on axes {self.axis}"
        + (f" and batch sizes {want_batch} on axes {batch_dims}" if batch_dims else "")
        + f", got an input of shape {shape} (sizes {got}"
        + (f", batch sizes {got_batch}" if batch_dims else "")
        + ")."
      )
    n_batch = len(batch_dims)
    kernel_contract = tuple(range(n_batch, n_batch + len(axis)))
    dims = ((axis, kernel_contract), (batch_dims, tuple(range(n_batch))))
    bias = self.bias[...] if self.bias is not None else None
    x, kernel, bias = self.promote_dtype((inputs, self.kernel[...], bias), dtype=self.dtype)
    if self.dot_general_cls is not None:
      dot_general = self.dot_general_cls()
    else:
      dot_general = self.dot_general if self.dot_general is not None else jax.lax.dot_general
    y = _dot(
      dot_general, x, kernel, dims, self.precision, self.preferred_element_type, out_sharding
    )
    if bias is not None:
      # dot_general puts the batch axes first, then the free input axes, then the outputs.
      free = [d for d in range(ndim) if d not in axis and d not in batch_dims]
      bias_shape = got_batch + (1,) * len(free) + self.out_features
      y = y + jnp.reshape(jnp.asarray(bias, y.dtype), bias_shape)
    return y


def _check_einsum(layer: str, einsum_str: str) -> str:
  einsum_str = einsum_str.replace(" ", "")
  if "->" not in einsum_str:
    raise LayerArgumentError(
      f"{layer}: einsum_str {einsum_str!r} has no '->'; write the output explicitly, e.g. "
      f"'ab,bc->ac'."
    )
  if len(einsum_str.split("->")[0].split(",")) != 2:
    raise LayerArgumentError(
      f"{layer}: einsum_str {einsum_str!r} must have exactly two operands (the input and the "
      f"kernel), e.g. 'ab,bc->ac'."
    )
  return einsum_str


class Einsum(nnx.Module):
  """``y = einsum(einsum_str, x, kernel) + bias`` with a learned ``kernel`` (and ``bias``).

  Example:
    >>> layer = nnx.Einsum('nta,hab->nthb', (8, 2, 4), (8, 4), rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((16, 11, 2))).shape
    (16, 11, 8, 4)
  """

  def __init__(
    self,
    einsum_str: str,
    kernel_shape: Sequence[int],
    bias_shape: Sequence[int] | None = None,
    *,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    precision: Any = None,
    kernel_init: Any = default_kernel_init,
    bias_init: Any = default_bias_init,
    promote_dtype: Callable = promote_dtype,
    einsum_op: Callable = jnp.einsum,
    preferred_element_type: Any = None,
    rngs: nnx.Rngs,
    kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("Einsum", rngs)
    einsum_str = _check_einsum("Einsum", einsum_str)
    kernel_shape = tuple(int(s) for s in kernel_shape)
    self.kernel = nnx.Param(
      kernel_init(rngs.params(), kernel_shape, param_dtype), **kernel_metadata
    )
    if bias_shape is not None:
      bias_shape = tuple(int(s) for s in bias_shape)
      self.bias: nnx.Param | None = nnx.Param(
        bias_init(rngs.params(), bias_shape, param_dtype), **bias_metadata
      )
    else:
      self.bias = None
    self.einsum_str = einsum_str
    self.kernel_shape = kernel_shape
    self.bias_shape = bias_shape
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision
    self.kernel_init = kernel_init
    self.bias_init = bias_init
    self.promote_dtype = promote_dtype
    self.einsum_op = einsum_op
    self.preferred_element_type = preferred_element_type

  def __call__(
    self, inputs: jax.Array, einsum_str: str | None = None, out_sharding: Any = None
  ) -> jax.Array:
    einsum_str = _check_einsum("Einsum", einsum_str if einsum_str is not None else self.einsum_str)
    bias = self.bias[...] if self.bias is not None else None
    x, kernel, bias = self.promote_dtype((inputs, self.kernel[...], bias), dtype=self.dtype)
    extra = {} if out_sharding is None else {"out_sharding": out_sharding}
    try:
      y = self.einsum_op(
        einsum_str,
        x,
        kernel,
        precision=self.precision,
        preferred_element_type=self.preferred_element_type,
        **extra,
      )
    except ValueError as e:
      raise nnx.ShapeError(
        f"Einsum {einsum_str!r} does not fit an input of shape {jnp.shape(inputs)} and a kernel "
        f"of shape {self.kernel_shape}: {e}"
      ) from e
    if bias is not None:
      y = y + jnp.asarray(bias, y.dtype)
    return y


__all__ = ["Einsum", "Linear", "LinearGeneral"]
