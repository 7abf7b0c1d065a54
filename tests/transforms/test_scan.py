import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pynnx as nnx


class Counter(nnx.Module):
  def __init__(self, n=3):
    self.w = nnx.Param(jnp.arange(n, dtype=jnp.float32))
    self.count = nnx.BatchStat(jnp.zeros(n))


class Noisy(nnx.Module):
  """Adds noise drawn from its own stream (a Dropout stand-in independent of nn layers)."""

  def __init__(self, din, dout, *, rngs):
    self.linear = nnx.Linear(din, dout, rngs=rngs)
    self.noise = rngs.dropout.fork() if "dropout" in rngs else rngs.default.fork()

  def __call__(self, x):
    noise = jax.random.normal(self.noise(), (*x.shape[:-1], self.linear.out_features))
    return self.linear(x) + noise


@functools.cache
def _four_linears():
  @nnx.split_rngs(splits=4)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def create(rngs):
    return nnx.Linear(3, 3, rngs=rngs)

  return create(nnx.Rngs(0))


def stacked_linears(n):
  """``n`` stacked Linear(3, 3) layers (sliced from one vmapped creation: fewer compiles)."""
  return jax.tree.map(lambda v: v[:n], _four_linears())


# --- equivalence with jax.lax.scan ---------------------------------------------------------


@settings(max_examples=5, deadline=None)
@given(n=st.integers(1, 4), reverse=st.booleans())
def test_scan_over_layers_matches_jax_scan_on_split_merge(n, reverse):
  layers = stacked_linears(n)
  x = jnp.arange(6.0).reshape(2, 3)
  graphdef, state = nnx.split(layers)

  def pure(x, st):
    return nnx.merge(graphdef, st)(x), None

  expected, _ = jax.lax.scan(pure, x, state, reverse=reverse)
  got = nnx.scan(lambda x, m: m(x), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, reverse=reverse)(
    x, layers
  )
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_scan_stacks_outputs_like_jax():
  xs = jnp.arange(8.0).reshape(4, 2)

  def body(c, x):
    c = c + x
    return c, c * 2

  expected = jax.lax.scan(body, jnp.zeros(2), xs)
  got = nnx.scan(body)(jnp.zeros(2), xs)
  jax.tree.map(np.testing.assert_allclose, got, expected)


def test_scan_out_axes_one_moves_stacked_axis():
  @nnx.scan(in_axes=(nnx.Carry, 1), out_axes=(nnx.Carry, 1))
  def f(c, x):
    return c + x.sum(), x * 2

  xs = jnp.arange(6.0).reshape(2, 3)
  c, ys = f(jnp.array(0.0), xs)
  np.testing.assert_allclose(c, 15.0)
  np.testing.assert_allclose(ys, xs * 2)


# --- write-back ----------------------------------------------------------------------------


def test_scan_carry_module_is_updated_by_final_carry():
  m = Counter()

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
  def f(m, x):
    m.count[...] += x
    return m, m.count[...].sum()

  out, sums = f(m, jnp.arange(4.0))
  np.testing.assert_allclose(m.count[...], [6.0, 6.0, 6.0])
  np.testing.assert_allclose(sums, [0.0, 3.0, 9.0, 18.0])
  assert out is m


def test_scan_carry_with_arrays_and_module():
  m = Counter()

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
  def f(carry, x):
    m, total = carry
    m.count[...] += 1.0
    return m, total + x

  (out_m, total) = f((m, jnp.array(0.0)), jnp.arange(5.0))
  assert out_m.count is m.count
  np.testing.assert_allclose(total, 10.0)
  np.testing.assert_allclose(m.count[...], [5.0, 5.0, 5.0])


def test_scan_scanned_variables_come_back_stacked():
  m = Counter(4)

  @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
  def f(layer, x):
    layer.count[...] = x * 10
    return x + layer.w[...]

  out = f(m, jnp.array(1.0))
  np.testing.assert_allclose(out, 7.0)
  np.testing.assert_allclose(m.count[...], [10.0, 10.0, 20.0, 40.0])


def test_scan_scanned_variables_on_axis_one():
  class M(nnx.Module):
    def __init__(self):
      self.v = nnx.BatchStat(jnp.zeros((2, 3)))

  m = M()

  @nnx.scan(in_axes=(1, nnx.Carry), out_axes=nnx.Carry)
  def f(m, c):
    m.v[...] = m.v[...] + c
    return c + 1.0

  f(m, jnp.array(1.0))
  np.testing.assert_allclose(m.v[...], [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])


