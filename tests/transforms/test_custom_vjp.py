import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx


class Foo(nnx.Module):
  def __init__(self, x=1.0, y=2.0):
    self.x = nnx.Param(jnp.array(x))
    self.y = nnx.Param(jnp.array(y))


class WithStats(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.array(0.5))
    self.calls = nnx.BatchStat(jnp.array(0))


def _foo_rule(scale=1.0):
  """sin(x) * y with a rule whose gradients are `scale` times the true ones."""

  @nnx.custom_vjp
  def f(m):
    return jnp.sin(m.x[...]) * m.y[...]

  def fwd(m):
    return f(m), (jnp.cos(m.x[...]), jnp.sin(m.x[...]), m)

  def bwd(res, g):
    cos_x, sin_x, m = res
    m_g = nnx.clone(m)
    m_g.x[...] = scale * cos_x * g * m.y[...]
    m_g.y[...] = scale * sin_x * g
    return (m_g,)

  f.defvjp(fwd, bwd)
  return f


def test_tree_form_gradients_are_analytic():
  f = _foo_rule()
  m = Foo()
  np.testing.assert_allclose(f(m), jnp.sin(1.0) * 2.0, rtol=1e-6)
  g = nnx.grad(f, graph=False)(m)
  assert isinstance(g, Foo)
  np.testing.assert_allclose(g.x[...], jnp.cos(1.0) * 2.0, rtol=1e-6)
  np.testing.assert_allclose(g.y[...], jnp.sin(1.0), rtol=1e-6)


def test_the_rule_is_used():
  g = nnx.grad(_foo_rule(scale=3.0))(Foo())
  np.testing.assert_allclose(g.x[...], 3.0 * jnp.cos(1.0) * 2.0, rtol=1e-6)


def test_matches_jax_custom_vjp_on_split_merge():
  f = _foo_rule(scale=2.0)
  m = Foo(0.3, -1.5)
  graphdef, state = nnx.split(m)

  @jax.custom_vjp
  def pure(state):
    m = nnx.merge(graphdef, state)
    return jnp.sin(m.x[...]) * m.y[...]

  def pure_fwd(state):
    return pure(state), state

  def pure_bwd(state, g):
    m = nnx.merge(graphdef, state)
    ct = jax.tree.map(jnp.zeros_like, state)
    ct["x"][...] = 2.0 * jnp.cos(m.x[...]) * g * m.y[...]
    ct["y"][...] = 2.0 * jnp.sin(m.x[...]) * g
    return (ct,)

  pure.defvjp(pure_fwd, pure_bwd)
  ref = jax.grad(lambda s: pure(s) ** 2)(state)
  got = nnx.grad(lambda m: f(m) ** 2)(m)
  np.testing.assert_allclose(got.x[...], ref["x"][...], rtol=1e-6)
  np.testing.assert_allclose(got.y[...], ref["y"][...], rtol=1e-6)


def test_inside_jit_and_vjp_and_with_plain_arrays():
  @nnx.custom_vjp
  def f(m, x):
    return m.w[...] * x**2

  def fwd(m, x):
    return f(m, x), (m, x)

  def bwd(res, g):
    m, x = res
    m_g = jax.tree.map(jnp.zeros_like, m)
    m_g.w[...] = g * x**2
    return m_g, g * 2 * m.w[...] * x

  f.defvjp(fwd, bwd)
  m = WithStats()
  x = jnp.float32(3.0)
  gm, gx = nnx.jit(nnx.grad(f, argnums=(0, 1)))(m, x)
  assert float(gm.w[...]) == 9.0 and float(gx) == 3.0
  assert gm.calls[...] is None
  out, vjp_fn = nnx.vjp(f, m, x)
  m_ct, x_ct = vjp_fn(jnp.float32(2.0))
  assert float(m_ct.w[...]) == 18.0 and float(x_ct) == 6.0


