"""recursive_map and map: copies with mapped nodes/Variables, both modes, their errors."""

import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx


class Pair(nnx.Module):
  def __init__(self, a, b):
    self.a = a
    self.b = b


def test_recursive_map_bottom_up_and_copy(graph):
  model = Pair(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Param(jnp.ones(3)))
  order = []

  def f(path, x):
    order.append(path)
    return x.replace(x[...] * 0) if isinstance(x, nnx.Param) else x

  out = nnx.recursive_map(f, model, graph=graph)
  assert out is not model and out.a is not model.a
  assert float(out.a.kernel[...].sum()) == 0.0 and float(model.b[...].sum()) == 3.0
  assert order.index(("a", "kernel")) < order.index(("a",)) < order.index(())


def test_recursive_map_shared_node():
  layer = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  calls = []

  def f(path, x):
    calls.append(path)
    return x

  out = nnx.recursive_map(f, Pair(layer, layer), graph=True)
  assert out.a is out.b and out.a is not layer
  assert calls.count(("a",)) == 1 and ("b",) not in calls
  with pytest.raises(nnx.SharedReferenceError, match=r"model\.a\.bias\n\s+model\.b\.bias"):
    nnx.recursive_map(f, Pair(layer, layer), graph=False)


def test_recursive_map_default_mode_follows_set_graph_mode():
  layer = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  with nnx.set_graph_mode(True):
    out = nnx.recursive_map(lambda p, x: x, Pair(layer, layer))
  assert out.a is out.b
  with pytest.raises(nnx.SharedReferenceError):
    nnx.recursive_map(lambda p, x: x, Pair(layer, layer))


def test_recursive_map_cycle():
  class Node(nnx.Module):
    def __init__(self):
      self.children = nnx.List([])

  node = Node()
  node.children.append(node)
  with pytest.raises(
    nnx.SharedReferenceError,
    match=r"pynnx.recursive_map found a cycle: model\.children\[0\] is model",
  ):
    nnx.recursive_map(lambda p, x: x, node, graph=True)


def test_map(graph):
  layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  doubled = nnx.map(lambda path, v: v[...] * 2, layer, graph=graph)
  assert type(doubled.kernel) is nnx.Param
  np.testing.assert_array_equal(doubled.kernel[...], 2 * layer.kernel[...])
  kept = nnx.map(lambda path, v: v, layer, graph=graph)
  assert kept is not layer and kept.kernel is layer.kernel
  single = nnx.map(lambda path, v: v[...] + 1, nnx.Param(jnp.zeros(2)))
  assert isinstance(single, nnx.Param) and float(single[...].sum()) == 2.0


def test_map_recreate_variables_false_needs_variables(graph):
  layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.NotAVariableError, match=r"pynnx.map: f returned a .* for model\.bias"):
    nnx.map(lambda path, v: v[...], layer, graph=graph, recreate_variables=False)
  out = nnx.map(lambda p, v: v.replace(v[...] + 1), layer, graph=graph, recreate_variables=False)
  assert float(out.bias[...].sum()) == 3.0
