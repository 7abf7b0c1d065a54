"""Modules: freezing, data/static classification, containers, sanctioned updates, reprs."""

import copy
import dataclasses
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx


class Block(nnx.Module):
  def __init__(self, din, dout, *, rngs):
    self.linear = nnx.Linear(din, dout, rngs=rngs)
    self.scale = nnx.BatchStat(jnp.ones((dout,)))
    self.deterministic = False
    self.use_running_average = False
    self.name = "block"

  def __call__(self, x):
    return self.linear(x) * self.scale[...]


class Net(nnx.Module):
  def __init__(self, rngs):
    self.blocks = [Block(2, 4, rngs=rngs), Block(4, 3, rngs=rngs)]
    self.heads = {"a": nnx.Linear(3, 1, rngs=rngs), "b": nnx.Linear(3, 2, rngs=rngs)}
    self.count = nnx.Variable(jnp.array(0, jnp.int32))
    self.sizes = (2, 4, 3)

  def __call__(self, x):
    for b in self.blocks:
      x = b(x)
    self.count[...] = self.count[...] + 1
    return self.heads["a"](x)


@pytest.fixture
def net():
  return Net(nnx.Rngs(0))


# --- freezing -------------------------------------------------------------------------------


def test_frozen_after_construction(net):
  with pytest.raises(
    nnx.FrozenModuleError, match=r"Cannot set attribute 'sizes' of Net.*nnx\.view"
  ):
    net.sizes = (1,)
  with pytest.raises(AttributeError):  # FrozenModuleError is an AttributeError
    net.blocks[0].linear.kernel = nnx.Param(jnp.zeros((2, 4)))
  with pytest.raises(nnx.FrozenModuleError, match=r"Cannot delete attribute 'count' of Net.*view"):
    del net.count
  assert isinstance(net.count, nnx.Variable)


def test_frozen_error_hint_for_variables():
  layer = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.FrozenModuleError, match=r"model\.kernel\[\.\.\.\] = new_value"):
    layer.kernel = jnp.zeros((2, 2))


def test_variable_writes_still_allowed(net):
  net.count[...] = jnp.array(5, jnp.int32)
  assert net.count[...] == 5
  net(jnp.ones((1, 2)))
  assert net.count[...] == 6


def test_parent_constructor_can_tie_weights():
  class Tied(nnx.Module):
    def __init__(self, rngs):
      self.encoder = nnx.Linear(3, 3, rngs=rngs)
      self.decoder = nnx.Linear(3, 3, rngs=rngs)
      self.decoder.kernel = self.encoder.kernel  # children are not frozen yet

  t = Tied(nnx.Rngs(0))
  assert t.decoder.kernel is t.encoder.kernel
  t.encoder.kernel[...] = jnp.zeros((3, 3))
  np.testing.assert_array_equal(t.decoder.kernel[...], jnp.zeros((3, 3)))
  with pytest.raises(nnx.FrozenModuleError):
    t.decoder.kernel = nnx.Param(jnp.ones((3, 3)))


def test_child_built_before_parent_is_frozen():
  child = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

  class Parent(nnx.Module):
    def __init__(self, child):
      self.child = child
      self.child.extra = 1  # child was already built (frozen) outside this constructor

  with pytest.raises(nnx.FrozenModuleError, match="'extra' of Linear"):
    Parent(child)


def test_failed_constructor_does_not_poison_later_builds():
  class Bad(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.zeros(()))
      raise RuntimeError("boom")

  with pytest.raises(RuntimeError, match="boom"):
    Bad()
  layer = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.FrozenModuleError):
    layer.x = 1


# --- data / static --------------------------------------------------------------------------


def test_data_static_classification():
  class M(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones(2))
      self.arr = jnp.zeros(2)
      self.n = 3
      self.label = "x"
      self.f = nnx.data(1.5)
      self.shape = nnx.static((1, 2))
      self.act = jax.nn.relu

  m = M()
  leaves = jax.tree.leaves(m)
  assert len(leaves) == 3  # w, arr and the forced-data float
  assert any(isinstance(x, float) and x == 1.5 for x in leaves)
  doubled = jax.tree.map(lambda x: x * 2, m)
  assert doubled.n == 3 and doubled.label == "x" and doubled.f == 3.0
  assert doubled.shape == (1, 2) and doubled.act is jax.nn.relu
  assert isinstance(doubled.w, nnx.Param)


def test_static_marker_keeps_array_out_of_leaves():
  class M(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones(2))
      self.table = nnx.static(("a", "b"))

  assert len(jax.tree.leaves(M())) == 1


