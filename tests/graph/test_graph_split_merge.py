"""Graph mode: split / merge / state / update / clone / pop / iter_graph / flatten / to_tree."""

import collections
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx
from pynnx._graph import api as graph_api
from pynnx._graph.flatten import CACHE_KEY
from pynnx._graph.graphdef import GraphDef


class Block(nnx.Module):
  def __init__(self, rngs):
    self.linear = nnx.Linear(2, 2, rngs=rngs)
    self.stat = nnx.BatchStat(jnp.zeros(2))


class Tied(nnx.Module):
  """``b`` is the same Block as ``a``; ``w`` is ``a.linear.kernel``."""

  def __init__(self, rngs):
    self.a = Block(rngs)
    self.b = self.a
    self.w = self.a.linear.kernel
    self.blocks = [Block(rngs), self.a]


@pytest.fixture
def tied():
  return Tied(nnx.Rngs(0))


def values(x):
  return [np.asarray(v) for v in jax.tree.leaves(x)]


# --- split / merge ------------------------------------------------------------------------------


def test_linear_state_prints_like_tree_mode():
  layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(layer, graph=True)
  _, tree_state = nnx.split(layer)
  assert isinstance(graphdef, GraphDef)
  assert repr(state) == repr(tree_state)
  assert state["kernel"] is layer.kernel  # the State holds the original Variables
  other = nnx.graphdef(nnx.Linear(2, 3, rngs=nnx.Rngs(1)), graph=True)
  assert graphdef == other and hash(graphdef) == hash(other)
  assert graphdef != nnx.graphdef(nnx.Linear(3, 3, rngs=nnx.Rngs(1)), graph=True)
  assert "Linear#0" in repr(graphdef) and "kernel=Param#2" in repr(graphdef)


def test_merge_round_trip_keeps_variables_and_freezes():
  layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(layer, graph=True)
  new = nnx.merge(graphdef, state)
  assert type(new) is nnx.Linear and new is not layer
  assert new.kernel is layer.kernel and new.bias is layer.bias
  assert new.in_features == 2
  np.testing.assert_array_equal(new(jnp.ones((1, 2))), layer(jnp.ones((1, 2))))
  with pytest.raises(nnx.FrozenModuleError):
    new.in_features = 5
  copied = nnx.merge(graphdef, state, copy=True)
  assert copied.kernel is not layer.kernel
  np.testing.assert_array_equal(copied.kernel[...], layer.kernel[...])


def test_shared_module_and_variable_stored_once(tied):
  graphdef, state = nnx.split(tied, graph=True)
  assert sorted(state.keys()) == ["a", "blocks"]
  assert sorted(state["blocks"].keys()) == [0]  # blocks[1] is `a`: a reference
  assert state["a"]["linear"]["kernel"] is tied.w
  assert len(jax.tree.leaves(state)) == 6
  new = nnx.merge(graphdef, state)
  assert new.a is new.b is new.blocks[1]
  assert new.w is new.a.linear.kernel is tied.w
  assert new.blocks[0] is not new.a


def test_tree_mode_still_rejects_sharing(tied):
  with pytest.raises(nnx.SharedReferenceError):
    nnx.split(tied)


def test_clone_preserves_sharing_with_new_objects(tied):
  c = nnx.clone(tied, graph=True)
  assert c.a is c.b is c.blocks[1] and c.w is c.a.linear.kernel
  assert c.w is not tied.w
  assert nnx.graphdef(c, graph=True) == nnx.graphdef(tied, graph=True)
  c.w[...] = jnp.zeros((2, 2))
  assert float(jnp.abs(tied.w[...]).sum()) > 0


def test_split_with_filters(tied):
  graphdef, params, rest = nnx.split(tied, nnx.Param, ..., graph=True)
  assert all(
    isinstance(v, nnx.Param)
    for v in jax.tree.leaves(params, is_leaf=nnx.Variable.__instancecheck__)
  )
  assert rest["a"]["stat"] is tied.a.stat
  new = nnx.merge(graphdef, params, rest)
  assert new.a is new.b and new.w is tied.w
  stats = nnx.state(tied, nnx.BatchStat, graph=True)
  assert sorted(stats.keys()) == ["a", "blocks"]
  p, s = nnx.state(tied, nnx.Param, nnx.BatchStat, graph=True)
  assert set(p["a"]["linear"].keys()) == {"kernel", "bias"} and "linear" not in s["a"]


def test_filter_errors(tied):
  with pytest.raises(nnx.FilterError, match=r"leave these Variables unmatched: model\.a\.stat"):
    nnx.split(tied, nnx.Param, graph=True)
  with pytest.raises(nnx.FilterError, match=r"`\.\.\.` \(everything\) can only be the last"):
    nnx.split(tied, ..., nnx.Param, graph=True)


