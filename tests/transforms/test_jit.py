import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx


class Counter(nnx.Module):
  def __init__(self):
    self.count = nnx.BatchStat(jnp.array(0))


class Shared(nnx.Module):
  def __init__(self, rngs):
    self.a = nnx.Linear(2, 2, rngs=rngs)
    self.b = nnx.Linear(2, 2, rngs=rngs)
    self.b_kernel = self.a.kernel  # tied after construction of the children


def test_jit_writes_back_updates(graph):
  c = Counter()

  @nnx.jit(graph=graph)
  def step(c):
    c.count[...] += 1
    return c.count[...]

  assert int(step(c)) == 1
  assert int(step(c)) == 2
  assert int(c.count[...]) == 2


def test_jit_matches_plain_jit_on_split_merge():
  m = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
  x = jnp.arange(6.0).reshape(2, 3)
  graphdef, state = nnx.split(m)
  pure = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(m, x), pure(state, x), rtol=1e-6)


def test_jit_retraces_only_on_structure_or_shape_change():
  traces = []

  @nnx.jit
  def f(m, x):
    traces.append(1)
    return m(x)

  m1 = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  m2 = nnx.Linear(2, 3, rngs=nnx.Rngs(1))
  f(m1, jnp.ones((1, 2)))
  f(m1, jnp.ones((1, 2)))
  f(m2, jnp.ones((1, 2)))  # same structure, other values: no retrace
  assert len(traces) == 1
  f(m1, jnp.ones((5, 2)))  # new shape
  assert len(traces) == 2
  m1.set_attributes(precision=jax.lax.Precision.HIGHEST)  # static attribute changed
  f(m1, jnp.ones((5, 2)))
  assert len(traces) == 3


def test_jit_kwargs_static_and_donation():
  m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))

  @nnx.jit(static_argnames="scale", donate_argnames="m")
  def f(m, x, *, scale):
    m.bias[...] = m.bias[...] + scale
    return m(x) * scale

  y = f(m, jnp.ones((1, 2)), scale=2.0)
  assert y.shape == (1, 3)
  np.testing.assert_allclose(m.bias[...], jnp.full((3,), 2.0))


def test_jit_module_returned_and_created_inside():
  @nnx.jit
  def make():
    return nnx.Linear(2, 3, rngs=nnx.Rngs(0))

  m = make()
  assert isinstance(m, nnx.Linear) and isinstance(m.kernel, nnx.Param)
  assert m.kernel[...].shape == (2, 3)
  m.kernel[...] = jnp.zeros((2, 3))  # a normal, writable Variable
  np.testing.assert_allclose(m(jnp.ones((1, 2))), jnp.zeros((1, 3)))


def test_jit_lower_trace_eval_shape():
  m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  f = nnx.jit(lambda m, x: m(x))
  x = jnp.ones((4, 2))
  assert "dot" in f.lower(m, x).as_text()
  assert f.eval_shape(m, x).shape == (4, 3)
  assert f.trace(m, x).jaxpr is not None


def test_jit_in_shardings_prefix():
  mesh = jax.sharding.Mesh(jax.devices()[:2], ("d",))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  f = nnx.jit(lambda m, x: m(x), in_shardings=(rep, rep), out_shardings=rep)
  y = f(m, jnp.ones((4, 2)))
  assert y.sharding == rep


def test_jit_method_decorator():
  class Model(nnx.Module):
    def __init__(self):
      self.linear = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
      self.calls = nnx.BatchStat(jnp.array(0))

    @nnx.jit
    def __call__(self, x):
      self.calls[...] += 1
      return self.linear(x)

  model = Model()
  model(jnp.ones((1, 2)))
  model(jnp.ones((1, 2)))
  assert int(model.calls[...]) == 2


def test_jit_rejects_bound_method():
  m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  with pytest.raises(
    nnx.BoundMethodError, match=r"does not accept bound methods.*Linear\.__call__"
  ):
    nnx.jit(m.__call__)


def test_jit_shared_variable_in_tree_mode_names_both_paths():
  m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  other = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
  pair = [m, other]

  @nnx.jit
  def f(model, again):
    return model(jnp.ones((1, 2)))

  with pytest.raises(
    nnx.SharedReferenceError,
    match=r"(?s)same Param at two places:\n  model\.bias\n  again\.bias.*graph=True",
  ):
    f(m, m)
  f(*pair)  # distinct modules are fine


def test_mutating_closed_over_variable_names_it():
  c = Counter()

  @nnx.jit
  def f(x):
    c.count[...] += 1
    return x

  with pytest.raises(
    nnx.TraceContextError, match=r"Cannot mutate a BatchStat inside pynnx\.jit.*Pass the Module"
  ):
    f(jnp.ones(()))


def test_leaked_tracer_detected_on_read():
  c = Counter()

  @jax.jit
  def f(x):
    c.count[...] += 1  # closed over in plain jax.jit: the tracer escapes into c
    return x

  f(jnp.ones(()))
  with pytest.raises(nnx.LeakedTracerError, match="leaked out of the trace"):
    c.count[...]


def test_nested_updates_reach_outer_caller():
  c = Counter()

  @nnx.jit
  def outer(c):
    @nnx.jit
    def inner(c):
      c.count[...] += 10

    inner(c)
    c.count[...] += 1

  outer(c)
  assert int(c.count[...]) == 11


def _mesh_shardings():
  mesh = jax.sharding.Mesh(jax.devices()[:2], ("model",))
  return (
    jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
    jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "model")),
  )


def test_jit_in_shardings_module_shaped_prefix():
  rep, cols = _mesh_shardings()
  m = nnx.Linear(2, 4, rngs=nnx.Rngs(0))
  spec = jax.tree.map(lambda _: rep, m)
  spec.kernel[...] = cols  # a Variable in the prefix holds that Variable's sharding

  @nnx.jit(in_shardings=(spec, rep))
  def f(m, x):
    m.kernel[...] = m.kernel[...] * 2.0
    return m(x)

  f(m, jnp.ones((1, 2)))
  assert m.kernel[...].sharding == cols


def test_jit_state_sharding_opts_into_graph_mode():
  rep, cols = _mesh_shardings()
  m = nnx.Linear(2, 4, rngs=nnx.Rngs(0))
  spec = nnx.StateSharding({nnx.PathContains("kernel"): cols})

  @nnx.jit(in_shardings=(spec, rep))
  def f(m, x):
    m.kernel[...] = m.kernel[...] + 1.0
    return m(x)

  y = f(m, jnp.ones((1, 2)))
  assert y.shape == (1, 4)
  assert m.kernel[...].sharding == cols


def test_jit_state_sharding_errors():
  rep, _ = _mesh_shardings()
  spec = nnx.StateSharding({nnx.Param: rep})
  with pytest.raises(nnx.GraphModeRequiredError, match="need graph mode"):
    nnx.jit(lambda m: m, in_shardings=(spec,), graph=False)
  with pytest.raises(nnx.ConfigError, match="StateSharding in out_shardings is not supported"):
    nnx.jit(lambda m: m, out_shardings=spec)


def test_writes_inside_a_trace_reach_later_nested_transforms():
  class M(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.array(1.0))

  @nnx.jit
  def f(m):
    a = nnx.grad(lambda m: m.w[...] ** 2)(m).w[...]
    m.w[...] = jnp.array(5.0)
    b = nnx.grad(lambda m: m.w[...] ** 2)(m).w[...]
    return a, b

  a, b = f(M())
  assert float(a) == 2.0 and float(b) == 10.0