def test_unhashable_static_attributes_key_the_cache_by_content():
  @dataclasses.dataclass
  class Config:  # a plain (unhashable) dataclass, as Flax users write them
    depth: int
    sizes: list

  class M(nnx.Module):
    def __init__(self, config):
      self.config = config
      self.sizes = [1, 2]
      self.table = {"a": {1, 2}}
      self.w = nnx.Param(jnp.ones(2))

    def __call__(self, x):
      return x * self.w[...] * len(self.sizes) * self.config.depth

  a, b, c = M(Config(2, [3])), M(Config(2, [3])), M(Config(5, [3]))
  ta, tb, tc = (jax.tree.structure(m) for m in (a, b, c))
  assert ta == tb and hash(ta) == hash(tb) and ta != tc
  f = jax.jit(lambda m, x: m(x))
  assert float(f(a, jnp.ones(2))[0]) == 4.0 and float(f(b, jnp.ones(2))[0]) == 4.0
  assert f._cache_size() == 1  # equal contents share the compiled function
  assert float(f(c, jnp.ones(2))[0]) == 10.0 and f._cache_size() == 2
  rebuilt = jax.tree.map(lambda x: x, a)
  assert rebuilt.sizes == [1, 2] and rebuilt.config == Config(2, [3])
  a.set_attributes(sizes=[1, 2, 3])  # reassigned, not mutated in place: seen
  assert float(nnx.jit(lambda m, x: m(x))(a, jnp.ones(2))[0]) == 6.0


def test_objects_without_a_hash_key_the_cache_by_identity():
  class Opaque:
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other):
      return isinstance(other, Opaque)

  class M(nnx.Module):
    def __init__(self, o):
      self.o = o

  a, b = M(Opaque()), M(Opaque())
  ta, tb = jax.tree.structure(a), jax.tree.structure(b)
  assert ta == tb  # equal by ==; the hashes may differ (the cache then compiles again)
  assert jax.tree.structure(a) == ta and hash(jax.tree.structure(a)) == hash(ta)


def test_rejected_static_update_rolls_back():
  m = Block(2, 2, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.StaticAttributeError, match=r"Block\.deterministic"):
    m.set_attributes(deterministic=nnx.static(jnp.ones(2)))
  assert m.deterministic is False
  assert jax.tree.map(lambda x: x, m).deterministic is False


def test_lists_and_dicts_become_containers(net):
  assert isinstance(net.blocks, nnx.List)
  assert isinstance(net.heads, nnx.Dict)
  assert len(net.blocks) == 2 and list(net.heads) == ["a", "b"]
  assert isinstance(net.sizes, tuple)


# --- containers ------------------------------------------------------------------------------


def test_list_operations():
  lst = nnx.List([nnx.Param(jnp.array(1.0)), nnx.Param(jnp.array(2.0))])
  lst.append(nnx.Param(jnp.array(3.0)))
  lst.insert(0, nnx.Param(jnp.array(0.0)))
  assert [float(p[...]) for p in lst] == [0.0, 1.0, 2.0, 3.0]
  popped = lst.pop()
  assert float(popped[...]) == 3.0
  del lst[0]
  lst[0] = nnx.Param(jnp.array(9.0))
  lst.extend([nnx.Param(jnp.array(4.0))])
  assert [float(p[...]) for p in lst] == [9.0, 2.0, 4.0]
  assert [float(x) for x in jax.tree.leaves(lst)] == [9.0, 2.0, 4.0]
  assert float(lst[-1][...]) == 4.0
  assert len(lst[1:]) == 2


def test_list_in_module_tracks_structure():
  class M(nnx.Module):
    def __init__(self):
      self.items = [nnx.Param(jnp.zeros(()))]

  m = M()
  m.items.append(nnx.Param(jnp.ones(())))
  _, state = nnx.split(m)
  assert sorted(state["items"].keys()) == [0, 1]


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_dict_operations():
  d = nnx.Dict({"a": nnx.Param(jnp.zeros(()))}, b=nnx.Param(jnp.ones(())))
  d["c"] = nnx.BatchStat(jnp.ones(()))
  assert "c" in d and len(d) == 3 and set(d.keys()) == {"a", "b", "c"}
  del d["a"]
  assert "a" not in d and d.get("a") is None and d.get("b") is d["b"]
  assert [k for k, _ in d.items()] == list(d) == ["b", "c"]
  assert len(d.values()) == 2
  with pytest.raises(KeyError, match="zzz"):
    d["zzz"]
  with pytest.raises(TypeError, match="nnx.Dict keys must be strings"):
    d[1] = nnx.Param(jnp.zeros(()))
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(d)[0]]
  assert paths[0][0] == jax.tree_util.DictKey("b")


