"""Differential tests: the same snippet on flax.nnx and on pynnx (issue 9, transforms part).

Each test runs a snippet written against the ``nnx`` namespace once with ``flax.nnx`` and
once with ``pynnx`` and compares values, shapes, Variable updates or error classes.
"""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify as checkify_lib

import pynnx

flax_nnx = pytest.importorskip("flax.nnx")

# Flax warns (DeprecationWarning) when sow/perturb run outside nnx.capture.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LIBS = {"flax": flax_nnx, "pynnx": pynnx}


def both(snippet, *args):
  """``{lib: snippet(nnx, *args)}`` (an exception's class is recorded instead of raising)."""
  out = {}
  for name, nnx in LIBS.items():
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out[name] = snippet(nnx, *args)
    except Exception as e:  # noqa: BLE001  (compared below)
      out[name] = e
  return out


def assert_same(res):
  f, p = res["flax"], res["pynnx"]
  if isinstance(f, Exception) or isinstance(p, Exception):
    raise AssertionError(f"flax: {f!r}\npynnx: {p!r}")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), f, p)


def flat(state):
  """A State as ``{path string: value}`` (Variables unwrapped)."""
  return {"/".join(map(str, p)): v.get_value() for p, v in state.flat_state()}


def counter_module(nnx):
  class C(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones(2))
      self.n = nnx.BatchStat(jnp.array(0))

    def __call__(self, x):
      self.n[...] += 1
      return self.w[...] * x

  return C()


# --- signatures ---------------------------------------------------------------------------------

NEW = [
  "jit_partial",
  "cached_partial",
  "pmap",
  "checkify",
  "make_jaxpr",
  "prefix",
  "capture",
  "transform_metadata",
]


def _default(d):
  if d is inspect.Parameter.empty:
    return "<empty>"
  if type(d).__name__ in ("Missing", "_Missing") or d is getattr(flax_nnx, "Missing", None):
    return "<missing>"
  if isinstance(d, type) and d.__name__ == "Missing":
    return "<missing>"
  if hasattr(d, "items") and not isinstance(d, type):
    return dict(d)
  return d


@pytest.mark.parametrize("name", NEW)
def test_signature_matches_flax(name):
  fs = inspect.signature(getattr(flax_nnx, name)).parameters
  ps = inspect.signature(getattr(pynnx, name)).parameters
  assert list(fs) == list(ps)
  for k in fs:
    assert fs[k].kind == ps[k].kind, k
    assert _default(fs[k].default) == _default(ps[k].default), k


# --- make_jaxpr / checkify ------------------------------------------------------------------------


def test_make_jaxpr(graph):
  def snippet(nnx):
    m = counter_module(nnx)
    jaxpr = nnx.make_jaxpr(lambda m, x: m(x), graph=graph, graph_updates=False)(m, jnp.ones(2))
    static = nnx.make_jaxpr(
      lambda m, k: m(jnp.ones(2)) * k, graph=graph, graph_updates=False, static_argnums=1
    )(m, 3.0)
    sig = lambda j: (  # noqa: E731
      [str(v.aval) for v in j.jaxpr.invars],
      [str(v.aval) for v in j.jaxpr.outvars],
      [e.primitive.name for e in j.jaxpr.eqns],
    )
    return sig(jaxpr), sig(static), int(m.n[...])

  res = both(snippet)
  assert res["flax"] == res["pynnx"]
  assert res["pynnx"][2] == 0  # nothing ran


def test_make_jaxpr_graph_updates_raises_value_error():
  res = both(lambda nnx: nnx.make_jaxpr(lambda x: x, graph_updates=True))
  assert isinstance(res["flax"], ValueError)
  assert isinstance(res["pynnx"], pynnx.TransformArgumentError)
  with pytest.raises(pynnx.TransformArgumentError, match="graph_updates=False"):
    pynnx.make_jaxpr(lambda x: x, graph_updates=True)


