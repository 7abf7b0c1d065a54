import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx


def _arr(*shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def np_init(key, shape, dtype=jnp.float32):
  """Compile-free kernel initializer: keeps these tests fast on small CPUs."""
  return jnp.asarray(np.random.default_rng(sum(shape)).normal(size=shape) / shape[0], dtype)


def _conv1d_ref(x, w, b, stride=1, pad=(0, 0), dil=1):
  """Direct loops: x (N, L, C), w (K, C, O)."""
  x = np.pad(np.asarray(x), ((0, 0), pad, (0, 0)))
  k = w.shape[0]
  span = (k - 1) * dil + 1
  out_len = (x.shape[1] - span) // stride + 1
  y = np.zeros((x.shape[0], out_len, w.shape[2]), np.float32)
  for i in range(out_len):
    for j in range(k):
      y[:, i] += x[:, i * stride + j * dil] @ np.asarray(w[j])
  return y + np.asarray(b)


@pytest.mark.parametrize(
  "padding,stride,dil,pad",
  [
    ("VALID", 1, 1, (0, 0)),
    ("SAME", 1, 1, (1, 1)),
    ("VALID", 2, 1, (0, 0)),
    ("CAUSAL", 1, 2, (4, 0)),
    (((2, 1),), 1, 1, (2, 1)),
    (1, 2, 1, (1, 1)),
  ],
)
def test_conv1d_against_loops(padding, stride, dil, pad):
  conv = nnx.Conv(
    2,
    3,
    3,
    strides=stride,
    padding=padding,
    kernel_dilation=dil,
    kernel_init=np_init,
    rngs=nnx.Rngs(0),
  )
  conv.bias[...] = _arr(3, seed=5)
  assert conv.kernel.shape == (3, 2, 3) and conv.bias.shape == (3,)
  x = _arr(2, 8, 2)
  want = _conv1d_ref(x, conv.kernel[...], conv.bias[...], stride, pad, dil)
  np.testing.assert_allclose(conv(x), want, rtol=1e-5, atol=1e-5)


def test_conv_circular_is_periodic():
  conv = nnx.Conv(
    1, 1, 3, padding="CIRCULAR", use_bias=False, kernel_init=np_init, rngs=nnx.Rngs(0)
  )
  x = _arr(1, 6, 1)
  xp = jnp.concatenate([x[:, -1:], x, x[:, :1]], axis=1)
  np.testing.assert_allclose(conv(x), _conv1d_ref(xp, conv.kernel[...], 0.0), rtol=1e-5, atol=1e-5)


def test_conv2d_groups_batch_axes_and_jit():
  conv = nnx.Conv(4, 6, (3, 3), feature_group_count=2, kernel_init=np_init, rngs=nnx.Rngs(0))
  assert conv.kernel.shape == (3, 3, 2, 6)
  x = _arr(2, 3, 5, 5, 4)  # two batch axes
  y = jax.jit(lambda m, x: m(x))(conv, x)
  assert y.shape == (2, 3, 5, 5, 6)
  np.testing.assert_allclose(y[1, 2], conv(x[1, 2]), rtol=1e-5, atol=1e-5)  # no batch axis
  # Group 0 of the outputs only sees group 0 of the inputs.
  x2 = x.at[..., 2:].set(0.0)
  np.testing.assert_allclose(conv(x2)[..., :3], y[..., :3], rtol=1e-5, atol=1e-5)


def test_conv_mask_zeroes_kernel_entries():
  mask = jnp.zeros((3, 2, 3)).at[1].set(1.0)
  conv = nnx.Conv(2, 3, 3, mask=mask, kernel_init=np_init, rngs=nnx.Rngs(0))
  x = _arr(1, 5, 2)
  np.testing.assert_allclose(conv(x), x @ conv.kernel[1], rtol=1e-5, atol=1e-5)


def test_conv_transpose_is_gradient_of_conv():
  # With transpose_kernel=True, ConvTranspose(strides=s) is the adjoint of Conv(strides=s).
  conv = nnx.Conv(
    2, 3, (3,), strides=2, padding="VALID", use_bias=False, kernel_init=np_init, rngs=nnx.Rngs(0)
  )
  up = nnx.ConvTranspose(
    3,
    2,
    (3,),
    strides=2,
    padding="VALID",
    use_bias=False,
    transpose_kernel=True,
    kernel_init=np_init,
    rngs=nnx.Rngs(0),
  )
  assert up.kernel.shape == conv.kernel.shape == (3, 2, 3)
  up.kernel[...] = conv.kernel[...]
  x, g = _arr(1, 9, 2), _arr(1, 4, 3, seed=1)
  _, vjp = jax.vjp(conv, x)
  np.testing.assert_allclose(up(g), vjp(g)[0], rtol=1e-5, atol=1e-5)


def test_conv_transpose_shapes():
  up = nnx.ConvTranspose(4, 3, (4, 4), strides=2, kernel_init=np_init, rngs=nnx.Rngs(0))
  assert up.kernel.shape == (4, 4, 4, 3)
  assert up(jnp.ones((2, 5, 5, 4))).shape == (2, 10, 10, 3)
  circ = nnx.ConvTranspose(
    2, 2, (3,), strides=2, padding="CIRCULAR", kernel_init=np_init, rngs=nnx.Rngs(0)
  )
  assert circ(jnp.ones((6, 2))).shape == (12, 2)
  # A constant input stays constant under circular wrapping (every output sees the same taps).
  y = circ(jnp.ones((1, 6, 2)))
  np.testing.assert_allclose(y[0, 0::2], np.broadcast_to(y[0, 0], (6, 2)), rtol=1e-5)


def test_conv_errors():
  conv = nnx.Conv(3, 4, (3, 3), kernel_init=np_init, rngs=nnx.Rngs(0))
  with pytest.raises(
    nnx.ShapeError,
    match=r"Conv expects inputs of shape \(\*batch, 2 spatial "
    r"axes, 3 features\), got shape \(2, 5, 5, 2\)",
  ):
    conv(jnp.ones((2, 5, 5, 2)))
  with pytest.raises(nnx.ShapeError, match="got shape"):
    conv(jnp.ones((5, 3)))
  with pytest.raises(nnx.LayerArgumentError, match="feature_group_count=2 must divide"):
    nnx.Conv(3, 4, 3, feature_group_count=2, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.LayerArgumentError, match="only defined for 1D"):
    nnx.Conv(3, 4, (3, 3), padding="CAUSAL", rngs=nnx.Rngs(0))
  with pytest.raises(nnx.LayerArgumentError, match="unknown padding 'FULL'"):
    nnx.Conv(3, 4, 3, padding="FULL", rngs=nnx.Rngs(0))
  with pytest.raises(nnx.LayerArgumentError, match="padding .* one entry per spatial"):
    nnx.Conv(3, 4, (3, 3), padding=((1, 1),), rngs=nnx.Rngs(0))
  with pytest.raises(nnx.LayerArgumentError, match="strides needs one entry per spatial"):
    nnx.Conv(3, 4, (3, 3), strides=(1, 1, 1), rngs=nnx.Rngs(0))
  with pytest.raises(nnx.LayerArgumentError, match="kernel_size must be an integer >= 1"):
    nnx.Conv(3, 4, 0, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.LayerArgumentError, match="padding='CAUSAL' is not supported"):
    nnx.ConvTranspose(3, 4, 3, padding="CAUSAL", rngs=nnx.Rngs(0))
  up = nnx.ConvTranspose(3, 4, 3, kernel_init=np_init, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.ShapeError, match="ConvTranspose expects inputs"):
    up(jnp.ones((2, 5, 4)))
  masked = nnx.Conv(3, 4, 3, mask=jnp.ones((2, 3, 4)), kernel_init=np_init, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.ShapeError, match="mask of shape"):
    masked(jnp.ones((1, 5, 3)))
