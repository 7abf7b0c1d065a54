import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx


def _arr(*shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _norm(x, axes, eps, mean=True):
  m = x.mean(axes, keepdims=True) if mean else 0.0
  v = ((x - m) ** 2).mean(axes, keepdims=True)
  return (x - m) / np.sqrt(v + eps)


def _set_affine(layer, n):
  layer.scale[...] = jnp.asarray(_arr(n, seed=7))
  if getattr(layer, "bias", None) is not None:
    layer.bias[...] = jnp.asarray(_arr(n, seed=8))
  bias = np.asarray(layer.bias[...]) if getattr(layer, "bias", None) is not None else 0.0
  return np.asarray(layer.scale[...]), bias


def test_batchnorm_train_eval_and_running_stats():
  bn = nnx.BatchNorm(3, momentum=0.9, rngs=nnx.Rngs(0))
  assert bn.mean.shape == bn.var.shape == bn.scale.shape == bn.bias.shape == (3,)
  assert isinstance(bn.mean, nnx.BatchStat) and isinstance(bn.scale, nnx.Param)
  scale, bias = _set_affine(bn, 3)
  x = _arr(16, 3) * 2 + 1
  np.testing.assert_allclose(
    bn(jnp.asarray(x)), _norm(x, 0, 1e-5) * scale + bias, rtol=1e-4, atol=1e-5
  )
  np.testing.assert_allclose(bn.mean[...], 0.1 * x.mean(0), rtol=1e-5)
  np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * x.var(0), rtol=1e-5)
  bn.eval()
  assert bn.use_running_average is True
  mean, var = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
  np.testing.assert_allclose(
    bn(jnp.asarray(x)), (x - mean) / np.sqrt(var + 1e-5) * scale + bias, rtol=1e-4, atol=1e-5
  )
  np.testing.assert_allclose(bn.mean[...], mean)  # unchanged in eval mode
  bn.train()
  assert bn.use_running_average is False


def test_batchnorm_axis_mask_and_jit():
  bn = nnx.BatchNorm(
    4, axis=1, use_fast_variance=False, use_scale=False, use_bias=False, rngs=nnx.Rngs(0)
  )
  x = _arr(5, 4, 3)
  y, bn = jax.jit(lambda m, x: (m(x), m))(bn, jnp.asarray(x))
  np.testing.assert_allclose(y, _norm(x, (0, 2), 1e-5), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(bn.mean[...], 0.01 * x.mean((0, 2)), rtol=1e-4, atol=1e-7)
  mask = np.ones((5, 4, 3), bool)
  mask[3:] = False
  bn2 = nnx.BatchNorm(4, axis=1, rngs=nnx.Rngs(0))
  y = bn2(jnp.asarray(x), mask=jnp.asarray(mask))
  np.testing.assert_allclose(y[:3], _norm(x[:3], (0, 2), 1e-5), rtol=1e-4, atol=1e-4)


def test_batchnorm_axis_name_pmean_under_vmap():
  bn = nnx.BatchNorm(2, axis_name="batch", use_running_average=False, rngs=nnx.Rngs(0))
  x = _arr(4, 3, 2)  # vmap over 4 "devices", each with a batch of 3

  def step(m, xi):
    return m(xi)

  y = jax.vmap(step, in_axes=(None, 0), axis_name="batch")(bn, jnp.asarray(x))
  # Statistics averaged across the mapped axis equal the statistics of the whole batch.
  np.testing.assert_allclose(y, _norm(x, (0, 1), 1e-5), rtol=1e-4, atol=1e-4)


def test_layernorm_and_rmsnorm():
  ln = nnx.LayerNorm(5, rngs=nnx.Rngs(0))
  scale, bias = _set_affine(ln, 5)
  x = _arr(2, 3, 5)
  np.testing.assert_allclose(
    ln(jnp.asarray(x)), _norm(x, -1, 1e-6) * scale + bias, rtol=1e-4, atol=1e-5
  )
  ln2 = nnx.LayerNorm(
    5, reduction_axes=(1, 2), use_fast_variance=False, use_bias=False, rngs=nnx.Rngs(0)
  )
  np.testing.assert_allclose(ln2(jnp.asarray(x)), _norm(x, (1, 2), 1e-6), rtol=1e-4, atol=1e-5)
  rms = nnx.RMSNorm(5, epsilon=1e-3, rngs=nnx.Rngs(0))
  assert not hasattr(rms, "bias")
  scale, _ = _set_affine(rms, 5)
  want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-3) * scale
  np.testing.assert_allclose(rms(jnp.asarray(x)), want, rtol=1e-4, atol=1e-5)