def test_checkify(graph):
  def snippet(nnx):
    m = counter_module(nnx)

    def f(m, x):
      checkify_lib.check(jnp.all(x > 0), "x must be positive")
      return m(x)

    ok, y1 = nnx.checkify(f, graph=graph)(m, jnp.ones(2))
    bad, y2 = nnx.checkify(nnx.jit(f, graph=graph), graph=graph)(m, -jnp.ones(2))
    return str(ok.get()), str(bad.get()), np.asarray(y1), np.asarray(y2), int(m.n[...])

  res = both(snippet)
  f, p = res["flax"], res["pynnx"]
  assert f[:2] == p[:2] and f[4] == p[4] == 2
  np.testing.assert_array_equal(f[3], p[3])


# --- pmap ---------------------------------------------------------------------------------------


def test_pmap(graph):
  def snippet(nnx):
    m = counter_module(nnx)
    ms = jax.tree.map(lambda x: jnp.stack([x] * 4), counter_module(nnx))
    y1 = nnx.pmap(lambda m, x: m(x), axis_name="i", graph=graph)(ms, jnp.ones((4, 2)))
    y2 = nnx.pmap(lambda m, x: m(x), in_axes=(None, 0), graph=graph)(m, jnp.ones((4, 2)))
    f = nnx.pmap(
      lambda m, x: (m(x), jax.lax.psum(x, "i")), axis_name="i", graph=graph, donate_argnums=(1,)
    )
    _, s = f(ms, jnp.ones((4, 2)))
    y3 = nnx.pmap(lambda m, k: m(jnp.ones(2)) * k, static_broadcasted_argnums=(1,), graph=graph)(
      ms, 3.0
    )

    @nnx.pmap(axis_size=4, graph=graph)
    def create(k):
      return nnx.Linear(2, 3, rngs=nnx.Rngs(k))

    model = create(jax.random.split(jax.random.key(0), 4))
    return y1, y2, s, y3, ms.n[...], m.n[...], model.kernel[...]

  assert_same(both(snippet))


# --- jit_partial / cached_partial ---------------------------------------------------------------


def test_jit_partial(graph):
  def snippet(nnx):
    m = counter_module(nnx)

    def f(m, x, k):
      return m(x) * k

    out = [
      nnx.jit_partial(f, m, static_argnums=2, graph=graph, graph_updates=False)(jnp.ones(2), 3)
    ]
    out.append(nnx.jit_partial(f, m, static_argnames="k", graph=False)(jnp.ones(2), k=3))
    g = nnx.jit_partial(f, m, donate_argnums=0, graph=graph, graph_updates=False)
    out.append(g(jnp.ones(2), 2))
    out.append(g.eval_shape(jnp.ones(2), 2).shape)
    return out, m.n[...]

  res = both(snippet)
  assert_same(res)
  assert int(res["pynnx"][1]) == 3


@pytest.mark.parametrize(
  "case",
  ["array_static", "variable_runtime", "graph_updates"],
)
def test_jit_partial_errors_are_value_errors(case):
  def snippet(nnx):
    m = counter_module(nnx)
    f = lambda m, x, k: m(x) * k  # noqa: E731
    if case == "array_static":
      return nnx.jit_partial(f, m, static_argnums=1, graph=False)(jnp.ones(2), 3)
    if case == "variable_runtime":
      return nnx.jit_partial(f, m, graph=False)(jnp.ones(2), nnx.Param(jnp.ones(2)))
    return nnx.jit_partial(f, m, graph=True, graph_updates=True)

  res = both(snippet)
  assert isinstance(res["flax"], ValueError), res["flax"]
  assert isinstance(res["pynnx"], (pynnx.TransformArgumentError, pynnx.GraphModeRequiredError))
  assert isinstance(res["pynnx"], ValueError)


def test_jit_partial_error_messages():
  m = counter_module(pynnx)
  f = lambda m, x, k: m(x) * k  # noqa: E731
  with pytest.raises(pynnx.TransformArgumentError, match="Static arguments must be hashable"):
    pynnx.jit_partial(f, m, static_argnums=1)(jnp.ones(2), 3)
  with pytest.raises(pynnx.TransformArgumentError, match="Variable among its runtime arguments"):
    pynnx.jit_partial(f, m)(jnp.ones(2), pynnx.Param(jnp.ones(2)))
  with pytest.raises(pynnx.TransformArgumentError, match="static_argnums=0 names the partial"):
    pynnx.jit_partial(f, m, static_argnums=0)
  with pytest.raises(pynnx.GraphModeRequiredError, match="graph_updates is not supported"):
    pynnx.jit_partial(f, m, graph=True, graph_updates=True)


