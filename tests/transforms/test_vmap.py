import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pynnx as nnx
from pynnx._transforms.flat import flatten_args
from pynnx._transforms.prefix import broadcast_prefix


class Counter(nnx.Module):
  def __init__(self, n):
    self.w = nnx.Param(jnp.arange(n * 2, dtype=jnp.float32).reshape(n, 2))
    self.count = nnx.BatchStat(jnp.zeros(n))


@functools.cache
def _four_linears():
  @nnx.split_rngs(splits=4)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def create(rngs):
    return nnx.Linear(2, 3, rngs=rngs)

  return create(nnx.Rngs(0))


def make_ensemble(n):
  """``n`` stacked Linear(2, 3) members (sliced from one vmapped creation: fewer compiles)."""
  return jax.tree.map(lambda v: v[:n], _four_linears())


# --- equivalence with jax.vmap -------------------------------------------------------------


@settings(max_examples=5, deadline=None)
@given(n=st.integers(1, 3), batch=st.integers(1, 2), x_axis=st.integers(0, 1))
def test_vmap_ensemble_matches_jax_vmap_on_split_merge(n, batch, x_axis):
  m = make_ensemble(n)
  x = jnp.arange(n * batch * 2, dtype=jnp.float32).reshape(n, batch, 2)
  x = jnp.moveaxis(x, 0, x_axis)
  graphdef, state = nnx.split(m)

  def pure(state, x):
    return nnx.merge(graphdef, state)(x)

  expected = jax.vmap(pure, in_axes=(0, x_axis))(state, x)
  got = nnx.vmap(lambda m, x: m(x), in_axes=(0, x_axis))(m, x)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_vmap_broadcast_model_matches_jax_vmap():
  m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  x = jnp.arange(10.0).reshape(5, 2)
  graphdef, state = nnx.split(m)
  expected = jax.vmap(lambda s, x: nnx.merge(graphdef, s)(x), in_axes=(None, 0))(state, x)
  got = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), graph=False)(m, x)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  np.testing.assert_allclose(got, m(x), rtol=1e-6)


def test_vmap_created_modules_are_stacked_and_distinct():
  m = _four_linears()
  assert isinstance(m, nnx.Linear)
  assert m.kernel[...].shape == (4, 2, 3)
  assert m.bias[...].shape == (4, 3)
  k = m.kernel[...]
  assert not np.allclose(k[0], k[1])  # each member got its own key


def test_vmap_out_axes_one_stacks_created_module_on_axis_one():
  @nnx.split_rngs(splits=3)
  @nnx.vmap(in_axes=(0,), out_axes=1)
  def create(rngs):
    return nnx.Linear(2, 5, rngs=rngs)

  m = create(nnx.Rngs(0))
  assert m.kernel[...].shape == (2, 3, 5)


# --- write-back ----------------------------------------------------------------------------


def test_vmap_writes_back_mapped_variables():
  m = Counter(3)

  @nnx.vmap(in_axes=(0, None))
  def f(m, x):
    m.count[...] += m.w[...] @ x
    return m.count[...]

  out = f(m, jnp.ones(2))
  np.testing.assert_allclose(out, [1.0, 5.0, 9.0])
  np.testing.assert_allclose(m.count[...], [1.0, 5.0, 9.0])
  f(m, jnp.ones(2))
  np.testing.assert_allclose(m.count[...], [2.0, 10.0, 18.0])