def test_scan_broadcast_module_is_readable():
  m = Counter()

  @nnx.scan(in_axes=(nnx.Carry, None, 0), out_axes=nnx.Carry)
  def f(c, m, x):
    return c + m.w[...] * x

  np.testing.assert_allclose(f(jnp.zeros(3), m, jnp.arange(3.0)), [0.0, 3.0, 6.0])


def test_scan_modules_created_in_body_are_stacked():
  @nnx.scan(in_axes=(nnx.Carry,), out_axes=(nnx.Carry, 0), length=3)
  def f(rngs):
    return rngs, nnx.Linear(2, 4, rngs=rngs)

  rngs = nnx.Rngs(0)
  rngs_out, layers = f(rngs)
  assert rngs_out is rngs
  assert layers.kernel[...].shape == (3, 2, 4)
  assert not np.allclose(layers.kernel[...][0], layers.kernel[...][1])
  assert int(rngs.default.count[...]) == 6  # two draws per step


def test_scan_partition_name_on_outputs():
  @nnx.scan(
    in_axes=(nnx.Carry, 0),
    out_axes=(nnx.Carry, 0),
    transform_metadata={nnx.PARTITION_NAME: "layers"},
  )
  def f(c, x):
    return c, nnx.Param(x * 2, sharding_names=("model",))

  c, p = f(jnp.array(0.0), jnp.ones((3, 2)))
  assert p.get_metadata("sharding_names") == ("layers", "model")
  assert p[...].shape == (3, 2)


# --- rngs: split_rngs + vmap + scan (the reference example with a stand-in layer) --------


def test_scan_over_vmapped_layers_with_noise():
  class Model(nnx.Module):
    def __init__(self, n, *, rngs):
      @nnx.split_rngs(splits=n)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def create(rngs):
        return Noisy(4, 4, rngs=rngs)

      self.blocks = create(rngs)

    def __call__(self, x):
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
      def forward(x, block):
        y = block(x)
        return y, y

      return forward(x, self.blocks)

  model = nnx.jit(lambda rngs: Model(3, rngs=rngs))(nnx.Rngs(0))  # one compile, not many
  assert model.blocks.linear.kernel[...].shape == (3, 4, 4)
  keys = jax.random.key_data(model.blocks.noise.key[...])
  assert keys.shape[0] == 3 and not np.array_equal(keys[0], keys[1])
  x = jnp.ones((2, 4))
  y, _ = model(x)
  np.testing.assert_array_equal(model.blocks.noise.count[...], [1, 1, 1])
  y2, _ = model(x)
  np.testing.assert_array_equal(model.blocks.noise.count[...], [2, 2, 2])
  assert not np.allclose(y, y2)


def test_scan_over_vmapped_dropout_blocks():
  class Block(nnx.Module):
    def __init__(self, *, rngs):
      self.linear = nnx.Linear(4, 4, rngs=rngs)
      self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return self.dropout(self.linear(x))

  @nnx.split_rngs(splits=2)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def create(rngs):
    return Block(rngs=rngs)

  blocks = nnx.jit(create)(nnx.Rngs(0))  # split_rngs + vmap inside jit

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
  def forward(x, block):
    return x, block.dropout(jnp.ones((16,)))

  _, masks = forward(jnp.zeros(()), blocks)
  assert not np.array_equal(masks[0], masks[1])  # a different mask per layer
  _, masks2 = forward(jnp.zeros(()), blocks)
  assert not np.array_equal(masks, masks2)  # the streams advanced


# --- nesting -------------------------------------------------------------------------------


def test_scan_inside_jit_writes_back():
  m = Counter()

  @nnx.jit
  def run(m, xs):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def f(m, x):
      m.count[...] += x
      return m

    f(m, xs)
    return m.count[...].sum()

  np.testing.assert_allclose(run(m, jnp.arange(3.0)), 9.0)
  np.testing.assert_allclose(m.count[...], [3.0, 3.0, 3.0])