def test_cached_partial_graph_mode():
  def snippet(nnx):
    m = counter_module(nnx)
    step = nnx.cached_partial(
      nnx.jit(lambda m, x: m(x), graph=True), m, graph=True, graph_updates=True
    )
    return step(jnp.ones(2)), step(jnp.ones(2)), m.n[...]

  assert_same(both(snippet))
  res = both(lambda nnx: nnx.cached_partial(lambda m: m, 1, graph=True, graph_updates=False))
  assert isinstance(res["flax"], ValueError) and isinstance(res["pynnx"], ValueError)
  with pytest.raises(pynnx.GraphModeRequiredError, match="requires graph_updates=True"):
    pynnx.cached_partial(lambda m: m, 1, graph=True, graph_updates=False)


def test_cached_partial_tree_mode_binds():
  # Deliberate difference (docs/migrating.md): Flax's cached_partial is graph-only.
  m = counter_module(pynnx)
  step = pynnx.cached_partial(pynnx.jit(lambda m, x: m(x)), m, graph=False)
  step(jnp.ones(2))
  assert int(step(jnp.ones(2))[0] == 1) and int(m.n[...]) == 2


# --- prefix -------------------------------------------------------------------------------------


def test_prefix_tree_mode():
  def snippet(nnx):
    d = {"a": nnx.Param(jnp.array(2)), "b": nnx.BatchStat(jnp.arange(5)), "c": [jnp.ones(5)]}
    by_filter = nnx.prefix(d, {nnx.Param: None, nnx.BatchStat: 0, ...: 1}, graph=False)
    by_path = nnx.prefix(d, lambda p, x: p, graph=False)
    axes = nnx.prefix(d, lambda path, x: 0 if "b" in path else None, graph=False)
    y = nnx.vmap(lambda d: d["a"] * d["b"], in_axes=(axes,), graph=False)(d)
    return by_filter, by_path, np.asarray(y)

  res = both(snippet)
  f, p = res["flax"], res["pynnx"]
  assert f[0] == p[0] == {"a": None, "b": 0, "c": [1]}
  assert f[1] == p[1]
  np.testing.assert_array_equal(f[2], p[2])


def test_prefix_no_filter_matches_raises_value_error():
  def snippet(nnx):
    return nnx.prefix({"a": nnx.Param(1.0), "c": jnp.ones(2)}, {nnx.Param: None}, graph=False)

  res = both(snippet)
  assert isinstance(res["flax"], ValueError) and isinstance(res["pynnx"], ValueError)
  with pytest.raises(pynnx.FilterError, match=r"no filter matched the leaf at path \('c',\)"):
    snippet(pynnx)


def test_prefix_module_vmap_and_scan():
  def snippet(nnx):
    class Blk(nnx.Module):
      def __init__(self):
        self.lin = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
        self.bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))

      def __call__(self, x):
        return self.bn(self.lin(x))

    b = Blk()
    axes = nnx.prefix(b, {nnx.Param: None, nnx.BatchStat: 0}, graph=False)
    nnx.update(b, jax.tree.map(lambda v: jnp.stack([v] * 4), nnx.state(b, nnx.BatchStat)))
    y = nnx.vmap(lambda b, x: b(x), in_axes=(axes, 0), graph=False)(b, jnp.ones((4, 5, 2)))
    scanned = nnx.scan(
      lambda b, c: c + b(jnp.ones((5, 2))).sum(),
      in_axes=(axes, nnx.Carry),
      out_axes=nnx.Carry,
      graph=False,
    )(b, jnp.array(0.0))
    return y, b.bn.mean[...], scanned

  assert_same(both(snippet))


