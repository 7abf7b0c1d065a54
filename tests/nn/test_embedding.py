import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx


def test_embed_lookup_and_attend():
  embed = nnx.Embed(10, 4, rngs=nnx.Rngs(0))
  assert embed.embedding.shape == (10, 4) and embed.embedding.dtype == jnp.float32
  table = np.asarray(embed.embedding[...])
  ids = jnp.array([[1, 2], [9, 0]])
  np.testing.assert_array_equal(embed(ids), table[np.asarray(ids)])
  q = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
  np.testing.assert_allclose(embed.attend(q), np.asarray(q) @ table.T, rtol=1e-5, atol=1e-6)


def test_embed_single_row_dtype_and_grad():
  one = nnx.Embed(1, 3, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(
    one(jnp.zeros((2, 2), jnp.int32)), np.broadcast_to(one.embedding[0], (2, 2, 3))
  )
  half = nnx.Embed(5, 2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert half(jnp.array([1])).dtype == jnp.bfloat16
  embed = nnx.Embed(5, 2, rngs=nnx.Rngs(0))
  grads = jax.grad(lambda m: m(jnp.array([1, 1, 3])).sum())(embed)
  np.testing.assert_allclose(grads.embedding[...][:, 0], [0, 2, 0, 1, 0])


def test_embed_errors():
  embed = nnx.Embed(5, 2, rngs=nnx.Rngs(0))
  with pytest.raises(
    nnx.ShapeError, match="Embed takes integer ids, got an input of dtype float32"
  ):
    embed(jnp.ones((2,)))
  with pytest.raises(nnx.ShapeError, match="attend expects queries with 2 features"):
    embed.attend(jnp.ones((2, 3)))
  with pytest.raises(nnx.LayerArgumentError, match="num_embeddings must be an integer >= 1"):
    nnx.Embed(0, 2, rngs=nnx.Rngs(0))
