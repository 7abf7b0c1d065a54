"""Property tests: random nested Modules survive split/merge, pytree and State round trips."""

import math

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import pynnx as nnx
from pynnx._core.pytree import Pytree

VAR_TYPES = [nnx.Param, nnx.BatchStat, nnx.Cache, nnx.Intermediate, nnx.Variable]
NAMES = st.sampled_from(["w", "b", "k", "x", "y", "z", "layer", "head"])


class Node(nnx.Module):
  def __init__(self, attrs):
    for name, value in attrs.items():
      setattr(self, name, value)


# --- specs: plain descriptions, built into fresh objects on demand --------------------------

shapes = st.lists(st.integers(1, 3), max_size=2).map(tuple)
var_spec = st.tuples(st.just("var"), st.sampled_from(VAR_TYPES), shapes, st.integers(0, 9))
static_spec = st.tuples(
  st.just("static"),
  st.one_of(
    st.integers(-3, 3),
    st.text("abc", max_size=3),
    st.none(),
    st.booleans(),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
  ),
)


def _containers(children):
  member = st.one_of(children, static_spec)
  lists = st.tuples(children, st.lists(member, max_size=2)).map(lambda t: ("list", [t[0], *t[1]]))
  dicts = st.tuples(NAMES, children, st.dictionaries(NAMES, member, max_size=2)).map(
    lambda t: ("dict", {**t[2], t[0]: t[1]})
  )
  modules = st.dictionaries(NAMES, member, max_size=3).map(lambda d: ("module", d))
  return st.one_of(lists, dicts, modules)


data_spec = st.recursive(var_spec, _containers, max_leaves=8)
module_spec = st.dictionaries(NAMES, st.one_of(data_spec, static_spec), min_size=1, max_size=4)


def build(spec):
  kind = spec[0]
  if kind == "var":
    _, typ, shape, seed = spec
    value = np.arange(math.prod(shape), dtype=np.float32).reshape(shape) + seed
    return typ(jax.numpy.asarray(value))
  if kind == "static":
    return spec[1]
  if kind == "list":
    return [build(s) for s in spec[1]]
  if kind == "dict":
    return {k: build(s) for k, s in spec[1].items()}
  return Node({k: build(s) for k, s in spec[1].items()})


def build_module(spec):
  return Node({k: build(s) for k, s in spec.items()})


# --- comparison -----------------------------------------------------------------------------


def statics(node):
  """Every static attribute, with its path, of every Pytree in ``node``."""
  out = []
  for p, x in nnx.iter_graph(node):
    if isinstance(x, Pytree):
      meta = x._pynnx_get_meta()
      out += [((*p, k), v) for k, v in meta.statics]
  return out


def assert_same_module(a, b):
  assert type(a) is type(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb, strict=True):
    np.testing.assert_array_equal(x, y)
  va = jax.tree.leaves(a, is_leaf=lambda x: isinstance(x, nnx.Variable))
  vb = jax.tree.leaves(b, is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert [type(v) for v in va] == [type(v) for v in vb]
  assert statics(a) == statics(b)


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(module_spec)
def test_split_merge_roundtrip(spec):
  model = build_module(spec)
  graphdef, state = nnx.split(model)
  back = nnx.merge(graphdef, state)
  assert_same_module(model, back)
  assert nnx.graphdef(back) == graphdef
  # merge reuses the State's Variables; copy=True makes new ones with the same values
  is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
  for v, w in zip(
    jax.tree.leaves(model, is_leaf=is_var), jax.tree.leaves(back, is_leaf=is_var), strict=True
  ):
    assert v is w
  copied = nnx.merge(graphdef, state, copy=True)
  assert_same_module(model, copied)
  for v, w in zip(
    jax.tree.leaves(model, is_leaf=is_var), jax.tree.leaves(copied, is_leaf=is_var), strict=True
  ):
    assert v is not w


@settings(max_examples=50, deadline=None)
@given(module_spec)
def test_filtered_split_merge_roundtrip(spec):
  model = build_module(spec)
  graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  assert all(isinstance(v, nnx.Param) for v in params.flat_state().leaves)
  assert all(isinstance(v, nnx.BatchStat) for v in stats.flat_state().leaves)
  assert_same_module(model, nnx.merge(graphdef, params, stats, rest))
  assert_same_module(model, nnx.merge(graphdef, rest, stats, params))


@settings(max_examples=50, deadline=None)
@given(module_spec)
def test_pytree_flatten_unflatten_roundtrip(spec):
  model = build_module(spec)
  leaves, treedef = jax.tree.flatten(model)
  assert_same_module(model, jax.tree.unflatten(treedef, leaves))
  assert_same_module(model, jax.tree.map(lambda x: x, model))
  with_path, treedef2 = jax.tree_util.tree_flatten_with_path(model)
  assert treedef2 == treedef
  assert [x for _, x in with_path] == leaves
  assert len({jax.tree_util.keystr(p) for p, _ in with_path}) == len(leaves)


@settings(max_examples=50, deadline=None)
@given(module_spec)
def test_state_roundtrips(spec):
  model = build_module(spec)
  state = nnx.state(model)
  flat = state.flat_state()
  assert nnx.State.from_flat_state(flat) == state
  assert flat.to_nested_state() == state
  assert list(flat.paths) == list(nnx.graphdef(model).paths)
  # pytree round trip of the State itself
  leaves, treedef = jax.tree.flatten(state)
  again = jax.tree.unflatten(treedef, leaves)
  assert jax.tree.structure(again) == treedef
  # pure dict round trip into a second, fresh copy of the model
  other = build_module(spec)
  other_state = nnx.state(other)
  pure = jax.tree.map(lambda x: x + 1, state.to_pure_dict())
  other_state.replace_by_pure_dict(pure)
  for (p, a), (q, b) in zip(flat, other_state.flat_state(), strict=True):
    assert p == q
    if isinstance(b, nnx.Variable):
      np.testing.assert_array_equal(b[...], a[...] + 1)
  # the State holds new Variables (as in Flax): the second model sees them after update
  for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(other), strict=True):
    np.testing.assert_array_equal(b, a)
  nnx.update(other, other_state)
  for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(other), strict=True):
    np.testing.assert_array_equal(b, a + 1)