def test_prefix_graph_mode_shared_arguments():
  def snippet(nnx):
    @nnx.vmap
    def create(k):
      return nnx.Linear(2, 3, rngs=nnx.Rngs(k))

    model = create(jax.random.split(jax.random.key(0), 4))
    px1, px2 = nnx.prefix((model, model), {nnx.Param: 0}, graph=True)

    @nnx.vmap(in_axes=(px1, px2, None), graph=True, graph_updates=False)
    def forward(m1, m2, x):
      assert m1 is m2
      return m1(x) + m2(x)

    return forward(model, model, jnp.ones(2))

  assert_same(both(snippet))


# --- capture ------------------------------------------------------------------------------------


def sower(nnx):
  class Foo(nnx.Module):
    def __init__(self):
      self.lin = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

    def features(self, x):
      return self.lin(x)

    def __call__(self, x):
      y = self.features(x)
      self.sow(nnx.Intermediate, "feat", y)
      self.lin.sow(nnx.Intermediate, "inner", y * 2)
      self.sow(nnx.Intermediate, "total", y, init_fn=lambda: 0, reduce_fn=lambda a, b: a + b)
      self.sow(nnx.Intermediate, "total", y, init_fn=lambda: 0, reduce_fn=lambda a, b: a + b)
      self.sow(nnx.BatchStat, "other", y)
      return y.sum()

  return Foo()


def test_capture_forms():
  def snippet(nnx):
    m, x = sower(nnx), jnp.ones(2)
    out = [nnx.capture(m, nnx.Intermediate)(x)]
    out.append(nnx.capture(lambda m, x: m(x), nnx.Intermediate)(m, x))
    out.append(nnx.capture(m.__call__, nnx.Intermediate)(x))
    out.append(nnx.capture(nnx.Intermediate)(m)(x))
    out.append(nnx.capture(m, nnx.Intermediate, method_outputs=nnx.Intermediate)(x))
    r, a, b = nnx.capture(m, nnx.Intermediate, nnx.Perturbation)(x)
    plain = nnx.capture(m)(x)
    leaves = len(jax.tree.leaves(nnx.state(m)))
    return [(r, flat(s)) for r, s in out], (r, flat(a), flat(b)), plain, leaves

  res = both(snippet)
  assert_same(res)
  assert res["pynnx"][3] == 2  # the Module is unchanged afterwards


def test_capture_through_jit(graph):
  def snippet(nnx):
    m, x = sower(nnx), jnp.ones(2)
    around = nnx.capture(nnx.jit(lambda m, x: m(x), graph=graph), nnx.Intermediate)(m, x)
    inside = nnx.jit(lambda m, x: nnx.capture(m, nnx.Intermediate)(x), graph=graph)(m, x)
    return flat(around[1]), flat(inside[1]), len(jax.tree.leaves(nnx.state(m)))

  assert_same(both(snippet))


def test_capture_perturbation_gradients():
  def snippet(nnx):
    class P(nnx.Module):
      def __call__(self, x):
        return 3 * (self.perturb("g", x) ** 2).sum()

    p, x = P(), jnp.arange(2.0)
    _, perts = nnx.capture(lambda p, x: p(x), nnx.Perturbation)(p, x)
    value = nnx.capture(lambda p, x: p(x), init=perts)(p, x)
    # graph mode: pynnx's tree-mode grad differentiates inexact Params only, Flax's every
    # inexact Variable (a Perturbation here); reported to the lead, not changed here
    loss = lambda s, p, x: nnx.capture(lambda p, x: p(x), init=s)(p, x)  # noqa: E731
    grads = nnx.grad(loss, graph=True)(perts, p, x)
    return flat(perts), value, flat(grads)

  assert_same(both(snippet))


# --- errors: the builtin classes Flax raises ------------------------------------------------------


def _scan_carry_in_only(nnx):
  f = nnx.scan(lambda c, x: (c, x), in_axes=(nnx.Carry, 0), out_axes=0, graph=False)
  return f(jnp.ones(2), jnp.ones(3))


def _scan_two_carries(nnx):
  f = nnx.scan(lambda c, x: c, in_axes=(nnx.Carry, nnx.Carry), out_axes=nnx.Carry, graph=False)
  return f(jnp.ones(2), jnp.ones(2))


