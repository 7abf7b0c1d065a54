"""LoRA, LoRALinear and LoRAParam."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx


def _x(shape, seed=0):
  # numpy draws: no XLA compilation per shape, which keeps the tests fast
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_lora_shapes_types_and_zero_start():
  layer = nnx.LoRA(3, 2, 4, rngs=nnx.Rngs(0))
  assert issubclass(nnx.LoRAParam, nnx.Param)
  assert isinstance(layer.lora_a, nnx.LoRAParam) and layer.lora_a.shape == (3, 2)
  assert layer.lora_b.shape == (2, 4) and not layer.lora_b[...].any()
  assert float(jnp.abs(layer.lora_a[...]).sum()) > 0
  x = _x((5, 3))
  np.testing.assert_array_equal(layer(x), jnp.zeros((5, 4)))


def test_lora_formula_with_base_module():
  base = nnx.Linear(3, 4, rngs=nnx.Rngs(1))
  layer = nnx.LoRA(3, 2, 4, base_module=base, rngs=nnx.Rngs(0))
  layer.lora_b[...] = _x((2, 4), 1)
  x = _x((5, 3), 2)
  want = x @ layer.lora_a[...] @ layer.lora_b[...] + x @ base.kernel[...] + base.bias[...]
  np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-6)


def test_lora_linear_is_linear_plus_adapter_and_options():
  layer = nnx.LoRALinear(3, 4, lora_rank=2, use_bias=False, rngs=nnx.Rngs(0))
  assert layer.bias is None and layer.kernel.shape == (3, 4)
  layer.lora.lora_b[...] = _x((2, 4), 1)
  x = _x((5, 3), 2)
  want = x @ layer.kernel[...] + x @ layer.lora.lora_a[...] @ layer.lora.lora_b[...]
  np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-6)
  # Same kernel as a plain Linear built from the same seed.
  plain = nnx.Linear(3, 4, use_bias=False, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(plain.kernel[...], layer.kernel[...])
  typed = nnx.LoRALinear(
    3,
    4,
    lora_rank=2,
    lora_param_dtype=jnp.bfloat16,
    lora_param_type=nnx.Param,
    a_metadata={"sharding_names": (None, "model")},
    rngs=nnx.Rngs(0),
  )
  assert type(typed.lora.lora_a) is nnx.Param and typed.lora.lora_a.dtype == jnp.bfloat16
  assert typed.lora.lora_a.get_metadata("sharding_names") == (None, "model")


def test_train_only_the_adapter_with_jax_grad():
  layer = nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0))
  graphdef, lora_params, rest = nnx.split(layer, nnx.LoRAParam, ...)
  assert sorted(p for p, _ in lora_params.flat_state()) == [("lora", "lora_a"), ("lora", "lora_b")]
  x, y = _x((8, 3), 1), _x((8, 4), 2)

  def loss(lp):
    model = nnx.merge(graphdef, lp, rest)
    return jnp.mean((model(x) - y) ** 2)

  grads = jax.jit(jax.grad(loss))(lora_params)
  (g_a, g_b) = (v[...] for _, v in sorted(grads.flat_state()))
  assert g_a.shape == (3, 2) and float(jnp.abs(g_b).sum()) > 0
  full = jax.grad(lambda m: jnp.mean((m(x) - y) ** 2))(layer)
  np.testing.assert_allclose(full.lora.lora_b[...], g_b, rtol=1e-5, atol=1e-7)


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_lora_errors():
  layer = nnx.LoRA(3, 2, 4, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.ShapeError, match=r"LoRA expects inputs with 3 features.*\(5, 2\)"):
    layer(jnp.ones((5, 2)))
  with pytest.raises(nnx.LayerArgumentError, match="LoRA: lora_rank must be an integer"):
    nnx.LoRA(3, 0, 4, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.LayerArgumentError, match="base_module must be callable"):
    nnx.LoRA(3, 2, 4, base_module=nnx.Param(jnp.ones(2)), rngs=nnx.Rngs(0))
  with pytest.raises(nnx.ShapeError, match=r"Linear.*\(5, 2\)"):  # raised by the Linear part
    nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0))(jnp.ones((5, 2)))
