"""Every transform, same observable result in tree mode and graph mode (the `graph` fixture)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

import pynnx as nnx


class Model(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(3, 3, rngs=rngs)
    self.calls = nnx.BatchStat(jnp.array(0.0))

  def __call__(self, x):
    self.calls[...] += 1.0
    return jnp.tanh(self.linear(x))


X = jnp.arange(6.0).reshape(2, 3) / 6.0


def loss(m, x):
  return jnp.sum(m(x) ** 2)


def kernel_of(g):
  return g["linear"]["kernel"][...] if isinstance(g, nnx.State) else g.linear.kernel[...]


def reference_grad():
  m = Model(nnx.Rngs(0))
  graphdef, params, rest = nnx.split(m, nnx.Param, ...)
  return jax.grad(lambda p: loss(nnx.merge(graphdef, p, rest), X))(params)["linear"]["kernel"][...]


def test_jit(graph):
  m = Model(nnx.Rngs(0))
  y = nnx.jit(lambda m, x: m(x), graph=graph)(m, X)
  np.testing.assert_allclose(y, jnp.tanh(m.linear(X)), rtol=1e-6)
  assert float(m.calls[...]) == 1.0


def test_grad_and_value_and_grad(graph):
  m = Model(nnx.Rngs(0))
  g = nnx.grad(loss, graph=graph)(m, X)
  assert isinstance(g, nnx.State if graph else Model)
  np.testing.assert_allclose(kernel_of(g), reference_grad(), rtol=1e-5)
  value, g2 = nnx.value_and_grad(loss, graph=graph)(m, X)
  np.testing.assert_allclose(kernel_of(g2), reference_grad(), rtol=1e-5)
  assert float(m.calls[...]) == 2.0


def test_remat(graph):
  m = Model(nnx.Rngs(0))
  g = nnx.grad(lambda m, x: nnx.remat(loss, graph=graph)(m, x), graph=graph)(m, X)
  np.testing.assert_allclose(kernel_of(g), reference_grad(), rtol=1e-5)


def test_vmap(graph):
  m = Model(nnx.Rngs(0))
  xs = jnp.stack([X, 2 * X])
  ys = nnx.vmap(lambda m, x: m.linear(x), in_axes=(None, 0), graph=graph)(m, xs)
  np.testing.assert_allclose(ys[1], m.linear(2 * X), rtol=1e-6)


def test_scan(graph):
  m = Model(nnx.Rngs(0))

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), graph=graph)
  def step(m, x):
    return m, m(x)

  _, ys = step(m, jnp.stack([X, X, X]))
  assert ys.shape == (3, 2, 3)
  assert float(m.calls[...]) == 3.0


def test_eval_shape(graph):
  abstract = nnx.eval_shape(lambda: Model(nnx.Rngs(0)), graph=graph)
  assert isinstance(abstract.linear.kernel[...], jax.ShapeDtypeStruct)
  assert abstract.linear.kernel[...].shape == (3, 3)


def test_shard_map(graph):
  mesh = jax.sharding.Mesh(jax.devices()[:2], ("data",))
  m = Model(nnx.Rngs(0))
  xs = jnp.concatenate([X, X])

  @nnx.shard_map(mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"), graph=graph)
  def f(m, x):
    return m.linear(x)

  np.testing.assert_allclose(f(m, xs), m.linear(xs), rtol=1e-6)


def test_cond_switch(graph):
  m = Model(nnx.Rngs(0))
  nnx.cond(jnp.array(True), lambda m: m(X), lambda m: jnp.zeros((2, 3)), m, graph=graph)
  nnx.switch(1, [lambda m: jnp.zeros((2, 3)), lambda m: m(X)], m, graph=graph)
  assert float(m.calls[...]) == 2.0


def test_while_and_fori_loop(graph):
  m = Model(nnx.Rngs(0))

  def body(state):
    m, x, n = state
    return m, m(x), n - 1

  _, y, _ = nnx.while_loop(lambda s: s[2] > 0, body, (m, X, 3), graph=graph)
  assert float(m.calls[...]) == 3.0
  np.testing.assert_allclose(
    y, jnp.tanh(m.linear(jnp.tanh(m.linear(jnp.tanh(m.linear(X)))))), rtol=1e-5
  )
  nnx.fori_loop(0, 2, lambda i, m: (m(X), m)[1], m, graph=graph)
  assert float(m.calls[...]) == 5.0


def test_vjp_jvp(graph):
  m = Model(nnx.Rngs(0))
  out, vjp_fn = nnx.vjp(loss, m, X, graph=graph)
  g, _ = vjp_fn(jnp.ones_like(out))
  np.testing.assert_allclose(kernel_of(g), reference_grad(), rtol=1e-5)
  tangent = jax.tree.map(jnp.zeros_like, m)
  _, t = nnx.jvp(loss, (m, X), (tangent, jnp.ones_like(X)), graph=graph)
  assert t.shape == ()


def test_custom_vjp_identity_rule(graph):
  class Scale(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.array(3.0))

  @nnx.custom_vjp(graph=graph)
  def f(m, x):
    return m.w[...] * x

  def fwd(m, x):
    return f(m, x), (m.w[...], x)

  def bwd(res, g):
    w, x = res
    if graph:
      (m_g, _), out_g = g
      m_g = jax.tree.map(lambda v: v, m_g)
      m_g["w"][...] = out_g * x * 10.0  # a deliberately different rule
      return (m_g, out_g * w)
    m_g = jax.tree.map(jnp.zeros_like, Scale())
    m_g.w[...] = g * x * 10.0
    return (m_g, g * w)

  f.defvjp(fwd, bwd)
  g = nnx.grad(f, graph=graph)(Scale(), jnp.array(2.0))
  w_grad = g["w"][...] if graph else g.w[...]
  np.testing.assert_allclose(w_grad, 20.0)
