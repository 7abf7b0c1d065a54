"""Tree-mode split / merge / state / graphdef / update / clone / pop / iter_graph / flatten."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx


class Model(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.ones((2,)))
    self.arr = jnp.zeros((3,))
    self.layers = [nnx.BatchStat(jnp.zeros(())), nnx.Param(jnp.ones(()))]
    self.heads = {"a": nnx.Param(jnp.full((1,), 2.0))}
    self.n = 4


@pytest.fixture
def model():
  return Model()


def test_split_merge_roundtrip(model):
  graphdef, state = nnx.split(model)
  assert isinstance(graphdef, nnx.TreeGraphDef)
  assert state.w is model.w and state.layers[1] is model.layers[1]
  assert state.arr is model.arr  # plain arrays are leaves too
  back = nnx.merge(graphdef, state)
  assert type(back) is Model and back is not model
  assert back.w is model.w and back.n == 4  # merge reuses the State's Variables
  copied = nnx.merge(graphdef, state, copy=True)
  assert copied.w is not model.w and copied.w[...] is model.w[...]


def test_split_with_filters(model):
  graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  assert sorted(params) == ["heads", "layers", "w"]
  assert list(stats.layers) == [0] and list(rest) == ["arr"]
  back = nnx.merge(graphdef, params, stats, rest)
  assert back.layers[0] is model.layers[0]
  assert jax.tree.structure(back) == jax.tree.structure(model)


def test_split_unmatched_raises(model):
  with pytest.raises(
    nnx.FilterError, match=r"leave these Variables unmatched: model\.arr, model\.layers\[0\]"
  ):
    nnx.split(model, nnx.Param)
  with pytest.raises(nnx.FilterError, match="only be the last filter"):
    nnx.split(model, ..., nnx.Param)


def test_state_and_graphdef(model):
  state = nnx.state(model)
  assert state.w is model.w
  params = nnx.state(model, nnx.Param)  # a filter: unmatched leaves are left out
  assert sorted(params) == ["heads", "layers", "w"] and list(params.layers) == [1]
  assert nnx.state(model, nnx.Cache) == nnx.State({})
  params, rest = nnx.state(model, nnx.Param, ...)
  assert list(rest) == ["arr", "layers"]
  graphdef = nnx.graphdef(model)
  assert graphdef == nnx.split(model)[0]
  assert hash(graphdef) == hash(nnx.graphdef(Model()))
  assert graphdef.paths == (("arr",), ("heads", "a"), ("layers", 0), ("layers", 1), ("w",))
  assert graphdef.leaf_types == (None, nnx.Param, nnx.BatchStat, nnx.Param, nnx.Param)
  assert repr(graphdef).startswith("GraphDef(tree, 5 leaves, PyTreeDef(")


def test_graphdef_is_hashable_jit_static(model):
  graphdef, state = nnx.split(model)

  @jax.jit
  def f(state):
    return nnx.merge(graphdef, state).w[...] * 2

  np.testing.assert_array_equal(f(state), [2.0, 2.0])
  other = Model()
  other.set_attributes(n=5)
  assert nnx.graphdef(other) != graphdef


def test_merge_missing_and_unexpected(model):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  with pytest.raises(nnx.StateMismatchError, match=r"missing model\.arr, model\.layers\[0\]"):
    nnx.merge(graphdef, params)
  extra = nnx.State({"zzz": nnx.Param(jnp.zeros(()))})
  with pytest.raises(nnx.StateMismatchError, match=r"unexpected model\.zzz"):
    nnx.merge(graphdef, params, rest, extra)
  with pytest.raises(nnx.StateMismatchError, match="expects States after the GraphDef, got a list"):
    nnx.merge(graphdef, params, [jnp.zeros(3)])


def test_merge_wraps_plain_values_in_the_graphdefs_variable_types(model):
  graphdef, state = nnx.split(model)
  pure = state.to_pure_dict()
  for states in ((nnx.State(pure),), (pure,)):  # a State of arrays, or the pure dict itself
    back = nnx.merge(graphdef, *states)
    assert type(back.w) is type(model.w) and back.w is not model.w
    assert back.w.get_metadata() == model.w.get_metadata()
    assert back.w[...] is model.w[...]


def test_flatstate_merge(model):
  graphdef, flat = nnx.flatten(model)
  assert isinstance(flat, nnx.FlatState)
  assert flat.paths == nnx.graphdef(model).paths
  back = nnx.unflatten(graphdef, flat)
  assert back.w is model.w
  back = nnx.unflatten(graphdef, list(flat))
  assert back.layers[0] is model.layers[0]
  assert nnx.merge(graphdef, flat).w is model.w


def test_update(model):
  new = jax.tree.map(lambda x: x + 10, nnx.state(model, nnx.Param))
  w = model.w
  nnx.update(model, new)
  assert model.w is w and float(model.w[0]) == 11.0
  nnx.update(model, nnx.State({"layers": {0: jnp.array(5.0)}}))  # raw values are fine
  assert model.layers[0][...] == 5.0
  nnx.update(
    model,
    nnx.State({"w": nnx.Param(jnp.zeros(2))}),
    nnx.State({"heads": {"a": nnx.Param(jnp.zeros(1))}}),
  )
  assert float(model.heads["a"][0]) == 0.0 and float(model.w[0]) == 0.0


def test_update_errors(model):
  with pytest.raises(
    nnx.StateMismatchError, match=r"update: model\.zzz is not in the Model being updated"
  ):
    nnx.update(model, nnx.State({"zzz": nnx.Param(jnp.zeros(()))}))
  with pytest.raises(
    nnx.NotAVariableError, match=r"update: model\.arr holds a plain .*not a Variable"
  ):
    nnx.update(model, nnx.State({"arr": jnp.ones(3)}))


def test_clone(model):
  c = nnx.clone(model)
  assert type(c) is Model and c.w is not model.w
  np.testing.assert_array_equal(c.w[...], model.w[...])
  c.w[...] = jnp.zeros(2)
  assert float(model.w[0]) == 1.0


def test_pop():
  class M(nnx.Module):
    def __init__(self):
      self.h = nnx.Intermediate(jnp.ones(()))
      self.items = [
        nnx.Intermediate(jnp.zeros(())),
        nnx.Param(jnp.ones(())),
        nnx.Intermediate(jnp.ones(())),
      ]
      self.d = {"a": nnx.Intermediate(1.0), "b": nnx.Param(2.0)}

  m = M()
  popped = nnx.pop(m, nnx.Intermediate)
  assert sorted(popped) == ["d", "h", "items"]
  assert list(popped["items"]) == [0, 2]
  assert not hasattr(m, "h")
  assert len(m.items) == 1 and isinstance(m.items[0], nnx.Param)  # indices stay contiguous
  assert list(m.d) == ["b"]
  _, state = nnx.split(m)
  assert [p for p, _ in state.flat_state()] == [("d", "b"), ("items", 0)]
  assert nnx.pop(m, nnx.Intermediate) == nnx.State({})
  m2 = M()
  inter, params = nnx.pop(m2, nnx.Intermediate, nnx.Param)
  assert len(inter.flat_state()) == 4 and len(params.flat_state()) == 2
  assert len(jax.tree.leaves(m2)) == 0


def test_iter_graph(model):
  items = [(p, type(x).__name__) for p, x in nnx.iter_graph(model)]
  assert items == [
    (("arr",), "ArrayImpl"),
    (("heads", "a"), "Param"),
    (("heads",), "Dict"),
    (("layers", 0), "BatchStat"),
    (("layers", 1), "Param"),
    (("layers",), "List"),
    (("w",), "Param"),
    ((), "Model"),
  ]
  plain = list(nnx.iter_graph([nnx.Param(1.0), {"x": 2}]))
  assert [p for p, _ in plain] == [(0,), (1, "x"), (1,), ()]  # containers too, as Flax


def test_as_abstract_adds_shardings_to_abstract_variables(model):
  mesh = jax.make_mesh((2,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
  abstract = jax.eval_shape(lambda: nnx.Param(jnp.ones((4, 2)), out_sharding=("x", None)))
  with jax.set_mesh(mesh):
    out = nnx.as_abstract(abstract)
  assert out[...].sharding.spec == jax.sharding.PartitionSpec("x", None)
  assert abstract[...].sharding is None  # a new tree: the input is untouched
  assert nnx.as_abstract(model).w[...] is model.w[...]  # concrete values are left alone


def test_shared_reference_error():
  class Tied(nnx.Module):
    def __init__(self):
      self.encoder = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
      self.decoder = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
      self.decoder.kernel = self.encoder.kernel

  t = Tied()
  with pytest.raises(
    nnx.SharedReferenceError,
    match=r"(?s)pynnx\.split received the same Param at two places:\n  model\.decoder\.kernel\n"
    r"  model\.encoder\.kernel\n.*graph=True",
  ):
    nnx.split(t)
  with pytest.raises(
    nnx.SharedReferenceError, match=r"(?s)pynnx\.state received.*pynnx\.state\(\.\.\., graph=True\)"
  ):
    nnx.state(t)
  with pytest.raises(nnx.SharedReferenceError, match="pynnx.clone"):
    nnx.clone(t)
  with pytest.raises(ValueError):  # also a ValueError
    nnx.graphdef(t)


def test_graph_mode_setting_dispatches(model):
  with nnx.set_graph_mode(False):
    graphdef, _ = nnx.split(model)
    assert isinstance(graphdef, nnx.TreeGraphDef)
  assert isinstance(nnx.split(model, graph=False)[0], nnx.TreeGraphDef)
