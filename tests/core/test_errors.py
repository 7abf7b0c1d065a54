"""Every user error of the core: its class, its builtin base, and a message with what/where/fix."""

import inspect

import jax
import jax.numpy as jnp
import pytest

import pynnx as nnx
from pynnx._core import errors
from pynnx._core.variables import pop_frame, push_frame

BUILTINS = {
  "FrozenModuleError": AttributeError,
  "SharedReferenceError": ValueError,
  "FilterError": ValueError,
  "StateMismatchError": ValueError,
  "NotAVariableError": TypeError,
  "StaticAttributeError": (TypeError, ValueError),
  "GraphModeRequiredError": ValueError,
  "TraceContextError": ValueError,
  "LeakedTracerError": RuntimeError,
  "AxisSpecError": ValueError,
  "StructureChangeError": ValueError,
  "ShapeError": ValueError,
  "RngError": ValueError,
  "RngStreamNotFoundError": (AttributeError, KeyError),
  "RngCallError": TypeError,
  "ConfigError": TypeError,
  "AttributeNotFoundError": AttributeError,
  "LayerArgumentError": ValueError,
  "MetricArgumentError": TypeError,
  "BoundMethodError": ValueError,
  "TreeStructureError": ValueError,
  "CloneArgumentError": ValueError,
  "UnsupportedOptionError": ValueError,
  "BridgeError": TypeError,
  "LinenBridgeError": ValueError,
  "TransformArgumentError": ValueError,
  "UpdateContextError": ValueError,
  "PathConflictError": TypeError,
  "MissingStateError": (ValueError, TypeError),
  "VariableInPlaceError": NotImplementedError,
  "VariableIndexError": TypeError,
  "MeshAxisError": ValueError,
  "VariableAttributeError": AttributeError,
  "VariableNameError": ValueError,
  "MetadataNotFoundError": (KeyError, AttributeError),
  "ArgumentTypeError": (TypeError, AttributeError),
  "CheckpointArgumentError": (TypeError, AttributeError, ValueError),
}


def test_every_error_is_a_pynnx_error_and_a_builtin():
  classes = {
    name: cls
    for name, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.PynnxError) and cls is not errors.PynnxError
  }
  assert set(classes) == set(BUILTINS)
  for name, cls in classes.items():
    bases = BUILTINS[name] if isinstance(BUILTINS[name], tuple) else (BUILTINS[name],)
    assert all(issubclass(cls, b) for b in bases), name
    assert getattr(nnx, name) is cls  # exported


class Model(nnx.Module):
  def __init__(self):
    self.encoder = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    self.stats = nnx.BatchStat(jnp.zeros(()))
    self.arr = jnp.zeros(())
    self.size = 2


def test_frozen_assignment():
  m = Model()
  with pytest.raises(
    nnx.FrozenModuleError,
    match=r"Cannot set attribute 'size' of Model.*frozen.*nnx\.view\(model, size=\.\.\.\)",
  ):
    m.size = 3
  with pytest.raises(
    nnx.FrozenModuleError,
    match=r"Cannot set attribute 'kernel' of Linear.*holds a Param.*model\.kernel\[\.\.\.\] = ",
  ):
    m.encoder.kernel = nnx.Param(jnp.zeros((2, 2)))
  with pytest.raises(
    nnx.FrozenModuleError,
    match=r"Cannot set attribute 'encoder' of Model \(`model\.encoder`.*swap a sub-Module.*nnx\.List",
  ) as info:
    m.encoder = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
  assert "set_attributes" not in str(info.value)  # the static-attribute fix does not apply
  with pytest.raises(
    nnx.FrozenModuleError, match=r"Cannot delete attribute 'stats' of Model.*nnx\.pop.*nnx\.view"
  ):
    del m.stats


def test_frozen_pytree_message_has_a_fix_for_pytrees():
  class Box(nnx.Pytree):
    def __init__(self):
      self.n = 1

  with pytest.raises(
    nnx.FrozenModuleError, match=r"Cannot set attribute 'n' of Box.*Construct a new Box"
  ) as info:
    Box().n = 2
  assert "set_attributes" not in str(info.value) and "view(" not in str(info.value)
  with pytest.raises(nnx.FrozenModuleError, match=r"Cannot delete attribute 'n' of Box") as info:
    del Box().n
  assert "view(" not in str(info.value)