def test_dict_items_named_like_methods():
  cache = nnx.Dict({"keys": nnx.Cache(jnp.zeros(2)), "values": nnx.Cache(jnp.ones(2))})
  cache["items"] = nnx.Cache(jnp.full(2, 2.0))
  cache["get"] = nnx.Cache(jnp.full(2, 3.0))
  assert list(cache.keys()) == ["keys", "values", "items", "get"]  # insertion order
  assert [float(v[0]) for v in cache.values()] == [0.0, 1.0, 2.0, 3.0]
  assert [k for k, _ in cache.items()] == list(cache)
  assert cache.get("values") is cache["values"]
  assert "'values': Cache(" in repr(cache)


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_sequential():
  model = nnx.Sequential(
    nnx.Linear(2, 4, rngs=nnx.Rngs(0)), jax.nn.relu, nnx.Linear(4, 1, rngs=nnx.Rngs(1))
  )
  x = jnp.ones((3, 2))
  expected = model.layers[2](jax.nn.relu(model.layers[0](x)))
  np.testing.assert_allclose(model(x), expected)
  assert len(nnx.state(model, nnx.Param).flat_state()) == 4
  bad = nnx.Sequential(nnx.Param(jnp.zeros(())))
  with pytest.raises(TypeError, match=r"Sequential\.layers\[0\] is not callable"):
    bad(x)


# --- traversal and sanctioned changes -----------------------------------------------------


def test_iter_modules_and_children(net):
  paths = [p for p, _ in net.iter_modules()]
  # Flax's order: children before parents; nnx.List / nnx.Dict are Modules too.
  assert paths == [
    ("blocks", 0, "linear"),
    ("blocks", 0),
    ("blocks", 1, "linear"),
    ("blocks", 1),
    ("blocks",),
    ("heads", "a"),
    ("heads", "b"),
    ("heads",),
    (),
  ]
  block = net.blocks[0]
  assert [(k, type(v).__name__) for k, v in block.iter_children()] == [("linear", "Linear")]


def test_set_attributes_train_eval(net):
  net.eval()
  assert all(b.deterministic and b.use_running_average for b in net.blocks)
  net.train()
  assert not any(b.deterministic for b in net.blocks)
  net.set_attributes(name="renamed")
  assert net.blocks[1].name == "renamed"
  net.set_attributes(lambda path, m: path == ("blocks", 0), name="first")
  assert (net.blocks[0].name, net.blocks[1].name) == ("first", "renamed")
  with pytest.raises(
    nnx.AttributeNotFoundError, match=r"no submodule of Net has the attribute\(s\) \['nope'\]"
  ):
    net.set_attributes(nope=1)
  net.set_attributes(nope=1, raise_if_not_found=False)


def test_set_attributes_changes_treedef(net):
  before = jax.tree.structure(net)
  net.eval()
  assert jax.tree.structure(net) != before
  assert jax.tree.map(lambda x: x, net).blocks[0].deterministic is True


def test_sow():
  class M(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones(()))

    def __call__(self, x):
      self.sow(nnx.Intermediate, "h", x)
      return x * self.w[...]

  m = M()
  m(jnp.array(1.0))
  m(jnp.array(2.0))
  assert isinstance(m.h, nnx.Intermediate)
  assert [float(x) for x in m.h[...]] == [1.0, 2.0]
  inter = nnx.pop(m, nnx.Intermediate)
  assert list(inter.keys()) == ["h"] and not hasattr(m, "h")
  m.sow("intermediates", "s", 1.0, reduce_fn=lambda a, b: a + b, init_fn=lambda: 0.0)
  m.sow("intermediates", "s", 2.0, reduce_fn=lambda a, b: a + b, init_fn=lambda: 0.0)
  assert m.s[...] == 3.0
  with pytest.raises(
    nnx.NotAVariableError, match="attribute 's' already holds a Intermediate, not a Cache"
  ):
    m.sow(nnx.Cache, "s", 1.0)
  with pytest.raises(nnx.NotAVariableError, match="attribute 'w' already holds"):
    m.sow(nnx.Intermediate, "w", 1.0)


def test_perturb_gradient():
  class M(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.array(3.0))

    def __call__(self, x):
      h = self.perturb("h", x * self.w[...])
      return h**2

  m = M()
  m(jnp.array(1.0))  # creates the zero perturbation
  grads = jax.grad(lambda m: m(jnp.array(1.0)))(m)
  assert grads.h[...] == 6.0  # d(h^2)/dh at h = 3


def test_view_and_with_attributes(net):
  v = nnx.view(net, deterministic=True)
  assert all(b.deterministic for b in v.blocks)
  assert not any(b.deterministic for b in net.blocks)
  assert v.blocks[0].linear.kernel is net.blocks[0].linear.kernel  # Variables are shared
  assert nnx.with_attributes is nnx.view
  with pytest.raises(
    nnx.AttributeNotFoundError, match=r"no Module in Net has the attribute\(s\) \['nope'\]"
  ):
    nnx.view(net, nope=1)


# --- reprs, copying, pickling ------------------------------------------------------------


