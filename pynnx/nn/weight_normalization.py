"""Weight reparametrizations that wrap a layer: :class:`SpectralNorm` and :class:`WeightNorm`.

Both follow Flax NNX: before each call they normalize the wrapped layer's weights and write
the normalized values back into its Params (in place), then call the layer. Repeated calls
therefore keep normalizing the stored weights, exactly as in ``flax.nnx``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

import pynnx as nnx

from .._core.paths import format_path
from . import initializers
from .dtypes import LayerArgumentError, canonicalize_dtype, check_rngs, normalize_axes
from .dtypes import promote_dtype as default_promote_dtype

__all__ = ["SpectralNorm", "WeightNorm"]


def _unit(x: jax.Array, axis: Any = None, eps: float = 1e-12) -> jax.Array:
  """``x`` divided by its L2 norm over ``axis`` (all axes for ``None``), ``eps`` inside the root."""
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + eps)


def _layer_path(path: tuple) -> str:
  return format_path(("layer_instance", *path), "layer")


def _structure_error(layer: str, path: tuple, what: str) -> nnx.StructureChangeError:
  return nnx.StructureChangeError(
    f"{layer}: no {what} for the Param at {_layer_path(path)}; the wrapped layer's Params "
    f"differ from those {layer} was built with. Build a new {layer} around the changed layer."
  )


class SpectralNorm(nnx.Module):
  """Divides each weight matrix of a layer by its largest singular value before each call.

  The singular value is estimated by power iteration from a stored vector ``u`` (one
  ``BatchStat`` per weight, with the last estimate ``sigma``), which ``update_stats=True``
  refreshes. Weights of more than two dimensions are flattened to
  ``(-1, shape[-1])``; vectors and scalars are left alone.

  Args:
    layer_instance: the layer to wrap.
    n_steps: power iterations per call (``0`` disables the normalization).
    epsilon: added inside the square root of each L2 normalization.
    dtype: the dtype the normalized weights are written in (default: promotion of the
      weight and the statistics).
    param_dtype: the dtype of ``u`` and ``sigma``.
    error_on_non_matrix: raise for weights with more than two dimensions instead of
      flattening them.
    update_stats: the default of ``__call__``'s ``update_stats`` (``.train()`` / ``.eval()``
      switch it through ``use_running_average = not update_stats``).
    rngs: draws the initial ``u`` vectors (``rngs.params()``).

  Example:
    >>> rngs = nnx.Rngs(0)
    >>> layer = nnx.SpectralNorm(nnx.Linear(4, 3, rngs=rngs), n_steps=20, rngs=rngs)
    >>> y = layer(jnp.ones((2, 4)))
    >>> top = jnp.linalg.svd(layer.layer_instance.kernel[...], compute_uv=False)[0]
    >>> bool(jnp.isclose(top, 1.0, atol=1e-3))
    True
  """

  def __init__(
    self,
    layer_instance: nnx.Module,
    *,
    n_steps: int = 1,
    epsilon: float = 1e-12,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    error_on_non_matrix: bool = False,
    update_stats: bool = True,
    rngs: nnx.Rngs,
  ):
    check_rngs("SpectralNorm", rngs)
    self.layer_instance = layer_instance
    self.n_steps = n_steps
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.error_on_non_matrix = error_on_non_matrix
    self.use_running_average = not update_stats
    stats: dict[tuple, nnx.BatchStat] = {}
    for path, param in nnx.state(layer_instance, nnx.Param).flat_state():
      matrix = self._as_matrix(path, param.get_value())
      if matrix is None:
        continue
      key = rngs.params()
      u = initializers.normal()(key, (1, matrix.shape[-1]), param_dtype)
      stats[(*path, "u")] = nnx.BatchStat(u)
      stats[(*path, "sigma")] = nnx.BatchStat(jnp.ones((), param_dtype))
    self.batch_stats = nnx.data(stats)

  def _as_matrix(self, path: tuple, value: jax.Array) -> jax.Array | None:
    if value.ndim <= 1 or self.n_steps < 1:
      return None
    if value.ndim > 2:
      if self.error_on_non_matrix:
        raise LayerArgumentError(
          f"SpectralNorm: the Param at {_layer_path(path)} has {value.ndim} dimensions "
          f"{value.shape}, and error_on_non_matrix=True allows matrices only. Pass "
          "error_on_non_matrix=False to flatten it to (-1, last axis)."
        )
      value = value.reshape(-1, value.shape[-1])
    return value

  def __call__(self, x: Any, update_stats: bool | None = None) -> Any:
    """Normalizes the wrapped layer's weights (in place), then returns ``layer_instance(x)``.

    Args:
      x: the wrapped layer's input.
      update_stats: store the refreshed ``u`` and ``sigma`` (default: not
        ``use_running_average``).
    """
    if update_stats is None:
      update_stats = not self.use_running_average
    for path, param in nnx.state(self.layer_instance, nnx.Param).flat_state():
      self._normalize(path, param, update_stats)
    layer: Any = self.layer_instance  # a Module subclass with __call__
    return layer(x)

  def _normalize(self, path: tuple, param: nnx.Variable, update_stats: bool) -> None:
    value = param.get_value()
    matrix = self._as_matrix(path, value)
    if matrix is None:
      return
    if (*path, "u") not in self.batch_stats or (*path, "sigma") not in self.batch_stats:
      raise _structure_error("SpectralNorm", path, "power-iteration statistics")
    u = self.batch_stats[(*path, "u")][...]
    v = u
    for _ in range(self.n_steps):
      v = _unit(u @ matrix.T, eps=self.epsilon)
      u = _unit(v @ matrix, eps=self.epsilon)
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    sigma = ((v @ matrix) @ u.T)[0, 0]
    normalized = (matrix / jnp.where(sigma != 0, sigma, 1)).reshape(value.shape)
    if update_stats:
      self.batch_stats[(*path, "u")][...] = u
      self.batch_stats[(*path, "sigma")][...] = sigma
    out_dtype = canonicalize_dtype(normalized, u, v, sigma, dtype=self.dtype)
    param[...] = jnp.asarray(normalized, out_dtype)


class WeightNorm(nnx.Module):
  """Rescales the selected weights of a layer to unit L2 norm per feature before each call.

  For each Param picked by ``variable_filter`` the norm is taken over every axis except
  ``feature_axes`` (all axes for ``feature_axes=None``) and the result is multiplied by a
  per-feature ``scale`` (an array in ``scales``, keyed by the Param's path).

  Args:
    layer_instance: the layer to wrap.
    feature_axes: the axes that keep separate norms (default ``-1``: output features).
    use_scale: multiply by ``scales`` (initialized by ``scale_init``).
    scale_init: initializer of the scales; one ``rngs.params()`` key is drawn per scale,
      except for the default ``ones``.
    epsilon: added inside the square root of the L2 normalization.
    dtype: the dtype the normalized weights are written in (default: promotion of the
      weight and its scale).
    param_dtype: the dtype of the scales.
    variable_filter: selects the weights to normalize, by path inside ``layer_instance``.
    promote_dtype: casts the weight and its scale to their common dtype before normalizing
      (called with ``dtype=None``; the result is then cast to ``dtype``).
    rngs: passed to ``scale_init``.

  Example:
    >>> layer = nnx.WeightNorm(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    >>> y = layer(jnp.ones((4, 3)))
    >>> jnp.linalg.norm(layer.layer_instance.kernel[...], axis=0).round(5)
    Array([1., 1.], dtype=float32)
  """

  def __init__(
    self,
    layer_instance: nnx.Module,
    *,
    feature_axes: int | Sequence[int] | None = -1,
    use_scale: bool = True,
    scale_init: Callable[..., Any] = initializers.ones,
    epsilon: float = 1e-12,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    variable_filter: Any = nnx.PathContains("kernel", exact=True),
    promote_dtype: Callable[..., Any] = default_promote_dtype,
    rngs: nnx.Rngs,
  ):
    check_rngs("WeightNorm", rngs)
    self.layer_instance = layer_instance
    self.feature_axes = () if feature_axes is None else feature_axes
    self.use_scale = use_scale
    self.scale_init = scale_init
    self.epsilon = epsilon
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.variable_filter = variable_filter
    self.promote_dtype = promote_dtype
    selected = nnx.filterlib.to_predicate(variable_filter)
    scales = None
    if use_scale:
      scales = {}
      for path, param in nnx.state(layer_instance, nnx.Param).flat_state():
        if selected(path, param):
          shape = tuple(param.shape[a] for a in self._feature_axes(path, param.ndim))
          # The default (ones) needs no key: drawing none keeps later layers' keys as in flax.
          key = None if scale_init is initializers.ones else rngs.params()
          scales[path] = jnp.asarray(scale_init(key, shape, param_dtype))
    self.scales = nnx.data(scales)

  def _feature_axes(self, path: tuple, ndim: int) -> tuple[int, ...]:
    try:
      return normalize_axes(self.feature_axes, ndim) if ndim else ()
    except nnx.ShapeError as e:
      raise nnx.ShapeError(f"WeightNorm: feature_axes for {_layer_path(path)}: {e}") from None

  def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
    """Normalizes the selected weights (in place), then calls ``layer_instance``.

    Args:
      x: the wrapped layer's input.
      *args: more positional arguments for the wrapped layer.
      **kwargs: keyword arguments for the wrapped layer.
    """
    selected = nnx.filterlib.to_predicate(self.variable_filter)
    for path, var in nnx.state(self.layer_instance).flat_state():
      if selected(path, var):
        self._normalize(path, var)
    layer: Any = self.layer_instance  # a Module subclass with __call__
    return layer(x, *args, **kwargs)

  def _normalize(self, path: tuple, var: nnx.Variable) -> None:
    value = var.get_value()
    features = self._feature_axes(path, value.ndim)
    reduce = tuple(a for a in range(value.ndim) if a not in features)
    scale = None
    if self.use_scale:
      if self.scales is None or path not in self.scales:
        raise _structure_error("WeightNorm", path, "scale")
      scale = self.scales[path]
      shape = [value.shape[a] if a in features else 1 for a in range(value.ndim)]
      scale = scale.reshape(shape)
    # Normalized in the common dtype of weight and scale, then cast to `dtype` (as flax does).
    value, scale = self.promote_dtype((value, scale), dtype=None)
    normalized = _unit(value, axis=reduce, eps=self.epsilon)
    if scale is not None:
      normalized = normalized * scale
    # Replaces the value (dtype may change), as flax's set_value; `var[...] =` would cast into it.
    var.set_value(jnp.asarray(normalized, canonicalize_dtype(value, scale, dtype=self.dtype)))