def _shared(nnx):
  m = counter_module(nnx)
  return nnx.jit(lambda a, b: None, graph=False)(m, m)


def _broadcast_update(nnx):
  m = counter_module(nnx)

  @nnx.vmap(in_axes=(None, 0), graph=False)
  def f(m, x):
    m.w[...] = m.w[...] * x
    return x

  return f(m, jnp.ones(3))


def _static_data(nnx):
  class S(nnx.Module):
    def __init__(self):
      self.f = nnx.static(jnp.ones(2))

  return S()


def _bound_method(nnx):
  m = counter_module(nnx)
  return nnx.jit(m.__call__)


@pytest.mark.parametrize(
  "snippet",
  [_scan_carry_in_only, _scan_two_carries, _shared, _broadcast_update, _static_data, _bound_method],
)
def test_mistakes_raise_value_error_in_both(snippet):
  res = both(snippet)
  assert isinstance(res["flax"], ValueError), res["flax"]
  assert isinstance(res["pynnx"], pynnx.PynnxError) and isinstance(res["pynnx"], ValueError)


# --- silent drops ------------------------------------------------------------------------------


def test_sow_in_tree_mode_transform():
  # Flax drops the sown value silently; pynnx raises and names nnx.capture.
  def snippet(nnx):
    m = sower(nnx)
    nnx.jit(lambda m, x: m(x), graph=False)(m, jnp.ones(2))
    return hasattr(m, "feat")

  res = both(snippet)
  assert res["flax"] is False
  assert isinstance(res["pynnx"], pynnx.StructureChangeError)
  with pytest.raises(pynnx.StructureChangeError, match=r"added args\[0\]\.feat.*nnx\.capture"):
    snippet(pynnx)


def test_sow_in_graph_mode_transform_propagates():
  def snippet(nnx):
    m = sower(nnx)
    nnx.jit(lambda m, x: m(x), graph=True, graph_updates=True)(m, jnp.ones(2))
    return m.feat.get_value()

  assert_same(both(snippet))


# --- StateAxes in out_axes ---------------------------------------------------------------------


def test_vmap_state_axes_out_axes_builds_ensemble():
  def snippet(nnx, axes, with_aux):
    class Member(nnx.Module):
      def __init__(self, k):
        self.lin = nnx.Linear(2, 3, rngs=nnx.Rngs(k))
        self.count = nnx.BatchStat(jnp.array(0))

    spec = nnx.StateAxes({nnx.Param: axes, nnx.BatchStat: None})

    @nnx.vmap(in_axes=(0,), out_axes=(spec, 0) if with_aux else spec)
    def make(k):
      return (Member(k), jax.random.key_data(k).sum()) if with_aux else Member(k)

    out = make(jax.random.split(jax.random.key(0), 4))
    m = out[0] if with_aux else out
    return flat(nnx.state(m)), (out[1] if with_aux else None)

  for axes, with_aux in [(0, False), (1, False), (0, True)]:
    assert_same(both(snippet, axes, with_aux))


def test_vmap_tuple_out_axes_in_graph_mode():
  def snippet(nnx):
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    f = nnx.vmap(lambda m, x: (m(x), m(x)), in_axes=(None, 0), out_axes=(0, 1), graph=True)
    return f(m, jnp.ones((4, 2)))

  res = both(snippet)
  assert_same(res)
  assert res["pynnx"][1].shape == (3, 4)


def test_state_axes_out_axes_errors():
  with pytest.raises(pynnx.AxisSpecError, match="not a Module"):
    pynnx.vmap(lambda x: x, out_axes=pynnx.StateAxes({...: 0}))(jnp.ones(3))
  with pytest.raises(pynnx.AxisSpecError, match="matches no filter"):
    pynnx.vmap(
      lambda k: pynnx.Linear(2, 3, rngs=pynnx.Rngs(k)),
      out_axes=pynnx.StateAxes({pynnx.BatchStat: 0}),
    )(jax.random.split(jax.random.key(0), 2))


# --- custom_vjp (the reference examples) ---------------------------------------------------------


