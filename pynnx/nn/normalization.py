"""Normalization layers: BatchNorm, LayerNorm, RMSNorm, GroupNorm, InstanceNorm.

Statistics are computed in at least ``float32`` (whatever the input dtype); the output is cast
to ``dtype`` (default: the promotion of the input and parameter dtypes). ``axis_name`` averages
the statistics across devices with ``jax.lax.pmean`` (inside ``shard_map``/``pmap``/``vmap``
with a named axis).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Inexact

import pynnx as nnx

from . import initializers
from .dtypes import (
  InputShapeError,
  LayerArgumentError,
  canonicalize_dtype,
  check_rngs,
  check_size,
  normalize_axes,
)
from .dtypes import promote_dtype as default_promote_dtype

_NO_METADATA: Mapping[str, Any] = {}


def _stats_dtype(x: jax.Array, dtype: Any) -> Any:
  with jax.numpy_dtype_promotion("standard"):
    # canonical: a NumPy float64 input computes in float32 without x64 (no truncation warning)
    return jax.dtypes.canonicalize_dtype(
      jnp.promote_types(x.dtype if dtype is None else dtype, jnp.float32)
    )


def _abs_sq(x: jax.Array) -> jax.Array:
  # lax.square (not x * x): its VJP is one product, so gradients match Flax bit for bit
  if jnp.iscomplexobj(x):
    return jax.lax.square(jnp.real(x)) + jax.lax.square(jnp.imag(x))
  return jax.lax.square(x)


def compute_stats(
  x: jax.Array,
  axes: tuple[int, ...],
  *,
  dtype: Any,
  axis_name: str | None,
  axis_index_groups: Any,
  use_fast_variance: bool,
  mask: Any = None,
  use_mean: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """Mean and (biased) variance of ``x`` over ``axes``, averaged over ``axis_name`` if given.

  With ``use_mean=False`` the mean is zero and the "variance" is the mean square (RMSNorm).
  """
  x = jnp.asarray(x, _stats_dtype(x, dtype))
  where = None if mask is None else jnp.broadcast_to(mask, x.shape)

  def avg(v: jax.Array) -> jax.Array:
    return jnp.mean(v, axis=axes, where=where)

  def sync(*vals: jax.Array) -> list[jax.Array]:
    if axis_name is None:
      return list(vals)
    return list(jax.lax.pmean(vals, axis_name, axis_index_groups=axis_index_groups))

  if not use_mean:
    (ms,) = sync(avg(_abs_sq(x)))
    return jnp.zeros_like(ms), ms
  if use_fast_variance:
    sq = _abs_sq(x)  # squared first, as Flax does: the same op order gives the same gradients
    mean, mean_sq = sync(avg(x), avg(sq))
    var = jnp.maximum(0.0, mean_sq - _abs_sq(mean))
  else:
    (mean,) = sync(avg(x))
    (var,) = sync(avg(_abs_sq(x - jnp.expand_dims(mean, axes))))
  return mean, var


def _normalize(
  x: jax.Array,
  mean: jax.Array,
  var: jax.Array,
  scale: Any,
  bias: Any,
  reduction_axes: tuple[int, ...],
  feature_axes: tuple[int, ...],
  dtype: Any,
  epsilon: float,
) -> jax.Array:
  """``(x - mean) / sqrt(var + eps) * scale + bias``; stats are reduced over ``reduction_axes``."""
  out_dtype = canonicalize_dtype(x, scale, bias, dtype=dtype)
  stats_shape = tuple(1 if i in reduction_axes else n for i, n in enumerate(x.shape))
  feature_shape = tuple(n if i in feature_axes else 1 for i, n in enumerate(x.shape))
  mean = jnp.reshape(mean, stats_shape)
  var = jnp.reshape(var, stats_shape)
  y = jnp.asarray(x, var.dtype) - jnp.asarray(mean, var.dtype)
  mul = jax.lax.rsqrt(var + epsilon)
  if scale is not None:
    mul = mul * jnp.reshape(jnp.asarray(scale, var.dtype), feature_shape)
  y = y * mul
  if bias is not None:
    y = y + jnp.reshape(jnp.asarray(bias, var.dtype), feature_shape)
  return jnp.asarray(y, out_dtype)


def _check_features(layer: str, x: jax.Array, feature_axes: tuple[int, ...], num: int) -> None:
  got = int(np.prod([x.shape[a] for a in feature_axes]))
  if got != num:
    raise InputShapeError(
      f"{layer} was built for num_features={num} but the input of shape {x.shape} has "
      f"{got} features on axes {feature_axes}."
    )


def _axes(layer: str, axes: Any, ndim: int) -> tuple[int, ...]:
  try:
    return normalize_axes(axes, ndim)
  except nnx.ShapeError as e:
    raise nnx.ShapeError(f"{layer}: {e}") from None


class _Norm(nnx.Module):
  """Shared construction: ``scale`` / ``bias`` Params of shape ``(num_features,)``."""

  dtype: Any  # set by each subclass
  promote_dtype: Callable[..., Any]
  scale: nnx.Param[Inexact[Array, " features"]] | None
  bias: nnx.Param[Inexact[Array, " features"]] | None

  def _build(
    self,
    layer: str,
    num_features: int,
    *,
    use_bias: bool | None,
    use_scale: bool,
    bias_init: Any,
    scale_init: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
    bias_metadata: Mapping[str, Any],
    scale_metadata: Mapping[str, Any],
  ) -> None:
    check_size(layer, "num_features", num_features)
    shape = (num_features,)
    self.scale = (
      nnx.Param(scale_init(rngs.params(), shape, param_dtype), **scale_metadata)
      if use_scale
      else None
    )
    if use_bias is not None:  # None: a layer without a bias at all (RMSNorm)
      self.bias = (
        nnx.Param(bias_init(rngs.params(), shape, param_dtype), **bias_metadata)
        if use_bias
        else None
      )
      self.use_bias = use_bias
      self.bias_init = bias_init
    self.num_features = num_features
    self.use_scale = use_scale
    self.scale_init = scale_init
    self.param_dtype = param_dtype

  def _scale_bias(self, x: jax.Array) -> tuple:
    scale = self.scale[...] if self.scale is not None else None
    bias = self.bias[...] if self.bias is not None else None
    return self.promote_dtype((x, scale, bias), dtype=self.dtype)


@nnx.typed
class BatchNorm(_Norm):
  """Normalizes each feature over the batch (every axis except ``axis``).

  Training (``use_running_average=False``, after ``model.train()``) uses the batch statistics
  and updates the ``BatchStat`` running averages ``mean`` / ``var``
  (``r = momentum * r + (1 - momentum) * batch``); evaluation (``model.eval()``) uses them.

  Example:
    >>> bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    >>> x = jnp.arange(12.0).reshape(4, 3)
    >>> y = bn(x)   # training mode: batch statistics, running averages updated
    >>> bool(jnp.allclose(y.mean(0), 0.0, atol=1e-6))
    True
    >>> bool(jnp.allclose(bn.mean[...], 0.01 * x.mean(0)))
    True
    >>> bn.eval(); bn.use_running_average
    True
  """

  mean: nnx.BatchStat[Float[Array, " features"]]
  var: nnx.BatchStat[Float[Array, " features"]]

  def __init__(
    self,
    num_features: int,
    *,
    use_running_average: bool | None = False,
    axis: int = -1,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Any = initializers.zeros_init(),
    scale_init: Any = initializers.ones_init(),
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = True,
    promote_dtype: Callable = default_promote_dtype,
    rngs: nnx.Rngs,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
    scale_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("BatchNorm", rngs)
    if not 0.0 <= momentum <= 1.0:
      raise LayerArgumentError(f"BatchNorm: momentum must be in [0, 1], got {momentum!r}.")
    self._build(
      "BatchNorm",
      num_features,
      use_bias=use_bias,
      use_scale=use_scale,
      bias_init=bias_init,
      scale_init=scale_init,
      param_dtype=param_dtype,
      rngs=rngs,
      bias_metadata=bias_metadata,
      scale_metadata=scale_metadata,
    )
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.use_running_average = use_running_average
    self.axis = axis
    self.momentum = momentum
    self.epsilon = epsilon
    self.dtype = dtype
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype

  def set_view(self, use_running_average: bool | None = None) -> None:
    """Sets the static ``use_running_average`` flag (the hook flax's ``nnx.view`` calls).

    Args:
      use_running_average: if True, the stored batch statistics will be
        used instead of computing the batch statistics on the input.

    Example:
      >>> layer = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
      >>> layer.set_view(use_running_average=True)
      >>> layer.use_running_average
      True
    """
    if use_running_average is not None:
      self._pynnx_setattr("use_running_average", use_running_average)

  def __call__(
    self, x: jax.Array, use_running_average: bool | None = None, *, mask: jax.Array | None = None
  ) -> jax.Array:
    use_ra = self.use_running_average if use_running_average is None else use_running_average
    if use_ra is None:
      raise LayerArgumentError(
        "BatchNorm: use_running_average is None both on the layer and in the call; pass it to "
        "the call, or set it with model.train() / model.eval()."
      )
    feature_axes = _axes("BatchNorm", self.axis, jnp.ndim(x))
    _check_features("BatchNorm", x, feature_axes, self.num_features)
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    if use_ra:
      mean, var = self.mean[...], self.var[...]
    else:
      mean, var = compute_stats(
        x,
        reduction_axes,
        dtype=self.dtype,
        axis_name=self.axis_name,
        axis_index_groups=self.axis_index_groups,
        use_fast_variance=self.use_fast_variance,
        mask=mask,
      )
      m = self.momentum
      self.mean[...] = m * self.mean[...] + (1 - m) * jnp.asarray(mean, self.mean.dtype)
      self.var[...] = m * self.var[...] + (1 - m) * jnp.asarray(var, self.var.dtype)
    x, scale, bias = self._scale_bias(x)
    return _normalize(
      x, mean, var, scale, bias, reduction_axes, feature_axes, self.dtype, self.epsilon
    )


@nnx.typed
class LayerNorm(_Norm):
  """Normalizes each example over ``reduction_axes`` (default: the last axis).

  Example:
    >>> ln = nnx.LayerNorm(4, rngs=nnx.Rngs(0))
    >>> y = ln(jnp.array([[1.0, 2.0, 3.0, 4.0]]))
    >>> bool(jnp.allclose(y.mean(-1), 0.0, atol=1e-6))
    True
  """

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Any = initializers.zeros_init(),
    scale_init: Any = initializers.ones_init(),
    reduction_axes: int | Sequence[int] = -1,
    feature_axes: int | Sequence[int] = -1,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = True,
    promote_dtype: Callable = default_promote_dtype,
    rngs: nnx.Rngs,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
    scale_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("LayerNorm", rngs)
    self._build(
      "LayerNorm",
      num_features,
      use_bias=use_bias,
      use_scale=use_scale,
      bias_init=bias_init,
      scale_init=scale_init,
      param_dtype=param_dtype,
      rngs=rngs,
      bias_metadata=bias_metadata,
      scale_metadata=scale_metadata,
    )
    self.epsilon = epsilon
    self.dtype = dtype
    self.reduction_axes = (
      reduction_axes if isinstance(reduction_axes, int) else tuple(reduction_axes)
    )
    self.feature_axes = feature_axes if isinstance(feature_axes, int) else tuple(feature_axes)
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    reduction_axes = _axes("LayerNorm", self.reduction_axes, jnp.ndim(x))
    feature_axes = _axes("LayerNorm", self.feature_axes, jnp.ndim(x))
    _check_features("LayerNorm", x, feature_axes, self.num_features)
    mean, var = compute_stats(
      x,
      reduction_axes,
      dtype=self.dtype,
      axis_name=self.axis_name,
      axis_index_groups=self.axis_index_groups,
      use_fast_variance=self.use_fast_variance,
      mask=mask,
    )
    x, scale, bias = self._scale_bias(x)
    return _normalize(
      x, mean, var, scale, bias, reduction_axes, feature_axes, self.dtype, self.epsilon
    )


@nnx.typed
class RMSNorm(_Norm):
  """Root-mean-square normalization: ``x / sqrt(mean(x**2) + eps) * scale`` (no centring).

  Example:
    >>> rms = nnx.RMSNorm(2, rngs=nnx.Rngs(0))
    >>> y = rms(jnp.array([3.0, 4.0]))  # rms = sqrt(12.5)
    >>> bool(jnp.allclose(y, jnp.array([3.0, 4.0]) / 12.5**0.5))
    True
  """

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_scale: bool = True,
    scale_init: Any = initializers.ones_init(),
    reduction_axes: int | Sequence[int] = -1,
    feature_axes: int | Sequence[int] = -1,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = True,
    promote_dtype: Callable = default_promote_dtype,
    rngs: nnx.Rngs,
    scale_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("RMSNorm", rngs)
    self._build(
      "RMSNorm",
      num_features,
      use_bias=None,
      use_scale=use_scale,
      bias_init=None,
      scale_init=scale_init,
      param_dtype=param_dtype,
      rngs=rngs,
      bias_metadata=_NO_METADATA,
      scale_metadata=scale_metadata,
    )
    self.epsilon = epsilon
    self.dtype = dtype
    self.reduction_axes = (
      reduction_axes if isinstance(reduction_axes, int) else tuple(reduction_axes)
    )
    self.feature_axes = feature_axes if isinstance(feature_axes, int) else tuple(feature_axes)
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    reduction_axes = _axes("RMSNorm", self.reduction_axes, jnp.ndim(x))
    feature_axes = _axes("RMSNorm", self.feature_axes, jnp.ndim(x))
    _check_features("RMSNorm", x, feature_axes, self.num_features)
    mean, var = compute_stats(
      x,
      reduction_axes,
      dtype=self.dtype,
      axis_name=self.axis_name,
      axis_index_groups=self.axis_index_groups,
      use_fast_variance=self.use_fast_variance,
      mask=mask,
      use_mean=False,
    )
    scale = self.scale[...] if self.scale is not None else None
    x, scale = self.promote_dtype((x, scale), dtype=self.dtype)
    return _normalize(
      x, mean, var, scale, None, reduction_axes, feature_axes, self.dtype, self.epsilon
    )


class GroupNorm(_Norm):
  """Splits the features (last axis) into groups and normalizes each group per example.

  Give either ``num_groups`` (default 32) or ``group_size``. Statistics are taken over
  ``reduction_axes`` (default: every axis but the first, i.e. per example) within a group.

  Example:
    >>> gn = nnx.GroupNorm(6, num_groups=3, rngs=nnx.Rngs(0))
    >>> gn(jnp.ones((2, 5, 6)) * jnp.arange(6.0)).shape
    (2, 5, 6)
  """

  def __init__(
    self,
    num_features: int,
    num_groups: int | None = 32,
    group_size: int | None = None,
    *,
    epsilon: float = 1e-6,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Any = initializers.zeros_init(),
    scale_init: Any = initializers.ones_init(),
    reduction_axes: int | Sequence[int] | None = None,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = True,
    promote_dtype: Callable = default_promote_dtype,
    rngs: nnx.Rngs,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
    scale_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("GroupNorm", rngs)
    check_size("GroupNorm", "num_features", num_features)
    if (num_groups is None) == (group_size is None):
      raise LayerArgumentError(
        f"GroupNorm: give exactly one of num_groups and group_size, got num_groups={num_groups} "
        f"and group_size={group_size} (pass num_groups=None to use group_size)."
      )
    if group_size is not None:
      check_size("GroupNorm", "group_size", group_size)
      if num_features % group_size:
        raise LayerArgumentError(
          f"GroupNorm: group_size={group_size} does not divide num_features={num_features}."
        )
      num_groups = num_features // group_size
    check_size("GroupNorm", "num_groups", num_groups)
    num_groups = cast(int, num_groups)  # exactly one of num_groups / group_size was given
    if num_features % num_groups:
      raise LayerArgumentError(
        f"GroupNorm: num_groups={num_groups} does not divide num_features={num_features}."
      )
    self._build(
      "GroupNorm",
      num_features,
      use_bias=use_bias,
      use_scale=use_scale,
      bias_init=bias_init,
      scale_init=scale_init,
      param_dtype=param_dtype,
      rngs=rngs,
      bias_metadata=bias_metadata,
      scale_metadata=scale_metadata,
    )
    self.num_groups = num_groups
    self.group_size = num_features // num_groups
    self.epsilon = epsilon
    self.dtype = dtype
    self.reduction_axes = (
      reduction_axes
      if reduction_axes is None or isinstance(reduction_axes, int)
      else tuple(reduction_axes)
    )
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    ndim = jnp.ndim(x)
    if ndim < 1:
      raise nnx.ShapeError("GroupNorm needs an input with a feature axis, got a scalar.")
    _check_features("GroupNorm", x, (ndim - 1,), self.num_features)
    axes = self.reduction_axes if self.reduction_axes is not None else tuple(range(1, ndim))
    axes = _axes("GroupNorm", axes, ndim)
    if ndim - 1 not in axes:
      raise LayerArgumentError(
        f"GroupNorm: reduction_axes {self.reduction_axes} must include the feature axis (-1)."
      )
    grouped = jnp.reshape(x, x.shape[:-1] + (self.num_groups, self.group_size))
    gmask = None if mask is None else jnp.reshape(jnp.broadcast_to(mask, x.shape), grouped.shape)
    # Reduce over the group members (new last axis) and the other reduction axes.
    group_axes = tuple(a for a in axes if a != ndim - 1) + (ndim,)
    mean, var = compute_stats(
      grouped,
      group_axes,
      dtype=self.dtype,
      axis_name=self.axis_name,
      axis_index_groups=self.axis_index_groups,
      use_fast_variance=self.use_fast_variance,
      mask=gmask,
    )
    # Back to one statistic per feature: repeat each group's value over its members.
    kept = [grouped.shape[i] if i not in group_axes else 1 for i in range(ndim + 1)]
    kept[-1] = self.group_size
    full = [1 if i in axes else x.shape[i] for i in range(ndim)]
    full[-1] = self.num_features

    def per_feature(s: jax.Array) -> jax.Array:
      s = jnp.expand_dims(s, group_axes)
      return jnp.reshape(jnp.broadcast_to(s, kept), full)

    x, scale, bias = self._scale_bias(x)
    reduction = tuple(a for a in axes if a != ndim - 1)
    return _normalize(
      x,
      per_feature(mean),
      per_feature(var),
      scale,
      bias,
      reduction,
      (ndim - 1,),
      self.dtype,
      self.epsilon,
    )


class InstanceNorm(_Norm):
  """Normalizes each example and feature over the remaining (spatial) axes.

  Statistics exclude the batch axis (0) and ``feature_axes`` (default: the last axis).

  Example:
    >>> inorm = nnx.InstanceNorm(3, rngs=nnx.Rngs(0))
    >>> y = inorm(jnp.arange(24.0).reshape(2, 4, 3))
    >>> bool(jnp.allclose(y.mean(1), 0.0, atol=1e-5))
    True
  """

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init: Any = initializers.zeros_init(),
    scale_init: Any = initializers.ones_init(),
    feature_axes: int | Sequence[int] = -1,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    use_fast_variance: bool = True,
    promote_dtype: Callable = default_promote_dtype,
    rngs: nnx.Rngs,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
    scale_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("InstanceNorm", rngs)
    self._build(
      "InstanceNorm",
      num_features,
      use_bias=use_bias,
      use_scale=use_scale,
      bias_init=bias_init,
      scale_init=scale_init,
      param_dtype=param_dtype,
      rngs=rngs,
      bias_metadata=bias_metadata,
      scale_metadata=scale_metadata,
    )
    self.epsilon = epsilon
    self.dtype = dtype
    self.feature_axes = feature_axes if isinstance(feature_axes, int) else tuple(feature_axes)
    self.axis_name = axis_name
    self.axis_index_groups = axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.promote_dtype = promote_dtype

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    feature_axes = _axes("InstanceNorm", self.feature_axes, jnp.ndim(x))
    if 0 in feature_axes:
      raise LayerArgumentError("InstanceNorm: the batch axis 0 cannot be a feature axis.")
    _check_features("InstanceNorm", x, feature_axes, self.num_features)
    reduction_axes = tuple(i for i in range(1, x.ndim) if i not in feature_axes)
    mean, var = compute_stats(
      x,
      reduction_axes,
      dtype=self.dtype,
      axis_name=self.axis_name,
      axis_index_groups=self.axis_index_groups,
      use_fast_variance=self.use_fast_variance,
      mask=mask,
    )
    x, scale, bias = self._scale_bias(x)
    return _normalize(
      x, mean, var, scale, bias, reduction_axes, feature_axes, self.dtype, self.epsilon
    )


__all__ = ["BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm"]
