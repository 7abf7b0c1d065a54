"""set_graph_mode / set_graph_updates: bare call, context manager, decorator, current_value."""

import pytest

import pynnx as nnx
from pynnx._core.config import resolve_graph, resolve_graph_updates

SETTINGS = [
  (nnx.set_graph_mode, False, resolve_graph),
  (nnx.set_graph_updates, True, resolve_graph_updates),
]


@pytest.fixture(autouse=True)
def restore_defaults():
  yield
  nnx.set_graph_mode(False)
  nnx.set_graph_updates(True)


@pytest.mark.parametrize("setting,default,resolve", SETTINGS)
def test_defaults(setting, default, resolve):
  assert setting.current_value() is default
  assert resolve(None) is default
  assert resolve(not default) is (not default)


@pytest.mark.parametrize("setting,default,resolve", SETTINGS)
def test_bare_call_persists(setting, default, resolve):
  setting(not default)
  assert setting.current_value() is (not default)
  assert resolve(None) is (not default)
  assert resolve(default) is default  # an explicit argument wins
  setting(default)
  assert setting.current_value() is default


@pytest.mark.parametrize("setting,default,resolve", SETTINGS)
def test_context_manager_restores(setting, default, resolve):
  with setting(not default):
    assert setting.current_value() is (not default)
    with setting(default):
      assert setting.current_value() is default
    assert setting.current_value() is (not default)
  assert setting.current_value() is default


@pytest.mark.parametrize("setting,default,resolve", SETTINGS)
def test_context_manager_restores_on_error(setting, default, resolve):
  with pytest.raises(RuntimeError, match="inside"):
    with setting(not default):
      raise RuntimeError("inside")
  assert setting.current_value() is default


@pytest.mark.parametrize("setting,default,resolve", SETTINGS)
def test_decorator(setting, default, resolve):
  @setting(not default)
  def read(x):
    return setting.current_value(), x

  assert setting.current_value() is default  # decorating does not change the setting
  assert read(3) == (not default, 3)
  assert setting.current_value() is default
  assert read.__name__ == "read"

  @setting(not default)
  def fail():
    raise KeyError("x")

  with pytest.raises(KeyError):
    fail()
  assert setting.current_value() is default


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
@pytest.mark.parametrize("setting", [nnx.set_graph_mode, nnx.set_graph_updates])
def test_non_bool_raises(setting):
  name = setting.__name__
  with pytest.raises(nnx.ConfigError, match=rf"pynnx\.{name}\(value\) takes True or False, got 1"):
    setting(1)
  with pytest.raises(TypeError, match="takes True or False, got 'yes'"):
    setting("yes")
  assert setting.current_value() is (name == "set_graph_updates")