def test_grad_of_scanned_model_matches_jax():
  layers = stacked_linears(3)
  x = jnp.ones((2, 3))

  def loss(layers, x):
    y = nnx.scan(lambda x, m: jnp.tanh(m(x)), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(x, layers)
    return jnp.sum(y**2)

  grads = nnx.grad(loss)(layers, x)
  graphdef, state = nnx.split(layers)

  def pure(state, x):
    y, _ = jax.lax.scan(lambda x, s: (jnp.tanh(nnx.merge(graphdef, s)(x)), None), x, state)
    return jnp.sum(y**2)

  expected = jax.grad(pure)(state, x)
  exp_kernel = jax.tree.leaves(expected["kernel"])[0]
  np.testing.assert_allclose(grads.kernel[...], exp_kernel, rtol=1e-5)
  assert grads.kernel[...].shape == (3, 3, 3)


def test_scan_method_decorator():
  class Stack(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.arange(3.0))

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def __call__(self, x):
      return x + self.w[...]

  np.testing.assert_allclose(Stack()(jnp.array(1.0)), 4.0)


def test_scan_without_carry():
  f = nnx.scan(lambda x: x * 2, in_axes=(0,), out_axes=0)
  np.testing.assert_allclose(f(jnp.arange(3.0)), [0.0, 2.0, 4.0])


def test_scan_in_axes_carry_single_argument():
  f = nnx.scan(lambda c: c + 1, in_axes=nnx.Carry, out_axes=nnx.Carry, length=4)
  np.testing.assert_allclose(f(jnp.array(0.0)), 4.0)


# --- errors --------------------------------------------------------------------------------


def test_scan_carry_out_without_carry_in_raises():
  with pytest.raises(nnx.AxisSpecError, match="Carry in out_axes without Carry in in_axes"):
    nnx.scan(lambda x: x, in_axes=(0,), out_axes=nnx.Carry)


def test_scan_carry_in_without_carry_out_raises():
  with pytest.raises(nnx.AxisSpecError, match="Carry in in_axes without Carry in out_axes"):
    nnx.scan(lambda c, x: x, in_axes=(nnx.Carry, 0), out_axes=0)


def test_scan_two_carries_raise():
  with pytest.raises(nnx.AxisSpecError, match="Carry 2 times"):
    nnx.scan(lambda a, b: (a, b), in_axes=(nnx.Carry, nnx.Carry), out_axes=nnx.Carry)


def test_scan_nested_carry_raises():
  with pytest.raises(nnx.AxisSpecError, match=r"nested at in_axes\[0\]\['a'\]"):
    nnx.scan(lambda d: d, in_axes=({"a": nnx.Carry},), out_axes=nnx.Carry)


def test_scan_none_out_axes_raises():
  with pytest.raises(nnx.AxisSpecError, match="cannot be broadcast"):
    nnx.scan(lambda c, x: (c, x), in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, None))


def test_scan_in_axes_carry_with_two_arguments_raises():
  f = nnx.scan(lambda a, b: a, in_axes=nnx.Carry, out_axes=nnx.Carry)
  with pytest.raises(nnx.AxisSpecError, match="takes exactly one argument"):
    f(jnp.zeros(()), jnp.zeros(()))


