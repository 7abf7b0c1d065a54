"""State and FlatState: access, flat views, filtering, merging, pure dicts, pytree behaviour."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx


@pytest.fixture
def state():
  return nnx.State(
    {
      "encoder": {"kernel": nnx.Param(jnp.ones((2, 3))), "mean": nnx.BatchStat(jnp.zeros((3,)))},
      "layers": {0: {"bias": nnx.Param(jnp.zeros((1,)))}, 1: {"bias": nnx.Param(jnp.ones((1,)))}},
    }
  )


def test_repr_after_tree_map():
  state = nnx.State({"kernel": nnx.Param(jnp.ones((2, 3)))})
  assert repr(jax.tree.map(jnp.shape, state)) == (
    "State({\n  'kernel': Param(\n    value=(2, 3)\n  )\n})"
  )
  assert repr(nnx.State({})) == "State({})"


def test_nested_repr_indents():
  state = nnx.State({"a": {"b": nnx.Param(1.0)}})
  assert repr(state) == (
    "State({\n  'a': {\n    'b': Param(\n      value=1.0\n    )\n  }\n})"  # nested: plain braces
  )


def test_item_and_attribute_access(state):
  assert isinstance(state["encoder"], nnx.State)
  assert state.encoder.kernel is state["encoder"]["kernel"]
  assert state["layers"][1]["bias"][...] == 1.0
  assert list(state) == ["encoder", "layers"]
  assert list(state.layers) == [0, 1]
  assert len(state) == 2 and "encoder" in state
  with pytest.raises(
    AttributeError, match=r"State has no key 'decoder'; its keys are \['encoder', 'layers'\]"
  ):
    _ = state.decoder
  with pytest.raises(KeyError):
    state["decoder"]


def test_mutation(state):
  state["extra"] = {"x": nnx.Param(jnp.zeros(()))}
  assert isinstance(state["extra"], nnx.State)
  state.other = nnx.Cache(jnp.zeros(()))
  assert isinstance(state["other"], nnx.Cache)
  del state["extra"]
  del state.other
  assert list(state) == ["encoder", "layers"]


def test_flat_state_roundtrip(state):
  flat = state.flat_state()
  assert isinstance(flat, nnx.FlatState)
  assert flat.paths == (
    ("encoder", "kernel"),
    ("encoder", "mean"),
    ("layers", 0, "bias"),
    ("layers", 1, "bias"),
  )
  assert flat.leaves[0] is state.encoder.kernel
  assert len(flat) == 4 and flat[1][0] == ("encoder", "mean")
  assert nnx.State.from_flat_state(flat) == state
  assert nnx.State.from_flat_path(dict(flat)) == state
  assert flat.to_nested_state() == state
  assert repr(flat).startswith(
    "FlatState([\n  (('encoder', 'kernel'), Param( # 6 (24 B)\n    value="
  )


def test_from_flat_path_through_leaf_raises():
  leaf = nnx.Param(jnp.zeros(()))
  with pytest.raises(nnx.StateMismatchError, match=r"state\.a\.b passes through a leaf"):
    nnx.State.from_flat_path([(("a",), leaf), (("a", "b"), leaf)])


def test_filter(state):
  params = state.filter(nnx.Param)
  assert [p for p, _ in params.flat_state()] == [
    ("encoder", "kernel"),
    ("layers", 0, "bias"),
    ("layers", 1, "bias"),
  ]
  params, stats = state.filter(nnx.Param, nnx.BatchStat)
  assert list(stats.flat_state().paths) == [("encoder", "mean")]
  assert state.filter(nnx.Cache) == nnx.State({})


def test_split(state):
  params, rest = state.split(nnx.Param, ...)
  assert len(params.flat_state()) == 3 and len(rest.flat_state()) == 1
  only = state.split(...)
  assert only == state
  with pytest.raises(nnx.FilterError, match=r"match none of the filters.*state\.encoder\.mean"):
    state.split(nnx.Param)
  with pytest.raises(nnx.FilterError, match="can only be the last filter"):
    state.split(..., nnx.Param)


def test_merge(state):
  params, stats = state.split(nnx.Param, nnx.BatchStat)
  merged = nnx.State.merge(params, stats)
  assert merged == state
  newer = nnx.State({"encoder": {"mean": nnx.BatchStat(jnp.ones((3,)))}})
  merged = nnx.State.merge(state, newer)
  assert merged.encoder.mean is newer.encoder.mean  # later states win


def test_map_state(state):
  paths = nnx.map_state(lambda path, v: path, state)
  assert paths["layers"][0]["bias"] == ("layers", 0, "bias")
  zeros = nnx.map_state(lambda path, v: v.replace(jnp.zeros_like(v[...])), state)
  assert all(float(jnp.sum(v[...])) == 0.0 for v in zeros.flat_state().leaves)
  assert float(jnp.sum(state.encoder.kernel[...])) == 6.0


def test_to_pure_dict(state):
  pure = state.to_pure_dict()
  assert type(pure) is dict and type(pure["layers"][0]) is dict
  assert pure["encoder"]["kernel"] is state.encoder.kernel[...]
  shapes = state.to_pure_dict(lambda path, v: v.shape)
  assert shapes == {
    "encoder": {"kernel": (2, 3), "mean": (3,)},
    "layers": {0: {"bias": (1,)}, 1: {"bias": (1,)}},
  }


def test_replace_by_pure_dict(state):
  kernel = state.encoder.kernel
  pure = jax.tree.map(jnp.zeros_like, state.to_pure_dict())
  pure["layers"] = {"0": pure["layers"][0], "1": pure["layers"][1]}  # stringified int keys
  state.replace_by_pure_dict(pure)
  # a new Variable holding the value (as in Flax); the old one, shared with any Module the
  # State came from, is untouched, and the metadata is kept
  assert state.encoder.kernel is not kernel and float(jnp.sum(kernel[...])) != 0.0
  assert type(state.encoder.kernel) is type(kernel)
  assert state.encoder.kernel.get_metadata() == kernel.get_metadata()
  assert all(float(jnp.sum(v[...])) == 0.0 for v in state.flat_state().leaves)
  state.replace_by_pure_dict(
    jax.tree.map(jnp.ones_like, state.to_pure_dict()),
    replace_fn=lambda leaf, value: leaf.replace(value * 2),
  )
  assert float(state.encoder.kernel[0, 0]) == 2.0


def test_replace_by_pure_dict_mismatch(state):
  pure = state.to_pure_dict()
  del pure["encoder"]["mean"]
  with pytest.raises(nnx.StateMismatchError, match=r"missing: state\.encoder\.mean"):
    state.replace_by_pure_dict(pure)
  pure = state.to_pure_dict()
  pure["encoder"]["scale"] = jnp.ones(())
  with pytest.raises(nnx.StateMismatchError, match=r"not in the State: state\.encoder\.scale"):
    state.replace_by_pure_dict(pure)
  with pytest.raises(ValueError):  # also a ValueError
    state.replace_by_pure_dict({})


def test_state_is_pytree(state):
  leaves, treedef = jax.tree.flatten(state)
  assert len(leaves) == 4
  back = jax.tree.unflatten(treedef, leaves)
  assert isinstance(back, nnx.State) and isinstance(back.encoder.kernel, nnx.Param)
  keys = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  assert keys[0] == "['encoder']['kernel'].value"
  assert keys[2] == "['layers'][0]['bias'].value"
  out = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s))(state)
  assert isinstance(out, nnx.State) and float(out.layers[1].bias[0]) == 2.0


def test_equality_is_by_variable_identity(state):
  assert state == nnx.State.from_flat_path(state.flat_state())
  assert state != jax.tree.map(lambda x: x, state)  # new Variables
  assert state.__eq__(1) is NotImplemented
  with pytest.raises(TypeError):
    hash(state)


def test_pickle(state):
  back = pickle.loads(pickle.dumps(state))
  assert jax.tree.structure(back) == jax.tree.structure(state)
  np.testing.assert_array_equal(back.encoder.kernel[...], state.encoder.kernel[...])


def test_state_of_module_matches_split():
  class M(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones((2,)))
      self.layers = [nnx.BatchStat(jnp.zeros(()))]

  m = M()
  s = nnx.state(m)
  assert s.w is m.w and s.layers[0] is m.layers[0]
  params, stats = nnx.state(m, nnx.Param, nnx.BatchStat)
  assert list(params) == ["w"] and list(stats) == ["layers"]