class Linear(nnx.Module):
  """A minimal Linear (module-level, so it pickles)."""

  def __init__(self, din, dout):
    self.kernel = nnx.Param(jnp.ones((din, dout)))
    self.bias = nnx.Param(jnp.zeros((dout,)))
    self.use_bias = True

  def __call__(self, x):
    return x @ self.kernel[...] + self.bias[...]


def test_repr_layout():
  assert repr(jax.tree.map(jnp.shape, Linear(2, 3))) == (
    "Linear(\n"  # a rebuilt copy lists its static attributes, then the data ones by name
    "  use_bias=True,\n"
    "  bias=Param(\n    value=(3,)\n  ),\n"
    "  kernel=Param(\n    value=(2, 3)\n  )\n"
    ")"
  )
  text = repr(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))  # sizes by type; arrays print as shapes
  assert text.startswith(
    "Linear( # Param: 9 (36 B)\n  kernel=Param( # 6 (24 B)\n"
    "    value=Array(shape=(2, 3), dtype=dtype('float32'))\n  ),\n"
  )
  assert repr(nnx.List([])) == "List([])"
  assert repr(nnx.Dict()) == "Dict({})"


def test_deepcopy_preserves_sharing_and_is_independent():
  class Tied(nnx.Module):
    def __init__(self):
      self.a = nnx.Param(jnp.zeros(()))
      self.b = self.a

  t = Tied()
  c = copy.deepcopy(t)
  assert c.a is c.b and c.a is not t.a
  c.a[...] = jnp.ones(())
  assert t.a[...] == 0.0
  with pytest.raises(nnx.FrozenModuleError):
    c.x = 1


class Stack(nnx.Module):
  def __init__(self):
    self.layers = [Linear(2, 3), Linear(3, 1)]
    self.stats = {"mean": nnx.BatchStat(jnp.zeros((3,)))}
    self.sizes = (2, 3, 1)

  def __call__(self, x):
    for layer in self.layers:
      x = layer(x)
    return x


def test_pickle_roundtrip():
  model = Stack()
  back = pickle.loads(pickle.dumps(model))
  assert type(back) is Stack and isinstance(back.layers, nnx.List)
  assert jax.tree.structure(back) == jax.tree.structure(model)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(model), strict=True):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(nnx.FrozenModuleError):
    back.sizes = ()
  back.layers[0].kernel[...] = jnp.zeros((2, 3))
  assert float(model.layers[0].kernel[0, 0]) == 1.0


# --- interop with JAX / equinox / optax ------------------------------------------------------


def test_jax_tree_map_and_paths(net):
  doubled = jax.tree.map(lambda x: x * 2, net)
  assert type(doubled) is Net and isinstance(doubled.blocks, nnx.List)
  np.testing.assert_array_equal(doubled.blocks[0].scale[...], 2 * jnp.ones((4,)))
  flat, _ = jax.tree_util.tree_flatten_with_path(net)
  keys = [jax.tree_util.keystr(p) for p, _ in flat]
  assert ".blocks[0].linear.kernel.value" in keys
  assert ".heads['a'].bias.value" in keys


def test_jit_and_grad_on_module_as_pytree(net):
  x = jnp.ones((2, 2))

  @jax.jit
  def forward(model, x):
    return model.heads["a"](model.blocks[1](model.blocks[0](x)))

  np.testing.assert_allclose(forward(net, x), net.heads["a"](net.blocks[1](net.blocks[0](x))))
  model = Stack()  # float leaves only: plain jax.grad differentiates every leaf
  grads = jax.grad(lambda m: jnp.sum(m(x)))(model)
  assert type(grads) is Stack and isinstance(grads.layers[0].kernel, nnx.Param)
  np.testing.assert_allclose(grads.layers[1].bias[...], [2.0])
  np.testing.assert_allclose(grads.layers[0].bias[...], [2.0, 2.0, 2.0])
  seq = nnx.Sequential(Linear(2, 3), jax.nn.relu, Linear(3, 1))
  np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(seq, x), seq(x))


def test_equinox_filter_jit(net):
  eqx = pytest.importorskip("equinox")
  x = jnp.ones((1, 2))
  expected = net.heads["a"](net.blocks[1](net.blocks[0](x)))
  out = eqx.filter_jit(lambda m, x: m.heads["a"](m.blocks[1](m.blocks[0](x))))(net, x)
  np.testing.assert_allclose(out, expected)


def test_optax_on_params_state():
  optax = pytest.importorskip("optax")
  layer = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
  graphdef, params = nnx.split(layer, nnx.Param)
  tx = optax.sgd(0.1)
  opt_state = tx.init(params)

  def loss(params):
    model = nnx.merge(graphdef, params)
    return jnp.mean((model(x) - y) ** 2)

  first = loss(params)
  for _ in range(5):
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  assert isinstance(params, nnx.State) and isinstance(params["kernel"], nnx.Param)
  assert loss(params) < first
