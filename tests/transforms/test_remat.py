"""nnx.remat in tree mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx


class Block(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(3, 3, rngs=rngs)
    self.calls = nnx.BatchStat(jnp.array(0, jnp.int32))

  def __call__(self, x):
    self.calls[...] += 1
    return jnp.sin(self.linear(x))


def test_remat_matches_plain_grad():
  m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  x = jnp.ones((4, 2))

  def loss(m, x):
    return jnp.sum(nnx.remat(lambda m, x: jnp.sin(m(x)))(m, x))

  g1 = nnx.grad(loss)(m, x)
  g2 = nnx.grad(lambda m, x: jnp.sum(jnp.sin(m(x))))(m, x)
  np.testing.assert_allclose(g1.kernel[...], g2.kernel[...], rtol=1e-6)
  np.testing.assert_allclose(g1.bias[...], g2.bias[...], rtol=1e-6)


def test_remat_emits_a_checkpoint_and_matches_jax_checkpoint():
  m = Block(nnx.Rngs(0))
  x = jnp.ones((2, 3))
  graphdef, state = nnx.split(m)

  def pure(state, x):
    mm = nnx.merge(graphdef, state)
    return mm(x), nnx.state(mm)

  y_ref, state_ref = jax.checkpoint(pure)(state, x)
  jaxpr = jax.make_jaxpr(lambda x: jax.checkpoint(lambda x: x)(x))(x)
  remat_name = jaxpr.jaxpr.eqns[0].primitive.name

  y = nnx.remat(Block.__call__)(m, x)
  np.testing.assert_allclose(y, y_ref)
  assert int(m.calls[...]) == int(state_ref["calls"][...]) == 1

  def traced(x):
    return nnx.remat(Block.__call__)(Block(nnx.Rngs(0)), x)

  prims = {e.primitive.name for e in jax.make_jaxpr(traced)(x).jaxpr.eqns}
  assert remat_name in prims


def test_remat_writes_back_under_grad_and_jit():
  m = Block(nnx.Rngs(0))
  x = jnp.ones((2, 3))

  @nnx.jit
  def step(m, x):
    return nnx.grad(lambda m, x: jnp.sum(nnx.remat(Block.__call__)(m, x) ** 2))(m, x)

  g = step(m, x)
  ref = nnx.grad(lambda m, x: jnp.sum(m(x) ** 2))(Block(nnx.Rngs(0)), x)
  np.testing.assert_allclose(g.linear.kernel[...], ref.linear.kernel[...], rtol=1e-6)
  assert g.calls[...] is None
  assert int(m.calls[...]) == 1
  step(m, x)
  assert int(m.calls[...]) == 2


def test_remat_decorator_on_method_with_policy():
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.block = Block(rngs)

    @nnx.remat(policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
    def __call__(self, x):
      return self.block(x)

  m = Model(nnx.Rngs(0))
  x = jnp.ones((2, 3))
  g = nnx.grad(lambda m, x: jnp.sum(m(x) ** 2))(m, x)
  ref = nnx.grad(lambda m, x: jnp.sum(m(x) ** 2))(Block(nnx.Rngs(0)), x)
  np.testing.assert_allclose(g.block.linear.kernel[...], ref.linear.kernel[...], rtol=1e-6)
  assert int(m.block.calls[...]) == 1


def test_remat_static_argnums_allow_python_control_flow():
  def f(m, x, depth, *, scale):
    for _ in range(depth):  # depth must be a Python int
      x = m(x)
    return x * scale

  m = Block(nnx.Rngs(0))
  x = jnp.ones((2, 3))
  y = nnx.remat(f, static_argnums=(2,))(m, x, 3, scale=jnp.float32(2.0))
  ref = Block(nnx.Rngs(0))
  np.testing.assert_allclose(y, ref(ref(ref(x))) * 2.0, rtol=1e-6)
  assert int(m.calls[...]) == 3
  y = nnx.remat(f, static_argnums=-1)(m, x, 1, scale=jnp.float32(1.0))
  np.testing.assert_allclose(y, ref(x), rtol=1e-6)


def test_remat_bound_method_raises():
  m = Block(nnx.Rngs(0))
  with pytest.raises(nnx.BoundMethodError, match="does not accept bound methods"):
    nnx.remat(m.__call__)


def test_remat_shared_and_closed_over_variables_raise():
  m = Block(nnx.Rngs(0))
  with pytest.raises(nnx.SharedReferenceError, match=r"b\.calls"):
    nnx.remat(lambda a, b: None)(m, m)
  with pytest.raises(nnx.TraceContextError, match="pynnx.remat"):
    nnx.remat(lambda x: m(x))(jnp.ones((2, 3)))