def test_norm_dtypes_under_strict_promotion():
  x = jnp.asarray(_arr(2, 4), jnp.bfloat16)
  assert nnx.LayerNorm(4, rngs=nnx.Rngs(0))(x).dtype == jnp.float32  # promotes with f32 params
  ln = nnx.LayerNorm(4, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert ln.scale.dtype == jnp.bfloat16 and ln(x).dtype == jnp.bfloat16
  bn = nnx.BatchNorm(4, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert bn(x).dtype == jnp.bfloat16 and bn.mean.dtype == jnp.float32


def test_groupnorm():
  gn = nnx.GroupNorm(6, num_groups=3, rngs=nnx.Rngs(0))
  assert gn.group_size == 2
  scale, bias = _set_affine(gn, 6)
  x = _arr(2, 4, 6)
  g = x.reshape(2, 4, 3, 2)
  want = _norm(g, (1, 3), 1e-6).reshape(2, 4, 6) * scale + bias
  np.testing.assert_allclose(gn(jnp.asarray(x)), want, rtol=1e-4, atol=1e-5)
  by_size = nnx.GroupNorm(
    6, num_groups=None, group_size=3, use_scale=False, use_bias=False, rngs=nnx.Rngs(0)
  )
  np.testing.assert_allclose(
    by_size(jnp.asarray(x)),
    _norm(x.reshape(2, 4, 2, 3), (1, 3), 1e-6).reshape(2, 4, 6),
    rtol=1e-4,
    atol=1e-5,
  )
  # reduction_axes that skip an inner axis: statistics per (example, row, group).
  inner = nnx.GroupNorm(
    8, num_groups=2, reduction_axes=(-2, -1), use_scale=False, use_bias=False, rngs=nnx.Rngs(0)
  )
  x = _arr(2, 3, 4, 8)
  want = _norm(x.reshape(2, 3, 4, 2, 4), (2, 4), 1e-6).reshape(2, 3, 4, 8)
  np.testing.assert_allclose(inner(jnp.asarray(x)), want, rtol=1e-4, atol=1e-5)


def test_instancenorm():
  inorm = nnx.InstanceNorm(3, rngs=nnx.Rngs(0))
  scale, bias = _set_affine(inorm, 3)
  x = _arr(2, 5, 4, 3)
  np.testing.assert_allclose(
    inorm(jnp.asarray(x)), _norm(x, (1, 2), 1e-6) * scale + bias, rtol=1e-4, atol=1e-5
  )
  channels_first = nnx.InstanceNorm(
    4, feature_axes=1, use_scale=False, use_bias=False, rngs=nnx.Rngs(0)
  )
  x = _arr(2, 4, 5)
  np.testing.assert_allclose(
    channels_first(jnp.asarray(x)), _norm(x, 2, 1e-6), rtol=1e-4, atol=1e-5
  )


def test_norm_errors():
  with pytest.raises(nnx.ShapeError, match="BatchNorm was built for num_features=3 .* has 4"):
    nnx.BatchNorm(3, rngs=nnx.Rngs(0))(jnp.ones((2, 4)))
  with pytest.raises(nnx.ShapeError, match="LayerNorm was built for num_features=3"):
    nnx.LayerNorm(3, rngs=nnx.Rngs(0))(jnp.ones((2, 4)))
  with pytest.raises(nnx.ShapeError, match="RMSNorm: axis 2 is out of range"):
    nnx.RMSNorm(3, reduction_axes=2, rngs=nnx.Rngs(0))(jnp.ones((3,)))
  with pytest.raises(nnx.LayerArgumentError, match="exactly one of num_groups and group_size"):
    nnx.GroupNorm(6, num_groups=2, group_size=3, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.LayerArgumentError, match="num_groups=4 does not divide num_features=6"):
    nnx.GroupNorm(6, num_groups=4, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.LayerArgumentError, match="group_size=4 does not divide"):
    nnx.GroupNorm(6, num_groups=None, group_size=4, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.LayerArgumentError, match="must include the feature axis"):
    nnx.GroupNorm(6, num_groups=2, reduction_axes=1, rngs=nnx.Rngs(0))(jnp.ones((2, 3, 6)))
  with pytest.raises(nnx.ShapeError, match="GroupNorm needs an input with a feature axis"):
    nnx.GroupNorm(6, num_groups=2, rngs=nnx.Rngs(0))(jnp.ones(()))
  with pytest.raises(nnx.LayerArgumentError, match="batch axis 0 cannot be a feature axis"):
    nnx.InstanceNorm(2, feature_axes=0, rngs=nnx.Rngs(0))(jnp.ones((2, 3)))
  with pytest.raises(nnx.LayerArgumentError, match=r"momentum must be in \[0, 1\]"):
    nnx.BatchNorm(3, momentum=1.5, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.LayerArgumentError, match="use_running_average is None"):
    nnx.BatchNorm(3, use_running_average=None, rngs=nnx.Rngs(0))(jnp.ones((2, 3)))
  with pytest.raises(nnx.LayerArgumentError, match="num_features must be an integer >= 1"):
    nnx.LayerNorm(0, rngs=nnx.Rngs(0))
