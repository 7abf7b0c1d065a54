"""Bad input at public entry points raises a clear pynnx error at the API.

Each case runs the same snippet on ``flax.nnx`` and on pynnx: pynnx must raise the expected
``PynnxError`` subclass with a message naming the mistake and a fix, and that error must also
be an instance of the builtin class Flax raises for the same mistake (so ``except`` clauses
written for Flax keep working).
"""

import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pynnx as nnx

_BUILTINS = (ValueError, TypeError, AttributeError, KeyError, IndexError)


def _flax_builtins(snippet, graph):
  """The builtin exception classes Flax's error derives from (empty if Flax accepts it or
  fails with an unrelated accident, e.g. a ZeroDivisionError)."""
  try:
    snippet(fnnx, graph)
  except Exception as e:  # noqa: BLE001 - the class is what is compared
    return tuple(b for b in _BUILTINS if isinstance(e, b))
  return ()


def _two_linears(nnx):
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(2, 3, rngs=rngs)
      self.b = nnx.Linear(3, 2, rngs=rngs)

  return Model(nnx.Rngs(0))


CASES = {
  "layer_rngs_none": (
    lambda nnx, g: nnx.Linear(2, 3, rngs=None),
    nnx.ArgumentTypeError,
    r"Linear: rngs must be an nnx.Rngs .* got NoneType None\. Pass e\.g\. `rngs=nnx\.Rngs\(0\)`",
  ),
  "cell_rngs_int": (
    lambda nnx, g: nnx.GRUCell(3, 4, rngs=0),
    nnx.ArgumentTypeError,
    r"GRUCell: rngs must be an nnx.Rngs .* got int 0",
  ),
  "conv_rngs_stream": (
    lambda nnx, g: nnx.Conv(3, 4, (3,), rngs=nnx.Rngs(0).params),
    nnx.ArgumentTypeError,
    r"Conv: rngs must be an nnx.Rngs .* got RngStream",
  ),
  "linear_string_input": (
    lambda nnx, g: nnx.Linear(2, 3, rngs=nnx.Rngs(0))("ab"),
    nnx.ArgumentTypeError,
    r"Linear takes an array of numbers as input, got str 'ab'",
  ),
  "linear_scalar_input": (
    lambda nnx, g: nnx.Linear(2, 3, rngs=nnx.Rngs(0))(jnp.ones(())),
    nnx.ShapeError,
    r"built for 2 input features .* got a scalar input; pass an array of shape \(\.\.\., 2\)",
  ),
  "conv_padding_triple": (
    lambda nnx, g: nnx.Conv(3, 4, (3,), padding=((1, 1, 1),), rngs=nnx.Rngs(0))(
      jnp.ones((1, 8, 3))
    ),
    nnx.LayerArgumentError,
    r"Conv: padding \(\(1, 1, 1\),\) has the entry \(1, 1, 1\); .* int or a \(low, high\) pair",
  ),
  "conv_padding_float": (
    lambda nnx, g: nnx.Conv(3, 4, (3,), padding=1.5, rngs=nnx.Rngs(0)),
    nnx.LayerArgumentError,
    r"Conv: padding must be a string, an int or a sequence, got 1\.5",
  ),
  "optimizer_tx_none": (
    lambda nnx, g: nnx.Optimizer(_two_linears(nnx), None, wrt=nnx.Param),
    nnx.ArgumentTypeError,
    r"Optimizer: tx must be an optax.GradientTransformation, got NoneType None",
  ),
  "optimizer_tx_learning_rate": (
    lambda nnx, g: nnx.Optimizer(_two_linears(nnx), 0.1, wrt=nnx.Param),
    nnx.ArgumentTypeError,
    r"tx must be an optax.GradientTransformation, got float 0\.1\. Pass e\.g\. "
    r"`Optimizer\(model, optax\.adam",
  ),
  "optimizer_model_none": (
    lambda nnx, g: nnx.Optimizer(None, optax.sgd(0.1), wrt=nnx.Param),
    nnx.ArgumentTypeError,
    r"Optimizer: model is None; pass the Module to optimize",
  ),
  "update_none": (
    lambda nnx, g: nnx.update(_two_linears(nnx), None),
    nnx.ArgumentTypeError,
    r"pynnx\.update: expected a State .* into the Model, got NoneType None",
  ),
  "update_int": (
    lambda nnx, g: nnx.update(_two_linears(nnx), 3),
    nnx.ArgumentTypeError,
    r"expected a State \(or a nested dict of values\) .* got int 3",
  ),
  "merge_not_a_graphdef": (
    lambda nnx, g: nnx.merge(3, nnx.split(_two_linears(nnx))[1]),
    nnx.ArgumentTypeError,
    r"pynnx\.merge: the first argument must be a GraphDef \(or a GraphState\), got int 3",
  ),
  "to_pure_dict_none": (
    lambda nnx, g: nnx.to_pure_dict(None),
    nnx.ArgumentTypeError,
    r"to_pure_dict takes a State, got NoneType None; .*`nnx\.to_pure_dict\(nnx\.state\(model\)\)`",
  ),
  "oftype_not_a_class": (
    lambda nnx, g: nnx.state(_two_linears(nnx), nnx.OfType(3)),
    nnx.ArgumentTypeError,
    r"nnx\.OfType takes a class \(e\.g\. nnx\.OfType\(nnx\.Param\)\), got 3",
  ),
  "rngs_split_negative": (
    lambda nnx, g: nnx.Rngs(0).split(-1),
    nnx.RngError,
    r"split into a shape of non-negative ints, got -1",
  ),
  "rngs_stream_split_float": (
    lambda nnx, g: nnx.Rngs(0).params.split(2.5),
    nnx.ArgumentTypeError,
    r"split into a shape of ints, got 2\.5",
  ),
  "metric_values_none": (
    lambda nnx, g: nnx.metrics.Average().update(values=None),
    nnx.ArgumentTypeError,
    r"Average\.update\(values=\.\.\.\) needs numbers .* got NoneType None",
  ),
  "metric_values_string": (
    lambda nnx, g: nnx.metrics.Welford().update(values="abc"),
    nnx.ArgumentTypeError,
    r"Welford\.update\(values=\.\.\.\) needs numbers .* got str 'abc'",
  ),
  "multimetric_values_none": (
    lambda nnx, g: nnx.MultiMetric(loss=nnx.metrics.Average("loss")).update(loss=None),
    nnx.ArgumentTypeError,
    r"Average\.update\(loss=\.\.\.\) needs numbers",
  ),
}


