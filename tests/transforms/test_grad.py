import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pynnx as nnx


class WithStats(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(3, 2, rngs=rngs)
    self.seen = nnx.BatchStat(jnp.array(0.0))
    self.steps = nnx.BatchStat(jnp.array(0, jnp.int32))
    self.rng = rngs.dropout.fork()

  def __call__(self, x):
    self.seen[...] = self.seen[...] + x.shape[0]
    self.steps[...] += 1
    keep = jax.random.bernoulli(self.rng(), 0.5, (x.shape[0], 2))
    return jnp.where(keep, self.linear(x), 0.0)


def loss_fn(m, x):
  return jnp.sum(m(x) ** 2)


def test_grad_is_module_shaped_and_matches_plain_jax():
  m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  x = jnp.arange(6.0).reshape(2, 3)
  g = nnx.grad(loss_fn, graph=False)(m, x)
  assert isinstance(g, nnx.Linear) and isinstance(g.kernel, nnx.Param)
  graphdef, state = nnx.split(m)
  expected = jax.grad(lambda s: loss_fn(nnx.merge(graphdef, s), x))(state)
  np.testing.assert_allclose(g.kernel[...], expected["kernel"][...], rtol=1e-6)
  np.testing.assert_allclose(g.bias[...], expected["bias"][...], rtol=1e-6)


def test_grad_with_batch_stats_and_rng_counters_just_works():
  m = WithStats(nnx.Rngs(params=0, dropout=1))
  x = jnp.ones((4, 3))
  g = nnx.grad(loss_fn)(m, x)
  assert g.seen[...] is None and g.steps[...] is None
  assert g.rng.count[...] is None and g.rng.key[...] is None
  assert g.linear.kernel[...].shape == (3, 2)
  # the updates made while differentiating were written back
  assert float(m.seen[...]) == 4.0 and int(m.steps[...]) == 1
  assert int(m.rng.count[...]) == 1


def test_value_and_grad_has_aux_and_argnums_sequence():
  m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  x = jnp.ones((2, 3))

  def f(m, x):
    y = m(x)
    return jnp.sum(y), y

  (value, aux), (gm, gx) = nnx.value_and_grad(f, argnums=(0, 1), has_aux=True)(m, x)
  np.testing.assert_allclose(value, jnp.sum(m(x)), rtol=1e-6)
  assert aux.shape == (2, 2)
  np.testing.assert_allclose(
    gx, jnp.broadcast_to(jnp.sum(m.kernel[...], axis=1), (2, 3)), rtol=1e-6
  )
  np.testing.assert_allclose(gm.kernel[...], jnp.full((3, 2), 2.0), rtol=1e-6)


def test_grad_inside_jit_writes_back_through_both():
  m = WithStats(nnx.Rngs(params=0, dropout=1))

  @nnx.jit
  def step(m, x):
    g = nnx.grad(loss_fn)(m, x)
    m.linear.kernel[...] = m.linear.kernel[...] - 0.1 * g.linear.kernel[...]
    return loss_fn(m, x)

  k0 = m.linear.kernel[...]
  step(m, jnp.ones((2, 3)))
  assert int(m.steps[...]) == 2  # once in grad, once in the loss
  assert not np.allclose(m.linear.kernel[...], k0)


def test_grad_integer_param_is_not_differentiated():
  class M(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.array(2.0))
      self.n = nnx.Param(jnp.array(3))

  g = nnx.grad(lambda m: m.w[...] * m.n[...].astype(jnp.float32))(M())
  assert g.n[...] is None
  np.testing.assert_allclose(g.w[...], 3.0)


def test_grad_has_aux_requires_pair():
  m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match=r"has_aux=True\): the function must return a pair"):
    nnx.grad(lambda m: jnp.sum(m.kernel[...]), has_aux=True)(m)


def test_grad_argnums_out_of_range():
  with pytest.raises(TypeError, match=r"argnums=1 but only 1 positional"):
    nnx.grad(lambda m: 0.0, argnums=1)(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 100))
def test_grad_equivalence_property(din, dout, seed):
  m = nnx.Linear(din, dout, rngs=nnx.Rngs(seed))
  x = jax.random.normal(jax.random.key(seed), (3, din))
  g = nnx.grad(lambda m: jnp.mean(jnp.sin(m(x))))(m)
  graphdef, state = nnx.split(m)
  ref = jax.grad(lambda s: jnp.mean(jnp.sin(nnx.merge(graphdef, s)(x))))(state)
  np.testing.assert_allclose(g.kernel[...], ref["kernel"][...], rtol=1e-5, atol=1e-6)


def test_tree_mode_grad_of_a_state_or_bare_variable_differentiates_every_inexact_variable():
  # As in Flax (both modes): a State argument is the caller's selection; inside a Module only
  # Params are differentiated.
  state = nnx.State({"a": nnx.BatchStat(jnp.array(3.0)), "b": nnx.Param(jnp.array(2.0))})
  g = nnx.grad(lambda s: s["a"][...] * s["b"][...], graph=False)(state)
  assert float(g["a"][...]) == 2.0 and float(g["b"][...]) == 3.0
  g = nnx.grad(lambda v: v[...] ** 2, graph=False)(nnx.BatchStat(jnp.array(3.0)))
  assert float(g[...]) == 6.0
  bn = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
  g = nnx.grad(lambda m: jnp.sum(m(jnp.ones((3, 2)))), graph=False)(bn)
  assert g.mean[...] is None and g.scale[...] is not None
