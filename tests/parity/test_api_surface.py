"""Differential tests against flax.nnx 0.12.8: the API surface (Variable protocol, State and
FlatState methods, GraphDef.num_leaves, nnx.List / nnx.Dict as Modules, submodule names).

Each test runs the same snippet with ``lib`` = ``flax.nnx`` and ``lib`` = ``pynnx`` and compares
values, shapes, metadata and error classes; pynnx-only tests check documented differences.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx

fnnx = pytest.importorskip("flax.nnx")

LIBS = pytest.mark.parametrize("lib", [fnnx, pynnx], ids=["flax", "pynnx"])


def run_both(snippet):
  """``(flax_result, pynnx_result)`` of ``snippet(lib)``."""
  return snippet(fnnx), snippet(pynnx)


def quiet(fn, *args, **kwargs):
  """``fn(*args, **kwargs)`` with (Flax's) deprecation warnings silenced."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.filterwarnings("ignore", message="Variable hooks are deprecated")
    return fn(*args, **kwargs)


# --- Variable ------------------------------------------------------------------------------


def test_variable_shape_and_sharding_names():
  def snippet(lib):
    p = lib.Param(jnp.ones((2, 3)), sharding_names=("a", "b"), eager_sharding=False)
    q = lib.Param(jnp.ones(4))
    return p.shape, quiet(lambda: p.sharding_names), q.shape, quiet(lambda: q.sharding_names)

  flax_out, ours = run_both(snippet)
  assert ours == flax_out == ((2, 3), ("a", "b"), (4,), None)


@LIBS
def test_variable_shape_of_a_scalar_python_value_is_an_attribute_error(lib):
  with pytest.raises(AttributeError):
    _ = lib.Variable(3).shape


def test_required_metadata_hijax_ref():
  def snippet(lib):
    p = lib.Param(jnp.zeros(2))
    return sorted(type(p).required_metadata), p.hijax, p.ref

  flax_out, ours = run_both(snippet)
  assert ours == flax_out


def test_to_state_is_a_copy_with_the_same_metadata():
  def snippet(lib):
    p = lib.BatchStat(jnp.arange(3.0), tag="t", eager_sharding=False)
    s = p.to_state()
    s[...] = jnp.zeros(3)
    return type(s).__name__, s is p, s.get_metadata(), np.asarray(p[...]), np.asarray(s[...])

  (fn, fis, fmeta, fp, fs), (pn, pis, pmeta, pp, ps) = run_both(snippet)
  assert (pn, pis, pmeta) == (fn, fis, fmeta)
  np.testing.assert_array_equal(pp, fp)
  np.testing.assert_array_equal(ps, fs)


def test_update_from_state_takes_value_and_metadata():
  def snippet(lib):
    p = lib.Param(jnp.zeros(2))
    p.update_from_state(lib.Param(jnp.ones(2), note="x"))
    return np.asarray(p[...]), p.get_metadata()

  (fv, fm), (pv, pm) = run_both(snippet)
  np.testing.assert_array_equal(pv, fv)
  assert pm == fm


def test_update_from_state_rejects_a_non_variable():
  with pytest.raises(pynnx.NotAVariableError, match=r"update_from_state expects a Variable"):
    pynnx.Param(jnp.zeros(2)).update_from_state(jnp.ones(2))


def test_from_metadata_round_trips_get_metadata():
  def snippet(lib):
    p = lib.Param(jnp.zeros(2), note="x")
    q = lib.Param.from_metadata(jnp.ones(2), p.get_metadata())
    return type(q).__name__, np.asarray(q[...]), q.get_metadata(), q.note

  flax_out, ours = run_both(snippet)
  assert ours[0] == flax_out[0] and ours[2:] == flax_out[2:]
  np.testing.assert_array_equal(ours[1], flax_out[1])


def test_from_metadata_without_required_keys_is_accepted():
  # Flax raises KeyError('hijax'); pynnx fills the defaults (docs/migrating.md, Variables).
  q = pynnx.Param.from_metadata(jnp.ones(2), {"note": "x"})
  assert q.get_metadata() == {"hijax": False, "ref": False, "eager_sharding": True, "note": "x"}


def test_from_metadata_rejects_hijax():
  with pytest.raises(pynnx.UnsupportedOptionError, match=r"from_metadata: hijax=True"):
    pynnx.Param.from_metadata(jnp.ones(2), {"hijax": True})


def test_del_metadata():
  def snippet(lib):
    p = lib.Param(jnp.zeros(2), note="x", other=1)
    p.del_metadata("note")
    errors = []
    for name in ("note", "hijax"):
      try:
        p.del_metadata(name)
      except Exception as e:  # noqa: BLE001  (compared across libraries)
        errors.append(e)
    return p.get_metadata(), errors

  (fm, ferrs), (pm, perrs) = run_both(snippet)
  assert pm == fm
  assert isinstance(perrs[0], KeyError) and isinstance(ferrs[0], KeyError)
  assert isinstance(perrs[1], ValueError) and isinstance(ferrs[1], ValueError)


def test_del_metadata_error_message():
  with pytest.raises(pynnx.StateMismatchError, match=r"cannot delete the required metadata 'ref'"):
    pynnx.Param(jnp.zeros(2)).del_metadata("ref")


def test_create_value_override():
  def snippet(lib):
    class Shifted(lib.Param):
      def create_value(self, value):
        return value + 10

    v = Shifted(jnp.ones(2))
    return np.asarray(v[...])

  flax_out, ours = run_both(snippet)
  np.testing.assert_array_equal(ours, flax_out)


def test_variable_metadata_hooks_create_and_axes():
  def snippet(lib):
    calls = []

    def on_axis(v, index, name):
      calls.append((type(v).__name__, index, name))

    boxed = lib.VariableMetadata(
      jnp.ones(2),
      on_create_value=(lambda v, x: x * 3,),
      on_add_axis=(on_axis,),
      on_remove_axis=(on_axis,),
      metadata={"note": "x"},
    )
    p = quiet(lib.Param, boxed)
    p.add_axis(0, "batch")
    p.remove_axis(1, "model")
    return np.asarray(p[...]), p.note, calls

  (fv, fnote, fcalls), (pv, pnote, pcalls) = run_both(snippet)
  np.testing.assert_array_equal(pv, fv)
  assert (pnote, pcalls) == (fnote, fcalls)


def test_variable_hooks_warn_like_flax():
  with pytest.warns(UserWarning, match="Variable hooks are deprecated"):
    pynnx.Param(pynnx.VariableMetadata(jnp.ones(2), on_create_value=(lambda v, x: x,)))


def test_add_axis_without_hooks_does_nothing():
  def snippet(lib):
    p = lib.Param(jnp.ones(2))
    return p.add_axis(0, "b"), p.remove_axis(0, "b"), p.get_metadata()

  flax_out, ours = run_both(snippet)
  assert ours == flax_out


def test_class_level_axis_hook():
  def snippet(lib):
    calls = []

    class Tracked(lib.Param):
      def on_add_axis(self, index, name):
        calls.append((index, name))

    quiet(Tracked, jnp.ones(2)).add_axis(0, "b")
    return calls

  flax_out, ours = run_both(snippet)
  assert ours == flax_out == [(0, "b")]


@pytest.mark.parametrize("hook", ["on_get_value", "on_set_value"])
def test_value_hooks_are_rejected(hook):
  boxed = pynnx.VariableMetadata(jnp.ones(2), **{hook: (lambda v, x: x,)})
  with pytest.raises(pynnx.UnsupportedOptionError, match=rf"the {hook} hook is not supported"):
    pynnx.Param(boxed)


def test_class_level_value_hook_is_rejected():
  class Clipped(pynnx.Param):
    def on_get_value(self, value):
      return value

  with pytest.raises(ValueError, match=r"override `get_value` / `set_value`"):
    Clipped(jnp.ones(2))


# --- State and FlatState --------------------------------------------------------------------


def make_net(lib):
  return lib.Sequential(lib.Linear(2, 3, rngs=lib.Rngs(0)), lib.BatchNorm(3, rngs=lib.Rngs(0)))


def test_state_map_and_raw_mapping():
  def snippet(lib):
    state = lib.state(make_net(lib))
    with pytest.warns(DeprecationWarning, match="map_state"):
      shapes = state.map(lambda path, v: v.shape)
    return lib.to_pure_dict(shapes), type(state.raw_mapping), sorted(state.raw_mapping)

  flax_out, ours = run_both(snippet)
  assert ours == flax_out


def test_raw_mapping_is_the_live_top_level_dict():
  state = pynnx.state(make_net(pynnx))
  state.raw_mapping["extra"] = pynnx.Param(jnp.ones(1))
  assert "extra" in state


def test_flat_state_filter_split_merge():
  def snippet(lib):
    flat = lib.state(make_net(lib)).flat_state()
    params = flat.filter(lib.Param)
    p2, stats = flat.filter(lib.Param, lib.BatchStat)
    sp, rest = flat.split(lib.Param, ...)
    merged = lib.FlatState.merge(rest, sp)
    single = lib.FlatState.merge(sp)
    sorted_ = lib.FlatState.from_sorted_keys_values(sp.paths, sp.leaves)
    return (
      type(params).__name__,
      params.paths,
      p2.paths,
      stats.paths,
      rest.paths,
      merged.paths,
      single is sp,
      sorted_.paths,
    )

  flax_out, ours = run_both(snippet)
  assert ours == flax_out


@LIBS
def test_flat_state_split_must_be_exhaustive(lib):
  flat = lib.state(make_net(lib)).flat_state()
  with pytest.raises(ValueError):
    flat.split(lib.Param)


def test_flat_state_split_error_message():
  flat = pynnx.state(make_net(pynnx)).flat_state()
  with pytest.raises(pynnx.FilterError, match=r"state\.layers\[1\]\.mean.*Add `\.\.\.`"):
    flat.split(pynnx.Param)


def test_from_sorted_keys_values_length_mismatch():
  with pytest.raises(pynnx.StateMismatchError, match=r"got 2 keys but 1 values"):
    pynnx.FlatState.from_sorted_keys_values((("a",), ("b",)), [1])


# --- GraphDef ---------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", [False, True], ids=["tree", "graph"])
def test_graphdef_num_leaves(graph):
  def snippet(lib):
    shared = lib.Linear(2, 2, rngs=lib.Rngs(0))

    class Net(lib.Module):
      def __init__(self, tie):
        self.a = shared
        self.b = shared if tie else lib.Linear(2, 2, rngs=lib.Rngs(1))
        self.bn = lib.BatchNorm(2, rngs=lib.Rngs(0))

    counts = []
    for tie in [False, True] if graph else [False]:
      graphdef, state = lib.split(Net(tie), graph=graph)
      counts.append((graphdef.num_leaves, len(jax.tree.leaves(state))))
    return counts

  flax_out, ours = run_both(snippet)
  assert ours == flax_out


# --- nnx.List / nnx.Dict are Modules ----------------------------------------------------------


def make_model(lib):
  class Model(lib.Module):
    def __init__(self, rngs):
      self.layers = lib.List([lib.Linear(2, 2, rngs=rngs), lib.Dropout(0.5, rngs=rngs)])
      self.blocks = lib.Dict(norm=lib.BatchNorm(2, rngs=rngs))

    def __call__(self, x):
      for layer in self.layers:
        x = layer(x)
      return self.blocks["norm"](x)

  return Model(lib.Rngs(0))


def test_list_and_dict_are_modules():
  def snippet(lib):
    m = make_model(lib)
    return (
      isinstance(m.layers, lib.Module),
      isinstance(m.blocks, lib.Module),
      isinstance(lib.List([1, 2]), lib.Module),
      [p for p, _ in lib.iter_modules(m)],
      [p for p, _ in lib.iter_modules(lib.List([1, 2]))],
      [k for k, _ in lib.iter_children(m)],
      [k for k, _ in lib.iter_children(m.layers)],
    )

  flax_out, ours = run_both(snippet)
  assert ours == flax_out


def test_module_iter_modules_method_order():
  def snippet(lib):
    return [p for p, _ in quiet(lambda: list(make_model(lib).iter_modules()))]

  flax_out, ours = run_both(snippet)
  assert ours == flax_out


def test_eval_train_on_list_and_dict():
  def snippet(lib):
    m = make_model(lib)
    m.layers.eval()
    after_list = (m.layers[1].deterministic, m.blocks["norm"].use_running_average)
    m.blocks.eval()
    after_dict = m.blocks["norm"].use_running_average
    m.layers.train()
    m.layers.set_attributes(deterministic=True)
    return after_list, after_dict, m.layers[1].deterministic

  flax_out, ours = run_both(snippet)
  assert ours == flax_out == ((True, False), True, True)


def test_sow_on_a_list():
  def snippet(lib):
    layers = lib.List([lib.Linear(2, 2, rngs=lib.Rngs(0))])
    quiet(layers.sow, lib.Intermediate, "seen", 1.0)  # Flax deprecates sow outside capture
    quiet(layers.sow, lib.Intermediate, "seen", 2.0)
    # (nnx.state(layers, ...) would sort int and str keys together: Flax raises TypeError)
    return len(layers), type(layers.seen).__name__, layers.seen.get_value()

  flax_out, ours = run_both(snippet)
  assert ours == flax_out


@pytest.mark.parametrize("graph", [False, True], ids=["tree", "graph"])
def test_list_module_through_jit_and_split(graph):
  def snippet(lib):
    m = make_model(lib)
    m.layers.eval()

    @lib.jit(graph=graph)
    def step(model, x):
      model.blocks.train()  # a static change inside the transform (graph mode writes it back)
      return model(x)

    y = step(m, jnp.ones((4, 2)))
    graphdef, state = lib.split(m.layers, graph=graph)
    again = lib.merge(graphdef, state)
    return (
      np.asarray(y),
      isinstance(again, lib.Module),
      type(again).__name__,
      len(again),
      [p for p, _ in lib.iter_modules(again)],
    )

  (fy, *frest), (py, *prest) = run_both(snippet)
  np.testing.assert_allclose(py, fy, rtol=1e-6)
  assert prest == frest


def test_capture_through_a_list_of_modules():
  def snippet(lib):
    class Block(lib.Module):
      def __init__(self, rngs):
        self.lin = lib.Linear(2, 2, rngs=rngs)

      def __call__(self, x):
        y = self.lin(x)
        self.sow(lib.Intermediate, "y", y)
        return y

    class Model(lib.Module):
      def __init__(self, rngs):
        self.layers = lib.List([Block(rngs), Block(rngs)])

      def __call__(self, x):
        for layer in self.layers:
          x = layer(x)
        return x

    model = Model(lib.Rngs(0))
    _, inter = lib.capture(model, lib.Intermediate)(jnp.ones((1, 2)))
    flat = {p: np.asarray(v.get_value()[0]) for p, v in inter.flat_state()}
    return flat, sorted(k for k in vars(model.layers) if isinstance(k, str) and "captures" in k)

  (fflat, fleft), (pflat, pleft) = run_both(snippet)
  assert sorted(pflat) == sorted(fflat) and pleft == fleft == []
  for path in fflat:
    np.testing.assert_allclose(pflat[path], fflat[path], rtol=1e-6)


@pytest.mark.parametrize("graph", [False, True], ids=["tree", "graph"])
def test_pop_a_sown_variable_from_a_list(graph):
  def snippet(lib):
    layers = lib.List([lib.Linear(2, 2, rngs=lib.Rngs(0)), lib.BatchStat(jnp.ones(1))])
    quiet(layers.sow, lib.Intermediate, "seen", 1.0)
    kwargs = {"graph": graph} if lib is pynnx else {}  # Flax's pop has no graph= (always graph)
    popped = lib.pop(layers, lib.Intermediate, **kwargs)
    return hasattr(layers, "seen"), len(layers), jax.tree.leaves(popped)

  flax_out, ours = run_both(snippet)
  assert ours == flax_out == (False, 2, [1.0])


def test_plain_list_attribute_becomes_a_module_list():
  class Model(pynnx.Module):
    def __init__(self):
      self.layers = [pynnx.Dropout(0.5), pynnx.Dropout(0.5)]

  m = Model()
  assert isinstance(m.layers, pynnx.List) and isinstance(m.layers, pynnx.Module)
  m.layers.eval()
  assert all(d.deterministic for d in m.layers)


# --- use_eager_sharding as a decorator, current_value, get_default -----------------------------


def test_use_eager_sharding_decorator_and_class_methods():
  def snippet(lib):
    @lib.use_eager_sharding(False)
    def inside():
      return lib.using_eager_sharding(), lib.use_eager_sharding.current_value()

    before = lib.using_eager_sharding()
    during = inside()
    with lib.use_eager_sharding(False):
      in_block = lib.use_eager_sharding.current_value()
    return before, during, in_block, lib.use_eager_sharding.get_default()

  flax_out, ours = run_both(snippet)
  assert ours == flax_out == (True, (False, False), False, True)


# --- Flax's parameter names on methods (found by the signature walk) ---------------------------


def test_copy_to_state_and_get_metadata_keywords():
  def snippet(lib):
    p = lib.Param(jnp.ones(2), note=1)
    q = p.copy(jnp.zeros(2), note=2)
    r = p.to_state(note=5)
    return (
      p.get_metadata(exclude_required=True),
      q.get_metadata(),
      np.asarray(q[...]).tolist(),
      r.note,
      p.note,
    )

  flax_out, ours = run_both(snippet)
  assert ours == flax_out


def test_list_insert_pop_by_keyword():
  def snippet(lib):
    items = lib.List([lib.Param(jnp.ones(1)), lib.Param(jnp.zeros(1))])
    items.insert(index=0, value=lib.Param(jnp.full(1, 2.0)))
    popped = items.pop(index=1)
    return [float(v[0]) for v in items], float(popped[0])

  flax_out, ours = run_both(snippet)
  assert ours == flax_out


def test_set_attributes_graph_true_visits_a_shared_module_once():
  def snippet(lib):
    drop = lib.Dropout(0.5)
    model = lib.List([drop, drop])
    model.set_attributes(deterministic=True, graph=True)
    return model[0].deterministic, model[1].deterministic

  flax_out, ours = run_both(snippet)
  assert ours == flax_out == (True, True)


def test_set_attributes_graph_false_rejects_sharing():
  shared = pynnx.Linear(2, 2, rngs=pynnx.Rngs(0))
  model = pynnx.List([shared, shared])
  with pytest.raises(pynnx.SharedReferenceError, match=r"List\.set_attributes received the same"):
    model.set_attributes(use_bias=False, graph=False)
