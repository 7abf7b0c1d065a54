"""Convolutions: :class:`Conv` and :class:`ConvTranspose` (1D, 2D, 3D, ...).

Inputs are channels-last: ``(*batch, *spatial, features)``. Any number of leading batch axes
(including none) is accepted; they are flattened into one for the convolution.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Inexact

import pynnx as nnx

from .dtypes import LayerArgumentError, check_rngs, check_size, promote_dtype, to_tuple
from .linear import default_bias_init, default_kernel_init

_NO_METADATA: Mapping[str, Any] = {}
_PAD_MODES = ("SAME", "SAME_LOWER", "VALID", "CIRCULAR", "CAUSAL", "REFLECT")
PaddingLike = Any


def _entries(layer: str, padding: Any) -> list:
  try:
    return list(padding)
  except TypeError:
    raise LayerArgumentError(
      f"{layer}: padding must be a string, an int or a sequence, got {padding!r}."
    ) from None


def _is_int_pair(p: Any) -> bool:
  return (
    isinstance(p, (tuple, list))
    and len(p) == 2
    and all(isinstance(v, (int, np.integer)) for v in p)
  )


def _canonical_padding(layer: str, padding: PaddingLike, rank: int) -> Any:
  """A padding string (upper-cased) or a tuple of ``(low, high)`` pairs, one per spatial axis."""
  if isinstance(padding, str):
    mode = padding.upper()
    if mode not in _PAD_MODES:
      raise LayerArgumentError(
        f"{layer}: unknown padding {padding!r}; use one of {_PAD_MODES}, "
        f"an int, or a sequence of ints or (low, high) pairs."
      )
    return mode
  if isinstance(padding, (int, np.integer)):
    return ((int(padding), int(padding)),) * rank
  pairs = []
  for p in _entries(layer, padding):
    if isinstance(p, (int, np.integer)):
      pairs.append((int(p), int(p)))
    elif _is_int_pair(p):
      pairs.append((int(p[0]), int(p[1])))
    else:
      raise LayerArgumentError(
        f"{layer}: padding {padding!r} has the entry {p!r}; each spatial dimension takes an "
        "int or a (low, high) pair of ints, e.g. padding=((1, 1), (0, 2))."
      )
  if len(pairs) != rank:
    raise LayerArgumentError(
      f"{layer}: padding {padding!r} needs one entry per spatial dimension ({rank})."
    )
  return tuple(pairs)


def _dimension_numbers(ndim: int) -> jax.lax.ConvDimensionNumbers:
  spatial = tuple(range(1, ndim - 1))
  return jax.lax.ConvDimensionNumbers(
    lhs_spec=(0, ndim - 1) + spatial,
    rhs_spec=(ndim - 1, ndim - 2) + tuple(range(ndim - 2)),
    out_spec=(0, ndim - 1) + spatial,
  )


def _flatten_batch(layer: str, inputs: jax.Array, rank: int, in_features: int) -> tuple:
  shape = jnp.shape(inputs)
  if len(shape) < rank + 1 or shape[-1] != in_features:
    raise nnx.ShapeError(
      f"{layer} expects inputs of shape (*batch, {rank} spatial axes, {in_features} features), "
      f"got shape {shape}."
    )
  batch = shape[: len(shape) - rank - 1]
  flat = jnp.reshape(inputs, (int(np.prod(batch)),) + shape[len(batch) :])
  return flat, batch


class _ConvBase(nnx.Module):
  kernel: nnx.Param  # set by each subclass
  bias: nnx.Param | None

  def _common(
    self,
    in_features: int,
    out_features: int,
    kernel_size: Any,
    *,
    use_bias: bool,
    mask: Any,
    dtype: Any,
    param_dtype: Any,
    precision: Any,
    kernel_init: Any,
    bias_init: Any,
    promote_dtype: Callable,
    preferred_element_type: Any,
  ) -> None:
    self.in_features = in_features
    self.out_features = out_features
    self.kernel_size = kernel_size
    self.use_bias = use_bias
    self.mask = mask
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision = precision
    self.kernel_init = kernel_init
    self.bias_init = bias_init
    self.promote_dtype = promote_dtype
    self.preferred_element_type = preferred_element_type

  def _params(self, inputs: jax.Array) -> tuple:
    kernel = self.kernel[...]
    if self.mask is not None:
      if jnp.shape(self.mask) != kernel.shape:
        raise nnx.ShapeError(
          f"{type(self).__name__}: mask of shape {jnp.shape(self.mask)} does "
          f"not match the kernel's shape {kernel.shape}."
        )
      kernel = kernel * jnp.asarray(self.mask, kernel.dtype)
    bias = self.bias[...] if self.bias is not None else None
    return self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)

  def _finish(self, y: jax.Array, bias: Any, batch: tuple) -> jax.Array:
    if bias is not None:
      y = y + jnp.asarray(bias, y.dtype)
    return jnp.reshape(y, batch + y.shape[1:])


@nnx.typed
class Conv(_ConvBase):
  """An N-D convolution (N = ``len(kernel_size)``), channels last.

  ``kernel`` has shape ``kernel_size + (in_features // feature_group_count, out_features)``
  and ``bias`` ``(out_features,)``. ``padding`` is ``'SAME'``, ``'VALID'``, ``'CIRCULAR'``
  (periodic), ``'REFLECT'``, ``'CAUSAL'`` (1D only: all padding on the left), an int, or a
  sequence of ints / ``(low, high)`` pairs per spatial axis. ``input_dilation`` dilates the
  input (transposed-convolution style), ``kernel_dilation`` the kernel (atrous).

  Example:
    >>> conv = nnx.Conv(3, 8, kernel_size=(3, 3), strides=2, rngs=nnx.Rngs(0))
    >>> conv(jnp.ones((4, 32, 32, 3))).shape
    (4, 16, 16, 8)
    >>> conv.kernel.shape
    (3, 3, 3, 8)
  """

  kernel: nnx.Param[Inexact[Array, "*window din_per_group dout"]]
  bias: nnx.Param[Inexact[Array, " dout"]] | None

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    strides: None | int | Sequence[int] = 1,
    *,
    padding: PaddingLike = "SAME",
    input_dilation: None | int | Sequence[int] = 1,
    kernel_dilation: None | int | Sequence[int] = 1,
    feature_group_count: int = 1,
    use_bias: bool = True,
    mask: Any = None,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    precision: Any = None,
    kernel_init: Any = default_kernel_init,
    bias_init: Any = default_bias_init,
    conv_general_dilated: Callable = jax.lax.conv_general_dilated,
    promote_dtype: Callable = promote_dtype,
    preferred_element_type: Any = None,
    rngs: nnx.Rngs,
    kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("Conv", rngs)
    check_size("Conv", "in_features", in_features)
    check_size("Conv", "out_features", out_features)
    check_size("Conv", "feature_group_count", feature_group_count)
    if in_features % feature_group_count or out_features % feature_group_count:
      raise LayerArgumentError(
        f"Conv: feature_group_count={feature_group_count} must divide both in_features "
        f"({in_features}) and out_features ({out_features})."
      )
    kernel_size = to_tuple(
      "Conv", "kernel_size", kernel_size, 1 if isinstance(kernel_size, int) else len(kernel_size)
    )
    rank = len(kernel_size)
    self.strides = to_tuple("Conv", "strides", strides, rank)
    self.input_dilation = to_tuple("Conv", "input_dilation", input_dilation, rank)
    self.kernel_dilation = to_tuple("Conv", "kernel_dilation", kernel_dilation, rank)
    self.padding = _canonical_padding("Conv", padding, rank)
    if self.padding == "CAUSAL" and rank != 1:
      raise LayerArgumentError(
        f"Conv: padding='CAUSAL' is only defined for 1D convolutions; "
        f"got kernel_size={kernel_size}."
      )
    self.feature_group_count = feature_group_count
    kernel_shape = kernel_size + (in_features // feature_group_count, out_features)
    self.kernel = nnx.Param(
      kernel_init(rngs.params(), kernel_shape, param_dtype), **kernel_metadata
    )
    self.bias = (
      nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype), **bias_metadata)
      if use_bias
      else None
    )
    self.conv_general_dilated = conv_general_dilated
    self._common(
      in_features,
      out_features,
      kernel_size,
      use_bias=use_bias,
      mask=mask,
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      kernel_init=kernel_init,
      bias_init=bias_init,
      promote_dtype=promote_dtype,
      preferred_element_type=preferred_element_type,
    )

  def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
    rank = len(self.kernel_size)
    x, batch = _flatten_batch("Conv", inputs, rank, self.in_features)
    padding = self.padding
    if padding in ("CIRCULAR", "REFLECT"):
      # Pad explicitly so that a VALID convolution keeps the SAME output size.
      dilated = [
        (k - 1) * d + 1 for k, d in zip(self.kernel_size, self.kernel_dilation, strict=True)
      ]
      widths = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)]
      x = jnp.pad(x, widths, mode="wrap" if padding == "CIRCULAR" else "reflect")
      padding = "VALID"
    elif padding == "CAUSAL":
      left = self.kernel_dilation[0] * (self.kernel_size[0] - 1)
      x = jnp.pad(x, [(0, 0), (left, 0), (0, 0)])
      padding = "VALID"
    x, kernel, bias = self._params(x)
    extra = {} if out_sharding is None else {"out_sharding": out_sharding}
    y = self.conv_general_dilated(
      x,
      kernel,
      self.strides,
      padding,
      lhs_dilation=self.input_dilation,
      rhs_dilation=self.kernel_dilation,
      dimension_numbers=_dimension_numbers(x.ndim),
      feature_group_count=self.feature_group_count,
      precision=self.precision,
      preferred_element_type=self.preferred_element_type,
      **extra,
    )
    return self._finish(y, bias, batch)


def _wrap_circular(y: jax.Array, targets: Sequence[int], transpose_kernel: bool) -> jax.Array:
  """Folds each spatial axis of ``y`` periodically onto length ``targets[i]`` (summing)."""
  for i, t in enumerate(targets, start=1):
    n = y.shape[i]
    extra = (t - n) % (2 * t)  # padded length is an odd multiple of t, centring the kernel
    # Split the padding evenly; an odd unit goes left, or right for a transposed kernel (so
    # that Conv's kernel used here gives Conv's exact transpose).
    half = extra // 2
    lo, hi = (half, extra - half) if transpose_kernel else (extra - half, half)
    widths = [(0, 0)] * y.ndim
    widths[i] = (lo, hi)
    y = jnp.pad(y, widths)
    y = jnp.reshape(y, y.shape[:i] + ((n + extra) // t, t) + y.shape[i + 1 :]).sum(axis=i)
  return y


class ConvTranspose(_ConvBase):
  """An N-D transposed convolution (the gradient of a strided convolution), channels last.

  ``kernel`` has shape ``kernel_size + (in_features, out_features)`` (``(out_features,
  in_features)`` when ``transpose_kernel=True``). With ``padding='SAME'`` and stride ``s`` a
  spatial size ``n`` becomes ``n * s``; ``'CIRCULAR'`` wraps the output periodically onto that
  size.

  Example:
    >>> up = nnx.ConvTranspose(8, 3, kernel_size=(4, 4), strides=2, rngs=nnx.Rngs(0))
    >>> up(jnp.ones((2, 16, 16, 8))).shape
    (2, 32, 32, 3)
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    *,
    padding: PaddingLike = "SAME",
    kernel_dilation: int | Sequence[int] | None = None,
    use_bias: bool = True,
    mask: Any = None,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    precision: Any = None,
    kernel_init: Any = default_kernel_init,
    bias_init: Any = default_bias_init,
    transpose_kernel: bool = False,
    promote_dtype: Callable = promote_dtype,
    preferred_element_type: Any = None,
    rngs: nnx.Rngs,
    kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("ConvTranspose", rngs)
    check_size("ConvTranspose", "in_features", in_features)
    check_size("ConvTranspose", "out_features", out_features)
    kernel_size = to_tuple(
      "ConvTranspose",
      "kernel_size",
      kernel_size,
      1 if isinstance(kernel_size, int) else len(kernel_size),
    )
    rank = len(kernel_size)
    self.strides = to_tuple("ConvTranspose", "strides", strides, rank)
    self.kernel_dilation = to_tuple("ConvTranspose", "kernel_dilation", kernel_dilation, rank)
    self.padding = _canonical_padding("ConvTranspose", padding, rank)
    if self.padding in ("CAUSAL", "REFLECT"):
      raise LayerArgumentError(
        f"ConvTranspose: padding={padding!r} is not supported; use "
        f"'SAME', 'VALID', 'CIRCULAR' or explicit pairs."
      )
    self.transpose_kernel = transpose_kernel
    io = (out_features, in_features) if transpose_kernel else (in_features, out_features)
    self.kernel = nnx.Param(
      kernel_init(rngs.params(), kernel_size + io, param_dtype), **kernel_metadata
    )
    self.bias = (
      nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype), **bias_metadata)
      if use_bias
      else None
    )
    self._common(
      in_features,
      out_features,
      kernel_size,
      use_bias=use_bias,
      mask=mask,
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      kernel_init=kernel_init,
      bias_init=bias_init,
      promote_dtype=promote_dtype,
      preferred_element_type=preferred_element_type,
    )

  def __call__(self, inputs: jax.Array) -> jax.Array:
    rank = len(self.kernel_size)
    x, batch = _flatten_batch("ConvTranspose", inputs, rank, self.in_features)
    x, kernel, bias = self._params(x)
    padding = "VALID" if self.padding == "CIRCULAR" else self.padding
    y = jax.lax.conv_transpose(
      x,
      kernel,
      self.strides,
      padding,
      rhs_dilation=self.kernel_dilation,
      dimension_numbers=_dimension_numbers(x.ndim),
      transpose_kernel=self.transpose_kernel,
      precision=self.precision,
      preferred_element_type=self.preferred_element_type,
    )
    if self.padding == "CIRCULAR":
      targets = [n * s for n, s in zip(x.shape[1:-1], self.strides, strict=True)]
      y = _wrap_circular(y, targets, self.transpose_kernel)
    return self._finish(y, bias, batch)


__all__ = ["Conv", "ConvTranspose"]
