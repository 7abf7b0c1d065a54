import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx
from pynnx.nn import activations


def test_activations_are_jax_functions():
  for name in activations.__all__:
    if name == "PReLU":
      continue
    fn = getattr(nnx, name)
    assert fn is getattr(jax.nn, name, None) or fn is getattr(jnp, name), name
  x = jnp.array([-1.0, 0.0, 2.0])
  np.testing.assert_allclose(nnx.relu(x), [0.0, 0.0, 2.0])
  np.testing.assert_allclose(nnx.softmax(x).sum(), 1.0, rtol=1e-6)


def test_prelu():
  layer = nnx.PReLU(0.1)
  assert isinstance(layer.negative_slope, nnx.Param) and layer.negative_slope.shape == ()
  x = jnp.array([-2.0, 0.5])
  np.testing.assert_allclose(layer(x), [-0.2, 0.5], rtol=1e-6)
  grads = jax.grad(lambda m: m(x).sum())(layer)
  np.testing.assert_allclose(grads.negative_slope[...], -2.0)


def test_initializers_module():
  key = jax.random.key(0)
  assert nnx.initializers.zeros_init()(key, (2,)).tolist() == [0.0, 0.0]
  assert nnx.initializers.ones_init()(key, (2,)).tolist() == [1.0, 1.0]
  w = nnx.initializers.kaiming_normal()(key, (64, 32))
  assert w.shape == (64, 32) and 0.1 < float(w.std()) < 0.25  # sqrt(2 / 64) ~ 0.18
  for name in nnx.initializers.__all__:
    assert hasattr(nnx.initializers, name)


def _windows(x, k, s):
  """x (N, L, C) → (N, out, k, C) windows along axis 1."""
  out = (x.shape[1] - k) // s + 1
  return np.stack([x[:, i * s : i * s + k] for i in range(out)], axis=1)


def test_pools_against_windows():
  x = np.random.default_rng(0).normal(size=(2, 7, 3)).astype(np.float32)
  w = _windows(x, 3, 2)
  np.testing.assert_allclose(nnx.avg_pool(jnp.asarray(x), (3,), strides=(2,)), w.mean(2), rtol=1e-6)
  np.testing.assert_allclose(nnx.max_pool(jnp.asarray(x), (3,), strides=(2,)), w.max(2))
  np.testing.assert_allclose(nnx.min_pool(jnp.asarray(x), (3,), strides=(2,)), w.min(2))


def test_pool_padding_and_no_batch_axis():
  x = jnp.arange(1.0, 5.0).reshape(4, 1)  # no batch axis
  same = nnx.avg_pool(x, (3,), padding="SAME")
  np.testing.assert_allclose(same[:, 0], [1.0, 2.0, 3.0, 7.0 / 3.0], rtol=1e-6)
  exact = nnx.avg_pool(x, (3,), padding="SAME", count_include_pad=False)
  np.testing.assert_allclose(exact[:, 0], [1.5, 2.0, 3.0, 3.5], rtol=1e-6)
  neg = -jnp.ones((1, 3, 1))
  np.testing.assert_allclose(nnx.max_pool(neg, (2,), padding=((1, 1),))[0, :, 0], [-1.0] * 4)
  ints = jnp.array([[[3], [1], [2]]], jnp.int32)
  assert nnx.max_pool(ints, (2,), padding="SAME").tolist() == [[[3], [2], [2]]]
  assert nnx.min_pool(ints, (2,)).tolist() == [[[1], [1]]]


def test_pool_errors():
  with pytest.raises(nnx.ShapeError, match=r"pool: a window of 2 dimensions \(2, 2\) needs inputs"):
    nnx.max_pool(jnp.ones((4, 4)), (2, 2))
  with pytest.raises(nnx.LayerArgumentError, match="strides .* one entry per window dimension"):
    nnx.avg_pool(jnp.ones((1, 4, 4, 1)), (2, 2), strides=(1,))
  with pytest.raises(nnx.LayerArgumentError, match="one \\(low, high\\) pair per window"):
    nnx.min_pool(jnp.ones((1, 4, 4, 1)), (2, 2), padding=((1, 1),))


def test_dtype_helpers():
  from pynnx.nn.dtypes import canonicalize_dtype, promote_dtype

  assert canonicalize_dtype(jnp.ones(2, jnp.int32)) == jnp.float32
  assert canonicalize_dtype(jnp.ones(2, jnp.int32), inexact=False) == jnp.int32
  assert canonicalize_dtype(None, jnp.ones(2, jnp.bfloat16)) == jnp.bfloat16
  a, b, c = promote_dtype((jnp.ones(2, jnp.bfloat16), jnp.ones(2), None))
  assert a.dtype == b.dtype == jnp.float32 and c is None
  with pytest.raises(
    nnx.LayerArgumentError, match="must be a floating or complex dtype, got int32"
  ):
    canonicalize_dtype(jnp.ones(2), dtype=jnp.int32)


class _PoolCNN(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.out = nnx.Linear(4 * 4 * 4, 3, rngs=rngs)

  def __call__(self, x, pool):
    y = pool(nnx.relu(self.conv(x)), (2, 2), strides=(2, 2))
    return self.out(y.reshape(y.shape[0], -1))


@pytest.mark.parametrize("pool", [nnx.avg_pool, nnx.max_pool, nnx.min_pool])
def test_pool_grad_under_jit(pool):
  # The window init value must stay a constant under jit, or reverse-mode autodiff fails.
  model = _PoolCNN(nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))

  def loss(m, x):
    return (m(x, pool) ** 2).mean()

  eager = nnx.grad(loss)(model, x)
  by_nnx = nnx.jit(nnx.grad(loss))(model, x)
  by_jax = jax.jit(jax.grad(loss))(model, x)
  for g in (by_nnx, by_jax):
    np.testing.assert_allclose(g.conv.kernel[...], eager.conv.kernel[...], rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(eager.conv.kernel[...]).sum()) > 0
  window_grad = jax.jit(jax.grad(lambda x: pool(x, (2,), strides=(2,)).sum()))(x[0, 0])
  assert window_grad.shape == (8, 1)
  if pool is nnx.avg_pool:
    np.testing.assert_allclose(window_grad, 0.5)
  else:  # exactly one winner per window
    np.testing.assert_allclose(window_grad.sum(), 4.0)
