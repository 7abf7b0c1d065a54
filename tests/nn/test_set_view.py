"""``set_view``: the per-layer hook flax's ``nnx.view`` calls (Dropout, BatchNorm, MHA)."""

import inspect

import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx

fnnx = pytest.importorskip("flax.nnx")


@pytest.mark.parametrize("name", ["Dropout", "BatchNorm", "MultiHeadAttention"])
def test_set_view_signature_matches_flax(name):
  f_sig = inspect.signature(getattr(fnnx, name).set_view).parameters
  p_sig = inspect.signature(getattr(nnx, name).set_view).parameters
  assert [(p.name, p.kind, p.default) for p in f_sig.values()] == [
    (p.name, p.kind, p.default) for p in p_sig.values()
  ]


def test_dropout_and_batch_norm_set_view():
  drop = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
  drop.set_view()  # None leaves the flag alone
  assert drop.deterministic is False
  drop.set_view(deterministic=True)
  x = jnp.arange(1.0, 5.0)
  np.testing.assert_array_equal(drop(x), x)
  bn = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
  bn.set_view(use_running_average=True)
  bn(jnp.ones((3, 2)) * 4)
  assert float(bn.mean[...].sum()) == 0.0  # running averages were read, not updated


def test_mha_set_view_creates_the_cache_and_decodes():
  layer = nnx.MultiHeadAttention(2, 4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  layer.set_view(deterministic=True, decode=True, batch_size=(2, 3), max_length=6)
  assert layer.deterministic and layer.decode
  assert layer.cached_key.shape == (2, 3, 6, 2, 2) and layer.cached_key.dtype == jnp.bfloat16
  assert layer(jnp.ones((2, 3, 1, 4), jnp.bfloat16)).shape == (2, 3, 1, 4)
  assert int(layer.cache_index[...]) == 1
  layer.set_view(decode=True, batch_size=9, max_length=9)  # an existing cache is kept
  assert layer.cached_key.shape == (2, 3, 6, 2, 2) and int(layer.cache_index[...]) == 1
  layer.set_view(decode=False)
  assert layer.decode is False
  # decoding token by token through set_view equals full causal attention
  full = nnx.MultiHeadAttention(2, 4, decode=False, rngs=nnx.Rngs(1))
  step = nnx.MultiHeadAttention(2, 4, rngs=nnx.Rngs(1))
  step.set_view(decode=True, batch_size=1, max_length=3)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 4)).astype(np.float32))
  expected = full(x, mask=nnx.make_causal_mask(jnp.ones((1, 3))))
  got = jnp.concatenate([step(x[:, i : i + 1]) for i in range(3)], axis=1)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_mha_set_view_errors():
  layer = nnx.MultiHeadAttention(2, 4, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.ConfigError, match="decode=True needs batch_size"):
    layer.set_view(decode=True, max_length=4)
  with pytest.raises(TypeError, match="decode=True needs max_length"):
    layer.set_view(decode=True, batch_size=1)
  assert layer.decode is None and layer.cached_key is None  # nothing changed
