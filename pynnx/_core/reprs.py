"""Text layout shared by Variable, State and Module reprs."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def indent(text: str, spaces: int = 2) -> str:
  pad = " " * spaces
  return text.replace("\n", "\n" + pad)


def value_repr(value: Any) -> str:
  if isinstance(value, (jax.Array, np.ndarray)) and not isinstance(value, jax.core.Tracer):
    if value.size > 16:
      return f"Array(shape={value.shape}, dtype={value.dtype})"
  if isinstance(value, jax.ShapeDtypeStruct):
    return f"ShapeDtypeStruct(shape={value.shape}, dtype={value.dtype})"
  return repr(value)


def block(head: str, entries: list[str], tail: str) -> str:
  """``head`` + one indented entry per line + ``tail``; empty: ``head + tail``."""
  if not entries:
    return head + tail
  body = ",\n".join(entries)
  return f"{head}\n  {indent(body)}\n{tail}"


def variable_repr(var: Any) -> str:
  entries = [f"value={value_repr(var._raw_value)}"]
  entries += [f"{k}={v!r}" for k, v in var._metadata.items()]
  return block(f"{type(var).__name__}(", entries, ")")


def mapping_repr(name: str, items: list[tuple[Any, Any]]) -> str:
  return block(f"{name}({{", [f"{k!r}: {v!r}" for k, v in items], "})")
