"""Differential tests against flax.nnx 0.12.8: ``merge`` with a State of plain arrays.

Flax wraps each plain array in the Variable type (and metadata) the GraphDef recorded; pynnx
does the same in tree and graph mode.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx

fnnx = pytest.importorskip("flax.nnx")
MODES = pytest.mark.parametrize("graph", [True, False], ids=["graph", "tree"])


def build(lib):
  class Model(lib.Module):
    def __init__(self):
      self.lin = lib.Linear(2, 3, rngs=lib.Rngs(0))
      self.bn = lib.BatchNorm(3, rngs=lib.Rngs(0))
      self.w = lib.Param(jnp.ones(2), note="x")

  return Model()


def summary(model):
  """Variable types, reported metadata and values of the merged Model."""
  return [
    (type(model.w).__name__, model.w.get_metadata(), np.asarray(model.w[...])),
    (type(model.bn.mean).__name__, np.asarray(model.bn.mean[...])),
    (type(model.lin.kernel).__name__, np.asarray(model.lin.kernel[...])),
  ]


def assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert jax.tree.structure(a) == jax.tree.structure(b)


@MODES
@pytest.mark.parametrize("form", ["State", "dict"])
def test_merge_a_pure_state(graph, form):
  def snippet(lib):
    graphdef, state = lib.split(build(lib), graph=graph)
    pure = jax.tree.map(lambda x: x * 2, lib.to_pure_dict(state))
    return summary(lib.merge(graphdef, lib.State(pure) if form == "State" else pure))

  assert_same(snippet(fnnx), snippet(pynnx))


@MODES
def test_merge_a_pure_param_state_with_the_rest(graph):
  def snippet(lib):
    graphdef, params, rest = lib.split(build(lib), lib.Param, ..., graph=graph)
    return summary(lib.merge(graphdef, lib.State(lib.to_pure_dict(params)), rest))

  assert_same(snippet(fnnx), snippet(pynnx))


@MODES
def test_merge_keeps_numpy_values(graph):
  def snippet(lib):
    graphdef, state = lib.split(build(lib), graph=graph)
    pure = jax.tree.map(np.asarray, lib.to_pure_dict(state))
    return type(lib.merge(graphdef, lib.State(pure)).w.get_value()).__name__

  assert snippet(fnnx) == snippet(pynnx) == "ndarray"


@MODES
def test_merge_a_pure_state_missing_a_leaf_is_a_value_error(graph):
  for lib in (fnnx, pynnx):
    graphdef, state = lib.split(build(lib), graph=graph)
    pure = {k: v for k, v in lib.to_pure_dict(state).items() if k != "w"}
    with pytest.raises(ValueError):
      lib.merge(graphdef, lib.State(pure))
  graphdef, state = pynnx.split(build(pynnx), graph=graph)
  pure = {k: v for k, v in pynnx.to_pure_dict(state).items() if k != "w"}
  with pytest.raises(pynnx.StateMismatchError, match=r"missing model\.w"):
    pynnx.merge(graphdef, pynnx.State(pure))