def test_scan_output_not_a_matching_tuple_raises():
  f = nnx.scan(lambda c, x: c, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
  with pytest.raises(nnx.AxisSpecError, match="describes a tuple of 2 outputs"):
    f(jnp.zeros(()), jnp.ones(3))


def test_scan_threads_updates_of_broadcast_variables(graph):
  # as Flax's tree mode: each step sees the previous step's value, the last one is written back
  m = Counter()

  @nnx.scan(in_axes=(nnx.Carry, None, 0), out_axes=(nnx.Carry, 0), graph=graph)
  def f(c, model, x):
    seen = model.count[...]
    model.count[...] += x
    return c + jnp.sum(model.w[...]), seen

  c, seen = f(jnp.zeros(()), m, jnp.arange(1.0, 4.0))
  assert jnp.allclose(m.count[...], 6.0)  # 1 + 2 + 3 on each entry
  assert jnp.allclose(seen[:, 0], jnp.array([0.0, 1.0, 3.0]))  # threaded from step to step
  assert jnp.allclose(c, 9.0)

  # keyword arguments are broadcast too
  def g(c, x, *, model):
    model.count[...] += x
    return c

  nnx.scan(g, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, graph=graph)(
    jnp.zeros(()), jnp.ones(2), model=m
  )
  assert jnp.allclose(m.count[...], 8.0)


def test_scan_broadcast_variable_update_must_keep_its_shape(graph):
  m = Counter()

  @nnx.scan(in_axes=(nnx.Carry, None, 0), out_axes=nnx.Carry, graph=graph)
  def f(c, model, x):
    model.count.value = jnp.zeros(4)
    return c

  with pytest.raises(
    nnx.AxisSpecError,
    match=r"broadcast \(in_axes=None\) Variable model\.count was updated from float32\[3\] to "
    r"float32\[4\].*must keep its shape and dtype",
  ):
    f(jnp.zeros(()), m, jnp.arange(3.0))
  assert m.count[...].shape == (3,)


def test_scan_carry_shape_change_raises_with_path():
  m = Counter()

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
  def f(m, x):
    m.count.value = jnp.zeros(4)  # `.value =` replaces: a new shape
    return m

  with pytest.raises(
    nnx.StructureChangeError, match=r"changed m\.count from float32\[3\] to float32\[4\]"
  ):
    f(m, jnp.arange(3.0))


def test_scan_carry_structure_change_raises_with_path():
  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
  def f(c, x):
    return {"a": c["a"]}

  with pytest.raises(nnx.StructureChangeError, match=r"c\.b \(a plain value\) is missing"):
    f({"a": jnp.zeros(()), "b": jnp.zeros(())}, jnp.arange(3.0))


def test_scan_carry_variable_replaced_by_array_raises():
  m = Counter()

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
  def f(v, x):
    return v[...]

  with pytest.raises(nnx.StructureChangeError, match="static structure|Variable|plain"):
    f(m.count, jnp.arange(3.0))


def test_scan_lost_carry_update_raises():
  m = Counter()

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
  def f(carry, x):
    model, other = carry
    model.count[...] += x
    return (Counter(), other)

  match = r"updated carry\[0\]\.count but returned another value"
  with pytest.raises(nnx.StructureChangeError, match=match):
    f((m, jnp.zeros(())), jnp.arange(3.0))


def test_scan_in_axes_prefix_mismatch_raises():
  f = nnx.scan(lambda c, x: c, in_axes=(nnx.Carry, {"a": 0}), out_axes=nnx.Carry)
  with pytest.raises(nnx.AxisSpecError, match=r"argument 'x' at x"):
    f(jnp.zeros(()), jnp.ones(3))


def test_scan_closed_over_variable_write_raises():
  m = Counter()

  def body(c, x):
    m.count[...] = m.count[...] + x
    return c

  with pytest.raises(nnx.TraceContextError, match="pynnx.scan"):
    nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(jnp.zeros(()), jnp.arange(3.0))


def test_scan_state_axes_with_graph_false_raises():
  spec = nnx.StateAxes({nnx.Param: 0, ...: nnx.Carry})
  with pytest.raises(nnx.GraphModeRequiredError, match="StateAxes"):
    nnx.scan(lambda m: m, in_axes=(spec,), out_axes=nnx.Carry, graph=False)


def test_scan_rejects_state_axes_in_tree_mode():
  # checked when the transform is built, before any prefix is matched
  with pytest.raises(nnx.GraphModeRequiredError, match=r"pynnx\.scan\(.*StateAxes.*graph=False"):
    nnx.scan(lambda m: m, in_axes=(nnx.StateAxes({...: 0}),), out_axes=0, graph=False)


def test_scan_inconsistent_lengths_name_both_paths():
  f = nnx.scan(lambda c, a, b: c, in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
  with pytest.raises(nnx.AxisSpecError, match=r"scanned axes have different sizes: a has 3 "):
    f(jnp.zeros(()), jnp.ones(3), jnp.ones(4))


def test_scan_length_mismatch_raises():
  f = nnx.scan(lambda c, x: c, length=5)
  with pytest.raises(nnx.AxisSpecError, match=r"x has size 3 along its scanned axis 0"):
    f(jnp.zeros(()), jnp.ones(3))


def test_scan_unscannable_leaf_raises():
  f = nnx.scan(lambda c, m: c, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
  with pytest.raises(nnx.AxisSpecError, match=r"axis 0 of m\.default\.count.*split_rngs"):
    f(jnp.zeros(()), nnx.Rngs(0))
