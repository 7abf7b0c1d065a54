"""Differential tests for the gaps found by ``tools/flax_docstring_sweep.py`` (Flax NNX's own
docstring examples run on pynnx).

Each snippet here is written for this file; it takes the library (``flax.nnx`` or ``pynnx``)
and returns plain values, which must be equal for both.
"""

import warnings

import jax
import jax.numpy as jnp
import pytest

import pynnx

fnnx = pytest.importorskip("flax.nnx")


def both(fn):
  """``(fn(flax.nnx), fn(pynnx))`` under standard promotion, Flax's deprecations silenced."""
  with jax.numpy_dtype_promotion("standard"):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)
      f_out = fn(fnnx)
    return f_out, fn(pynnx)


def assert_same(fn):
  f_out, p_out = both(fn)
  assert f_out == p_out, f"\nflax:  {f_out}\npynnx: {p_out}"
  return p_out


# --- reprs: what doctests print --------------------------------------------------------------


@pytest.mark.parametrize(
  "make",
  [
    lambda: jnp.arange(6.0).reshape(2, 3),  # size comment, value in full
    lambda: jnp.arange(40.0),  # long arrays are printed in full too
    lambda: jnp.ones(3, jnp.int8),
    lambda: 1.5,  # no shape: no comment
    lambda: jnp.ones((2, 0)),  # empty: no comment
    lambda: jax.ShapeDtypeStruct((4, 2), jnp.float32),
    lambda: jax.random.key(0),
    lambda: 3000.0 * jnp.ones((300,)),  # kilobytes
  ],
)
def test_variable_repr(make):
  assert_same(lambda nnx: repr(nnx.Param(make())))


def test_variable_repr_with_metadata():
  assert_same(lambda nnx: repr(nnx.BatchStat(jnp.zeros(2), note="running mean")))


class _Parts:
  """A small model built the same way on either library."""

  @staticmethod
  def build(nnx):
    class Block(nnx.Module):
      def __init__(self, rngs):
        self.linear = nnx.Linear(2, 3, rngs=rngs)
        self.norm = nnx.BatchNorm(3, rngs=rngs)

    class Model(nnx.Module):
      def __init__(self, rngs):
        self.block = Block(rngs)
        self.count = nnx.Variable(jnp.zeros((), jnp.int32))
        self.scale = nnx.Param(jnp.ones((2, 2)))

    return Model(nnx.Rngs(0))


def test_nested_state_repr():
  """A nested State prints its inner levels as plain braces (Flax's layout)."""
  assert_same(lambda nnx: repr(nnx.state(_Parts.build(nnx))))


def test_split_state_shapes_repr():
  def snippet(nnx):
    _, params, stats = nnx.split(_Parts.build(nnx).block, nnx.Param, nnx.BatchStat)
    return repr(jax.tree.map(jnp.shape, params)), repr(jax.tree.map(jnp.shape, stats))

  assert_same(snippet)


def test_user_module_repr():
  """Assignment order, a size header per Variable type (and a total), arrays as shapes."""

  def snippet(nnx):
    class Inner(nnx.Module):
      def __init__(self):
        self.w = nnx.Param(jnp.ones((2, 3)))
        self.n = 4

    class Outer(nnx.Module):
      def __init__(self):
        self.name = "outer"
        self.inner = Inner()
        self.steps = nnx.BatchStat(jnp.zeros((), jnp.int32))
        self.bias = nnx.Param(jnp.zeros(3))

    return repr(Outer())

  assert_same(snippet)


def test_metric_reprs():
  def snippet(nnx):
    metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average())
    return repr(metrics), repr(metrics.accuracy), repr(nnx.metrics.Accuracy(threshold=0.5))

  assert_same(snippet)


# --- nnx.call: indexing into a split collection ----------------------------------------------


def test_call_indexes_into_a_split_dict():
  def snippet(nnx):
    class Counter(nnx.Module):
      def __init__(self):
        self.count = nnx.Variable(jnp.array(0, jnp.uint32))

      def bump(self, by):
        self.count[...] += by
        return self.count[...]

    pair = nnx.split({"a": Counter(), "b": Counter()})
    out, pair = nnx.call(pair)["b"].bump(jnp.uint32(3))
    out2, pair = nnx.call(pair)["b"].bump(jnp.uint32(1))
    nodes = nnx.merge(*pair)
    return int(out), int(out2), int(nodes["a"].count[...]), int(nodes["b"].count[...])

  assert assert_same(snippet) == (3, 4, 0, 4)


def test_call_index_then_attribute_path():
  def snippet(nnx):
    class Net(nnx.Module):
      def __init__(self):
        self.layers = nnx.List([nnx.Linear(2, 2, rngs=nnx.Rngs(i)) for i in range(2)])

    y, _ = nnx.call(nnx.split(Net())).layers[1](jnp.ones((1, 2)))
    return y.tolist()

  assert_same(snippet)


