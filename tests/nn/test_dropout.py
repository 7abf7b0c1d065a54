import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx


def test_dropout_mask_and_scaling():
  drop = nnx.Dropout(0.25, rngs=nnx.Rngs(dropout=0))
  x = jnp.ones((200, 50))
  y = drop(x)
  assert set(np.unique(np.asarray(y)).tolist()) <= {0.0, float(np.float32(1 / 0.75))}
  assert abs(float((y == 0).mean()) - 0.25) < 0.02
  assert not np.array_equal(y, drop(x))  # the stored stream advances


def test_dropout_key_at_call_matches_bernoulli():
  drop = nnx.Dropout(0.5)
  key = jax.random.key(3)
  x = jnp.arange(1.0, 9.0)
  keep = jax.random.bernoulli(key, 0.5, (8,))
  np.testing.assert_array_equal(drop(x, rngs=key), np.where(keep, x * 2, 0.0))
  np.testing.assert_array_equal(
    drop(x, rngs=nnx.Rngs(dropout=3)), drop(x, rngs=nnx.Rngs(dropout=3).dropout)
  )


def test_dropout_broadcast_dims_rate_edges_and_modes():
  drop = nnx.Dropout(0.5, broadcast_dims=(0,), rngs=nnx.Rngs(0))
  y = drop(jnp.ones((6, 20)))
  assert (y == y[0]).all()  # one mask shared along axis 0
  assert (nnx.Dropout(1.0, rngs=nnx.Rngs(0))(jnp.ones(3)) == 0).all()
  assert (nnx.Dropout(0.0)(jnp.ones(3)) == 1).all()  # rate 0 needs no rng
  drop.eval()
  assert drop.deterministic is True and (drop(jnp.ones(4)) == 1).all()
  drop.train()
  assert drop.deterministic is False
  assert (drop(jnp.ones(4), deterministic=True) == 1).all()  # the call overrides


def test_dropout_under_jit_returns_updated_stream():
  drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1))
  x = jnp.ones((4, 4))
  y1, drop = jax.jit(lambda m, x: (m(x), m))(drop, x)
  y2, drop = jax.jit(lambda m, x: (m(x), m))(drop, x)
  assert not np.array_equal(y1, y2)
  assert int(drop.rngs.count[...]) == 2


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_dropout_errors():
  with pytest.raises(nnx.RngError, match="pass rngs=nnx.Rngs\\(dropout=...\\) at construction"):
    nnx.Dropout(0.5)(jnp.ones(3))
  with pytest.raises(nnx.LayerArgumentError, match=r"rate must be a number in \[0, 1\], got 1.5"):
    nnx.Dropout(1.5)
  with pytest.raises(nnx.RngError, match="at construction, got int"):
    nnx.Dropout(0.5, rngs=3)
  with pytest.raises(nnx.RngError, match="a PRNG key, got str"):
    nnx.Dropout(0.5)(jnp.ones(3), rngs="key")
  with pytest.raises(nnx.LayerArgumentError, match="deterministic is None"):
    nnx.Dropout(0.5, deterministic=None)(jnp.ones(3))
  with pytest.raises(nnx.ShapeError, match="broadcast_dims"):
    nnx.Dropout(0.5, broadcast_dims=(3,))(jnp.ones(3), rngs=jax.random.key(0))