def test_nondiff_args_reach_bwd_and_get_updated():
  @nnx.custom_vjp(nondiff_argnums=(0,))
  def f(counter, m, x):
    counter.calls[...] += 1
    return m.w[...] * x

  def fwd(counter, m, x):
    return f(counter, m, x), (m.w[...], x)

  seen = []

  def bwd(counter, res, g):
    seen.append(int(counter.calls[...]))
    w, x = res
    m_g = jax.tree.map(jnp.zeros_like, m)
    m_g.w[...] = 10.0 * g * x  # marks the rule
    return m_g, g * w

  f.defvjp(fwd, bwd)
  counter, m = WithStats(), WithStats()
  x = jnp.float32(2.0)
  assert float(f(counter, m, x)) == 1.0
  assert int(counter.calls[...]) == 1
  g = nnx.grad(lambda m, c: f(c, m, x))(m, counter)
  assert float(g.w[...]) == 20.0
  assert int(counter.calls[...]) == 2  # the update made by f (run by fwd) was written back
  assert seen == [1]  # bwd sees the nondiff argument as it was passed in
  # the nondiff Module gets no gradient from the rule
  gc = nnx.grad(lambda c: f(c, m, x))(counter)
  assert float(gc.w[...]) == 0.0


def test_non_differentiated_variables_of_diff_args_may_change():
  @nnx.custom_vjp
  def f(m):
    m.calls[...] += 1
    return m.w[...] * 2.0

  def fwd(m):
    return f(m), m

  def bwd(m, g):
    m_g = nnx.clone(m)
    m_g.w[...] = 2.0 * g
    return (m_g,)

  f.defvjp(fwd, bwd)
  m = WithStats()
  f(m)
  g = nnx.jit(nnx.grad(f))(m)
  assert int(m.calls[...]) == 2
  assert float(g.w[...]) == 2.0


def test_on_method_and_with_keywords():
  class Model(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.array(2.0))

    @nnx.custom_vjp
    def apply(self, x):
      return self.w[...] * x

  def fwd(self, x):
    return self.apply(x), (self.w[...], x, self)

  def bwd(res, g):
    w, x, model = res
    m_g = nnx.clone(model)
    m_g.w[...] = -g  # deliberately wrong sign
    return m_g, g * w

  Model.apply.defvjp(fwd, bwd)
  model = Model()
  assert float(model.apply(x=jnp.float32(3.0))) == 6.0
  g = nnx.grad(lambda m: m.apply(jnp.float32(3.0)))(model)
  assert float(g.w[...]) == -1.0


def test_none_in_cotangent_is_zero():
  @nnx.custom_vjp
  def f(m):
    return m.x[...] * m.y[...]

  def fwd(m):
    return f(m), m

  def bwd(m, g):
    m_g = nnx.clone(m)
    m_g.x[...] = g * m.y[...]
    m_g.y[...] = None
    return (m_g,)

  f.defvjp(fwd, bwd)
  g = nnx.grad(f)(Foo())
  assert float(g.x[...]) == 2.0 and float(g.y[...]) == 0.0


def _identity_rule(**kw):
  f = nnx.custom_vjp(lambda m: m.x[...] * 1.0, **kw)
  f.defvjp(lambda m: (f(m), m), lambda m, g: (nnx.clone(m),))
  return f


def test_error_mutating_differentiated_param():
  @nnx.custom_vjp
  def f(m):
    m.x[...] = m.x[...] + 1.0
    return m.y[...]

  f.defvjp(lambda m: (f(m), ()), lambda res, g: (None,))
  with pytest.raises(nnx.TraceContextError, match=r"updated m\.x, a Param of a differentiable"):
    f(Foo())
  with pytest.raises(nnx.TraceContextError, match="nondiff_argnums"):
    nnx.grad(f)(Foo())


def test_error_bwd_output():
  f = nnx.custom_vjp(lambda m, x: m.x[...] * x)
  f.defvjp(lambda m, x: (f(m, x), m), lambda m, g: (nnx.clone(m),))
  with pytest.raises(nnx.StructureChangeError, match="one cotangent per differentiable"):
    nnx.grad(f)(Foo(), jnp.float32(1.0))
  h = nnx.custom_vjp(lambda m: m.x[...])
  h.defvjp(lambda m: (h(m), m), lambda m, g: ({"x": g},))
  with pytest.raises(nnx.StructureChangeError, match="does not have the argument's structure"):
    nnx.grad(h)(Foo())


