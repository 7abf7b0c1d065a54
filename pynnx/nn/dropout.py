"""Dropout: zero a random fraction ``rate`` of the inputs while training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

import pynnx as nnx

from .dtypes import LayerArgumentError


def _key_from(rngs: Any, rng_collection: str) -> jax.Array:
  if isinstance(rngs, nnx.Rngs):
    return rngs[rng_collection]()
  if isinstance(rngs, nnx.RngStream):
    return rngs()
  if isinstance(rngs, jax.Array):
    if jnp.issubdtype(rngs.dtype, jax.dtypes.prng_key):
      return rngs
    return jax.random.wrap_key_data(rngs)
  raise nnx.RngError(
    f"Dropout: rngs must be an nnx.Rngs, an nnx.RngStream or a PRNG key, got {type(rngs).__name__}."
  )


class Dropout(nnx.Module):
  """Randomly zeroes inputs with probability ``rate`` and scales the rest by ``1 / (1 - rate)``.

  ``deterministic=True`` (set by ``model.eval()``) makes it the identity; ``model.train()``
  sets it back to ``False``. Randomness comes from the stream forked at construction
  (``rngs=`` there stores ``rngs[rng_collection].fork()``) or from ``rngs=`` at call time,
  which wins. ``broadcast_dims`` share one mask along those axes (e.g. whole-channel dropout).

  Example:
    >>> drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    >>> y = drop(jnp.ones((4, 8)))
    >>> sorted(set(y.ravel().tolist()))   # kept entries are scaled by 1 / (1 - 0.5)
    [0.0, 2.0]
    >>> drop.eval(); bool((drop(jnp.ones(3)) == 1).all())
    True
  """

  def __init__(
    self,
    rate: float,
    *,
    broadcast_dims: Sequence[int] = (),
    deterministic: bool | None = False,
    rng_collection: str = "dropout",
    rngs: nnx.Rngs | nnx.RngStream | None = None,
  ):
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
      raise LayerArgumentError(f"Dropout: rate must be a number in [0, 1], got {rate!r}.")
    self.rate = rate
    self.broadcast_dims = tuple(int(d) for d in broadcast_dims)
    self.deterministic = deterministic
    self.rng_collection = rng_collection
    if isinstance(rngs, nnx.Rngs):
      self.rngs: nnx.RngStream | None = rngs[rng_collection].fork()
    elif isinstance(rngs, nnx.RngStream):
      self.rngs = rngs.fork()
    elif rngs is None:
      self.rngs = None
    else:
      raise nnx.RngError(
        f"Dropout: rngs must be an nnx.Rngs, an nnx.RngStream or None at construction, got "
        f"{type(rngs).__name__}."
      )

  def set_view(self, deterministic: bool | None = None) -> None:
    """Sets the static ``deterministic`` flag (the hook flax's ``nnx.view`` calls).

    Args:
      deterministic: if True, disables dropout masking.

    Example:
      >>> layer = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
      >>> layer.set_view(deterministic=True)
      >>> layer.deterministic
      True
    """
    if deterministic is not None:
      self._pynnx_setattr("deterministic", deterministic)

  def __call__(
    self,
    inputs: jax.Array,
    *,
    deterministic: bool | None = None,
    rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
  ) -> jax.Array:
    deterministic = self.deterministic if deterministic is None else deterministic
    if deterministic is None:
      raise LayerArgumentError(
        "Dropout: deterministic is None both on the layer and in the call; pass "
        "deterministic=True/False to the call, or set it with model.train() / model.eval()."
      )
    if deterministic or self.rate == 0.0:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    if rngs is None:
      if self.rngs is None:
        raise nnx.RngError(
          "Dropout in training mode (deterministic=False) needs randomness, but it has no rng "
          "stream: pass rngs=nnx.Rngs(dropout=...) at construction, or rngs=... (an Rngs, "
          "RngStream or key) at call time, or call model.eval() / deterministic=True."
        )
      key = self.rngs()
    else:
      key = _key_from(rngs, self.rng_collection)
    shape = list(jnp.shape(inputs))
    for d in self.broadcast_dims:
      if not -len(shape) <= d < len(shape):
        raise nnx.ShapeError(
          f"Dropout: broadcast_dims {self.broadcast_dims} do not fit an input of shape "
          f"{jnp.shape(inputs)}."
        )
      shape[d] = 1
    keep = 1.0 - self.rate
    mask = jnp.broadcast_to(jax.random.bernoulli(key, keep, tuple(shape)), jnp.shape(inputs))
    return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


__all__ = ["Dropout"]