def test_vmap_writes_back_on_nonzero_axis():
  class M(nnx.Module):
    def __init__(self):
      self.v = nnx.BatchStat(jnp.zeros((2, 3)))

  m = M()

  @nnx.vmap(in_axes=1)
  def f(m):
    assert m.v[...].shape == (2,)
    m.v[...] += jnp.arange(2.0)

  f(m)
  np.testing.assert_allclose(m.v[...], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


def test_vmap_broadcast_variable_with_unbatched_update_is_written_back():
  m = Counter(1)

  @nnx.vmap(in_axes=(None, 0))
  def f(m, x):
    m.count[...] = m.count[...] + 1.0
    return x * 2

  np.testing.assert_allclose(f(m, jnp.arange(3.0)), [0.0, 2.0, 4.0])
  np.testing.assert_allclose(m.count[...], [1.0])


def test_vmap_broadcast_variable_reduced_with_axis_name():
  m = Counter(1)

  @nnx.vmap(in_axes=(None, 0), axis_name="batch")
  def f(m, x):
    m.count[...] = m.count[...] + jax.lax.psum(x, "batch")
    return x

  f(m, jnp.arange(4.0))
  np.testing.assert_allclose(m.count[...], [6.0])


def test_vmap_kwargs_are_mapped_on_axis_zero():
  m = Counter(3)

  @nnx.vmap(in_axes=())
  def f(*, m):
    m.count[...] += 1.0
    return m.w[...].sum()

  np.testing.assert_allclose(f(m=m), [1.0, 5.0, 9.0])
  np.testing.assert_allclose(m.count[...], [1.0, 1.0, 1.0])


def test_vmap_prefix_in_axes_per_subtree():
  arg = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  out = nnx.vmap(lambda d: d["a"] * d["b"], in_axes=({"a": 1, "b": 0},))(arg)
  np.testing.assert_allclose(out, jnp.arange(6.0).reshape(2, 3).T)


def test_vmap_module_shaped_prefix():
  m = Counter(3)
  prefix = jax.tree.map(lambda _: 0, m)  # a Counter whose Variables hold the axis
  prefix.count._raw_value = None  # pylint: disable=protected-access

  @nnx.vmap(in_axes=(prefix,))
  def f(m):
    return m.w[...].sum() + m.count[...].sum()

  np.testing.assert_allclose(f(m), [1.0, 5.0, 9.0])


def test_vmap_method_decorator():
  class Ens(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.arange(3.0))

    @nnx.vmap(in_axes=(0, None))
    def __call__(self, x):
      return self.w[...] * x

  np.testing.assert_allclose(Ens()(jnp.array(2.0)), [0.0, 2.0, 4.0])


# --- nesting -------------------------------------------------------------------------------


def test_vmap_inside_jit_writes_back():
  m = Counter(3)

  @nnx.jit
  def step(m, x):
    return nnx.vmap(
      lambda m, x: (m.count.__setitem__(..., m.count[...] + x), m.w[...].sum())[1],
      in_axes=(0, None),
    )(m, x)

  out = step(m, jnp.array(2.0))
  np.testing.assert_allclose(out, [1.0, 5.0, 9.0])
  np.testing.assert_allclose(m.count[...], [2.0, 2.0, 2.0])


def test_grad_through_vmap_matches_jax():
  m = make_ensemble(3)
  x = jnp.ones((3, 4, 2))

  def loss(m, x):
    return jnp.sum(nnx.vmap(lambda m, x: m(x))(m, x) ** 2)

  grads = nnx.grad(loss)(m, x)
  graphdef, params = nnx.split(m)

  def pure(params, x):
    y = jax.vmap(lambda p, x: nnx.merge(graphdef, p)(x))(params, x)
    return jnp.sum(y**2)

  expected = jax.grad(pure)(params, x)
  np.testing.assert_allclose(grads.kernel[...], jax.tree.leaves(expected["kernel"])[0], rtol=1e-5)
  np.testing.assert_allclose(grads.bias[...], jax.tree.leaves(expected["bias"])[0], rtol=1e-5)


def test_jit_inside_vmap():
  m = Counter(3)
  inner = nnx.jit(lambda m: m.count.__setitem__(..., m.count[...] + 1.0))
  nnx.vmap(inner)(m)
  np.testing.assert_allclose(m.count[...], [1.0, 1.0, 1.0])


# --- transform_metadata --------------------------------------------------------------------


def test_vmap_partition_name_metadata():
  seen = {}

  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def f(v):
    seen["inside"] = v.get_metadata("sharding_names")
    return nnx.Param(v[...] * 2, sharding_names=("model",))

  v = nnx.Param(jnp.ones((4, 3)), sharding_names=("layers", "model"))
  out = f(v)
  assert seen["inside"] == ("model",)
  assert out.get_metadata("sharding_names") == ("layers", "model")
  assert v.get_metadata("sharding_names") == ("layers", "model")
  assert out[...].shape == (4, 3)


# --- errors --------------------------------------------------------------------------------


def test_vmap_broadcast_variable_with_batched_update_raises():
  m = Counter(1)

  @nnx.vmap(in_axes=(None, 0))
  def f(model, x):
    model.count[...] = model.count[...] + x

  with pytest.raises(nnx.AxisSpecError, match=r"broadcast .*Variable model\.count"):
    f(m, jnp.arange(3.0))


def test_vmap_in_axes_length_mismatch_raises():
  with pytest.raises(nnx.AxisSpecError, match="in_axes has 1 entries but .* 2 positional"):
    nnx.vmap(lambda a, b: a + b, in_axes=(0,))(jnp.ones(2), jnp.ones(2))


def test_vmap_prefix_mismatch_names_argument_and_path():
  arg = {"a": jnp.ones(2), "b": {"c": jnp.ones(2)}}
  match = r"argument 'tree' at tree\.b: the spec has a dict with keys \('d'\)"
  with pytest.raises(nnx.AxisSpecError, match=match):
    nnx.vmap(lambda tree: tree["a"], in_axes=({"a": 0, "b": {"d": 0}},))(arg)


def test_vmap_invalid_axis_leaf_raises():
  with pytest.raises(nnx.AxisSpecError, match="expected an int or None"):
    nnx.vmap(lambda x: x, in_axes=("zero",))(jnp.ones(2))


def test_vmap_out_axes_mismatch_raises():
  f = nnx.vmap(lambda x: {"a": x}, out_axes={"b": 0})
  with pytest.raises(nnx.AxisSpecError, match="out_axes"):
    f(jnp.ones(3))


def test_vmap_closed_over_variable_write_raises():
  m = Counter(3)

  def f(x):
    m.count[...] = x

  with pytest.raises(nnx.TraceContextError, match="pynnx.vmap"):
    nnx.vmap(f)(jnp.ones(3))


def test_vmap_shared_variable_raises_in_tree_mode():
  m = Counter(3)
  with pytest.raises(nnx.SharedReferenceError):
    nnx.vmap(lambda a, b: a.w[...], graph=False)(m, m)


def test_vmap_state_axes_with_graph_false_raises():
  spec = nnx.StateAxes({nnx.Param: 0, nnx.BatchStat: None})
  with pytest.raises(nnx.GraphModeRequiredError, match="StateAxes"):
    nnx.vmap(lambda m: m.w[...], in_axes=(spec,), graph=False)(Counter(2))


def test_vmap_rejects_bound_method():
  m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.BoundMethodError, match="bound method"):
    nnx.vmap(m.__call__)


