"""Embedding lookup tables: :class:`Embed`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Inexact

import pynnx as nnx

from . import initializers
from .dtypes import InputShapeError, check_rngs, check_size, promote_dtype

default_embed_init = initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)

_NO_METADATA: Mapping[str, Any] = {}


@nnx.typed
class Embed(nnx.Module):
  """Maps integer ids to rows of a learned ``embedding`` table ``(num_embeddings, features)``.

  ``attend(query)`` is the transposed use: it scores a query against every row
  (``query @ embedding.T``), e.g. for tied output logits.

  Example:
    >>> embed = nnx.Embed(10, 4, rngs=nnx.Rngs(0))
    >>> embed(jnp.array([[1, 2, 3]])).shape
    (1, 3, 4)
    >>> embed.attend(jnp.ones((2, 4))).shape
    (2, 10)
  """

  embedding: nnx.Param[Inexact[Array, "num_embeddings features"]]

  def __init__(
    self,
    num_embeddings: int,
    features: int,
    *,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    embedding_init: Any = default_embed_init,
    promote_dtype: Callable = promote_dtype,
    rngs: nnx.Rngs,
    embedding_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("Embed", rngs)
    check_size("Embed", "num_embeddings", num_embeddings)
    check_size("Embed", "features", features)
    self.embedding = nnx.Param(
      embedding_init(rngs.params(), (num_embeddings, features), param_dtype), **embedding_metadata
    )
    self.num_embeddings = num_embeddings
    self.features = features
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.embedding_init = embedding_init
    self.promote_dtype = promote_dtype

  def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
    """Looks up ``inputs`` (integer ids); the result has shape ``inputs.shape + (features,)``."""
    if not jnp.issubdtype(jnp.result_type(inputs), jnp.integer):
      raise nnx.ShapeError(
        f"Embed takes integer ids, got an input of dtype {jnp.result_type(inputs)}. Cast the "
        f"ids with `.astype(jnp.int32)`, or use `embed.attend(x)` to score vectors."
      )
    (table,) = self.promote_dtype((self.embedding[...],), dtype=self.dtype, inexact=False)
    if self.num_embeddings == 1:
      # A one-row table: every id maps to that row (no gather needed).
      out = jnp.broadcast_to(table[0], jnp.shape(inputs) + (self.features,))
      return out
    if out_sharding is not None:
      return table.at[inputs].get(out_sharding=out_sharding)
    return table[(inputs,)]

  def attend(self, query: jax.Array, out_sharding: Any = None) -> jax.Array:
    """Scores ``query`` (``(..., features)``) against every embedding: ``query @ embedding.T``."""
    if jnp.ndim(query) == 0 or jnp.shape(query)[-1] != self.features:
      raise InputShapeError(
        f"Embed.attend expects queries with {self.features} features on the last axis, got "
        f"shape {jnp.shape(query)}."
      )
    query, table = self.promote_dtype((query, self.embedding[...]), dtype=self.dtype)
    extra = {} if out_sharding is None else {"out_sharding": out_sharding}
    return jax.lax.dot_general(query, table, (((query.ndim - 1,), (1,)), ((), ())), **extra)


__all__ = ["Embed"]