def test_arrays_scalars_statics_and_containers():
  Pair = collections.namedtuple("Pair", "x y")

  class Holder(nnx.Module):
    def __init__(self):
      self.arr = jnp.arange(3.0)
      self.scale = nnx.data(2.0)
      self.mixed = (1, "relu", jnp.ones(1), None, nnx.Param(jnp.zeros(1)))
      self.pair = Pair(nnx.Cache(jnp.ones(2)), 3)
      self.by_int = nnx.data({1: nnx.Param(jnp.ones(1))})
      self.name = "holder"

  h = Holder()
  graphdef, state = nnx.split(h, graph=True)
  assert state["scale"] == 2.0 and state["arr"] is h.arr
  assert sorted(state["mixed"].keys()) == [2, 4]  # ints, strings, None are GraphDef statics
  assert state["pair"]["x"] is h.pair.x and state["by_int"][1] is h.by_int[1]
  new = nnx.merge(graphdef, state)
  assert new.mixed[:2] == (1, "relu") and new.mixed[3] is None
  assert isinstance(new.pair, Pair) and new.pair.y == 3 and new.pair.x is h.pair.x
  assert new.name == "holder" and new.arr is h.arr
  # a plain dict inside data is mutable in place: its graph is not cached
  assert not graphdef.cacheable and CACHE_KEY not in h.__dict__


def test_variable_and_container_roots():
  v = nnx.Param(jnp.ones(2))
  graphdef, state = nnx.split(v, graph=True)
  assert state is v
  assert nnx.merge(graphdef, state) is v
  assert nnx.merge(graphdef, state, copy=True) is not v
  (graphdef, empty) = nnx.split(v, nnx.BatchStat, ..., graph=True)[:2]
  assert empty == nnx.State({})
  layer = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split([layer, layer], graph=True)
  a, b = nnx.merge(graphdef, state)
  assert a is b and a.kernel is layer.kernel


def test_graphdef_is_a_jit_static_argument():
  traces = []

  @jax.jit
  def apply(state, x):
    return x

  def run(graphdef, state, x):
    traces.append(1)
    return nnx.merge(graphdef, state)(x)

  run_jit = jax.jit(run, static_argnums=0)
  for seed in range(3):
    graphdef, state = nnx.split(nnx.Linear(2, 2, rngs=nnx.Rngs(seed)), graph=True)
    run_jit(graphdef, state, jnp.ones((1, 2)))
  assert len(traces) == 1


# --- caching ------------------------------------------------------------------------------------


def test_split_is_cached_until_structure_changes():
  holder = nnx.Dict(layers=nnx.List([nnx.Param(1.0)]))
  g1 = nnx.graphdef(holder, graph=True)
  assert nnx.graphdef(holder, graph=True) is g1
  holder["layers"].append(nnx.Param(2.0))  # sanctioned change: bumps the structure epoch
  g2 = nnx.graphdef(holder, graph=True)
  assert g2 != g1
  assert len(nnx.state(holder, graph=True)["layers"]) == 2


def test_cache_is_not_reused_by_copies():
  model = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
  nnx.graphdef(model, graph=True)
  viewed = nnx.view(model, deterministic=True)
  assert nnx.merge(*nnx.split(viewed, graph=True)).deterministic is True
  shallow = copy.copy(model)
  assert nnx.merge(*nnx.split(shallow, graph=True)) is not model


def test_merged_module_splits_from_seeded_cache():
  graphdef, state = nnx.split(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), graph=True)
  new = nnx.merge(graphdef, state)
  assert nnx.graphdef(new, graph=True) is graphdef
  assert nnx.state(new, graph=True)["kernel"] is state["kernel"]


# --- errors -------------------------------------------------------------------------------------


def test_merge_state_mismatch(tied):
  graphdef, params, rest = nnx.split(tied, nnx.Param, ..., graph=True)
  with pytest.raises(nnx.StateMismatchError, match=r"missing model\.a\.stat"):
    nnx.merge(graphdef, params)
  extra = nnx.State({"a": {"stat": tied.a.stat, "ghost": nnx.Param(1.0)}})
  with pytest.raises(nnx.StateMismatchError, match=r"unexpected model\.a\.ghost"):
    nnx.merge(graphdef, params, rest, extra)
  with pytest.raises(nnx.StateMismatchError, match=r"expects States after the GraphDef, got a int"):
    nnx.merge(graphdef, 3)
  # A TypeError, as in Flax.
  with pytest.raises(nnx.ArgumentTypeError, match=r"must be a GraphDef .* got str"):
    nnx.merge("not a graphdef", params)


