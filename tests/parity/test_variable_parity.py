"""Differential tests against flax.nnx 0.12.8: the Variable surface.

``get_value`` / ``set_value`` with ``index=``, the metadata methods, Python operators and
protocols. Each differential test runs the same snippet with ``lib`` = ``flax.nnx`` and
``lib`` = ``pynnx`` and compares the results; the error tests check pynnx's messages.
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx

fnnx = pytest.importorskip("flax.nnx")


def run_both(snippet):
  """``(flax_result, pynnx_result)`` of ``snippet(lib)`` (Flax's deprecation warnings off)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    return snippet(fnnx), snippet(pynnx)


def assert_same(a, b):
  """Equal pytrees: same structure, leaves equal in value, dtype and shape."""
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb, (ta, tb)
  for x, y in zip(la, lb):
    if isinstance(x, (jax.Array, np.ndarray)):
      assert type(np.asarray(x)) is type(np.asarray(y))
      assert jnp.asarray(x).dtype == jnp.asarray(y).dtype and jnp.shape(x) == jnp.shape(y)
      np.testing.assert_array_equal(x, y)
    else:
      assert x == y and type(x) is type(y), (x, y)


# --- get_value / set_value with index= ------------------------------------------------------

READ_INDICES = [1, slice(1, 3), ..., None, (..., None), (0, slice(1, None)), jnp.array([0, 2])]


@pytest.mark.parametrize("index", READ_INDICES, ids=repr)
def test_get_value_index_is_value_at_index(index):
  def snippet(lib):
    v = lib.Param(jnp.arange(6.0).reshape(2, 3) if isinstance(index, tuple) else jnp.arange(4.0))
    return v.get_value(index=index), v[index]

  assert_same(*run_both(snippet))


WRITES = [
  (1, 9.0),
  (slice(1, 3), jnp.array([7.0, 8.0])),
  (..., 2.0),
  (..., jnp.arange(4.0)),
  (..., [1.0, 2.0, 3.0, 4.0]),
  (None, jnp.ones((1, 4))),
  (jnp.array([True, False, True, False]), 5.0),
]


@pytest.mark.parametrize("index,item", WRITES, ids=lambda x: repr(x)[:20])
def test_set_value_index_writes_at_index(index, item):
  def snippet(lib):
    v, w = lib.Param(jnp.arange(4.0)), lib.Param(jnp.arange(4.0))
    returned = v.set_value(item, index=index)
    w[index] = item
    return returned, v.get_value(), w.get_value()

  assert_same(*run_both(snippet))


def test_set_value_index_on_dict_and_list_values():
  def snippet(lib):
    d, xs = lib.Variable({"a": 1, "b": 2}), lib.Variable([1, 2, 3])
    d.set_value(5, index="a")
    xs.set_value(9, index=0)
    return d.get_value(index="a"), d.get_value(), xs.get_value(), xs.get_value(index=slice(1, None))

  assert_same(*run_both(snippet))


def test_set_value_index_on_a_numpy_value_stays_numpy():
  def snippet(lib):
    v = lib.Variable(np.zeros(3))
    v.set_value(5.0, index=1)
    return v.get_value()

  assert_same(*run_both(snippet))


def test_ellipsis_write_keeps_the_array_when_it_fits():
  def snippet(lib):
    x = jnp.ones(2)
    v = lib.Param(jnp.zeros(2))
    v.set_value(x, index=...)
    return v.get_value() is x

  assert run_both(snippet) == (True, True)


@pytest.mark.parametrize("item", [jnp.ones(3), jnp.ones((2, 4))], ids=["short", "bigger"])
def test_ellipsis_write_that_does_not_broadcast_is_a_value_error(item):
  for lib in (fnnx, pynnx):
    v = lib.Param(jnp.zeros(4))
    with pytest.raises(ValueError):
      v.set_value(item, index=...)


def test_index_reads_and_writes_inside_transforms():
  def snippet(lib):
    m = lib.Param(jnp.zeros(3))

    @lib.jit
    def f(m):
      m.set_value(1.0, index=1)
      return m.get_value(index=1) * 2

    out = f(m)
    rows = lib.Param(jnp.zeros((3, 2)))

    @lib.vmap(in_axes=0)
    def g(rows):
      rows.set_value(1.0, index=0)
      return rows.get_value(index=1)

    return out, m.get_value(), g(rows), rows.get_value()

  assert_same(*run_both(snippet))


@pytest.mark.parametrize("lib", [fnnx, pynnx], ids=["flax", "pynnx"])
def test_index_write_to_a_closed_over_variable_raises_in_both(lib):
  m = lib.Param(jnp.zeros(3))

  @lib.jit
  def f(x):
    m.set_value(1.0, index=1)
    return x

  with pytest.raises(Exception, match="(?i)trace|closed over"):
    f(1.0)
  np.testing.assert_array_equal(m.get_value(), jnp.zeros(3))


def test_subclass_overriding_get_and_set_value_sees_the_index():
  def snippet(lib):
    seen = []

    class Logged(lib.Variable):
      def get_value(self, *, index=...):
        seen.append(("get", repr(index)))
        return super().get_value(index=index)

      def set_value(self, value, *, index=...):
        seen.append(("set", repr(index)))
        return super().set_value(value, index=index)

    v = Logged(jnp.zeros(3))
    v[1] = 2.0
    v[...] = v[...] + 1
    return seen, v.get_value()

  assert_same(*run_both(snippet))


def test_index_is_keyword_only():
  for lib in (fnnx, pynnx):
    with pytest.raises(TypeError):
      lib.Param(jnp.ones(2)).get_value(1)
    with pytest.raises(TypeError):
      lib.Param(jnp.ones(2)).set_value(1.0, 0)


def test_index_read_of_an_unindexable_value_error():
  v = pynnx.Variable(3)
  with pytest.raises(pynnx.VariableIndexError, match=r"Variable\[0\]: the Variable holds a int"):
    v.get_value(index=0)
  assert v[...] == 3  # `...` reads any value (Flax: only an indexable one)
  with pytest.raises(TypeError, match="Variable holds a int, which cannot be indexed"):
    v[0]


def test_index_read_with_a_bad_index_keeps_the_array_error():
  with pytest.raises(TypeError) as info:
    pynnx.Param(jnp.ones(2))["a"]
  assert not isinstance(info.value, pynnx.VariableIndexError)


def test_index_write_to_an_unindexable_value_error():
  v = pynnx.Variable((1, 2))
  with pytest.raises(pynnx.VariableIndexError, match=r"Variable\[0\] = x: .* holds a tuple"):
    v.set_value(5, index=0)
  with pytest.raises(TypeError, match=r"Replace the whole value with `variable.value = x`"):
    v[0] = 5
  assert v.get_value() == (1, 2)


# --- metadata ---------------------------------------------------------------------------


def test_get_metadata_order_and_forms():
  def snippet(lib):
    p = lib.Param(jnp.ones(2), b=1, a=2)
    return (
      list(p.get_metadata()),
      p.get_metadata(exclude_required=True),
      p.get_metadata("a"),
      p.get_metadata("zz", 5),
      p.get_metadata("zz", None),
      p.has_metadata("a"),
      p.has_metadata("hijax"),
      p.has_metadata("zz"),
    )

  flax_out, ours = run_both(snippet)
  assert flax_out == ours


def test_get_metadata_missing_name_is_a_key_error_in_both():
  for lib in (fnnx, pynnx):
    with pytest.raises(KeyError):
      lib.Param(1).get_metadata("zz")
  with pytest.raises(pynnx.MetadataNotFoundError, match=r"Param has no metadata 'zz'.*default"):
    pynnx.Param(1).get_metadata("zz")
  with pytest.raises(AttributeError):  # what pynnx raised before: still caught
    pynnx.Param(1).get_metadata("zz")


def test_get_metadata_argument_errors():
  for lib in (fnnx, pynnx):
    with pytest.raises(TypeError):
      lib.Param(1, a=1).get_metadata(default=3)
    with pytest.raises(TypeError):
      lib.Param(1, a=1).get_metadata("a", exclude_required=True)
  with pytest.raises(pynnx.ConfigError, match=r"get_metadata\(default=3\) needs a name"):
    pynnx.Param(1).get_metadata(default=3)
  with pytest.raises(pynnx.ConfigError, match="exclude_required applies to the whole dict"):
    pynnx.Param(1, a=1).get_metadata("a", exclude_required=True)


def test_set_metadata_forms_match_flax():
  def snippet(lib):
    p = lib.Param(jnp.ones(2), a=1)
    p.set_metadata("b", 2)
    p.set_metadata(c=3)
    first = p.get_metadata()
    p.set_metadata({"d": 4})  # a mapping replaces the metadata
    second = p.get_metadata()
    p.set_metadata("sharding_names", ("x",))  # the old name of out_sharding
    p.set_metadata(sharding=("y",))
    return first, second, p.get_metadata("out_sharding"), p.has_metadata("sharding")

  flax_out, ours = run_both(snippet)
  assert flax_out == ours


def test_set_metadata_mapping_keeps_eager_sharding_off():
  def snippet(lib):
    p = lib.Param(jnp.ones(2), eager_sharding=False)
    p.set_metadata({"note": 1})
    return p.get_metadata()

  flax_out, ours = run_both(snippet)
  assert flax_out == ours


def test_set_metadata_argument_errors():
  for lib in (fnnx, pynnx):
    with pytest.raises(TypeError):
      lib.Param(1).set_metadata("a", 1, b=2)
    with pytest.raises(TypeError):
      lib.Param(1).set_metadata("a", 1, 2)
    with pytest.raises(ValueError):
      lib.Param(1).set_metadata({"eager_sharding": False})
  with pytest.raises(pynnx.ConfigError, match="positional or keyword arguments, not both"):
    pynnx.Param(1).set_metadata({"a": 1}, b=2)
  with pytest.raises(pynnx.ConfigError, match=r"got 3 positional argument\(s\)"):
    pynnx.Param(1).set_metadata("a", 1, 2)
  with pytest.raises(pynnx.ConfigError, match=r"got 1 positional argument\(s\) \(str\)"):
    pynnx.Param(1).set_metadata("a")
  with pytest.raises(pynnx.StateMismatchError, match="cannot change the required metadata"):
    pynnx.Param(1).set_metadata({"eager_sharding": False})


def test_replace_copy_to_state():
  def snippet(lib):
    p = lib.Param(jnp.ones(2), a=1)
    q = p.replace(jnp.zeros(2), a=2)
    r = p.copy(value=jnp.full(2, 3.0))
    s = p.to_state(b=2)
    return (
      [(type(x).__name__, x.get_value(), x.get_metadata()) for x in (q, r, s)],
      p.get_metadata(),
      p.copy() is p,
    )

  flax_out, ours = run_both(snippet)
  assert_same(flax_out, ours)


def test_replace_with_defaults_keeps_the_pytree_structure():
  p = pynnx.Param(jnp.ones(2))
  q = p.replace(hijax=False, ref=False, eager_sharding=True)
  assert jax.tree.structure(p) == jax.tree.structure(q)
  assert jax.tree.structure(pynnx.Param(jnp.ones(2), sharding=("a",), eager_sharding=False)) == (
    jax.tree.structure(pynnx.Param(jnp.ones(2), out_sharding=("a",), eager_sharding=False))
  )


def test_replace_raw_value_error():
  with pytest.raises(pynnx.ConfigError, match=r"replace\(raw_value=...\): the new value is"):
    pynnx.Param(1).replace(raw_value=2)


def test_sharding_keyword_is_out_sharding():
  def snippet(lib):
    return lib.Param(jnp.ones(2), sharding=("a",), eager_sharding=False).get_metadata()

  flax_out, ours = run_both(snippet)
  assert flax_out == ours


def test_raw_value_attribute_sets_the_value():
  def snippet(lib):
    p = lib.Param(1)
    p.raw_value = 3
    return p.get_value(), p.has_metadata("raw_value")

  assert run_both(snippet) == ((3, False), (3, False))


def test_read_only_attribute_and_delete_errors():
  for lib in (fnnx, pynnx):
    with pytest.raises(AttributeError):
      lib.Param(jnp.ones(2)).shape = (3,)
    with pytest.raises(AttributeError):
      del lib.Param(1, a=1).a
  with pytest.raises(pynnx.VariableAttributeError, match=r"Cannot set Param.shape: .*read-only"):
    pynnx.Param(jnp.ones(2)).shape = (3,)
  with pytest.raises(pynnx.VariableAttributeError, match=r"use `variable.del_metadata\('a'\)`"):
    del pynnx.Param(1, a=1).a
  with pytest.raises(pynnx.VariableAttributeError, match="Param has no metadata 'b'"):
    del pynnx.Param(1).b


# --- operators and protocols --------------------------------------------------------------


def test_numeric_protocols():
  def snippet(lib):
    P = lib.Param
    return (
      round(P(jnp.array(2.567)), 1),
      round(P(jnp.array(2.567))),
      math.floor(P(2.5)),
      math.ceil(P(2.5)),
      math.trunc(P(-2.5)),
      complex(P(jnp.array(2.5))),
      int(P(jnp.array(3))),
      float(P(jnp.array(3.0))),
      [1, 2, 3][P(jnp.array(1))],
      2 in P(jnp.arange(3)),
      P(lambda x: x + 1)(1),
      len(P(jnp.ones(3))),
      list(P(jnp.arange(2))),
    )

  assert_same(*run_both(snippet))


@pytest.mark.parametrize(
  "op",
  [
    lambda a, b: a + b,
    lambda a, b: 1 - a,
    lambda a, b: a * b,
    lambda a, b: a / 2,
    lambda a, b: a // b,
    lambda a, b: a % b,
    lambda a, b: a**2,
    lambda a, b: 2.0**a,
    lambda a, b: a @ b,
    lambda a, b: jnp.ones(2) @ a,
    lambda a, b: a < b[...],
    lambda a, b: a == b,
    lambda a, b: -a,
    lambda a, b: abs(a),
  ],
)
def test_binary_and_unary_operators(op):
  def snippet(lib):
    a = lib.Param(jnp.array([1.0, 5.0]))
    b = lib.Param(jnp.array([2.0, 3.0]))
    return op(a, b)

  assert_same(*run_both(snippet))


def test_comparisons_are_elementwise():
  a, b = pynnx.Param(jnp.array([1.0, 5.0])), pynnx.Param(jnp.array([2.0, 3.0]))
  # Flax: `a != 1` raises (no __ne__: Python negates the array), `a < b` a TypeError
  np.testing.assert_array_equal(a != 1, [False, True])
  np.testing.assert_array_equal(a < b, [True, False])
  np.testing.assert_array_equal(a >= 2.0, [False, True])  # Flax: TypeError
  assert math.floor(pynnx.Param(jnp.array(2.5))) == 2  # Flax: jax arrays have no __floor__


@pytest.mark.parametrize("name", ["__iadd__", "__isub__", "__imatmul__", "__ipow__"])
def test_in_place_operators_raise_not_implemented_in_both(name):
  for lib in (fnnx, pynnx):
    with pytest.raises(NotImplementedError):
      getattr(lib.Param(jnp.ones(2)), name)(1.0)


def test_array_protocols():
  def snippet(lib):
    p = lib.Param(jnp.arange(3.0))
    return jnp.asarray(p), jnp.sum(p), p.__jax_array__(), p.shape, p.ndim, p.T.shape

  assert_same(*run_both(snippet))


def test_delitem_on_a_dict_value():
  v = pynnx.Variable({"a": 1, "b": 2})
  del v["a"]
  assert v.get_value() == {"b": 2}
  with pytest.raises(pynnx.VariableIndexError, match=r"del Param\[0\]: .* no items to delete"):
    del pynnx.Param(jnp.zeros(3))[0]


# --- collection names ---------------------------------------------------------------------


def test_register_variable_name_errors_are_value_errors_in_both():
  for lib in (fnnx, pynnx):
    lib.register_variable_name("pynnx_test_dup", type("A", (lib.Variable,), {}))
    with pytest.raises(ValueError):
      lib.register_variable_name("pynnx_test_dup", type("B", (lib.Variable,), {}))
    with pytest.raises(ValueError):
      lib.variable_type_from_name("pynnx_test_never_registered")
    with pytest.raises(ValueError):
      lib.variable_name_from_type(type("Q", (lib.Variable,), {}))
  with pytest.raises(pynnx.VariableNameError, match="already registered for A; pass overwrite"):
    pynnx.register_variable_name("pynnx_test_dup", type("C", (pynnx.Variable,), {}))
  with pytest.raises(pynnx.VariableNameError, match="register one with `nnx.register_variable"):
    pynnx.variable_type_from_name("pynnx_test_never_registered")
  with pytest.raises(pynnx.VariableNameError, match="Q has no registered collection name"):
    pynnx.variable_name_from_type(type("Q", (pynnx.Variable,), {}))


def test_builtin_collection_names():
  def snippet(lib):
    names = ["Param", "BatchStat", "Cache", "Intermediate", "Perturbation"]
    return [lib.variable_name_from_type(getattr(lib, n)) for n in names], [
      lib.variable_type_from_name(x).__name__ for x in ("params", "batch_stats", "cache")
    ]

  flax_out, ours = run_both(snippet)
  assert flax_out == ours