def foo(nnx):
  class Foo(nnx.Module):
    def __init__(self, x, y):
      self.x = nnx.Param(x)
      self.y = nnx.Param(y)

  return Foo(x=jnp.array(1.0), y=jnp.array(2.0))


def grads_of(nnx, g):
  return flat(g if isinstance(g, nnx.State) else nnx.state(g))


def test_custom_vjp_state_form():
  def snippet(nnx):
    @nnx.custom_vjp(graph=True, graph_updates=True)
    def f(m):
      return jnp.sin(m.x) * m.y

    def f_fwd(m):
      return f(m), (jnp.cos(m.x), jnp.sin(m.x), m)

    def f_bwd(res, g):
      input_updates_g, out_g = g
      cos_x, sin_x, m = res
      (m_g,) = input_updates_g
      m_g = jax.tree.map(lambda x: x, m_g)
      m_g["x"][...] = cos_x * out_g * m.y
      m_g["y"][...] = sin_x * out_g
      return (m_g,)

    f.defvjp(f_fwd, f_bwd)
    return grads_of(nnx, nnx.grad(f, graph=True)(foo(nnx)))

  assert_same(both(snippet))


def test_custom_vjp_diff_state():
  def snippet(nnx):
    x_attribute = nnx.PathContains("x")

    @nnx.custom_vjp(nondiff_argnums=(nnx.DiffState(0, x_attribute),), graph=True)
    def f(m):
      return jnp.sin(m.x) * m.y

    def f_fwd(m):
      return f(m), (jnp.cos(m.x), m)

    def f_bwd(res, g):
      input_updates_g, out_g = g
      cos_x, m = res
      (m_g,) = input_updates_g
      m_g = jax.tree.map(lambda x: x, m_g)
      m_g.x[...] = cos_x * out_g * m.y
      del m_g["y"]
      return (m_g,)

    f.defvjp(f_fwd, f_bwd)
    g = nnx.grad(f, argnums=nnx.DiffState(0, x_attribute), graph=True)(foo(nnx))
    return grads_of(nnx, g)

  assert_same(both(snippet))


@pytest.mark.parametrize("graph_updates", [False, True])
def test_custom_vjp_plain_form(graph, graph_updates):
  def snippet(nnx):
    @nnx.custom_vjp(graph=graph, graph_updates=graph_updates)
    def f(m):
      return jnp.sin(m.x) * m.y

    def f_fwd(m):
      return f(m), (jnp.cos(m.x), jnp.sin(m.x), m)

    def f_bwd(res, g):
      cos_x, sin_x, m = res
      m_g = nnx.clone(m)
      m_g.x[...] = cos_x * g * m.y
      m_g.y[...] = sin_x * g
      return (m_g,)

    f.defvjp(f_fwd, f_bwd)
    m = foo(nnx)
    return grads_of(nnx, nnx.grad(f, graph=graph)(m)), grads_of(
      nnx, nnx.grad(f, graph=not graph)(m)
    )

  res = both(snippet)
  if graph and graph_updates:  # Flax: the bwd then receives (input_updates_g, out_g)
    assert type(res["flax"]) is type(res["pynnx"]) is TypeError
  else:
    assert_same(res)


def test_custom_vjp_nondiff_argnums(graph):
  def snippet(nnx):
    @nnx.custom_vjp(nondiff_argnums=(1,), graph=graph, graph_updates=False)
    def f(m, k, x):
      return jnp.sin(m.x) * m.y * x * k

    def f_fwd(m, k, x):
      return f(m, k, x), (m, x)

    def f_bwd(k, res, g):
      m, x = res
      m_g = nnx.clone(m)
      m_g.x[...] = jnp.cos(m.x) * m.y * x * k * g
      m_g.y[...] = jnp.sin(m.x) * x * k * g
      return (m_g, jnp.sin(m.x) * m.y * k * g)

    f.defvjp(f_fwd, f_bwd)
    g = nnx.grad(lambda m, x: f(m, 3.0, x), argnums=(0, 1), graph=graph)(foo(nnx), jnp.array(2.0))
    return grads_of(nnx, g[0]), g[1]

  assert_same(both(snippet))