def test_error_configuration():
  f = nnx.custom_vjp(lambda m: m.x[...])
  with pytest.raises(nnx.ConfigError, match=r"call `\.defvjp"):
    f(Foo())
  f.defvjp(lambda m: f(m), lambda res, g: (res,))
  with pytest.raises(nnx.ConfigError, match="fwd must return a pair"):
    nnx.grad(f)(Foo())
  with pytest.raises(nnx.ConfigError, match=r"symbolic_zeros=True\) is not supported"):
    f.defvjp(lambda m: (f(m), m), lambda res, g: (res,), symbolic_zeros=True)
  with pytest.raises(nnx.ConfigError, match="nondiff_argnums contains 3"):
    _identity_rule(nondiff_argnums=(3,))(Foo())
  with pytest.raises(nnx.ConfigError, match="repeats an index"):
    nnx.custom_vjp(lambda a, b: a, nondiff_argnums=(1, 1))

  def kwonly(m, *, scale):
    return m.x[...] * scale

  k = nnx.custom_vjp(kwonly)
  k.defvjp(lambda m, scale: (k(m, scale=scale), m), lambda m, g: (m,))
  with pytest.raises(nnx.ConfigError, match="keyword-only"):
    k(Foo(), scale=2.0)
  m = Foo()
  with pytest.raises(nnx.BoundMethodError, match="bound methods"):
    nnx.custom_vjp(m.__init__)
  with pytest.raises(nnx.SharedReferenceError, match="same Param"):
    s = nnx.custom_vjp(lambda a, b: a.x[...])
    s.defvjp(lambda a, b: (s(a, b), ()), lambda res, g: (None, None))
    s(m, m)


def test_graph_only_features_need_graph_mode():
  diff = nnx.DiffState(0, nnx.PathContains("x"))
  with pytest.raises(nnx.GraphModeRequiredError, match="DiffState entries need graph mode"):
    nnx.custom_vjp(lambda m: m.x[...], nondiff_argnums=(diff,), graph=False)


def _graph_rule(**kw):
  @nnx.custom_vjp(**kw)
  def f(m):
    return jnp.sin(m.x[...]) * m.y[...]

  def fwd(m):
    return f(m), (jnp.cos(m.x[...]), jnp.sin(m.x[...]), m)

  def bwd(res, g):
    (m_updates_g,), out_g = g
    cos_x, sin_x, m = res
    m_g = jax.tree.map(lambda v: v, m_updates_g)
    if "x" in m_g:
      m_g["x"][...] = cos_x * out_g * m.y[...]
    if "y" in m_g and kw.get("nondiff_argnums"):
      del m_g["y"]
    elif "y" in m_g:
      m_g["y"][...] = sin_x * out_g
    return (m_g,)

  f.defvjp(fwd, bwd)
  return f


def test_graph_form_receives_input_updates_and_returns_states():
  f = _graph_rule(graph=True)
  m = Foo(1.0, 2.0)
  g = nnx.grad(f, graph=True)(m)
  assert isinstance(g, nnx.State) and sorted(g.keys()) == ["x", "y"]
  np.testing.assert_allclose(g["x"][...], jnp.cos(1.0) * 2.0, rtol=1e-6)
  np.testing.assert_allclose(g["y"][...], jnp.sin(1.0), rtol=1e-6)


def test_graph_form_diffstate_selects_substate():
  x_only = nnx.PathContains("x")
  f = _graph_rule(nondiff_argnums=(nnx.DiffState(0, x_only),))
  g = nnx.grad(f, argnums=nnx.DiffState(0, x_only))(Foo(1.0, 2.0))
  assert sorted(g.keys()) == ["x"]
  np.testing.assert_allclose(g["x"][...], jnp.cos(1.0) * 2.0, rtol=1e-6)


def test_graph_form_bwd_missing_a_selected_variable():
  @nnx.custom_vjp(graph=True)
  def f(m):
    return m.x[...] * m.y[...]

  f.defvjp(lambda m: (f(m), ()), lambda res, g: (nnx.State({}),))
  with pytest.raises(nnx.StructureChangeError, match="lacks the differentiable Variables x, y"):
    nnx.grad(f, graph=True)(Foo())
