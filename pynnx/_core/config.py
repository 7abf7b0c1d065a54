"""Settings: graph mode and graph updates.

``set_graph_mode`` and ``set_graph_updates`` work three ways::

  nnx.set_graph_mode(True)            # bare call: the process-wide default from now on
  with nnx.set_graph_mode(True): ...  # for a block, in this thread / async task only
  @nnx.set_graph_mode(True)           # for every call of a function, in the calling context
  def f(...): ...

and ``nnx.set_graph_mode.current_value()`` reads the setting. The block and decorator forms
live in a ``contextvars.ContextVar``, so a ``with`` block in one thread never changes the
mode another thread sees; the bare call changes the default every thread falls back to.
"""

from __future__ import annotations

import contextvars
import dis
import functools
import sys
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

UNSET: Any = object()


class _Setting:
  def __init__(self, name: str, default: bool):
    self.name = name
    self.default = default
    self.local: contextvars.ContextVar = contextvars.ContextVar(f"pynnx_{name}", default=UNSET)

  def get(self) -> bool:
    value = self.local.get()
    return self.default if value is UNSET else value


_WITH_OPS = frozenset({"BEFORE_WITH", "BEFORE_ASYNC_WITH", "SETUP_WITH", "SETUP_ASYNC_WITH"})
_WITH_SITES: dict[tuple[Any, int], bool] = {}


def _opens_with_block(frame: Any) -> bool:
  """Whether the call being made in ``frame`` is the context expression of a ``with``.

  Decides whether ``set_graph_mode(v)`` changes the process default (a bare call) or only
  the block's context, so a ``with`` block never leaks the setting into other threads, not
  even for the instant between the call and ``__enter__``.
  """
  key = (frame.f_code, frame.f_lasti)
  hit = _WITH_SITES.get(key)
  if hit is None:
    after = [i.opname for i in dis.get_instructions(frame.f_code) if i.offset > frame.f_lasti][:2]
    hit = bool(after) and (
      after[0] in _WITH_OPS or (after[0] == "COPY" and after[1:] == ["LOAD_SPECIAL"])
    )
    if len(_WITH_SITES) > 512:
      _WITH_SITES.clear()
    _WITH_SITES[key] = hit
  return hit


class _SettingChange:
  """What ``set_graph_mode(v)`` returns: a bare call already applied; a context; a decorator."""

  def __init__(self, setting: _Setting, value: bool, in_with: bool):
    self._setting = setting
    self._value = value
    self._tokens: list = []
    self._previous = setting.default
    self._eager = not in_with
    if self._eager:
      setting.default = value

  def _undo_eager(self) -> None:
    # The object is used as a context manager or decorator after all (e.g. built on one
    # line, entered on another): the change is scoped, not process-wide.
    if self._eager:
      self._setting.default = self._previous
      self._eager = False

  def __enter__(self):
    self._undo_eager()
    self._tokens.append(self._setting.local.set(self._value))
    return self

  def __exit__(self, *exc):
    self._setting.local.reset(self._tokens.pop())
    return False

  def __call__(self, fn: Callable) -> Callable:
    self._undo_eager()
    local, value = self._setting.local, self._value

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
      token = local.set(value)
      try:
        return fn(*args, **kwargs)
      finally:
        local.reset(token)

    return wrapper


GRAPH_MODE = _Setting("graph_mode", False)
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
  value = _check_bool("set_graph_mode", value)
  return _SettingChange(GRAPH_MODE, value, _opens_with_block(sys._getframe(1)))


def set_graph_updates(value: bool) -> _SettingChange:
  """Sets the default of ``graph_updates=None`` (only used in graph mode)."""
  value = _check_bool("set_graph_updates", value)
  return _SettingChange(_GRAPH_UPDATES, value, _opens_with_block(sys._getframe(1)))


set_graph_mode.current_value = GRAPH_MODE.get  # type: ignore[attr-defined]
set_graph_updates.current_value = _GRAPH_UPDATES.get  # type: ignore[attr-defined]


def resolve_graph(graph: bool | None) -> bool:
  return GRAPH_MODE.get() if graph is None else bool(graph)


def resolve_graph_updates(graph_updates: bool | None) -> bool:
  return _GRAPH_UPDATES.get() if graph_updates is None else bool(graph_updates)
