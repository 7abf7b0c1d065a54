import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pynnx as nnx


class Stats(nnx.Module):
  """A Param, a running statistic and an integer counter."""

  def __init__(self):
    self.w = nnx.Param(jnp.array([1.0, 2.0, 3.0]))
    self.mean = nnx.BatchStat(jnp.zeros(3))
    self.count = nnx.BatchStat(jnp.array(0))

  def __call__(self, x):
    self.mean[...] = 0.5 * self.mean[...] + 0.5 * x
    self.count[...] += 1
    return jnp.sum(jnp.sin(self.w[...] * x))


def _linear():
  return nnx.Linear(3, 2, rngs=nnx.Rngs(0))


X = jnp.arange(6.0).reshape(2, 3) / 6.0


def _pure(graphdef):
  return lambda state, x: nnx.merge(graphdef, state)(x)


# --- vjp ----------------------------------------------------------------------------------


def test_vjp_matches_jax_vjp_on_split_merge():
  m = _linear()
  out, vjp_fn = nnx.vjp(lambda m, x: m(x), m, X)
  graphdef, state = nnx.split(m)
  ref_out, ref_vjp = jax.vjp(_pure(graphdef), state, X)
  np.testing.assert_allclose(out, ref_out, rtol=1e-6)
  ct = jnp.arange(4.0).reshape(2, 2)
  m_ct, x_ct = vjp_fn(ct)
  s_ct, rx_ct = ref_vjp(ct)
  assert isinstance(m_ct, nnx.Linear)
  assert isinstance(m_ct.kernel, nnx.Param)
  np.testing.assert_allclose(m_ct.kernel[...], s_ct["kernel"][...], rtol=1e-6)
  np.testing.assert_allclose(m_ct.bias[...], s_ct["bias"][...], rtol=1e-6)
  np.testing.assert_allclose(x_ct, rx_ct, rtol=1e-6)


def test_vjp_matches_nnx_grad_for_scalar_loss():
  m = _linear()
  loss = lambda m, x: jnp.sum(m(x) ** 2)  # noqa: E731
  out, vjp_fn = nnx.vjp(loss, m, X, graph=False)
  (m_ct, _) = vjp_fn(jnp.ones_like(out))
  g = nnx.grad(loss)(m, X)
  np.testing.assert_allclose(m_ct.kernel[...], g.kernel[...], rtol=1e-6)


def test_vjp_non_params_are_none_and_updates_written_back():
  m = Stats()
  x = jnp.array([0.1, 0.2, 0.3])
  out, vjp_fn = nnx.vjp(lambda m, x: m(x), m, x)
  # the forward pass ran once: the running mean and the counter moved
  np.testing.assert_allclose(m.mean[...], 0.5 * x, rtol=1e-6)
  assert int(m.count[...]) == 1
  m_ct, x_ct = vjp_fn(jnp.float32(1.0))
  assert m_ct.mean[...] is None and m_ct.count[...] is None
  assert isinstance(m_ct.mean, nnx.BatchStat)
  np.testing.assert_allclose(m_ct.w[...], x * jnp.cos(m.w[...] * x), rtol=1e-6)
  np.testing.assert_allclose(x_ct, m.w[...] * jnp.cos(m.w[...] * x), rtol=1e-6)
  # calling vjp_fn again does not rerun the forward pass
  vjp_fn(jnp.float32(2.0))
  assert int(m.count[...]) == 1


def test_vjp_decorator_and_has_aux():
  m = _linear()

  @nnx.vjp(has_aux=True)
  def f(m, x):
    y = m(x)
    return jnp.sum(y), {"y": y}

  out, vjp_fn, aux = f(m, X)
  np.testing.assert_allclose(aux["y"], m(X), rtol=1e-6)
  np.testing.assert_allclose(out, jnp.sum(m(X)), rtol=1e-6)
  m_ct, x_ct = vjp_fn(jnp.float32(1.0))
  np.testing.assert_allclose(x_ct, jnp.broadcast_to(jnp.sum(m.kernel[...], 1), (2, 3)), rtol=1e-6)
  # the undecorated call form with f and no primals returns the transformed function
  out2, _ = nnx.vjp(lambda m, x: jnp.sum(m(x)))(m, X)
  np.testing.assert_allclose(out2, out, rtol=1e-6)


