"""Variables: value access, metadata, operators, pytree behaviour, copying and reprs."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Float

import pynnx as nnx

# --- value access -------------------------------------------------------------------------


def test_ellipsis_read_and_write():
  v = nnx.Param(jnp.zeros((3,)))
  assert v[...].shape == (3,)
  v[...] = jnp.ones((3,))
  np.testing.assert_array_equal(v[...], jnp.ones((3,)))


def test_index_write_uses_functional_update():
  v = nnx.Param(jnp.zeros((3,)))
  v[1] = 5.0
  np.testing.assert_array_equal(v[...], jnp.array([0.0, 5.0, 0.0]))
  assert v[1] == 5.0
  np.testing.assert_array_equal(v[1:], jnp.array([5.0, 0.0]))


def test_value_property_and_get_set_value():
  v = nnx.BatchStat(jnp.array(1.0))
  assert v.value == 1.0
  v.value = jnp.array(2.0)
  assert v.get_value() == 2.0
  v.set_value(jnp.array(3.0))
  assert v[...] == 3.0
  assert v.raw_value == 3.0


def test_set_value_with_variable_unwraps_it():
  v = nnx.Param(jnp.array(1.0))
  v.set_value(nnx.Param(jnp.array(4.0)))
  assert not isinstance(v.raw_value, nnx.Variable)
  assert v[...] == 4.0


def test_variable_of_variable_raises():
  with pytest.raises(nnx.NotAVariableError, match=r"Param\(\.\.\.\) was given a BatchStat"):
    nnx.Param(nnx.BatchStat(1.0))


def test_array_attributes_forwarded():
  v = nnx.Param(jnp.zeros((2, 3), jnp.float32))
  assert v.shape == (2, 3)
  assert v.dtype == jnp.float32
  assert v.ndim == 2
  assert len(v) == 2
  assert v.type is nnx.Param


def test_scalar_conversions():
  v = nnx.Param(jnp.array(3))
  assert int(v) == 3
  assert float(v) == 3.0
  assert bool(v)
  assert [10, 20, 30, 40][v] == 40
  assert list(nnx.Param(jnp.arange(3))) == [0, 1, 2]
  np.testing.assert_array_equal(np.asarray(nnx.Param(jnp.arange(3))), np.arange(3))


# --- metadata -------------------------------------------------------------------------------


def test_metadata_kwargs_and_get_metadata():
  v = nnx.Param(jnp.zeros((2,)), sharding_names=("model",), tag="x")
  assert v.get_metadata("sharding_names") == ("model",)
  assert v.sharding_names == ("model",)
  defaults = {"hijax": False, "ref": False, "eager_sharding": True}  # reported as in Flax
  # `sharding_names` is stored under Flax 0.12's key, `out_sharding`, and still answered.
  assert v.get_metadata() == {**defaults, "out_sharding": ("model",), "tag": "x"}
  assert v.get_metadata("sharding_names") == v.sharding_names == ("model",)
  assert v.get_metadata("missing", None) is None
  with pytest.raises(AttributeError, match="Param has no metadata 'missing'"):
    v.get_metadata("missing")


def test_set_metadata_forms():
  v = nnx.Param(jnp.zeros(()))
  v.set_metadata({"x": 0})
  v.set_metadata({"b": 2})  # a mapping replaces all metadata, as in Flax
  v.set_metadata("a", 1)
  v.set_metadata(c=3)
  v.d = 4  # attribute assignment sets metadata
  assert v.get_metadata() == {
    "a": 1,
    "b": 2,
    "c": 3,
    "d": 4,
    **nnx.var_defaults()._asdict(),
    "eager_sharding": True,
  }
  with pytest.raises(TypeError, match="set_metadata takes"):
    v.set_metadata("a", 1, 2)


def test_metadata_is_pytree_static():
  a = nnx.Param(jnp.zeros(()), sharding_names=("x",))
  b = nnx.Param(jnp.zeros(()), sharding_names=("y",))
  assert jax.tree.structure(a) != jax.tree.structure(b)
  mapped = jax.tree.map(lambda x: x + 1, a)
  assert mapped.get_metadata("sharding_names") == ("x",)
  assert type(mapped) is nnx.Param


def test_replace_and_copy():
  v = nnx.Param(jnp.zeros((2,)), tag="t")
  r = v.replace(jnp.ones((2,)), tag="u")
  assert type(r) is nnx.Param and r is not v
  np.testing.assert_array_equal(r[...], jnp.ones((2,)))
  assert r.tag == "u" and v.tag == "t"
  only_meta = v.replace(extra=1)
  assert only_meta[...] is v[...] and only_meta.extra == 1
  c = v.copy()
  assert c is not v and c[...] is v[...]
  c[...] = jnp.full((2,), 7.0)
  np.testing.assert_array_equal(v[...], jnp.zeros((2,)))


# --- operators ------------------------------------------------------------------------------


def test_arithmetic_operators():
  v = nnx.Param(jnp.array([1.0, 2.0]))
  w = nnx.Param(jnp.array([3.0, 4.0]))
  np.testing.assert_array_equal(v + 1.0, [2.0, 3.0])
  np.testing.assert_array_equal(1.0 + v, [2.0, 3.0])
  np.testing.assert_array_equal(v + w, [4.0, 6.0])
  np.testing.assert_array_equal(w - v, [2.0, 2.0])
  np.testing.assert_array_equal(10.0 - v, [9.0, 8.0])
  np.testing.assert_array_equal(v * w, [3.0, 8.0])
  np.testing.assert_array_equal(w / v, [3.0, 2.0])
  np.testing.assert_array_equal(1.0 / v, [1.0, 0.5])
  np.testing.assert_array_equal(w // v, [3.0, 2.0])
  np.testing.assert_array_equal(w % v, [0.0, 0.0])
  np.testing.assert_array_equal(v**2, [1.0, 4.0])
  np.testing.assert_array_equal(2.0**v, [2.0, 4.0])
  assert v @ w == 11.0
  np.testing.assert_array_equal(-v, [-1.0, -2.0])
  np.testing.assert_array_equal(+v, [1.0, 2.0])
  np.testing.assert_array_equal(abs(-v), [1.0, 2.0])


def test_bitwise_operators():
  v = nnx.Variable(jnp.array([1, 2], jnp.int32))
  np.testing.assert_array_equal(v & 1, [1, 0])
  np.testing.assert_array_equal(v | 4, [5, 6])
  np.testing.assert_array_equal(v ^ 3, [2, 1])
  np.testing.assert_array_equal(v << 1, [2, 4])
  np.testing.assert_array_equal(v >> 1, [0, 1])
  np.testing.assert_array_equal(~v, [-2, -3])


def test_comparison_operators():
  v = nnx.Param(jnp.array([1.0, 2.0]))
  np.testing.assert_array_equal(v < 2.0, [True, False])
  np.testing.assert_array_equal(v <= 1.0, [True, False])
  np.testing.assert_array_equal(v > 1.0, [False, True])
  np.testing.assert_array_equal(v >= 2.0, [False, True])


def test_variables_are_hashable_by_identity():
  a, b = nnx.Param(jnp.zeros(())), nnx.Param(jnp.zeros(()))
  assert len({a, b, a}) == 2


def test_jnp_functions_accept_variables():
  v = nnx.Param(jnp.array([[1.0, 2.0], [3.0, 4.0]]))
  assert jnp.sum(v) == 10.0
  np.testing.assert_array_equal(jnp.dot(v, v), jnp.dot(v[...], v[...]))
  np.testing.assert_array_equal(jnp.tanh(v), jnp.tanh(v[...]))
  np.testing.assert_array_equal(jnp.asarray(v), v[...])
  np.testing.assert_array_equal(jax.nn.relu(v), v[...])


# --- abstract values and annotations --------------------------------------------------------


def test_abstract_values():
  v = nnx.Param(jax.ShapeDtypeStruct((2, 3), jnp.float32))
  assert v.shape == (2, 3) and v.dtype == jnp.float32
  assert repr(v) == "Param( # 6 (24 B)\n  value=ShapeDtypeStruct(shape=(2, 3), dtype=float32)\n)"
  concrete = nnx.Param(jnp.ones((2, 3)))
  abstract = jax.eval_shape(lambda p: jax.tree.map(lambda x: x * 2, p), concrete)
  assert isinstance(abstract, nnx.Param)
  assert isinstance(abstract[...], jax.ShapeDtypeStruct)


def test_generic_annotations():
  def f(w: nnx.Param[jax.Array], k: nnx.Param[Float[jax.Array, "a b"]]) -> None:  # noqa: F722
    del w, k

  assert f.__annotations__["w"].__origin__ is nnx.Param
  assert f.__annotations__["k"].__origin__ is nnx.Param
  p = nnx.Param[jax.Array](jnp.zeros((2, 2)))
  assert type(p) is nnx.Param


# --- collection names ----------------------------------------------------------------------


def test_builtin_variable_names():
  assert nnx.variable_name_from_type(nnx.Param) == "params"
  assert nnx.variable_name_from_type(nnx.BatchStat) == "batch_stats"
  assert nnx.variable_type_from_name("intermediates") is nnx.Intermediate


def test_register_variable_name_decorator_and_call():
  @nnx.register_variable_name("pynnx_test_stats")
  class MyStat(nnx.Variable):
    pass

  assert nnx.variable_name_from_type(MyStat) == "pynnx_test_stats"
  assert nnx.variable_type_from_name("pynnx_test_stats") is MyStat

  class Other(nnx.Variable):
    pass

  with pytest.raises(ValueError, match="'pynnx_test_stats' is already registered for MyStat"):
    nnx.register_variable_name("pynnx_test_stats", Other)
  nnx.register_variable_name("pynnx_test_stats", Other, overwrite=True)
  assert nnx.variable_type_from_name("pynnx_test_stats") is Other


def test_unregistered_names_raise_or_register():
  class Unnamed(nnx.Variable):
    pass

  with pytest.raises(ValueError, match="Unnamed has no registered collection name"):
    nnx.variable_name_from_type(Unnamed)
  assert nnx.variable_name_from_type(Unnamed, allow_register=True) == "Unnamed"
  with pytest.raises(ValueError, match="No Variable type is registered under the name 'nope_x'"):
    nnx.variable_type_from_name("nope_x")
  t = nnx.variable_type_from_name("pynnx_test_new", allow_register=True)
  assert issubclass(t, nnx.Variable)
  assert nnx.variable_name_from_type(t) == "pynnx_test_new"


# --- pytree, copying, pickling ------------------------------------------------------------


def test_variable_is_pytree_node():
  v = nnx.Param(jnp.ones((2,)))
  leaves, treedef = jax.tree.flatten(v)
  assert len(leaves) == 1 and leaves[0] is v[...]
  back = jax.tree.unflatten(treedef, [jnp.zeros((2,))])
  assert type(back) is nnx.Param
  paths = jax.tree_util.tree_flatten_with_path(v)[0]
  assert paths[0][0] == (jax.tree_util.GetAttrKey("value"),)


def test_jit_and_grad_through_variable():
  v = nnx.Param(jnp.array([1.0, 2.0]))
  out = jax.jit(lambda p: p[...] * 2)(v)
  np.testing.assert_array_equal(out, [2.0, 4.0])
  g = jax.grad(lambda p: jnp.sum(p[...] ** 2))(v)
  assert isinstance(g, nnx.Param)
  np.testing.assert_array_equal(g[...], [2.0, 4.0])


def test_pickle_roundtrip():
  v = nnx.Param(jnp.arange(3.0), sharding_names=("a",))
  back = pickle.loads(pickle.dumps(v))
  assert type(back) is nnx.Param
  np.testing.assert_array_equal(back[...], v[...])
  assert back.sharding_names == ("a",)
  back[...] = jnp.zeros(3)  # still writable
  np.testing.assert_array_equal(v[...], jnp.arange(3.0))


def test_deepcopy_is_independent():
  v = nnx.BatchStat(jnp.ones((2,)), note="n")
  d = copy.deepcopy(v)
  assert type(d) is nnx.BatchStat and d is not v and d.note == "n"
  d[...] = jnp.zeros((2,))
  np.testing.assert_array_equal(v[...], jnp.ones((2,)))


def test_repr_layout():
  v = nnx.Param(jnp.ones((3,)))
  assert repr(jax.tree.map(jnp.shape, v)) == "Param(\n  value=(3,)\n)"
  m = nnx.Param(jnp.zeros(()), sharding_names=("x",))
  # printed under Flax 0.12's key, as Flax prints it
  assert repr(jax.tree.map(jnp.shape, m)) == "Param(\n  value=(),\n  out_sharding=('x',)\n)"
  # as Flax: a size comment, and the value in full (Module reprs print arrays as shapes)
  big = nnx.Param(jnp.zeros((10, 10), jnp.int8))
  assert (
    repr(big) == "Param( # 100 (100 B)\n  value=" + repr(big[...]).replace("\n", "\n  ") + "\n)"
  )


def test_subclass_hierarchy():
  assert issubclass(nnx.RngKey, nnx.RngState) and issubclass(nnx.RngCount, nnx.RngState)
  assert issubclass(nnx.OptArray, nnx.OptState) and issubclass(nnx.OptVariable, nnx.OptState)
  for t in (nnx.Param, nnx.BatchStat, nnx.Cache, nnx.Intermediate, nnx.Perturbation):
    assert issubclass(t, nnx.Variable)
    assert jax.tree.leaves(t(jnp.zeros(()))) == [jnp.zeros(())]


def test_leaked_tracer_raises():
  v = nnx.Param(jnp.zeros(()))

  @jax.jit
  def f(x):
    v[...] = x  # mutates a closed-over Variable inside plain jax.jit
    return x

  f(jnp.ones(()))
  with pytest.raises(nnx.LeakedTracerError, match="holds a traced value"):
    v.get_value()


def test_comparisons_are_elementwise_like_arrays():
  v = nnx.Param(jnp.arange(3))
  np.testing.assert_array_equal(v == 1, jnp.array([False, True, False]))
  np.testing.assert_array_equal(v != 1, jnp.array([True, False, True]))
  assert hash(v) == hash(v)  # still usable as a dict key (by identity)