# Cases whose bad input also breaks pynnx's annotations: the runtime checker of
# `nox -s typecheck` rejects them before pynnx's own check can.
MISTYPED = {
  "cell_rngs_int",
  "conv_rngs_stream",
  "layer_rngs_none",
  "linear_string_input",
  "oftype_not_a_class",
  "optimizer_tx_learning_rate",
  "optimizer_tx_none",
  "rngs_stream_split_float",
  "to_pure_dict_none",
}


@pytest.mark.parametrize(
  "name",
  [
    pytest.param(n, marks=pytest.mark.no_typecheck("passes mistyped arguments on purpose"))
    if n in MISTYPED
    else n
    for n in sorted(CASES)
  ],
)
def test_bad_input_raises_a_clear_error_of_flax_builtin_class(name, graph):
  snippet, error, match = CASES[name]
  with nnx.set_graph_mode(graph):
    with pytest.raises(error, match=match) as info:
      snippet(nnx, graph)
  for builtin in _flax_builtins(snippet, graph):
    assert isinstance(info.value, builtin), (name, builtin)


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_checkpoint_rejects_what_it_cannot_save_or_restore(tmp_path):
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.CheckpointArgumentError, match=r"NoneType None has no arrays"):
    nnx.checkpoint.save(tmp_path / "none", None)
  with pytest.raises(nnx.CheckpointArgumentError, match=r"has a str leaf \('abc'\)"):
    nnx.checkpoint.save(tmp_path / "str", {"a": "abc"})
  with pytest.raises(nnx.CheckpointArgumentError, match=r"folder must be a str or a pathlib"):
    nnx.checkpoint.save(3, model)
  path = nnx.checkpoint.save(tmp_path / "model", model)
  with pytest.raises(nnx.CheckpointArgumentError, match=r"the target must be .* int 3"):
    nnx.checkpoint.restore(path, 3)
  assert not (tmp_path / "none").exists()


def test_checkpoint_saves_and_restores_rngs_and_optimizers(tmp_path):
  rngs = nnx.Rngs(0)
  rngs.params()
  restored = nnx.checkpoint.restore(nnx.checkpoint.save(tmp_path / "rngs", rngs), nnx.Rngs(5))
  assert int(restored.params.count[...]) == 1
  assert jnp.array_equal(jax.random.key_data(restored.params()), jax.random.key_data(rngs.params()))
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
  opt.update(model, jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param)))
  fresh = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
  back = nnx.checkpoint.restore(nnx.checkpoint.save(tmp_path / "opt", opt), fresh)
  assert int(back.step[...]) == 1


# What Flax accepts, pynnx accepts with the same result.


def _pair(snippet, graph):
  return snippet(fnnx, graph), snippet(nnx, graph)


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_linear_takes_a_list_like_flax():
  f, p = _pair(lambda nnx, g: nnx.Linear(2, 3, rngs=nnx.Rngs(0))([1.0, 2.0]), False)
  np.testing.assert_allclose(p, f, rtol=1e-6)


def test_update_takes_a_nested_dict_like_flax(graph):
  def snippet(nnx, g):
    model = _two_linears(nnx)
    nnx.update(model, {"a": {"bias": jnp.full((3,), 4.0)}})
    return model.a.bias[...]

  f, p = _pair(snippet, graph)
  np.testing.assert_array_equal(p, f)


def test_split_and_merge_of_a_lone_variable(graph):
  variable = nnx.Param(jnp.ones(2))
  graphdef, state = nnx.split(variable, graph=graph)
  assert state is variable
  assert nnx.merge(graphdef, state) is variable
  assert nnx.state(variable, graph=graph) is variable
  _, params, rest = nnx.split(variable, nnx.Param, ..., graph=graph)
  assert params is variable and len(rest) == 0
  nnx.update(variable, nnx.Param(jnp.zeros(2)), graph=graph)
  np.testing.assert_array_equal(variable[...], jnp.zeros(2))
  # Flax's tree mode returns the Variable as the state too.
  _, flax_state = fnnx.split(fnnx.Param(jnp.ones(2)), graph=graph)
  assert isinstance(flax_state, fnnx.Param)


def test_split_of_a_plain_leaf_round_trips():
  graphdef, state = nnx.split(3, graph=False)
  assert state == 3 and fnnx.split(3, graph=False)[1] == 3
  assert nnx.merge(graphdef, state) == 3