def test_shared_reference_in_tree_mode():
  class Tied(nnx.Module):
    def __init__(self):
      self.embed = nnx.Param(jnp.zeros((3, 2)))
      self.blocks = [nnx.Param(jnp.zeros(()))]
      self.blocks.append(self.embed)

  with pytest.raises(
    nnx.SharedReferenceError,
    match=r"(?s)same Param at two places:\n  model\.blocks\[1\]\n  model\.embed\n.*"
    r"needs every Variable to appear exactly once.*pynnx\.clone.*pynnx\.split\(\.\.\., graph=True\)",
  ):
    nnx.split(Tied())


def test_split_filters_leave_variables_unmatched():
  with pytest.raises(
    nnx.FilterError,
    match=r"leave these Variables unmatched: model\.arr, model\.stats\. .*add `\.\.\.`",
  ):
    nnx.split(Model(), nnx.Param)


def test_filter_errors():
  with pytest.raises(nnx.FilterError, match=r"`\.\.\.` \(everything\) can only be the last filter"):
    nnx.split(Model(), ..., nnx.Param)
  with pytest.raises(nnx.FilterError, match="1.5 is not a filter"):
    nnx.split(Model(), 1.5)


def test_merge_state_does_not_fit():
  graphdef, params, rest = nnx.split(Model(), nnx.Param, ...)
  with pytest.raises(
    nnx.StateMismatchError, match=r"does not fit the GraphDef \(missing model\.arr, model\.stats\)"
  ):
    nnx.merge(graphdef, params)
  other = nnx.state(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
  with pytest.raises(
    nnx.StateMismatchError, match=r"missing model\.arr.*unexpected model\.bias, model\.kernel"
  ):
    nnx.merge(graphdef, other)


def test_update_state_does_not_fit():
  with pytest.raises(
    nnx.StateMismatchError, match=r"update: model\.decoder\.kernel is not in the Model"
  ):
    nnx.update(Model(), nnx.State({"decoder": {"kernel": nnx.Param(jnp.zeros(()))}}))


def test_non_variable_where_variable_expected():
  graphdef, state = nnx.split(Model())
  state["stats"] = jnp.ones(())  # merge wraps a plain value in the GraphDef's type (as Flax)
  assert type(nnx.merge(graphdef, state).stats) is nnx.BatchStat
  with pytest.raises(
    nnx.NotAVariableError, match=r"update: model\.arr holds a plain .*store it in a Variable"
  ):
    nnx.update(Model(), nnx.State({"arr": jnp.ones(())}))
  with pytest.raises(
    nnx.NotAVariableError, match=r"pass its value instead: `Cache\(v\[\.\.\.\]\)`"
  ):
    nnx.Cache(nnx.Param(jnp.zeros(())))


def test_unhashable_static_values_are_accepted():
  class Conf(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.zeros(()))
      self.features = {"a", "b"}

  assert jax.tree.structure(Conf()) == jax.tree.structure(Conf())
  items = nnx.List([nnx.Param(1.0), [1, 2]])
  assert jax.tree.map(lambda x: x, items)[1] == [1, 2]
  table = nnx.Dict(cfg={"lr": 1}, w=jnp.ones(1))
  assert jax.tree.map(lambda x: x, table)["cfg"] == {"lr": 1}


def test_replace_by_pure_dict_mismatch():
  state = nnx.state(Model())
  pure = state.to_pure_dict()
  pure.pop("arr")
  pure["extra"] = 1
  with pytest.raises(
    nnx.StateMismatchError, match=r"missing: state\.arr; not in the State: state\.extra"
  ):
    state.replace_by_pure_dict(pure)


def test_mutating_a_closed_over_variable_in_a_frame():
  v = nnx.Param(jnp.zeros(()))
  frame = push_frame("jit")
  try:
    with pytest.raises(
      nnx.TraceContextError, match=r"Cannot mutate a Param inside pynnx\.jit.*Pass the Module"
    ):
      v[...] = jnp.ones(())
    inner = nnx.Param(jnp.zeros(()))
    inner[...] = jnp.ones(())  # created in this frame: fine
  finally:
    pop_frame(frame)
  v[...] = jnp.ones(())  # back outside: fine
  assert v[...] == 1.0


def test_rng_errors():
  with pytest.raises(
    nnx.RngStreamNotFoundError,
    match=r"(?s)No RngStream named 'dropout'.*no 'default' stream.*nnx\.Rngs\(dropout=seed",
  ):
    _ = nnx.Rngs(params=0).dropout