def test_broadcast_prefix_variable_leaf_needs_variable():
  arg = {"a": jnp.ones(2)}
  plan = flatten_args([arg]).plans[0]
  match = r"at x\.a: the spec has a Param where the argument has an array"
  with pytest.raises(nnx.AxisSpecError, match=match):
    broadcast_prefix({"a": nnx.Param(0)}, arg, plan, "pynnx.vmap(f)", "x")


def test_broadcast_prefix_expands_none_and_variables():
  m = Counter(2)
  plan = flatten_args([m]).plans[0]
  prefix = jax.tree.map(lambda _: 1, m)
  assert broadcast_prefix(prefix, m, plan, "api", "m") == (1, 1)
  assert broadcast_prefix(None, m, plan, "api", "m") == (None, None)


def test_vmap_unsplit_rngs_hint_split_rngs():
  with pytest.raises(nnx.AxisSpecError, match=r"axis 0 of rngs\.default\..*split_rngs"):
    nnx.vmap(lambda rngs: nnx.Linear(2, 2, rngs=rngs))(nnx.Rngs(0))


def test_vmap_inconsistent_sizes_name_both_paths():
  with pytest.raises(nnx.AxisSpecError, match=r"a has 3 and b has 4"):
    nnx.vmap(lambda a, b: a + b)(jnp.ones(3), jnp.ones(4))
