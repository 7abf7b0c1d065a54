"""nnx.eval_shape in tree mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import pynnx as nnx


class Sharded(nnx.Module):
  def __init__(self, rngs):
    self.w = nnx.Param(jax.random.normal(rngs.params(), (8, 4)), sharding_names=("a", None))
    self.b = nnx.Param(jnp.zeros((4,)), sharding_names=("b",))
    # 'nope' is no mesh axis: kept as metadata only (placing it eagerly raises, as in Flax)
    self.odd = nnx.Param(jnp.zeros((4,)), sharding_names=("nope",), eager_sharding=False)
    self.plain = nnx.BatchStat(jnp.zeros((3,)))


class Counter(nnx.Module):
  def __init__(self):
    self.count = nnx.BatchStat(jnp.array(0, jnp.int32))

  def __call__(self, x):
    self.count[...] += 1
    return x * 2.0


def test_eval_shape_builds_abstract_model_without_flops():
  abstract = nnx.eval_shape(lambda: nnx.Linear(1000, 1000, rngs=nnx.Rngs(0)))
  assert isinstance(abstract, nnx.Linear)
  leaves = jax.tree.leaves(abstract)
  assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
  assert sorted(leaf.shape for leaf in leaves) == [(1000,), (1000, 1000)]
  assert isinstance(abstract.kernel, nnx.Param)


def test_eval_shape_never_materialises_arrays():
  # 40 GB if it ran.
  out = nnx.eval_shape(lambda: jnp.ones((100_000, 100_000)) @ jnp.ones((100_000, 3)))
  assert out == jax.ShapeDtypeStruct((100_000, 3), jnp.float32)


def test_eval_shape_matches_jax_eval_shape_of_split():
  def init():
    return nnx.Linear(3, 5, rngs=nnx.Rngs(0))

  abstract = nnx.eval_shape(init)
  ref_state = jax.eval_shape(lambda: nnx.state(init()))
  _, state = nnx.split(abstract)
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  ref = jax.tree_util.tree_flatten_with_path(ref_state)[0]
  assert [(p, s.shape, s.dtype) for p, s in flat] == [(p, s.shape, s.dtype) for p, s in ref]


def test_eval_shape_with_module_arguments_leaves_them_unchanged():
  c = Counter()
  out = nnx.eval_shape(
    lambda c, x, *, scale: c(x) * scale, c, jnp.ones((2, 3)), scale=jnp.float32(2.0)
  )
  assert out == jax.ShapeDtypeStruct((2, 3), jnp.float32)
  assert int(c.count[...]) == 0
  assert isinstance(c.count[...], jax.Array)


def test_eval_shape_accepts_abstract_modules():
  abstract = nnx.eval_shape(lambda: nnx.Linear(3, 5, rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m, x: m(x), abstract, jax.ShapeDtypeStruct((7, 3), jnp.float32))
  assert out.shape == (7, 5)


def test_eval_shape_inside_jit():
  @nnx.jit
  def f(m, x):
    shape = nnx.eval_shape(lambda m, x: m(x), m, x).shape
    return jnp.zeros(shape)

  assert f(nnx.Linear(2, 4, rngs=nnx.Rngs(0)), jnp.ones((3, 2))).shape == (3, 4)


def test_eval_shape_adds_shardings_from_metadata_under_a_mesh():
  mesh = jax.make_mesh((4, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  with jax.set_mesh(mesh):
    abstract = nnx.eval_shape(lambda: Sharded(nnx.Rngs(0)))
  w = abstract.w[...]
  assert isinstance(w.sharding, NamedSharding) and w.sharding.spec == P("a", None)
  assert abstract.b[...].sharding.spec == P("b")
  assert abstract.odd[...].sharding is None  # 'nope' is not a mesh axis: left alone
  assert abstract.plain[...].sharding is None
  # The shardings are usable: put an array straight onto the mesh with one.
  placed = jax.device_put(jnp.zeros(w.shape, w.dtype), w.sharding)
  assert placed.sharding.spec == P("a", None)


def test_eval_shape_of_a_name_the_mesh_lacks_raises_like_flax():
  mesh = jax.make_mesh((4, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  with jax.set_mesh(mesh), pytest.raises(nnx.MeshAxisError, match=r"no axis 'nope'; its axes"):
    nnx.eval_shape(lambda: nnx.Param(jnp.zeros((4,)), sharding_names=("nope",)))


def test_eval_shape_inside_jit_uses_the_abstract_mesh():
  mesh = jax.make_mesh((4, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)

  @jax.jit
  def f():
    spec = nnx.eval_shape(lambda: Sharded(nnx.Rngs(0))).w[...].sharding.spec
    assert spec == P("a", None)
    return jnp.zeros(())

  with jax.set_mesh(mesh):
    f()


def test_eval_shape_without_mesh_has_no_sharding():
  abstract = nnx.eval_shape(lambda: Sharded(nnx.Rngs(0)))
  assert abstract.w[...].sharding is None
  np.testing.assert_equal(abstract.w.get_metadata("sharding_names"), ("a", None))


def test_eval_shape_shared_variable_raises():
  c = Counter()
  with pytest.raises(nnx.SharedReferenceError, match=r"b\.count"):
    nnx.eval_shape(lambda a, b: None, c, c)


def test_eval_shape_closed_over_variable_raises():
  c = Counter()
  with pytest.raises(nnx.TraceContextError, match="pynnx.eval_shape"):
    nnx.eval_shape(lambda x: c(x), jnp.ones(2))
