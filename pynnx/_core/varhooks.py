"""Flax's (deprecated) Variable hooks, as far as pynnx supports them.

``VariableMetadata(on_create_value=..., on_add_axis=..., on_remove_axis=...)`` and Variable
subclasses defining ``create_value`` / ``on_create_value`` / ``on_add_axis`` /
``on_remove_axis`` behave as in Flax. Value hooks (``on_get_value`` / ``on_set_value``) would
put a Python call on every read and write of every cell, so they are rejected with the fix
(override ``get_value`` / ``set_value`` in a subclass).
"""

from __future__ import annotations

import warnings
from typing import Any

from .errors import UnsupportedOptionError

HOOK_KEYS = frozenset(
  {"on_get_value", "on_set_value", "on_create_value", "on_add_axis", "on_remove_axis"}
)


def unbox(boxed: Any, metadata: dict) -> tuple[Any, dict]:
  """Value and metadata of a ``VariableMetadata``; its hooks become metadata entries and
  explicit constructor metadata wins."""
  merged = dict(boxed.metadata)
  for key in HOOK_KEYS:
    hooks = getattr(boxed, key, ())
    if hooks:
      merged[key] = tuple(hooks)
  return boxed.raw_value, {**merged, **metadata}


def hooks_of(var: Any, key: str) -> tuple:
  """The hooks ``key`` of ``var``: its metadata entry, else a method of its class."""
  if key in var._metadata:
    hooks = var._metadata[key]
    return (hooks,) if callable(hooks) else tuple(hooks)
  method = getattr(var, key, None) if hasattr(type(var), key) else None
  return () if method is None else (lambda _var, *args: method(*args),)


def run_create_hooks(var: Any, value: Any, metadata: dict) -> Any:
  """Runs ``on_create_value`` hooks then ``var.create_value`` on the initial ``value``."""
  kind = type(var).__name__
  for key in ("on_get_value", "on_set_value"):
    if metadata.get(key) or hasattr(type(var), key):
      raise UnsupportedOptionError(
        f"{kind}: the {key} hook is not supported by pynnx (Flax deprecates Variable hooks). "
        f"Subclass {kind} and override `get_value` / `set_value` instead."
      )
  if any(metadata.get(k) for k in HOOK_KEYS):
    warnings.warn(
      "Variable hooks are deprecated (as in Flax). Create your own Variable type and override "
      "`create_value` instead.",
      stacklevel=4,
    )
  object.__setattr__(var, "_metadata", metadata)
  object.__setattr__(var, "_raw_value", value)
  for hook in hooks_of(var, "on_create_value"):
    value = hook(var, value)
  return var.create_value(value)


def run_axis_hooks(var: Any, key: str, axis_index: int, axis_name: Any) -> None:
  """Runs the ``on_add_axis`` / ``on_remove_axis`` hooks of ``var``."""
  for hook in hooks_of(var, key):
    hook(var, axis_index, axis_name)