def test_vjp_on_method():
  class Model(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.array(3.0))

    @nnx.vjp
    def apply(self, x):
      return self.w[...] * x

  model = Model()
  out, vjp_fn = model.apply(jnp.float32(2.0))
  m_ct, x_ct = vjp_fn(jnp.float32(1.0))
  assert float(out) == 6.0 and float(m_ct.w[...]) == 2.0 and float(x_ct) == 3.0


def test_vjp_inside_jit_and_vjp_fn_through_jit():
  m = Stats()
  x = jnp.array([0.1, 0.2, 0.3])

  @nnx.jit
  def step(m, x):
    out, vjp_fn = nnx.vjp(lambda m, x: m(x), m, x)
    m_ct, _ = vjp_fn(jnp.ones_like(out))
    return m_ct.w[...]

  gw = step(m, x)
  assert int(m.count[...]) == 1  # update written back through vjp and then jit
  np.testing.assert_allclose(gw, x * jnp.cos(m.w[...] * x), rtol=1e-6)
  # vjp_fn is a pytree (like jax.vjp's), so it can be passed into a jitted function
  out, vjp_fn = nnx.vjp(lambda m, x: m(x), m, x)
  m_ct, _ = jax.jit(lambda fn, ct: fn(ct))(vjp_fn, jnp.float32(1.0))
  np.testing.assert_allclose(m_ct.w[...], gw, rtol=1e-6)


def test_vjp_integer_primal_gets_none():
  out, vjp_fn = nnx.vjp(lambda x, n: x * n.astype(jnp.float32), jnp.float32(2.0), jnp.int32(3))
  x_ct, n_ct = vjp_fn(jnp.float32(1.0))
  assert float(x_ct) == 3.0 and n_ct is None


def test_vjp_errors():
  m = _linear()
  with pytest.raises(nnx.SharedReferenceError, match="same Param"):
    nnx.vjp(lambda a, b: a(X) + b(X), m, m)
  with pytest.raises(nnx.ConfigError, match="must return a pair"):
    nnx.vjp(lambda m: jnp.sum(m(X)), m, has_aux=True)
  with pytest.raises(nnx.ConfigError, match="reduce_axes"):
    nnx.vjp(lambda m: jnp.sum(m(X)), m, reduce_axes=("batch",))
  with pytest.raises(nnx.BoundMethodError, match="bound methods"):
    nnx.vjp(m.__call__, X)
  outer = Stats()
  with pytest.raises(nnx.TraceContextError, match="not passed"):
    nnx.vjp(lambda x: outer(x), jnp.ones(3))


def test_vjp_and_jvp_agree_across_modes(graph):
  m = _linear()
  f = lambda m, x: jnp.sum(jnp.tanh(m(x)))  # noqa: E731
  out, vjp_fn = nnx.vjp(f, m, X, graph=graph)
  g_m, g_x = vjp_fn(jnp.ones_like(out))
  ref = nnx.grad(f, argnums=(0, 1), graph=False)(m, X)
  kernel = g_m["kernel"] if graph else g_m.kernel
  assert isinstance(g_m, nnx.State if graph else nnx.Linear)
  np.testing.assert_allclose(kernel[...], ref[0].kernel[...], rtol=1e-6)
  np.testing.assert_allclose(g_x, ref[1], rtol=1e-6)
  tangent = jax.tree.map(jnp.ones_like, m)
  _, t_out = nnx.jvp(f, (m, X), (tangent, jnp.zeros_like(X)), graph=graph)
  expected = jnp.sum(ref[0].kernel[...]) + jnp.sum(ref[0].bias[...])
  np.testing.assert_allclose(t_out, expected, rtol=1e-5)


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 50))
def test_vjp_jvp_equivalence_property(din, dout, seed):
  m = nnx.Linear(din, dout, rngs=nnx.Rngs(seed))
  x = jax.random.normal(jax.random.key(seed), (2, din))
  f = lambda m, x: jnp.tanh(m(x))  # noqa: E731
  graphdef, state = nnx.split(m)
  ct = jax.random.normal(jax.random.key(seed + 1), (2, dout))
  out, vjp_fn = nnx.vjp(f, m, x)
  m_ct, x_ct = vjp_fn(ct)
  pure = lambda s, x: jnp.tanh(nnx.merge(graphdef, s)(x))  # noqa: E731
  ref_out, ref_vjp = jax.vjp(pure, state, x)
  s_ct, rx_ct = ref_vjp(ct)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m_ct.kernel[...], s_ct["kernel"][...], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(x_ct, rx_ct, rtol=1e-5, atol=1e-6)
  m_t = jax.tree.map(lambda v: jnp.full_like(v, 0.1), m)
  _, t_out = nnx.jvp(f, (m, x), (m_t, x))
  _, s_t = nnx.split(m_t)
  _, ref_t = jax.jvp(pure, (state, x), (s_t, x))
  np.testing.assert_allclose(t_out, ref_t, rtol=1e-5, atol=1e-6)


