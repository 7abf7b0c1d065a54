"""Process-wide settings: graph mode and graph updates.

``set_graph_mode`` and ``set_graph_updates`` work three ways::

  nnx.set_graph_mode(True)            # bare call: from now on
  with nnx.set_graph_mode(True): ...  # for a block
  @nnx.set_graph_mode(True)           # for every call of a function
  def f(...): ...

and ``nnx.set_graph_mode.current_value()`` reads the setting.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .errors import ConfigError


class _Setting:
  def __init__(self, name: str, default: bool):
    self.name = name
    self.value = default


class _SettingChange:
  """What ``set_graph_mode(v)`` returns: already applied; a context or a decorator."""

  def __init__(self, setting: _Setting, value: bool):
    self._setting = setting
    self._value = value
    self._previous = setting.value
    setting.value = value

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._setting.value = self._previous
    return False

  def __call__(self, fn: Callable) -> Callable:
    # Used as a decorator: undo the eager change, apply it around each call instead.
    self._setting.value = self._previous
    setting, value = self._setting, self._value

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
      previous = setting.value
      setting.value = value
      try:
        return fn(*args, **kwargs)
      finally:
        setting.value = previous

    return wrapper


_GRAPH_MODE = _Setting("graph_mode", False)
_GRAPH_UPDATES = _Setting("graph_updates", True)


def _check_bool(name: str, value: Any) -> bool:
  if not isinstance(value, bool):
    raise ConfigError(f"pynnx.{name}(value) takes True or False, got {value!r}.")
  return value


def set_graph_mode(value: bool) -> _SettingChange:
  """Sets the default of ``graph=None`` for every transform and split/merge call.

  Example:
    >>> import pynnx as nnx
    >>> with nnx.set_graph_mode(True):
    ...   nnx.set_graph_mode.current_value()
    True
    >>> nnx.set_graph_mode.current_value()
    False
  """
  return _SettingChange(_GRAPH_MODE, _check_bool("set_graph_mode", value))


def set_graph_updates(value: bool) -> _SettingChange:
  """Sets the default of ``graph_updates=None`` (only used in graph mode)."""
  return _SettingChange(_GRAPH_UPDATES, _check_bool("set_graph_updates", value))


set_graph_mode.current_value = lambda: _GRAPH_MODE.value  # type: ignore[attr-defined]
set_graph_updates.current_value = lambda: _GRAPH_UPDATES.value  # type: ignore[attr-defined]


def resolve_graph(graph: bool | None) -> bool:
  return _GRAPH_MODE.value if graph is None else bool(graph)


def resolve_graph_updates(graph_updates: bool | None) -> bool:
  return _GRAPH_UPDATES.value if graph_updates is None else bool(graph_updates)