# --- iter_graph in tree mode: containers and the root are yielded ----------------------------


def test_iter_graph_tree_mode_yields_containers():
  def snippet(nnx):
    class Linear(nnx.Module):
      def __init__(self, din, dout, rngs):
        self.din = din
        self.w = nnx.Param(jax.random.uniform(rngs(), (din, dout)))
        self.b = nnx.Param(jnp.zeros((dout,)))

    m1, m2 = Linear(2, 3, nnx.Rngs(0)), Linear(3, 1, nnx.Rngs(1))
    out = []
    for node in ([m1, m2], {"z": m1, "a": (m2,)}, m1):
      items = nnx.iter_graph(node, graph=False)
      # Flax also yields its own bookkeeping (`_pytree__state`); pynnx has none to yield.
      out.append([(p, type(v).__name__) for p, v in items if "_pytree__state" not in p])
    return out

  assert_same(snippet)


# --- view_info ---------------------------------------------------------------------------------


def test_view_info_lists_only_set_view_modules():
  """Modules without a ``set_view`` hook (the model, its Linear projections) are not listed;
  annotations print as written (``int | Shape | None``)."""

  def snippet(nnx):
    class Model(nnx.Module):
      def __init__(self, rngs):
        self.attn = nnx.MultiHeadAttention(2, 4, 8, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)

    return nnx.view_info(Model(nnx.Rngs(0)))

  assert "Linear" not in assert_same(snippet)


# --- metrics ---------------------------------------------------------------------------------


def test_welford_rounds_as_flax():
  """Printed statistics match digit for digit (the standard error is ``sd / sqrt(n)``)."""

  def snippet(nnx):
    metric = nnx.metrics.Welford()
    out = []
    for batch in ([1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0], [0.5, 7.25]):
      metric.update(values=jnp.array(batch))
      stats = metric.compute()
      out.append(repr((stats.mean, stats.standard_error_of_mean, stats.standard_deviation)))
    return out

  assert_same(snippet)


# --- Rngs ------------------------------------------------------------------------------------


def test_missing_stream_message_is_flax_text():
  """``print(err)`` shows Flax's text; pynnx's streams-and-fix hint rides along as a note."""

  def snippet(nnx):
    rngs = nnx.Rngs(params=0, dropout=1)
    try:
      rngs.other()
    except AttributeError as err:
      return isinstance(err, AttributeError), str(err)

  assert_same(snippet)
  with pytest.raises(AttributeError) as info:
    pynnx.Rngs(params=0).other()
  assert "nnx.Rngs(other=seed, ...)" in info.value.__notes__[0]


# --- fixed in the lift: explicit graph_updates=True opts into graph mode; tree-mode grad
# differentiates every Variable of a State argument ---------------------------------------


def test_custom_vjp_graph_updates_true_default_mode():
  def snippet(nnx):
    class Pair(nnx.Module):
      def __init__(self):
        self.a = nnx.Param(jnp.array(0.5))
        self.b = nnx.Param(jnp.array(3.0))

    @nnx.custom_vjp(graph_updates=True)
    def f(m):
      return jnp.cos(m.a) * m.b

    def fwd(m):
      return f(m), (jnp.sin(m.a), jnp.cos(m.a), m)

    def bwd(res, g):
      updates_g, out_g = g
      sin_a, cos_a, m = res
      (m_g,) = updates_g
      m_g = jax.tree.map(lambda x: x, m_g)
      m_g["a"][...] = -sin_a * out_g * m.b
      m_g["b"][...] = cos_a * out_g
      return (m_g,)

    f.defvjp(fwd, bwd)
    g = nnx.grad(f)(Pair())
    st = g if isinstance(g, nnx.State) else nnx.state(g)
    return round(float(st["a"][...]), 5), round(float(st["b"][...]), 5)

  assert_same(snippet)


def test_grad_of_perturbations():
  def snippet(nnx):
    class Scale(nnx.Module):
      def __init__(self):
        self.w = nnx.Param(jnp.array(2.0))

      def __call__(self, x):
        h = self.perturb("hidden", self.w * x)
        return jnp.sum(h**2)

    model, x = Scale(), jnp.array([1.0, -3.0])
    _, perturbations = nnx.capture(model, nnx.Perturbation)(x)

    def loss(model, perturbations, x):
      return nnx.capture(model, nnx.Intermediate, init=perturbations)(x)

    (_, p_grads), _ = nnx.grad(loss, argnums=(0, 1), has_aux=True)(model, perturbations, x)
    return p_grads["hidden"][...].tolist()

  assert assert_same(snippet) == [4.0, -12.0]