# --- jvp ----------------------------------------------------------------------------------


def test_jvp_matches_jax_jvp_on_split_merge():
  m = _linear()
  m_t = jax.tree.map(jnp.ones_like, m)
  x_t = jnp.full_like(X, 0.5)
  out, t_out = nnx.jvp(lambda m, x: m(x), (m, X), (m_t, x_t))
  graphdef, state = nnx.split(m)
  _, s_t = nnx.split(m_t)
  ref_out, ref_t = jax.jvp(_pure(graphdef), (state, X), (s_t, x_t))
  np.testing.assert_allclose(out, ref_out, rtol=1e-6)
  np.testing.assert_allclose(t_out, ref_t, rtol=1e-6)


def test_jvp_ignores_non_param_tangents_and_writes_back():
  m = Stats()
  x = jnp.array([0.1, 0.2, 0.3])
  m_t = jax.tree.map(jnp.ones_like, m)  # BatchStat tangents, even the int one, are ignored
  out, t_out = nnx.jvp(lambda m, x: m(x), (m, x), (m_t, jnp.zeros(3)))
  assert int(m.count[...]) == 1
  np.testing.assert_allclose(m.mean[...], 0.5 * x, rtol=1e-6)
  np.testing.assert_allclose(t_out, jnp.sum(x * jnp.cos(m.w[...] * x)), rtol=1e-6)
  # a gradient-shaped tangent (None for non-differentiated Variables) works too
  g = nnx.grad(lambda m: m(x))(m)
  _, t2 = nnx.jvp(lambda m, x: m(x), (m, x), (g, jnp.zeros(3)))
  np.testing.assert_allclose(t2, jnp.sum(g.w[...] ** 2), rtol=1e-5)


def test_jvp_decorator_has_aux_and_nesting():
  m = _linear()
  m_t = jax.tree.map(jnp.zeros_like, m)

  @nnx.jvp(has_aux=True)
  def f(m, x):
    y = m(x)
    return jnp.sum(y), y.shape

  out, t_out, aux = f((m, X), (m_t, jnp.ones_like(X)))
  assert aux == (2, 2)
  np.testing.assert_allclose(t_out, 2 * jnp.sum(m.kernel[...]), rtol=1e-6)

  @nnx.jit
  def jitted(m, x):
    return nnx.jvp(
      lambda m, x: jnp.sum(m(x)), (m, x), (jax.tree.map(jnp.ones_like, m), jnp.zeros_like(x))
    )[1]

  # d/dt sum((K + t) x + b + t) = sum over outputs of (sum x_row + 1)
  np.testing.assert_allclose(jitted(m, X), 2 * jnp.sum(X) + 4.0, rtol=1e-6)


def test_jvp_errors():
  m = _linear()
  f = lambda m, x: jnp.sum(m(x))  # noqa: E731
  with pytest.raises(nnx.StructureChangeError, match=r"tangents\[0\] does not have the structure"):
    nnx.jvp(f, (m, X), (jnp.zeros(3), X))
  with pytest.raises(nnx.StructureChangeError, match="2 primals but 1 tangents"):
    nnx.jvp(f, (m, X), (m,))
  with pytest.raises(nnx.ConfigError, match="primals must be a tuple"):
    nnx.jvp(lambda x: x, X, (X,))
  with pytest.raises(nnx.ConfigError, match="both primals and tangents"):
    nnx.jvp(f, (m, X))
  with pytest.raises(nnx.SharedReferenceError, match="same Param"):
    nnx.jvp(lambda a, b: jnp.sum(a(X)), (m, m), (m, m))
