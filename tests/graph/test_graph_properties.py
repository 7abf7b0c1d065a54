"""Property tests: random Module graphs with random sharing survive graph-mode split/merge."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pynnx as nnx
from pynnx._graph import api as graph_api

VAR_TYPES = (nnx.Param, nnx.BatchStat, nnx.Cache, nnx.Intermediate, nnx.Variable)
NAMES = ("a", "b", "c", "d", "e")
STATICS = st.one_of(
  st.none(),
  st.booleans(),
  st.integers(-3, 3),
  st.sampled_from(("relu", "x")),
  st.tuples(st.integers(0, 3), st.integers(0, 3)),
)


class Node(nnx.Module):
  def __init__(self, attrs):
    for name, value in attrs:
      setattr(self, name, value)


# A recipe is plain data; `build` turns it into objects. Sharing comes from several
# references to the same variable index ("var", i) or earlier module index ("mod", j).


@functools.cache  # building strategies is slow; draws are cheap
def _data_item(n_vars, n_mods, depth):
  leaves = [st.tuples(st.just("var"), st.integers(0, n_vars - 1)), st.just(("array",))]
  if n_mods:
    leaves.append(st.tuples(st.just("mod"), st.integers(0, n_mods - 1)))
  base = st.one_of(*leaves)
  if depth == 0:
    return base
  inner = _data_item(n_vars, n_mods, depth - 1)
  any_item = st.one_of(inner, st.tuples(st.just("static"), STATICS))
  return st.one_of(
    base,
    st.tuples(st.just("list"), st.lists(inner, min_size=1, max_size=3)),
    st.tuples(
      st.just("dict"), st.dictionaries(st.sampled_from(NAMES), inner, min_size=1, max_size=3)
    ),
    st.tuples(
      st.just("tuple"),
      st.lists(any_item, min_size=1, max_size=3).filter(
        lambda xs: any(x[0] != "static" for x in xs)
      ),
    ),
  )


@st.composite
def recipes(draw):
  n_vars = draw(st.integers(1, 5))
  var_types = draw(st.lists(st.integers(0, len(VAR_TYPES) - 1), min_size=n_vars, max_size=n_vars))
  modules = []
  for j in range(draw(st.integers(1, 4))):
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    attrs = []
    for name in names:
      if draw(st.booleans()) and draw(st.booleans()):
        attrs.append((name, ("static", draw(STATICS))))
      else:
        attrs.append((name, draw(_data_item(n_vars, j, 2))))
    modules.append(attrs)
  return var_types, modules


def build(recipe):
  var_types, modules = recipe
  variables = [VAR_TYPES[t](jnp.full((2,), float(i), jnp.float32)) for i, t in enumerate(var_types)]
  built = []

  def make(item):
    kind = item[0]
    if kind == "var":
      return variables[item[1]]
    if kind == "mod":
      return built[item[1]]
    if kind == "array":
      return jnp.arange(2.0)
    if kind == "static":
      return item[1]
    if kind == "list":
      return [make(x) for x in item[1]]
    if kind == "dict":
      return {k: make(v) for k, v in item[1].items()}
    return tuple(make(x) for x in item[1])

  for attrs in modules:
    built.append(Node([(name, make(item)) for name, item in attrs]))
  return built[-1], built, variables


def describe(x, memo):
  """A structural description; shared objects are numbered in visit order."""
  if isinstance(x, (nnx.Variable, nnx.Pytree)):
    if id(x) in memo:
      return ("ref", memo[id(x)])
    memo[id(x)] = len(memo)
    if isinstance(x, nnx.Variable):
      return ("var", type(x).__name__, np.asarray(x[...]).tolist())
    items = sorted(
      ((k, v) for k, v in vars(x).items() if not (isinstance(k, str) and k.startswith("_pynnx_"))),
      key=lambda kv: str(kv[0]),
    )
    return ("node", type(x).__name__, tuple((k, describe(v, memo)) for k, v in items))
  if isinstance(x, (list, tuple)):
    return (type(x).__name__, tuple(describe(v, memo) for v in x))
  if isinstance(x, dict):
    return ("dict", tuple((k, describe(x[k], memo)) for k in sorted(x)))
  if isinstance(x, jax.Array):
    return ("array", np.asarray(x).tolist())
  return ("static", type(x).__name__, x)


def desc(x):
  return describe(x, {})


def var_ids(x):
  return {id(v) for _, v in nnx.iter_graph(x, graph=True) if isinstance(v, nnx.Variable)}


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(recipes())
def test_split_merge_round_trip(recipe):
  root, _, _ = build(recipe)
  graphdef, state = nnx.split(root, graph=True)
  merged = nnx.merge(graphdef, state)
  assert desc(merged) == desc(root)
  assert var_ids(merged) == var_ids(root)  # the State carries the original Variables
  assert nnx.graphdef(merged, graph=True) == graphdef
  n_vars = len(var_ids(root))
  assert len(jax.tree.leaves(state, is_leaf=lambda v: isinstance(v, nnx.Variable))) >= n_vars


@SETTINGS
@given(recipes())
def test_filtered_split_and_clone(recipe):
  root, _, _ = build(recipe)
  graphdef, params, stats, rest = nnx.split(root, nnx.Param, nnx.BatchStat, ..., graph=True)
  assert desc(nnx.merge(graphdef, params, stats, rest)) == desc(root)
  c = nnx.clone(root, graph=True)
  assert desc(c) == desc(root)
  assert not var_ids(c) & var_ids(root)
  assert hash(nnx.graphdef(c, graph=True)) == hash(graphdef)
  g2, flat = nnx.flatten(root, graph=True)
  assert desc(nnx.unflatten(g2, flat)) == desc(root)


@SETTINGS
@given(recipes())
def test_update_matches_clone(recipe):
  root, _, _ = build(recipe)
  c = nnx.clone(root, graph=True)
  for _, v in nnx.iter_graph(c, graph=True):
    if isinstance(v, nnx.Variable):
      v[...] = v[...] * 3 + 1
  before = var_ids(root)
  nnx.update(root, nnx.state(c, nnx.Variable, graph=True), graph=True)
  assert desc(root) == desc(c) and var_ids(root) == before


@SETTINGS
@given(recipes(), st.data())
def test_to_tree_round_trip_preserves_sharing_across_arguments(recipe, data):
  root, modules, variables = build(recipe)
  picks = data.draw(st.lists(st.integers(0, len(modules) + len(variables) - 1), max_size=3))
  pool = modules + variables
  args = (root, *(pool[i] for i in picks), jnp.ones(1))
  tree = graph_api.to_tree(args)
  leaves = jax.tree.leaves(tree, is_leaf=lambda v: isinstance(v, nnx.Variable))
  variable_leaves = [v for v in leaves if isinstance(v, nnx.Variable)]
  assert len(variable_leaves) == len({id(v) for v in variable_leaves})  # each once
  rebuilt = graph_api.from_tree(jax.tree.map(lambda x: x, tree))
  assert desc(rebuilt) == desc(args)  # one memo over all arguments: cross-argument sharing
  copied = graph_api.from_tree(tree, copy=True)
  assert desc(copied) == desc(args)
