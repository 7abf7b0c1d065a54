"""Differential tests against flax.nnx 0.12.8: the object model and graph utilities.

Each test runs the same snippet with ``lib`` = ``flax.nnx`` and ``lib`` = ``pynnx`` and compares
values, shapes, dtypes, shardings and error classes. Where pynnx differs on purpose
(``hijax``/``ref`` Variables, frozen Modules) the test checks pynnx's documented behaviour.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AxisType, PartitionSpec

import pynnx

fnnx = pytest.importorskip("flax.nnx")

LIBS = pytest.mark.parametrize("lib", [fnnx, pynnx], ids=["flax", "pynnx"])


def run_both(snippet):
  """``(flax_result, pynnx_result)`` of ``snippet(lib)``."""
  return snippet(fnnx), snippet(pynnx)


def shapes(tree):
  return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


def pure(lib, state):
  """A plain nested dict of numpy values (comparable across libraries)."""
  return jax.tree.map(np.asarray, lib.to_pure_dict(state))


# --- 1. names -----------------------------------------------------------------------------


def test_unpack_and_merge_graph_states():
  def snippet(lib):
    model = lib.BatchNorm(2, rngs=lib.Rngs(0))
    params, stats = lib.unpack(model, lib.Param, lib.BatchStat)
    whole = lib.unpack(model)
    merged = lib.merge(params, stats)
    target = lib.clone(model)
    target.scale[...] = target.scale[...] * 0
    lib.update(target, params)
    return (
      np.asarray(target.scale[...]).tolist(),
      type(params).__name__,
      sorted(params.keys()),
      sorted(stats.keys()),
      len(jax.tree.leaves(whole)),
      type(lib.merge(whole)).__name__,
      type(merged).__name__,
      isinstance(params, lib.GraphState),
    )

  theirs, ours = run_both(snippet)
  assert ours == theirs


def test_merge_rejects_graph_states_of_different_models():
  a = pynnx.unpack(pynnx.Linear(2, 3, rngs=pynnx.Rngs(0)), pynnx.Param)
  b = pynnx.unpack(pynnx.Linear(3, 3, rngs=pynnx.Rngs(0)), pynnx.Param)
  with pytest.raises(pynnx.StateMismatchError, match="different GraphDefs"):
    pynnx.merge(a, b)
  with pytest.raises(ValueError, match="at least one State"):
    pynnx.merge(pynnx.graphdef(pynnx.Linear(2, 3, rngs=pynnx.Rngs(0))))


def test_module_level_state_functions():
  def snippet(lib):
    model = lib.Sequential(lib.Linear(2, 3, rngs=lib.Rngs(0)), lib.BatchNorm(3, rngs=lib.Rngs(0)))
    state = lib.state(model)
    pure_dict = pure(lib, state)
    params, rest = lib.split_state(state, lib.Param, ...)
    only_stats = lib.filter_state(state, lib.BatchStat)
    merged = lib.merge_state(params, rest)
    flat = lib.to_flat_state(state)
    rebuilt = lib.from_flat_state(flat)
    restored = lib.restore_int_paths({"layers": {"0": 1, "a": {"1": 2}}})
    target = lib.state(lib.clone(model))
    lib.replace_by_pure_dict(target, jax.tree.map(lambda x: x * 0, lib.to_pure_dict(state)))
    return (
      jax.tree.map(lambda x: x.tolist(), pure_dict),
      sorted(str(p) for p, _ in lib.to_flat_state(params)),
      sorted(str(p) for p, _ in lib.to_flat_state(only_stats)),
      sorted(str(p) for p, _ in lib.to_flat_state(merged)),
      [tuple(p) for p, _ in flat] == [tuple(p) for p, _ in lib.to_flat_state(rebuilt)],
      restored,
      float(sum(jnp.sum(v) for v in jax.tree.leaves(lib.to_pure_dict(target)))),
    )

  theirs, ours = run_both(snippet)
  assert ours == theirs


def test_find_duplicates():
  def snippet(lib):
    class Shared(lib.Module):
      def __init__(self, rngs):
        self.a = lib.Linear(1, 1, rngs=rngs)
        self.b = lib.Param(jnp.array(2.0))
        self.c = self.a
        self.d = self.b

    model = Shared(lib.Rngs(0))
    return (
      sorted(lib.find_duplicates(model)),
      sorted(lib.find_duplicates(model, only=lib.Param)),
      lib.find_duplicates(lib.Linear(1, 1, rngs=lib.Rngs(0))),
    )

  theirs, ours = run_both(snippet)
  assert ours == theirs


def test_iteration_helpers():
  def snippet(lib):
    class Block(lib.Module):
      def __init__(self, rngs):
        self.linear = lib.Linear(2, 2, rngs=rngs)
        self.inner = lib.Sequential(lib.Linear(2, 2, rngs=rngs))
        self.scale = lib.Param(jnp.ones(2))

    model = Block(lib.Rngs(0))
    return (
      [k for k, _ in lib.iter_children(model)],
      [k for k, _ in lib.iter_module_children(model)],
      sorted((p, type(m).__name__) for p, m in lib.iter_modules(model) if p[-1:] != ("layers",)),
      [p for p, _ in lib.iter_graph(model, graph=True)][-1],
    )

  theirs, ours = run_both(snippet)
  assert ours == theirs


def test_has_data_is_data_and_as_pure():
  def snippet(lib):
    model = lib.Linear(2, 3, rngs=lib.Rngs(0))
    cases = [1, "a", jnp.ones(1), np.ones(1), [jnp.ones(1)], (jnp.ones(1),), {"a": jnp.ones(1)}]
    cases += [[1, jnp.ones(1)], lib.Param(1.0), model, None]
    found = lib.has_data([1, "a", jnp.ones(2), model])
    return (
      [lib.is_data(c) for c in cases],
      [type(x).__name__ for x in found],
      shapes(lib.as_pure(lib.state(model)).to_pure_dict()),
      any(isinstance(x, lib.Variable) for x in jax.tree.leaves(lib.as_pure(lib.state(model)))),
    )

  theirs, ours = run_both(snippet)
  assert ours == theirs


def test_set_metadata():
  def snippet(lib):
    class Foo(lib.Module):
      def __init__(self):
        self.param = lib.Param(0.0)
        self.variable = lib.Variable(0.0)

    node = Foo()
    lib.set_metadata(node, differentiable=False, only=lib.Param)
    return node.param.get_metadata("differentiable"), "differentiable" in (
      node.variable.get_metadata()
    )

  theirs, ours = run_both(snippet)
  assert ours == theirs == (False, False)


def test_clone_options():
  def snippet(lib):
    model = lib.Linear(2, 3, rngs=lib.Rngs(0))
    shared = lib.clone(model, variables=False)
    copied = lib.clone(model, arrays=True)
    try:
      lib.clone(model, variables=False, arrays=True)
      error = None
    except ValueError as e:
      error = ValueError if isinstance(e, ValueError) else type(e)
    return (
      shared.kernel is model.kernel,
      copied.kernel is model.kernel,
      copied.kernel[...].unsafe_buffer_pointer() == model.kernel[...].unsafe_buffer_pointer(),
      np.array_equal(copied.kernel[...], model.kernel[...]),
      lib.clone(model, graph=False).kernel is model.kernel,
      error,
    )

  theirs, ours = run_both(snippet)
  assert ours == theirs == (True, False, False, True, False, ValueError)


def test_clone_error_names_the_fix():
  model = pynnx.Linear(2, 3, rngs=pynnx.Rngs(0))
  with pytest.raises(pynnx.CloneArgumentError, match="Pass variables=True"):
    pynnx.clone(model, variables=False, arrays=True)


@pytest.mark.parametrize("graph", [False, True], ids=["tree", "graph"])
def test_flatten_without_paths_and_unflatten(graph):
  def snippet(lib):
    model = lib.Sequential(lib.Linear(2, 3, rngs=lib.Rngs(0)), lib.BatchNorm(3, rngs=lib.Rngs(0)))
    graphdef, leaves = lib.flatten(model, with_paths=False, graph=graph)
    rebuilt = lib.unflatten(graphdef, leaves)
    values = [np.asarray(x[...] if isinstance(x, lib.Variable) else x).tolist() for x in leaves]
    return (
      type(leaves).__name__,
      values,
      np.asarray(rebuilt(jnp.ones((1, 2)))).tolist(),
      [isinstance(x, lib.Variable) for x in leaves],
      rebuilt.layers[0].kernel is model.layers[0].kernel,
    )

  theirs, ours = run_both(snippet)
  assert ours[:3] == theirs[:3]
  # pynnx's leaves are the Variables in both modes; Flax's graph mode gives raw arrays and
  # rebuilds new Variables (docs/migrating.md, Object model).
  assert all(ours[3]) and ours[4]
  assert theirs[3:] == ((ours[3], ours[4]) if not graph else ([False] * 6, False))
  graphdef, leaves = pynnx.flatten(pynnx.Linear(2, 3, rngs=pynnx.Rngs(0)), with_paths=False)
  copied = pynnx.unflatten(graphdef, leaves, copy_variables=True)
  assert copied.kernel is not leaves[1] and np.array_equal(copied.kernel[...], leaves[1][...])


def test_view_takes_graph_only_and_raise_if_not_found():
  def snippet(lib):
    class Net(lib.Module):
      def __init__(self, rngs):
        self.a = lib.Dropout(0.5, rngs=rngs)
        self.b = lib.Dropout(0.5, rngs=rngs)

    net = Net(lib.Rngs(0))
    v = lib.view(net, graph=True, deterministic=True)
    only_a = lib.view(net, only=lambda path, m: path == ("a",), deterministic=True)
    try:
      lib.view(net, graph=True, nonexistent=True)
      raised = None
    except Exception as e:  # noqa: BLE001  (the class is what is compared)
      raised = [c for c in (ValueError, AttributeError) if isinstance(e, c)]
    quiet = lib.view(net, raise_if_not_found=False, nonexistent=True)
    return (
      v.a.deterministic,
      net.a.deterministic,
      only_a.a.deterministic,
      only_a.b.deterministic,
      raised,
      type(quiet).__name__,
    )

  theirs, ours = run_both(snippet)
  assert ours[:4] == theirs[:4] and ours[5] == theirs[5]
  assert ours[4] and theirs[4]  # both raise


def test_split_and_merge_contexts_keep_sharing_across_objects():
  def snippet(lib):
    w = lib.Param(jnp.ones(2))
    a, b = lib.Dict(w=w), lib.Dict(w=w)
    with lib.split_context() as ctx:
      ga, sa = ctx.split(a)
      gb, sb = ctx.split(b)
    with lib.merge_context() as ctx:
      a2, b2 = ctx.merge(ga, sa), ctx.merge(gb, sb)
    return len(jax.tree.leaves(sa)), len(jax.tree.leaves(sb)), a2["w"] is b2["w"]

  theirs, ours = run_both(snippet)
  assert ours == theirs == (1, 0, True)


def test_context_tags_need_an_update_context():
  with pytest.raises(pynnx.UpdateContextError, match="No update context found for tag 'tag'"):
    with pynnx.split_context("tag"):
      pass
  with pytest.raises(pynnx.UnsupportedOptionError, match="pass the context's tag too"):
    with pynnx.merge_context(inner=True):
      pass


def test_type_names_exist():
  for name in ["A", "M", "GraphDef", "GraphState", "PureState", "Object"]:
    assert hasattr(pynnx, name)
  assert pynnx.M.__bound__ is pynnx.Module


# --- 2. GraphDef ------------------------------------------------------------------------


@pytest.mark.parametrize("graph", [False, True], ids=["tree", "graph"])
def test_graphdef_is_a_leafless_hashable_pytree(graph):
  def snippet(lib):
    model = lib.Linear(2, 3, rngs=lib.Rngs(0))
    graphdef, state = lib.split(model, graph=graph)
    x = jnp.ones((1, 2))
    y = jax.jit(lambda g, s, x: lib.merge(g, s)(x))(graphdef, state, x)
    other = lib.graphdef(lib.Linear(2, 3, rngs=lib.Rngs(1)), graph=graph)
    return (
      jax.tree.leaves(graphdef),
      hash(graphdef) == hash(other),
      graphdef == other,
      isinstance(graphdef, lib.GraphDef),
      np.asarray(y).tolist(),
    )

  theirs, ours = run_both(snippet)
  assert ours == theirs


@pytest.mark.parametrize("graph", [False, True], ids=["tree", "graph"])
def test_graphdef_apply_and_call(graph):
  def snippet(lib):
    class Model(lib.Module):
      def __init__(self, rngs):
        self.linear = lib.Linear(2, 3, rngs=rngs)
        self.count = lib.BatchStat(jnp.array(0))

      def __call__(self, x):
        self.count[...] += 1
        return self.linear(x)

      def encode(self, x, *, scale):
        return self.linear(x) * scale

    graphdef, state = lib.split(Model(lib.Rngs(0)), graph=graph)
    x = jnp.ones((1, 2))
    y, (g2, s2) = graphdef.apply(state)(x)
    z, _ = graphdef.apply(state).encode(x, scale=2.0)
    w, (g3, s3) = lib.call((graphdef, s2))(x)
    return (
      np.asarray(y).tolist(),
      np.asarray(z).tolist(),
      int(s2["count"][...]),
      int(s3["count"][...]),
      int(state["count"][...]),
      isinstance(g2, lib.GraphDef),
      sorted(s2.keys()),
    )

  theirs, ours = run_both(snippet)
  assert ours == theirs


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_call_rejects_a_bad_pair():
  with pytest.raises(pynnx.StateMismatchError, match=r"one `\(graphdef, state\)` pair"):
    pynnx.call([1, 2, 3])
  with pytest.raises(pynnx.StateMismatchError, match="must be a GraphDef"):
    pynnx.call((1, 2))


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_graph_state_rejects_non_graphdefs():
  with pytest.raises(pynnx.StateMismatchError, match="needs a GraphDef"):
    pynnx.GraphState(1, pynnx.State({}))
  g = pynnx.graphdef(pynnx.Linear(1, 1, rngs=pynnx.Rngs(0)))
  with pytest.raises(pynnx.StateMismatchError, match="needs a State"):
    pynnx.GraphState(g, {})


# --- 3. Variables -------------------------------------------------------------------------


def test_variable_metadata_defaults_match_flax():
  def snippet(lib):
    plain = lib.Param(jnp.ones(2))
    with lib.use_eager_sharding(False):
      lazy = lib.Param(jnp.ones(2))
    return (
      plain.get_metadata(),
      lazy.get_metadata()["eager_sharding"],
      (lib.var_defaults().hijax, lib.var_defaults().ref),
      plain.get_metadata("hijax"),
    )

  theirs, ours = run_both(snippet)
  assert ours == theirs


@pytest.mark.parametrize("option", ["hijax", "ref"])
def test_hijax_and_ref_raise_instead_of_losing_updates(option):
  # Flax keeps an update made inside plain jax.jit for these Variables ...
  v = fnnx.Param(jnp.ones(2), **{option: True})

  @jax.jit
  def f(v):
    v[...] = v[...] + 1

  f(v)
  assert float(v[...][0]) == 2.0
  # ... pynnx has no such Variables: it raises rather than silently drop the update.
  with pytest.raises(pynnx.UnsupportedOptionError, match=f"{option}=True is not supported"):
    pynnx.Param(jnp.ones(2), **{option: True})
  with pytest.raises(ValueError, match="nnx.jit"):
    pynnx.var_defaults(**{option: True})
  with pytest.raises(ValueError, match=option):
    pynnx.with_vars(pynnx.Linear(1, 1, rngs=pynnx.Rngs(0)), **{option: True})
  with pytest.raises(pynnx.UnsupportedOptionError, match="Variable.set_metadata"):
    pynnx.Param(1.0).set_metadata(**{option: True})
  with pytest.raises(pynnx.UnsupportedOptionError, match="Variable.replace"):
    pynnx.Param(1.0).replace(**{option: True})
  with pynnx.var_defaults(**{option: False}) as defaults:  # the only pynnx value: fine
    assert tuple(defaults) == (False, False)


def test_with_vars():
  model = pynnx.Linear(2, 3, rngs=pynnx.Rngs(0))
  out = pynnx.with_vars(model, hijax=False, ref=False)
  theirs = fnnx.with_vars(fnnx.Linear(2, 3, rngs=fnnx.Rngs(0)), hijax=False, ref=False)
  assert type(out).__name__ == type(theirs).__name__ and out is not model
  assert out.kernel is model.kernel
  assert pynnx.vars_as is pynnx.with_vars
  with pytest.raises(pynnx.UnsupportedOptionError, match="mutable=False"):
    pynnx.with_vars(model, mutable=False)
  w = pynnx.Param(1.0)
  with pytest.raises(pynnx.SharedReferenceError, match="allow_duplicates=True"):
    pynnx.with_vars(pynnx.Dict(a=w, b=w))
  assert pynnx.with_vars(pynnx.Dict(a=w, b=w), allow_duplicates=True)["a"] is w


def test_pytree_valued_variables():
  def snippet(lib):
    d = lib.Variable({"a": jnp.ones(1), "b": 1})
    d["a"] = 2
    items = lib.Variable([1, 2])
    items[0] = 5
    return d["a"], d["b"], sorted(d.get_value()), list(items.get_value())

  theirs, ours = run_both(snippet)
  assert ours == theirs == (2, 1, ["a", "b"], [5, 2])


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_variable_type_from_name_base():
  class Base(pynnx.Variable):
    pass

  typ = pynnx.variable_type_from_name("parity_custom", base=Base, allow_register=True)
  assert issubclass(typ, Base)
  with pytest.raises(pynnx.NotAVariableError, match="must be a Variable subclass"):
    pynnx.variable_type_from_name("parity_other", base=int, allow_register=True)


# --- 4. eager sharding --------------------------------------------------------------------


@pytest.fixture(params=[AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
def mesh(request):
  return jax.make_mesh((2, 4), ("x", "y"), axis_types=(request.param,) * 2)


def test_eager_sharding_at_creation(mesh):
  def snippet(lib):
    with jax.set_mesh(mesh):
      a = lib.Param(jnp.ones((2, 8)), out_sharding=("x", "y"))
      b = lib.Param(jnp.ones((2, 8)), sharding_names=("x", None))
      init = lib.with_partitioning(lib.initializers.lecun_normal(), ("x", "y"))
      layer = lib.Linear(2, 8, kernel_init=init, rngs=lib.Rngs(0))
      opt = lib.Optimizer(layer, optax.adam(1e-3), wrt=lib.Param)
      mu = opt.opt_state[0].mu["kernel"][...]
      k = jnp.ones(1)
      if mesh.are_all_axes_explicit:  # JAX takes out_sharding for Explicit axes only
        k = lib.initializers.lecun_normal()(
          jax.random.key(0), (2, 8), out_sharding=PartitionSpec("x", "y")
        )
      with lib.use_eager_sharding(False):
        off = lib.Param(jnp.ones((2, 8)), out_sharding=("x", "y"))
      with lib.logical_axis_rules([("embed", "y")]):
        ruled = lib.Param(jnp.ones((2, 8)), out_sharding=("x", "embed"))
    return [
      (str(jax.typeof(v)), v.sharding.spec if hasattr(v.sharding, "spec") else None)
      for v in (a[...], b[...], layer.kernel[...], mu, k, off[...], ruled[...])
    ] + [np.asarray(layer.kernel[...]).round(5).tolist()]

  theirs, ours = run_both(snippet)
  assert ours == theirs
  assert "2@x,8@y" in ours[0][0] or ours[0][1] == PartitionSpec("x", "y")


def test_eager_sharding_without_a_mesh_keeps_the_value_unsharded():
  # Flax raises here; pynnx keeps the metadata for later (docs/migrating.md, Eager sharding).
  with pytest.raises(ValueError, match="mesh"):
    fnnx.Param(jnp.ones(2), out_sharding=("x",))
  v = pynnx.Param(jnp.ones(2), out_sharding=("x",))
  assert v.get_metadata("out_sharding") == ("x",)
  assert pynnx.get_partition_spec(v)[...] == PartitionSpec("x")


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_eager_sharding_settings_reject_bad_values():
  with pytest.raises(pynnx.ConfigError, match="True or False"):
    pynnx.use_eager_sharding("yes")
  with pytest.raises(pynnx.ConfigError, match=r"\(logical_name, mesh_axes\) pairs"):
    with pynnx.logical_axis_rules(["embed"]):
      pass


def test_as_abstract_and_get_abstract_model(mesh):
  def snippet(lib):
    def init():
      return lib.Linear(4, 8, kernel_metadata={"out_sharding": ("x", "y")}, rngs=lib.Rngs(0))

    with jax.set_mesh(mesh):
      abstract = lib.as_abstract(lib.eval_shape(init))
    graphdef, state = lib.get_abstract_model(init, mesh)
    return (
      abstract.kernel.get_value().sharding.spec,
      abstract.kernel.get_value().shape,
      state["kernel"].get_value().sharding.spec,
      state["bias"].get_value().sharding.spec,
      lib.abstract_with_sharding is not None,
    )

  theirs, ours = run_both(snippet)
  assert ours == theirs


# --- 5. pytree options ----------------------------------------------------------------------


def test_pytree_false_objects():
  def snippet(lib):
    class Foo(lib.Pytree, pytree=False):
      def __init__(self):
        self.w = lib.Param(jnp.ones(2))
        self.n = 3

    foo = Foo()
    _, state = lib.split(foo, graph=True)
    try:
      lib.split(foo, graph=False)
      error = None
    except ValueError:
      error = ValueError
    return (
      jax.tree.leaves(foo) == [foo],
      sorted(state.keys()),
      error,
      jax.tree.leaves(lib.Object()) != [],
      issubclass(lib.Object, lib.Pytree),
    )

  theirs, ours = run_both(snippet)
  assert ours == theirs


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_pytree_false_error_and_object_cannot_be_a_pytree():
  class Foo(pynnx.Pytree, pytree=False):
    def __init__(self):
      self.w = pynnx.Param(1.0)

  with pytest.raises(pynnx.GraphModeRequiredError, match=r"pytree=False.*graph=True"):
    pynnx.state(Foo())
  with pytest.raises(TypeError, match="never pytrees"):

    class Bad(pynnx.Object, pytree=True):
      pass

  with pytest.raises(TypeError, match="takes True or False"):

    class Bad2(pynnx.Pytree, pytree="no"):
      pass


def test_dataclass_static_field_metadata():
  def snippet(lib):
    @lib.dataclass
    class D(lib.Pytree):
      a: int = dataclasses.field(metadata={"static": False}, default=1)
      b: int = 2
      c: jax.Array = dataclasses.field(metadata={"static": True}, default=(3,))

    return jax.tree.leaves(D())

  theirs, ours = run_both(snippet)
  assert ours == theirs == [1]


def test_list_protocol_and_markers():
  def snippet(lib):
    items = lib.List([lib.data(3), None, lib.static(4)])
    leaves = jax.tree.leaves(items)
    seq = lib.List([1, 2, 3, 2])
    seq.remove(2)
    seq.reverse()
    seq.insert(0, 7)
    popped = seq.pop()
    seq += [9]
    return (
      leaves,
      list(seq),
      popped,
      seq.index(9),
      seq.count(2),
      2 in seq,
      list(reversed(seq)),
    )

  theirs, ours = run_both(snippet)
  assert ours == theirs


def test_list_markers_follow_their_items():
  items = pynnx.List([pynnx.data(3), 5])
  items.insert(0, pynnx.data(1))
  assert jax.tree.leaves(items) == [1, 3]
  del items[0]
  assert jax.tree.leaves(items) == [3]
  with pytest.raises(ValueError, match="not in the nnx.List"):
    items.index(42)


def test_dict_protocol():
  def snippet(lib):
    d = lib.Dict(a=1)
    first = d.setdefault("b", 3)
    again = d.setdefault("b", 5)
    d.update({"c": 4}, e=6)
    popped = d.pop("a")
    missing = d.pop("zz", None)
    item = d.popitem()
    keys = sorted(d.keys())
    d.clear()
    return first, again, popped, missing, item, keys, len(d)

  theirs, ours = run_both(snippet)
  assert ours == theirs
  with pytest.raises(KeyError, match="nope"):
    pynnx.Dict().pop("nope")
  with pytest.raises(KeyError, match="empty"):
    pynnx.Dict().popitem()


def test_check_pytree():
  class Bad(pynnx.Pytree):
    def __init__(self):
      self.tags = ["a"]

  for lib in (fnnx, pynnx):
    lib.check_pytree(lib.Linear(1, 1, rngs=lib.Rngs(0)))
    with pytest.raises(TypeError, match="Pytree"):
      lib.check_pytree(3)
  pynnx.check_pytree(Bad())  # an unhashable static list is fine, as in Flax
  assert jax.tree.map(lambda x: x, Bad()).tags == ["a"]


def test_view_info_lists_view_attributes():
  # Dropout now has Flax's set_view hook, so its signature (and Args text) is what is listed.
  text = pynnx.view_info(pynnx.Dropout(0.5, rngs=pynnx.Rngs(0)))
  assert text.startswith("Dropout:") and "deterministic: bool | None = None" in text
  assert "Dropout:" in fnnx.view_info(fnnx.Dropout(0.5, rngs=fnnx.Rngs(0)))
  assert text == fnnx.view_info(fnnx.Dropout(0.5, rngs=fnnx.Rngs(0)))


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(din=st.integers(1, 4), dout=st.integers(1, 4), other=st.integers(1, 4), graph=st.booleans())
def test_graphdef_apply_matches_merge_and_equality_tracks_structure(din, dout, other, graph):
  model = pynnx.Linear(din, dout, rngs=pynnx.Rngs(0))
  graphdef, state = pynnx.split(model, graph=graph)
  x = jnp.ones((2, din))
  y, (g2, s2) = graphdef.apply(state, graph=graph)(x)
  np.testing.assert_array_equal(y, pynnx.merge(graphdef, state)(x))
  assert g2 == graphdef and hash(g2) == hash(graphdef)
  assert jax.tree.structure(s2) == jax.tree.structure(state)
  g_other = pynnx.graphdef(pynnx.Linear(din, other, rngs=pynnx.Rngs(1)), graph=graph)
  assert (g_other == graphdef) == (other == dout)


def test_view_calls_a_modules_set_view():
  def snippet(lib):
    class Block(lib.Module):
      def __init__(self):
        self.mode = "train"
        self.w = lib.Param(jnp.ones(1))

      def set_view(self, *, inference: "bool | None" = None):
        if inference is not None:
          self.mode = "eval" if inference else "train"

    block = Block()
    viewed = lib.view(block, inference=True)
    try:
      lib.view(block, mode="x")
      unused = None
    except ValueError:
      unused = ValueError
    return viewed.mode, block.mode, viewed.w is block.w, unused, lib.view_info(block)

  theirs, ours = run_both(snippet)
  assert ours[:4] == theirs[:4] == ("eval", "train", True, ValueError)
  with pytest.raises(pynnx.AttributeNotFoundError, match=r"\['mode'\]"):
    raise_from_view()
  assert "inference: bool | None = None" in ours[4] and "inference" in theirs[4]


def raise_from_view():
  class Block(pynnx.Module):
    def __init__(self):
      self.mode = "train"

    def set_view(self, *, inference=None):
      pass

  pynnx.view(Block(), mode="x")


def test_set_attributes_and_view_errors_are_value_errors_like_flax():
  for lib in (fnnx, pynnx):
    model = lib.Linear(1, 1, rngs=lib.Rngs(0))
    with pytest.raises(ValueError, match="foo"):
      model.set_attributes(foo=1)
    with pytest.raises(ValueError, match="foo"):
      lib.view(model, foo=1)


@pytest.mark.parametrize("graph", [False, True], ids=["tree", "graph"])
def test_pytree_valued_variable_updates_survive_jit(graph):
  def snippet(lib):
    class Holder(lib.Module):
      def __init__(self):
        self.v = lib.Variable({"a": jnp.ones(1), "b": jnp.zeros(1)})

    holder = Holder()

    @lib.jit(graph=graph)
    def step(h):
      h.v["a"] = h.v["a"] + 1

    step(holder)
    return jax.tree.map(lambda x: x.tolist(), holder.v.get_value())

  theirs, ours = run_both(snippet)
  assert ours == theirs == {"a": [2.0], "b": [0.0]}


def test_context_flatten_and_unflatten_keep_sharing():
  def snippet(lib):
    w = lib.Param(jnp.ones(2))
    a, b = lib.Dict(w=w, u=lib.Param(jnp.zeros(1))), lib.Dict(w=w)
    with lib.split_context() as ctx:
      ga, fa = ctx.flatten(a)
      gb, fb = ctx.flatten(b)
    with lib.merge_context() as ctx:
      a2, b2 = ctx.unflatten(ga, fa), ctx.unflatten(gb, fb)
    return [tuple(p) for p, _ in fa], len(fb), a2["w"] is b2["w"], sorted(a2.keys())

  theirs, ours = run_both(snippet)
  assert ours == theirs
  w = pynnx.Param(jnp.ones(2))
  with pynnx.split_context() as ctx:
    g, leaves = ctx.flatten(pynnx.Dict(w=w, v=w), with_paths=False)
  with pynnx.merge_context() as ctx:
    rebuilt = ctx.unflatten(g, leaves)
  assert len(leaves) == 1 and rebuilt["v"] is rebuilt["w"] is w