def test_custom_vjp_diff_state_needs_graph_updates():
  def snippet(nnx, graph, graph_updates):
    return nnx.custom_vjp(
      lambda m: m.x,
      nondiff_argnums=(nnx.DiffState(0, ...),),
      graph=graph,
      graph_updates=graph_updates,
    )

  for graph, gu in [(False, None), (True, False)]:
    res = both(snippet, graph, gu)
    if graph:  # Flax raises on the call; pynnx on the call too
      m = foo(pynnx)
      f = res["pynnx"]
      f.defvjp(lambda m: (m.x, None), lambda r, g: (g,))
      with pytest.raises(pynnx.GraphModeRequiredError, match="needs graph_updates=True"):
        f(m)
    else:
      assert isinstance(res["flax"], ValueError) and isinstance(res["pynnx"], ValueError)


def test_grad_of_plain_array_argument_in_graph_mode():
  def snippet(nnx):
    m = foo(nnx)
    g = nnx.grad(lambda m, x: m.x * x[0], argnums=(0, 1), graph=True)(m, (jnp.array(2.0),))
    return grads_of(nnx, g[0]), g[1]

  assert_same(both(snippet))


# --- transform_metadata ---------------------------------------------------------------------------


def test_transform_metadata(graph):
  def snippet(nnx):
    mesh = jax.make_mesh((2, 4), ("a", "b"))
    with jax.set_mesh(mesh):
      init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("a", "b"))
      m = nnx.Linear(2, 4, kernel_init=init, rngs=nnx.Rngs(0))
      names = lambda v: v.get_metadata().get("out_sharding")  # noqa: E731
      seen = {}

      @nnx.transform_metadata(in_axes=0, out_axes=1, partition="a", graph=graph)
      def f(m, x):
        seen["inside"] = names(m.kernel)
        m.kernel[...] = m.kernel[...] * 2
        return nnx.Param(jnp.ones((4, 4)), out_sharding=("b", None))

      new = f(m, jnp.ones(2))
      return seen["inside"], names(m.kernel), names(new), m.kernel[...]

  res = both(snippet)
  assert res["flax"][:3] == res["pynnx"][:3] == (("b",), ("a", "b"), ("b", "a", None))
  np.testing.assert_allclose(res["flax"][3], res["pynnx"][3])


# --- pynnx error messages for the new APIs ----------------------------------------------------------


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_capture_errors():
  m = sower(pynnx)
  with pytest.raises(pynnx.TransformArgumentError, match="must be the Module to watch"):
    pynnx.capture(lambda x: x, pynnx.Intermediate)(jnp.ones(2))
  with pytest.raises(pynnx.TransformArgumentError, match="must be Variable types"):
    pynnx.capture(m, "intermediates")
  inner = pynnx.capture(m, pynnx.Intermediate)
  with pytest.raises(pynnx.TransformArgumentError, match="already being captured"):
    pynnx.capture(lambda m, x: inner(x), pynnx.Intermediate)(m, jnp.ones(2))
  assert "__captures__" not in m.__dict__  # cleaned up after the error
  with pytest.raises(pynnx.TransformArgumentError, match="init must be a State of Variables"):
    pynnx.capture(m, pynnx.Intermediate, init=pynnx.State({"a": 1.0}))(jnp.ones(2))


def test_prefix_filter_map_must_be_callable_or_mapping():
  with pytest.raises(pynnx.FilterError, match="filter_map must be a callable"):
    pynnx.prefix({"a": 1}, 0)


def test_structure_change_error_names_removed_variables():
  class M(pynnx.Module):
    def __init__(self):
      self.a = pynnx.Param(jnp.ones(2))
      self.b = pynnx.Param(jnp.ones(2))

  def drop(m):
    m._pynnx_delattr("b")

  with pytest.raises(pynnx.StructureChangeError, match=r"removed args\[0\]\.b"):
    pynnx.jit(drop)(M())


