"""Differential tests against flax.nnx 0.12.8: Flax's submodule names (``nnx.graph``,
``nnx.rnglib``, ...), ``nnx.update_context`` and ``nnx.traversals``.

Same pattern as ``test_api_surface.py``: one snippet run with ``lib`` = ``flax.nnx`` and
``lib`` = ``pynnx``, results compared.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_api_surface import LIBS, fnnx, quiet, run_both

import pynnx

# --- submodule names --------------------------------------------------------------------------

ALIASES = {
  "graph": ["split", "merge", "GraphDef", "State", "iter_graph"],
  "graphlib": ["split", "merge", "flatten", "unflatten"],
  "module": ["Module", "iter_modules", "view"],
  "object": ["Object", "Pytree", "data", "static"],
  "pytreelib": ["Pytree", "dataclass"],
  "variablelib": ["Variable", "Param", "VariableMetadata", "var_defaults"],
  "rnglib": ["Rngs", "RngStream", "split_rngs", "fork_rngs"],
  "statelib": ["State", "FlatState", "to_pure_dict", "map_state"],
  "spmd": ["get_partition_spec", "with_partitioning", "PARTITION_NAME"],
  "helpers": ["Sequential", "List", "Dict", "TrainState"],
  "extract": ["to_tree", "from_tree"],
  "visualization": ["display"],
}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_submodule_aliases_match_flax(alias):
  for name in ALIASES[alias]:
    ours = getattr(getattr(pynnx, alias), name)
    assert ours is getattr(pynnx, name)
    theirs = getattr(getattr(fnnx, alias), name)
    assert theirs is getattr(fnnx, name)  # the same top-level object in Flax too


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_submodule_aliases_hold_only_real_names(alias):
  module = getattr(pynnx, alias)
  flax_module = getattr(fnnx, alias)
  for name in module.__all__:
    assert getattr(module, name) is getattr(pynnx, name)
    assert hasattr(flax_module, name), f"nnx.{alias}.{name} is not a name of Flax's module"


def test_submodule_aliases_are_importable():
  import pynnx.graph
  from pynnx.rnglib import Rngs

  assert pynnx.graph.split is pynnx.split and Rngs is pynnx.Rngs


def test_user_snippet_through_submodule_names():
  def snippet(lib):
    model = lib.module.Module
    rngs = lib.rnglib.Rngs(0)
    layer = lib.Linear(2, 3, rngs=rngs)
    graphdef, state = lib.graph.split(layer)
    assert isinstance(layer, model) and isinstance(state, lib.statelib.State)
    params = lib.statelib.to_pure_dict(state)
    var = lib.variablelib.Param(jnp.ones(2))
    return jax.tree.map(np.shape, params), var.shape

  flax_out, ours = run_both(snippet)
  assert ours == flax_out


# --- update_context -----------------------------------------------------------------------------


def make_counter(lib):
  class Counter(lib.Module):
    def __init__(self):
      self.count = lib.BatchStat(jnp.array(0))
      self.drop = lib.Dropout(0.5)

  return Counter()


def bridged_step(lib, tag):
  """A raw ``jax.jit`` between an outer split and an outer merge of ``tag``."""

  @jax.jit
  def f(graphdef, state):
    with lib.merge_context(tag, inner=True) as ctx:
      inner = ctx.merge(graphdef, state)
    inner.count[...] += 1
    inner.eval()  # a static change (a sanctioned API in pynnx)
    quiet(inner.sow, lib.Intermediate, "seen", inner.count[...])  # a new Variable
    with lib.split_context(tag) as ctx:
      return ctx.split(inner)

  return f


def test_update_context_with_block():
  def snippet(lib):
    m1 = make_counter(lib)
    with lib.update_context("step") as uctx:
      same = lib.current_update_context("step") is uctx
      with lib.split_context("step") as ctx:
        graphdef, state = ctx.split(m1)
      graphdef, state = bridged_step(lib, "step")(graphdef, state)
      with lib.merge_context("step", inner=False) as ctx:
        m3 = ctx.merge(graphdef, state)
    return (
      same,
      m3 is m1,
      int(m1.count[...]),
      m1.drop.deterministic,
      type(m1.seen).__name__,
      [int(x) for x in m1.seen.get_value()],
    )

  flax_out, ours = run_both(snippet)
  assert ours == flax_out == (True, True, 1, True, "Intermediate", [1])


def test_update_context_decorator_and_two_objects():
  def snippet(lib):
    a, b = make_counter(lib), make_counter(lib)

    @lib.update_context("two")
    def step(a, b):
      with lib.split_context("two") as ctx:
        ga, sa = ctx.split(a)
        gb, sb = ctx.split(b)

      @jax.jit
      def f(ga, sa, gb, sb):
        with lib.merge_context("two", inner=True) as ctx:
          a2, b2 = ctx.merge(ga, sa), ctx.merge(gb, sb)
        a2.count[...] += 1
        b2.count[...] += 2
        with lib.split_context("two") as ctx:
          return ctx.split(a2), ctx.split(b2)

      (ga, sa), (gb, sb) = f(ga, sa, gb, sb)
      with lib.merge_context("two", inner=False) as ctx:
        return ctx.merge(ga, sa), ctx.merge(gb, sb)

    a3, b3 = step(a, b)
    return a3 is a, b3 is b, int(a.count[...]), int(b.count[...])

  flax_out, ours = run_both(snippet)
  assert ours == flax_out == (True, True, 1, 2)


@LIBS
def test_update_context_errors_are_value_errors(lib):
  with pytest.raises(ValueError, match="No update context found for tag 'x'"):
    lib.current_update_context("x")
  with pytest.raises(ValueError, match="No update context found for tag 'x'"):
    with lib.split_context("x"):
      pass


def test_update_context_error_messages():
  with pytest.raises(pynnx.UpdateContextError, match=r"needs `inner=True`.*or `inner=False`"):
    with pynnx.update_context("t"), pynnx.merge_context("t"):
      pass
  with pytest.raises(pynnx.UpdateContextError, match=r"found no outer split"):
    with pynnx.update_context("t"), pynnx.merge_context("t", inner=False):
      pass


def test_update_context_is_left_on_exit():
  with pynnx.update_context("t"):
    pass
  with pytest.raises(pynnx.UpdateContextError):
    pynnx.current_update_context("t")


# --- nnx.traversals ------------------------------------------------------------------------------

NESTED = {"a": {"b": 1, "c": {}}, "d": 2, "e": {"f": {"g": 3}}}


def test_traversals_flatten_unflatten():
  def snippet(lib):
    t = lib.traversals
    flat = t.flatten_mapping(NESTED)
    kept = t.flatten_mapping(NESTED, keep_empty_nodes=True)
    joined = t.flatten_mapping(NESTED, sep="/")
    stopped = t.flatten_mapping(NESTED, is_leaf=lambda path, x: path == ("e",))
    return (
      flat,
      {k: ("EMPTY" if v is t.empty_node else v) for k, v in kept.items()},
      joined,
      stopped,
      t.flatten_to_sequence(NESTED),
      t.unflatten_mapping(flat),
      t.unflatten_mapping(kept),
      t.unflatten_mapping(joined, sep="/"),
      t.unflatten_mapping(list(flat.items())),
    )

  flax_out, ours = run_both(snippet)
  assert ours == flax_out


def test_traversals_on_a_state():
  def snippet(lib):
    state = lib.state(lib.Linear(2, 3, rngs=lib.Rngs(0)))
    return {k: v.shape for k, v in lib.traversals.flatten_mapping(state).items()}

  flax_out, ours = run_both(snippet)
  assert ours == flax_out


@LIBS
def test_traversals_conflicting_paths_are_type_errors(lib):
  with pytest.raises(TypeError):
    lib.traversals.unflatten_mapping({("a",): 1, ("a", "b"): 2})


def test_traversals_conflict_messages():
  with pytest.raises(pynnx.PathConflictError, match=r"passes through \('a',\), which is a leaf"):
    pynnx.traversals.unflatten_mapping({("a",): 1, ("a", "b"): 2})
  with pytest.raises(pynnx.PathConflictError, match=r"is a leaf but also the prefix"):
    pynnx.traversals.unflatten_mapping({("a", "b"): 2, ("a",): 1})
