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


def test_linear_params_and_formula():
  layer = nnx.Linear(3, 4, rngs=nnx.Rngs(0))  # default initializers
  assert layer.kernel.shape == (3, 4) and layer.bias.shape == (4,)
  assert layer.kernel.dtype == jnp.float32
  np.testing.assert_array_equal(layer.bias[...], np.zeros(4))
  layer.bias[...] = _arr(4, seed=1)
  x = _arr(2, 5, 3)
  np.testing.assert_allclose(layer(x), x @ layer.kernel[...] + layer.bias[...], rtol=1e-5)


def test_linear_no_bias_dtypes_and_metadata():
  layer = nnx.Linear(
    3,
    2,
    use_bias=False,
    dtype=jnp.bfloat16,
    param_dtype=jnp.bfloat16,
    kernel_metadata={"sharding_names": (None, "model")},
    kernel_init=np_init,
    rngs=nnx.Rngs(0),
  )
  assert layer.bias is None and layer.kernel.dtype == jnp.bfloat16
  assert layer.kernel.get_metadata("sharding_names") == (None, "model")
  assert layer(jnp.ones((1, 3), jnp.float32)).dtype == jnp.bfloat16  # explicit dtype wins
  # dtype=None promotes inputs and params explicitly (works under strict promotion).
  mixed = nnx.Linear(3, 2, param_dtype=jnp.bfloat16, kernel_init=np_init, rngs=nnx.Rngs(0))
  assert mixed(jnp.ones((1, 3), jnp.float32)).dtype == jnp.float32


def test_linear_jit_grad_vmap():
  layer = nnx.Linear(3, 2, kernel_init=np_init, rngs=nnx.Rngs(0))
  x = _arr(5, 3)
  np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(layer, x), layer(x), rtol=1e-6)
  grads = jax.grad(lambda m: m(x).sum())(layer)
  np.testing.assert_allclose(grads.kernel[...], np.tile(x.sum(0)[:, None], (1, 2)), rtol=1e-5)
  np.testing.assert_allclose(grads.bias[...], np.full(2, 5.0))
  np.testing.assert_allclose(jax.vmap(layer)(x), layer(x), rtol=1e-6)


def test_linear_shape_error():
  layer = nnx.Linear(2, 3, kernel_init=np_init, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.ShapeError, match=r"Linear was built for 2 input features.*\(4, 5\)"):
    layer(jnp.ones((4, 5)))


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_linear_bad_size(bad):
  with pytest.raises(nnx.LayerArgumentError, match="Linear: in_features must be an integer >= 1"):
    nnx.Linear(bad, 3, kernel_init=np_init, rngs=nnx.Rngs(0))
  assert issubclass(nnx.LayerArgumentError, (ValueError, nnx.PynnxError))


def test_linear_general_formula():
  layer = nnx.LinearGeneral((2, 3), (4, 5), axis=(-2, -1), kernel_init=np_init, rngs=nnx.Rngs(0))
  assert layer.kernel.shape == (2, 3, 4, 5) and layer.bias.shape == (4, 5)
  layer.bias[...] = _arr(4, 5, seed=3)
  x = _arr(7, 2, 3)
  want = np.einsum("nab,abcd->ncd", x, layer.kernel[...]) + layer.bias[...]
  np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-5)


def test_linear_general_batch_axis_and_middle_axis():
  layer = nnx.LinearGeneral(3, (2, 4), batch_axis={0: 5}, kernel_init=np_init, rngs=nnx.Rngs(0))
  assert layer.kernel.shape == (5, 3, 2, 4) and layer.bias.shape == (5, 2, 4)
  layer.bias[...] = _arr(5, 2, 4, seed=2)
  x = _arr(5, 6, 3)
  want = np.einsum("bnk,bkcd->bncd", x, layer.kernel[...]) + layer.bias[...][:, None]
  np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-5)
  mid = nnx.LinearGeneral(6, 2, axis=1, use_bias=False, kernel_init=np_init, rngs=nnx.Rngs(0))
  x = _arr(3, 6, 4)
  np.testing.assert_allclose(
    mid(x), np.einsum("akc,kd->acd", x, mid.kernel[...]), rtol=1e-5, atol=1e-5
  )


def test_linear_general_kernel_init_sees_flat_fan_in():
  seen = []

  def init(key, shape, dtype):
    seen.append(shape)
    return jnp.zeros(shape, dtype)

  nnx.LinearGeneral(
    (2, 3), (4, 5), axis=(-2, -1), batch_axis={0: 6}, kernel_init=init, rngs=nnx.Rngs(0)
  )
  assert seen == [(36, 20)]


def test_linear_general_errors():
  with pytest.raises(nnx.LayerArgumentError, match="names 1 input axes but in_features"):
    nnx.LinearGeneral((2, 3), 4, axis=-1, kernel_init=np_init, rngs=nnx.Rngs(0))
  layer = nnx.LinearGeneral((2, 3), 4, axis=(-2, -1), kernel_init=np_init, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.ShapeError, match=r"expects sizes \(2, 3\) on axes \(-2, -1\).*\(3, 2\)"):
    layer(jnp.ones((1, 3, 2)))
  with pytest.raises(nnx.ShapeError, match="do not fit an input of shape"):
    layer(jnp.ones((3,)))


def test_einsum_formula_and_call_string():
  layer = nnx.Einsum("nta,hab->nthb", (8, 2, 4), (8, 4), kernel_init=np_init, rngs=nnx.Rngs(0))
  layer.bias[...] = _arr(8, 4, seed=4)
  x = _arr(2, 3, 2)
  want = np.einsum("nta,hab->nthb", x, layer.kernel[...]) + layer.bias[...]
  np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-5)
  square = nnx.Einsum("ab,bc->ac", (3, 3), kernel_init=np_init, rngs=nnx.Rngs(0))
  x = _arr(3, 3)
  np.testing.assert_allclose(square(x, "ba,bc->ac"), x.T @ square.kernel[...], rtol=1e-5)


def test_einsum_errors():
  with pytest.raises(nnx.LayerArgumentError, match="has no '->'"):
    nnx.Einsum("ab,bc", (2, 2), kernel_init=np_init, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.LayerArgumentError, match="exactly two operands"):
    nnx.Einsum("ab,bc,cd->ad", (2, 2), kernel_init=np_init, rngs=nnx.Rngs(0))
  layer = nnx.Einsum("ab,bc->ac", (3, 4), kernel_init=np_init, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.ShapeError, match="does not fit an input of shape"):
    layer(jnp.ones((2, 5)))