def test_scan_state_axes_out_axes():
  def snippet(nnx, with_carry):
    class Member(nnx.Module):
      def __init__(self, k):
        self.lin = nnx.Linear(2, 3, rngs=nnx.Rngs(k))
        self.count = nnx.BatchStat(jnp.array(0))

    spec = nnx.StateAxes({nnx.Param: 1, nnx.BatchStat: 0})
    keys = jax.random.split(jax.random.key(0), 4)
    if with_carry:
      make = nnx.scan(
        lambda c, k: (c + 1, Member(k)), in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, spec)
      )
      c, m = make(jnp.array(0), keys)
    else:
      c, m = None, nnx.scan(Member, in_axes=(0,), out_axes=spec)(keys)
    return flat(nnx.state(m)), c

  for with_carry in (False, True):
    assert_same(both(snippet, with_carry))


def test_vmap_state_axes_out_axes_with_partition_name_raises():
  f = pynnx.vmap(
    lambda k: pynnx.Linear(2, 3, rngs=pynnx.Rngs(k)),
    out_axes=pynnx.StateAxes({...: 0}),
    transform_metadata={pynnx.PARTITION_NAME: "data"},
  )
  with pytest.raises(pynnx.AxisSpecError, match="StateAxes in out_axes is not supported"):
    f(jax.random.split(jax.random.key(0), 2))


def test_static_attribute_change_in_tree_mode_transform_is_allowed():
  # model.eval() inside a jitted step changes only static attributes: no error (as in Flax)
  def snippet(nnx):
    m = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Dropout(0.5, rngs=nnx.Rngs(1)))

    @nnx.jit(graph=False)
    def step(m, x):
      m.eval()
      return m(x)

    return step(m, jnp.ones(2))

  assert_same(both(snippet))


def test_static_marked_attribute_holding_a_variable_raises_value_error():
  def snippet(nnx):
    class S(nnx.Module):
      def __init__(self):
        self.f = nnx.static(nnx.Param(jnp.ones(2)))

    return S()

  res = both(snippet)
  assert isinstance(res["flax"], ValueError)
  assert isinstance(res["pynnx"], pynnx.StaticAttributeError)
  with pytest.raises(pynnx.StaticAttributeError, match=r"S\.f is marked static.*holds data"):
    snippet(pynnx)


@pytest.mark.parametrize("transform", ["vmap", "cond", "switch"])
def test_static_attribute_change_inside_mapped_or_branched_transform(transform):
  # Flax's graph mode sets model.eval() made inside vmap / cond on the caller's Module
  def snippet(nnx):
    m = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Dropout(0.5, rngs=nnx.Rngs(1)))

    def evaluate(m, x):
      m.eval()
      return m(x)

    x = jnp.ones((3, 2))
    if transform == "vmap":
      y = nnx.vmap(evaluate, in_axes=(None, 0), graph=True)(m, x)
    elif transform == "cond":
      y = nnx.cond(True, evaluate, evaluate, m, x, graph=True)
    else:
      y = nnx.switch(0, [evaluate, evaluate], m, x, graph=True)
    return y, m.layers[1].deterministic

  res = both(snippet)
  assert_same(res)
  assert res["flax"][1] is True and res["pynnx"][1] is True


def test_graph_spec_accessors():
  def snippet(nnx):
    axes = nnx.StateAxes({nnx.Param: 0, nnx.BatchStat: 1, ...: None})
    sharding = nnx.StateSharding({nnx.Param: "data", ...: None})
    diff = nnx.DiffState(0, nnx.Param)
    bs = nnx.BatchStat(jnp.zeros(()))
    return (
      list(axes.axes),
      list(axes.values()),
      axes.get(nnx.BatchStat),
      [axes.map_prefix(("m", "w"), nnx.Param(jnp.zeros(()))), axes.map_prefix(("s",), bs)],
      list(sharding.shardings),
      sharding.map_prefix(("w",), bs),
      [diff.map_prefix(("w",), nnx.Param(jnp.zeros(()))), diff.map_prefix(("s",), bs)],
    )

  res = both(snippet)
  assert res["flax"] == res["pynnx"]
  strict = pynnx.StateAxes({pynnx.Param: 0})
  with pytest.raises(
    pynnx.AxisSpecError, match=r"no filter of .* matches the BatchStat at model\.s"
  ):
    strict.map_prefix(("s",), pynnx.BatchStat(jnp.zeros(())))
