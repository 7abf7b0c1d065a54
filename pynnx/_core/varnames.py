"""Collection names: Linen-style names (``'params'``) <-> Variable types (``Param``)."""

from __future__ import annotations

from typing import Any

from .errors import VariableNameError

_NAME_TO_TYPE: dict[str, type] = {}
_TYPE_TO_NAME: dict[type, str] = {}


def register_variable_name(name: str, typ: type | None = None, *, overwrite: bool = False):
  """Associates a collection name (e.g. ``'params'``) with a Variable type.

  Usable directly or as a class decorator (``@nnx.register_variable_name('stats')``).
  """
  if typ is None:
    return lambda t: register_variable_name(name, t, overwrite=overwrite)
  if not overwrite and name in _NAME_TO_TYPE and _NAME_TO_TYPE[name] is not typ:
    raise VariableNameError(
      f"The name {name!r} is already registered for {_NAME_TO_TYPE[name].__name__}; pass "
      "overwrite=True to replace it."
    )
  _NAME_TO_TYPE[name] = typ
  _TYPE_TO_NAME[typ] = name
  return typ


def variable_name_from_type(typ: type, *, allow_register: bool = False) -> str:
  """The collection name of a Variable type (``Param`` -> ``'params'``)."""
  if typ in _TYPE_TO_NAME:
    return _TYPE_TO_NAME[typ]
  if allow_register:
    name = typ.__name__
    register_variable_name(name, typ)
    return name
  raise VariableNameError(
    f"{typ.__name__} has no registered collection name; register one with "
    f"nnx.register_variable_name(name, {typ.__name__}) or pass allow_register=True."
  )


def registered_type(name: str) -> Any:
  """The type registered for ``name``, or None."""
  return _NAME_TO_TYPE.get(name)