def test_merge_wraps_a_plain_value_in_the_graphdefs_variable_type():
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  model.kernel.set_metadata(note="k")
  graphdef, state = nnx.split(model, graph=True)
  raw = nnx.State({"kernel": jnp.ones((2, 2)), "bias": state["bias"]})
  back = nnx.merge(graphdef, raw)
  assert type(back.kernel) is nnx.Param and back.kernel.get_metadata("note") == "k"
  assert back.bias is state["bias"]  # a Variable in the State is used itself
  assert type(nnx.merge(graphdef, state.to_pure_dict()).bias) is nnx.Param


def test_outer_ref_needs_its_group():
  w = nnx.Param(1.0)
  tree = graph_api.to_tree((nnx.Dict(w=w), nnx.Dict(w=w)))
  second = tree[1]
  with pytest.raises(nnx.StateMismatchError, match=r"refers to an object of another argument"):
    nnx.merge(second.graphdef, *second.states)


# --- update / pop / iter_graph / flatten --------------------------------------------------------


def test_update_writes_into_existing_variables(tied):
  state = nnx.clone(tied, graph=True)
  new_state = nnx.state(state, graph=True)
  new_state["a"]["linear"]["kernel"][...] = jnp.full((2, 2), 7.0)
  kernel = tied.w
  nnx.update(tied, new_state, graph=True)
  assert tied.w is kernel and float(tied.a.linear.kernel[0, 0]) == 7.0
  nnx.update(tied, nnx.State({"a": {"stat": jnp.full(2, 3.0)}}), graph=True)
  assert float(tied.b.stat[0]) == 3.0


def test_update_errors(tied):
  with pytest.raises(nnx.StateMismatchError, match=r"update: model\.w is not a State path"):
    nnx.update(tied, nnx.State({"w": jnp.ones((2, 2))}), graph=True)

  class Raw(nnx.Module):
    def __init__(self):
      self.arr = jnp.ones(2)

  with pytest.raises(nnx.NotAVariableError, match=r"model\.arr holds a plain ArrayImpl"):
    nnx.update(Raw(), nnx.State({"arr": jnp.zeros(2)}), graph=True)


def test_pop_removes_every_occurrence():
  inter = nnx.Intermediate(1.0)

  class Sown(nnx.Module):
    def __init__(self):
      self.a = inter
      self.items = [nnx.Param(0.0), inter, nnx.Intermediate(2.0), nnx.Param(3.0)]

  m = Sown()
  popped = nnx.pop(m, nnx.Intermediate, graph=True)
  assert popped["a"] is inter and sorted(popped["items"].keys()) == [2]
  assert "a" not in vars(m) and [float(v[...]) for v in m.items] == [0.0, 3.0]
  assert sorted(nnx.state(m, graph=True)["items"].keys()) == [0, 1]


def test_pop_from_tuple_is_an_error():
  class InTuple(nnx.Module):
    def __init__(self):
      self.t = (nnx.Intermediate(1.0), 2)

  with pytest.raises(nnx.FrozenModuleError, match=r"model\.t\[0\] is inside a tuple"):
    nnx.pop(InTuple(), nnx.Intermediate, graph=True)


def test_iter_graph_visits_each_node_once(tied):
  items = list(nnx.iter_graph(tied, graph=True))
  paths = [p for p, _ in items]
  assert paths[-1] == () and items[-1][1] is tied
  assert ("a", "linear", "kernel") in paths and ("w",) not in paths and ("b",) not in paths
  nodes = [v for _, v in items if isinstance(v, (nnx.Module, nnx.Variable, nnx.List))]
  assert len(nodes) == len({id(v) for v in nodes})
  assert paths.index(("a", "linear")) < paths.index(("a",))  # children first


def test_flatten_unflatten(tied):
  graphdef, flat = nnx.flatten(tied, graph=True)
  assert isinstance(flat, nnx.FlatState) and flat.paths[0] == ("a", "linear", "bias")
  new = nnx.unflatten(graphdef, flat)
  assert new.a is new.b and new.w is tied.w
  assert nnx.unflatten(graphdef, list(flat)).w is tied.w


# --- cycles -------------------------------------------------------------------------------------


class Child(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.ones(2))


class Parent(nnx.Module):
  def __init__(self):
    self.child = Child()
    self.child.parent = self  # a reference back up: a cycle


def test_cycles_work():
  p = Parent()
  graphdef, state = nnx.split(p, graph=True)
  assert list(state.keys()) == ["child"] and list(state["child"].keys()) == ["w"]
  new = nnx.merge(graphdef, state)
  assert new.child.parent is new and new.child.w is p.child.w
  c = nnx.clone(p, graph=True)
  assert c.child.parent is c and c.child.w is not p.child.w
  assert [q for q, _ in nnx.iter_graph(p, graph=True)] == [("child", "w"), ("child",), ()]
  nnx.update(p, nnx.State({"child": {"w": jnp.zeros(2)}}), graph=True)
  assert float(p.child.w[0]) == 0.0
  assert nnx.pop(p, nnx.Param, graph=True)["child"]["w"] is not None
  assert "w" not in vars(p.child)


