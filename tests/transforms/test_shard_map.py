"""nnx.shard_map in tree mode, on the 8 virtual CPU devices set up in conftest.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import pynnx as nnx


@pytest.fixture
def data_mesh():
  return jax.sharding.Mesh(jax.devices(), ("data",))


@pytest.fixture
def model_mesh():
  return jax.sharding.Mesh(jax.devices(), ("model",))


class Dense(nnx.Module):
  def __init__(self, din, dout, rngs):
    self.kernel = nnx.Param(jax.random.normal(rngs.params(), (din, dout)))

  def __call__(self, x):
    return x @ self.kernel[...]


class MLP(nnx.Module):
  def __init__(self, rngs):
    self.linear1 = Dense(2, 16, rngs)
    self.linear2 = Dense(16, 3, rngs)

  def __call__(self, x):
    return self.linear2(jax.nn.relu(self.linear1(x)))


class Stats(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.array([1.0, 2.0]))
    self.mean = nnx.BatchStat(jnp.zeros((2,)))
    self.steps = nnx.BatchStat(jnp.array(0, jnp.int32))

  def __call__(self, x):
    self.mean[...] = jax.lax.pmean(jnp.mean(x, axis=0), "data")
    self.steps[...] += 1
    return x * self.w[...]


def tensor_parallel_specs(model):
  def spec(path, _):
    names = [getattr(k, "name", None) for k in path]
    return P(None, "model") if "linear1" in names else P("model", None)

  is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
  return jax.tree_util.tree_map_with_path(spec, model, is_leaf=is_var)


def test_shard_map_data_parallel(data_mesh):
  m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  x = jnp.ones((32, 2))

  @nnx.shard_map(mesh=data_mesh, in_specs=(P(None), P("data")), out_specs=P("data"))
  def f(m, x):
    return m(x)

  np.testing.assert_allclose(f(m, x), m(x), rtol=1e-6)


def test_shard_map_matches_jax_shard_map_on_pure_function(data_mesh):
  x = jnp.arange(32.0).reshape(16, 2)
  m = Stats()
  y = nnx.shard_map(
    lambda m, x: m(x), mesh=data_mesh, in_specs=(P(), P("data")), out_specs=P("data")
  )(m, x)

  graphdef, state = nnx.split(Stats())

  def pure(state, x):
    mm = nnx.merge(graphdef, state)
    return mm(x), nnx.state(mm)

  y_ref, state_ref = jax.shard_map(
    pure, mesh=data_mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P())
  )(state, x)
  np.testing.assert_allclose(y, y_ref)
  np.testing.assert_allclose(m.mean[...], state_ref["mean"][...])
  np.testing.assert_allclose(m.mean[...], jnp.mean(x, axis=0))
  assert int(m.steps[...]) == 1  # the scalar got P() though P() was given for the Module


def test_shard_map_broadcast_none_spec_fits_scalars(data_mesh):
  # P(None) for a whole Module holding a scalar Variable: trailing Nones are dropped.
  m = Stats()
  x = jnp.ones((8, 2))
  nnx.shard_map(
    lambda m, x: m(x), mesh=data_mesh, in_specs=(P(None), P("data")), out_specs=P("data")
  )(m, x)
  assert int(m.steps[...]) == 1
  y = nnx.shard_map(
    lambda m, x: m(x), mesh=data_mesh, in_specs=(None, P("data")), out_specs=P("data")
  )(m, x)
  np.testing.assert_allclose(y, x * m.w[...])
  assert int(m.steps[...]) == 2


def test_shard_map_tensor_parallel_with_module_shaped_specs(model_mesh):
  m = MLP(nnx.Rngs(0))
  x = jnp.ones((4, 2))

  @nnx.shard_map(mesh=model_mesh, in_specs=(tensor_parallel_specs(m), P()), out_specs=P())
  def f(m, x):
    return jax.lax.psum(m(x), "model")

  np.testing.assert_allclose(f(m, x), m(x), rtol=1e-5, atol=1e-5)


def test_shard_map_updated_variables_keep_their_input_spec(model_mesh):
  m = MLP(nnx.Rngs(0))
  before = m.linear1.kernel[...]

  def double(m):
    m.linear1.kernel[...] = m.linear1.kernel[...] * 2.0
    m.linear2.kernel[...] = m.linear2.kernel[...] * 1.0

  nnx.shard_map(double, mesh=model_mesh, in_specs=(tensor_parallel_specs(m),), out_specs=P())(m)
  kernel = m.linear1.kernel[...]
  np.testing.assert_allclose(kernel, before * 2.0)
  assert kernel.sharding.spec == P(None, "model")
  assert m.linear2.kernel[...].sharding.spec == P("model", None)


def test_shard_map_inside_jit_and_on_a_method(data_mesh):
  class Model(Stats):
    @nnx.shard_map(mesh=data_mesh, in_specs=(P(), P("data")), out_specs=P("data"))
    def apply(self, x):
      return self(x)

  m = Model()
  x = jnp.arange(16.0).reshape(8, 2)

  @nnx.jit
  def step(m, x):
    return m.apply(x)

  y = step(m, x)
  np.testing.assert_allclose(y, x * m.w[...])
  np.testing.assert_allclose(m.mean[...], jnp.mean(x, axis=0))
  step(m, x)
  assert int(m.steps[...]) == 2


def test_shard_map_wrong_number_of_specs_raises(data_mesh):
  f = nnx.shard_map(lambda m, x: x, mesh=data_mesh, in_specs=(P(), P(), P()), out_specs=P())
  with pytest.raises(nnx.AxisSpecError, match="in_specs has 3 entries but .* 2 positional"):
    f(Stats(), jnp.ones((8, 2)))


def test_shard_map_spec_tree_that_does_not_fit_names_argument_and_path(model_mesh):
  m = MLP(nnx.Rngs(0))
  bad = {"linear1": P()}
  f = nnx.shard_map(lambda m: None, mesh=model_mesh, in_specs=(bad,), out_specs=P())
  with pytest.raises(nnx.AxisSpecError, match="in_specs does not fit argument 'm'"):
    f(m)
  g = nnx.shard_map(
    lambda model: None, mesh=model_mesh, in_specs=(tensor_parallel_specs(m),), out_specs=P()
  )
  with pytest.raises(nnx.AxisSpecError, match="the spec has a MLP where the argument has a Dense"):
    g(m.linear1)
  h = nnx.shard_map(
    lambda pair: None, mesh=model_mesh, in_specs=((P(), (P(), P())),), out_specs=P()
  )
  with pytest.raises(nnx.AxisSpecError, match=r"at pair\[1\]"):
    h((m.linear1, jnp.ones(3)))


def test_shard_map_bad_spec_leaf_raises(data_mesh):
  f = nnx.shard_map(lambda x: x, mesh=data_mesh, in_specs=(0,), out_specs=P())
  with pytest.raises(nnx.AxisSpecError, match="expected a PartitionSpec or None"):
    f(jnp.ones((8,)))
  g = nnx.shard_map(lambda x: x, mesh=data_mesh, in_specs={"x": P()}, out_specs=P())
  with pytest.raises(nnx.AxisSpecError, match="one spec per argument; got dict"):
    g(jnp.ones((8,)))


def test_shard_map_closed_over_variable_raises(data_mesh):
  m = Stats()

  def f(x):
    m.steps[...] += 1
    return x

  with pytest.raises(nnx.TraceContextError, match="pynnx.shard_map"):
    nnx.shard_map(f, mesh=data_mesh, in_specs=(P(),), out_specs=P())(jnp.ones((8,)))


def test_shard_map_shared_variable_raises(data_mesh):
  m = Stats()
  f = nnx.shard_map(lambda a, b: None, mesh=data_mesh, in_specs=P(), out_specs=P())
  with pytest.raises(nnx.SharedReferenceError, match=r"b\.mean"):
    f(m, m)


def test_shard_map_state_sharding_needs_graph_mode(data_mesh):
  spec = nnx.StateSharding({nnx.Param: P()})
  # raised when the transform is built: the specs are known then
  with pytest.raises(nnx.GraphModeRequiredError, match="graph=False"):
    nnx.shard_map(lambda m: None, mesh=data_mesh, in_specs=(spec,), out_specs=P(), graph=False)
