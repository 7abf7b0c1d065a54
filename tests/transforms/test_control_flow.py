"""nnx.cond / nnx.switch / nnx.while_loop / nnx.fori_loop in tree mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pynnx as nnx


class Counter(nnx.Module):
  def __init__(self):
    self.count = nnx.BatchStat(jnp.array(0, jnp.int32))


class Model(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.array([1.0, 2.0]))
    self.stat = nnx.BatchStat(jnp.zeros((2,)))

  def __call__(self, x):
    self.stat[...] = self.stat[...] + x
    return x * self.w[...]


def inc(c):
  c.count[...] += 1


def dec(c):
  c.count[...] -= 1


# --- cond / switch ------------------------------------------------------------------------


def test_cond_python_and_array_preds_write_back():
  c = Counter()
  nnx.cond(True, inc, dec, c)
  nnx.cond(jnp.array(False), inc, dec, c)
  nnx.cond(1, inc, dec, c)
  nnx.cond(jnp.array(True), inc, dec, c)
  assert int(c.count[...]) == 2


def test_cond_matches_lax_cond_on_pure_function():
  def branch_a(m, x):
    return m(x)

  def branch_b(m, x):
    m.stat[...] = m.stat[...] - 1.0
    return -x

  x = jnp.array([3.0, 4.0])
  for pred in (True, False):
    m = Model()
    y = nnx.cond(jnp.array(pred), branch_a, branch_b, m, x)

    ref = Model()
    graphdef, state = nnx.split(ref)

    def pure(branch, graphdef=graphdef):
      def f(st, x):
        mm = nnx.merge(graphdef, st)
        out = branch(mm, x)
        return out, nnx.state(mm)

      return f

    y_ref, state_ref = jax.lax.cond(pred, pure(branch_a), pure(branch_b), state, x)
    np.testing.assert_allclose(y, y_ref)
    np.testing.assert_allclose(m.stat[...], state_ref["stat"][...])
    np.testing.assert_allclose(m.w[...], state_ref["w"][...])


def test_switch_selects_branch_and_clamps_like_lax():
  def add(n):
    def f(c):
      c.count[...] += n
      return c.count[...]

    return f

  c = Counter()
  out = nnx.switch(2, [add(1), add(10), add(100)], c)
  assert int(out) == 100 and int(c.count[...]) == 100
  nnx.switch(jnp.array(1), [add(1), add(10), add(100)], c)
  assert int(c.count[...]) == 110
  nnx.switch(7, [add(1), add(10), add(100)], c)  # clamped to the last branch, as lax.switch
  assert int(c.count[...]) == 210


def test_cond_inside_jit_and_grad():
  @nnx.jit
  def step(c, pred):
    nnx.cond(pred, inc, dec, c)

  c = Counter()
  step(c, jnp.array(True))
  step(c, jnp.array(True))
  step(c, jnp.array(False))
  assert int(c.count[...]) == 1

  m = Model()
  x = jnp.array([1.0, 1.0])

  def loss(m, pred):
    return jnp.sum(nnx.cond(pred, lambda m, x: m(x) ** 2, lambda m, x: m(x), m, x))

  g = nnx.grad(loss)(m, jnp.array(True))
  np.testing.assert_allclose(g.w[...], 2 * m.w[...] * x * x)
  assert g.stat[...] is None
  np.testing.assert_allclose(m.stat[...], [1.0, 1.0])  # the update escaped grad too


def test_cond_returning_an_operand_gives_back_the_callers_variables():
  c = Counter()
  out = nnx.cond(True, lambda c: c, lambda c: c, c)
  assert out.count is c.count
  fresh = nnx.cond(False, lambda c: c.count[...] * 2, lambda c: c.count[...] + 5, c)
  assert int(fresh) == 5


def test_cond_branches_changing_a_variable_dtype_raise():
  def to_float(c):
    c.count.value = c.count[...].astype(jnp.float32)  # `.value =` replaces the cell

  with pytest.raises(nnx.StructureChangeError, match=r"operands\[0\]\.count as int32"):
    nnx.cond(jnp.array(True), inc, to_float, Counter())


def test_cond_branches_with_different_outputs_raise():
  with pytest.raises(nnx.StructureChangeError, match="different structure"):
    nnx.cond(jnp.array(True), lambda c: jnp.zeros(2), lambda c: jnp.zeros(3), Counter())


def test_cond_branch_adding_a_variable_raises():
  class Sower(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones(()))

  def sow(m):
    m.sow(nnx.Intermediate, "seen", m.w[...])

  with pytest.raises(nnx.StructureChangeError, match=r"true_fun changed the Variable structure"):
    nnx.cond(jnp.array(True), sow, lambda m: None, Sower())


def test_cond_closed_over_variable_raises():
  c = Counter()
  with pytest.raises(nnx.TraceContextError, match="pynnx.cond"):
    nnx.cond(jnp.array(True), lambda: inc(c), lambda: None)


def test_cond_shared_variable_raises():
  c = Counter()
  with pytest.raises(nnx.SharedReferenceError, match=r"operands\[1\]\.count"):
    nnx.cond(True, lambda a, b: None, lambda a, b: None, c, c)


# --- while_loop ------------------------------------------------------------------------------


def test_while_loop_calls_module_and_returns_callers_variables():
  m = nnx.Linear(4, 4, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (4,))

  def body(val):
    m, x, n = val
    return m, m(x), n - 1.0

  out_m, y, n = nnx.while_loop(lambda val: val[-1] > 0, body, (m, x, 3.0))
  np.testing.assert_allclose(y, m(m(m(x))), rtol=1e-5)
  assert float(n) == 0.0
  assert out_m.kernel is m.kernel


def test_while_loop_writes_back_and_matches_lax():
  m = Model()
  x = jnp.array([1.0, 2.0])

  def body(val):
    m, i = val
    m(x)
    return m, i + 1

  _, i = nnx.while_loop(lambda val: val[1] < 4, body, (m, jnp.array(0, jnp.int32)))
  assert int(i) == 4
  np.testing.assert_allclose(m.stat[...], 4 * x)

  graphdef, state = nnx.split(Model())

  def pure_body(carry):
    state, i = carry
    mm = nnx.merge(graphdef, state)
    mm(x)
    return nnx.state(mm), i + 1

  state_ref, _ = jax.lax.while_loop(lambda c: c[1] < 4, pure_body, (state, jnp.array(0)))
  np.testing.assert_allclose(m.stat[...], state_ref["stat"][...])


def test_while_loop_advances_rng_streams_and_runs_inside_jit():
  class Noisy(nnx.Module):
    def __init__(self, rngs):
      self.rngs = rngs
      self.total = nnx.BatchStat(jnp.zeros(()))

  @nnx.jit
  def run(model):
    def body(model):
      model.total[...] += jax.random.uniform(model.rngs.params())
      return model

    return nnx.while_loop(lambda model: model.rngs.params.count[...] < 3, body, model)

  model = Noisy(nnx.Rngs(params=0))
  run(model)
  assert int(model.rngs.params.count[...]) == 3
  assert 0.0 < float(model.total[...]) < 3.0


def test_while_loop_body_changing_structure_raises():
  m = Model()
  with pytest.raises(nnx.StructureChangeError, match=r"init_val\[0\]\.stat .* is missing"):
    nnx.while_loop(lambda v: False, lambda v: ({"w": v[0].w}, v[1]), (m, 1.0))


def test_loop_body_returning_none_raises():
  with pytest.raises(nnx.StructureChangeError, match="body_fun returned None"):
    nnx.fori_loop(0, 2, lambda i, c: inc(c), Counter())


def test_while_loop_body_changing_dtype_raises():
  with pytest.raises(nnx.StructureChangeError, match=r"changed init_val\[1\] from"):
    nnx.while_loop(lambda v: False, lambda v: (v[0], jnp.zeros(3)), (Model(), jnp.zeros(2)))


def test_while_loop_cond_fun_update_raises():
  def cond_fun(c):
    c.count[...] += 1
    return c.count[...] < 3

  with pytest.raises(nnx.TraceContextError, match="cond_fun updated a Variable"):
    nnx.while_loop(cond_fun, lambda c: c, Counter())


def test_while_loop_lost_update_raises():
  def body(c):
    inc(c)
    return Counter()

  with pytest.raises(nnx.StructureChangeError, match=r"updated init_val\.count but returned"):
    nnx.while_loop(lambda c: c.count[...] < 3, body, Counter())


def test_while_loop_shared_variable_raises():
  c = Counter()
  with pytest.raises(nnx.SharedReferenceError, match=r"init_val\[1\]\.count"):
    nnx.while_loop(lambda v: False, lambda v: v, (c, c))


# --- fori_loop ---------------------------------------------------------------------------------


def test_fori_loop_mutates_kernel():
  def body(i, val):
    m, x = val
    m.kernel[...] = jnp.identity(10) * i.astype(jnp.float32)
    return m, m(x)

  m = nnx.Linear(10, 10, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (10,))
  _, y = nnx.fori_loop(2, 4, body, (m, x))
  np.testing.assert_allclose(y, x * 2 * 3, rtol=1e-6)
  np.testing.assert_allclose(m.kernel[...], jnp.identity(10) * 3)


@pytest.mark.parametrize("unroll", [None, 2, True])
def test_fori_loop_unroll_and_traced_bounds(unroll):
  def body(i, c):
    c.count[...] += i
    return c

  c = Counter()
  nnx.fori_loop(0, 5, body, c, unroll=unroll)
  assert int(c.count[...]) == 10

  @nnx.jit
  def run(c, n):
    return nnx.fori_loop(0, n, body, c)

  run(c, jnp.array(4, jnp.int32))
  assert int(c.count[...]) == 16


@settings(max_examples=8, deadline=None)
@given(
  lower=st.integers(0, 3),
  length=st.integers(0, 4),
  start=st.floats(-2.0, 2.0, allow_nan=False, width=32),
)
def test_fori_loop_matches_lax_fori_loop(lower, length, start):
  x = jnp.array([start, 1.0], jnp.float32)

  def body(i, val):
    m, y = val
    y = m(y) + i.astype(jnp.float32)
    return m, y

  m = Model()
  _, y = nnx.fori_loop(lower, lower + length, body, (m, x))

  graphdef, state = nnx.split(Model())

  def pure(i, carry):
    state, y = carry
    mm = nnx.merge(graphdef, state)
    y = mm(y) + i.astype(jnp.float32)
    return nnx.state(mm), y

  state_ref, y_ref = jax.lax.fori_loop(lower, lower + length, pure, (state, x))
  np.testing.assert_allclose(y, y_ref, rtol=1e-6)
  np.testing.assert_allclose(m.stat[...], state_ref["stat"][...], rtol=1e-6)