# --- to_tree / from_tree ------------------------------------------------------------------------


def test_to_tree_dedups_across_arguments(tied):
  x = jnp.ones(3)
  args = (tied, tied.a, tied.w, x, {"again": tied})
  tree = graph_api.to_tree(args)
  assert isinstance(tree[0], graph_api.GraphNode) and tree[3] is x
  assert len(jax.tree.leaves(tree)) == 6 + 1  # 6 Variables once each + x
  assert tree[2].states == (nnx.State({}),)
  a, block, w, x2, d = graph_api.from_tree(tree)
  assert block is a.a is a.b and w is a.w is tied.w and d["again"] is a and x2 is x


def test_to_tree_jax_tree_round_trip_and_jit(tied):
  shared = tied.a.linear.kernel
  tree = graph_api.to_tree((tied, shared))
  mapped = jax.tree.map(lambda v: v * 2, tree)
  assert jax.tree.structure(mapped) == jax.tree.structure(tree)
  model, w = graph_api.from_tree(mapped)
  assert w is model.a.linear.kernel is model.w
  np.testing.assert_allclose(w[...], 2 * shared[...])

  @jax.jit
  def total(t):
    model, w = graph_api.from_tree(t)
    return model.a.linear.kernel[...].sum() + w[...].sum()

  np.testing.assert_allclose(total(tree), 2 * shared[...].sum(), rtol=1e-6)
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  assert jax.tree_util.keystr(flat[0][0]) == "[0][0]['a']['linear']['bias'].value"


def test_to_tree_filters():
  rngs = nnx.Rngs(0)
  a, b = Block(rngs), Block(rngs)
  tree = graph_api.to_tree((a, b), filters=(nnx.Param, ...))
  assert len(tree[0].states) == 2 and "stat" in tree[0].states[1]
  seen = []

  def per_root(path, node):
    seen.append(path)
    return (nnx.BatchStat, ...) if path == (1,) else ()

  tree = graph_api.to_tree((a, b), filters=per_root)
  assert seen == [(0,), (1,)]
  assert len(tree[0].states) == 1 and list(tree[1].states[0].keys()) == ["stat"]
  a2, b2 = graph_api.from_tree(tree, copy=True)
  assert a2.stat is not a.stat and b2.linear.kernel is not b.linear.kernel
  with pytest.raises(nnx.FilterError, match=r"pynnx\.to_tree: the filters .* model\.stat"):
    graph_api.to_tree((a,), filters=(nnx.Param,))


def test_to_tree_shared_sub_module_first_in_later_argument():
  inner = Block(nnx.Rngs(0))
  outer = nnx.Dict(inner=inner)
  tree = graph_api.to_tree((inner, outer))
  assert "linear" in tree[0].states[0] and tree[1].states[0] == nnx.State({})
  inner2, outer2 = graph_api.from_tree(tree)
  assert outer2["inner"] is inner2


def test_state_placement_matches_flax():
  fnnx = pytest.importorskip("flax.nnx")

  class FTied(fnnx.Module):
    def __init__(self, rngs):
      self.z = fnnx.Linear(2, 2, rngs=rngs)
      self.a = self.z
      self.k = self.z.kernel

  class PTied(nnx.Module):
    def __init__(self, rngs):
      self.z = nnx.Linear(2, 2, rngs=rngs)
      self.a = self.z
      self.k = self.z.kernel

  def paths(state):
    return sorted(p for p, _ in state.flat_state())

  _, fstate = fnnx.split(FTied(fnnx.Rngs(0)))
  _, pstate = nnx.split(PTied(nnx.Rngs(0)), graph=True)
  assert paths(pstate) == sorted(tuple(p) for p in paths(fstate))


def test_round_trip_in_both_modes(graph):
  layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(layer, nnx.Param, graph=graph)
  new = nnx.merge(graphdef, params)
  assert new.kernel is layer.kernel and new.bias is layer.bias
  assert nnx.state(new, graph=graph) == nnx.state(layer, graph=graph)


def test_static_constants_compare_with_their_type():
  class WithConst(nnx.Module):
    def __init__(self, const):
      self.t = (nnx.Param(jnp.ones(1)), const)

  g_int = nnx.graphdef(WithConst(1), graph=True)
  assert g_int == nnx.graphdef(WithConst(1), graph=True)
  assert g_int != nnx.graphdef(WithConst(True), graph=True)
  assert nnx.merge(g_int, nnx.state(WithConst(1), graph=True)).t[1] == 1
