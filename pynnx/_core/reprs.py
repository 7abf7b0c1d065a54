"""Text layout shared by Variable, State and Module reprs (laid out as Flax NNX lays them out,
so doctest outputs written against Flax match)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

# True while a Module repr is being written: arrays of more than one element then print as
# ``Array(shape=..., dtype=...)``; a standalone Variable or State prints their values in full.
_IN_MODULE: contextvars.ContextVar[bool] = contextvars.ContextVar("pynnx_repr_in_module")


@contextlib.contextmanager
def module_context() -> Iterator[None]:
  token = _IN_MODULE.set(True)
  try:
    yield
  finally:
    _IN_MODULE.reset(token)


def indent(text: str, spaces: int = 2) -> str:
  pad = " " * spaces
  return text.replace("\n", "\n" + pad)


def size_bytes(value: Any) -> tuple[int, int]:
  """``(elements, bytes)`` of every leaf of ``value`` that has a shape and a dtype."""
  size = nbytes = 0
  for leaf in jax.tree.leaves(value):
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      n = int(np.prod(leaf.shape))
      dtype = np.dtype(leaf.dtype) if isinstance(leaf.dtype, str) else leaf.dtype
      size, nbytes = size + n, nbytes + n * dtype.itemsize
  return size, nbytes


def format_size(size: int, nbytes: int) -> str:
  """``'6 (24 B)'``, ``'1,000 (4.0 KB)'``: element count and memory, as Flax's reprs."""
  for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
    if nbytes > scale:
      return f"{size:,} ({nbytes / scale:,.1f} {unit})"
  return f"{size:,} ({nbytes:,} B)"


def value_repr(value: Any) -> str:
  if (
    _IN_MODULE.get(False)
    and isinstance(value, (jax.Array, np.ndarray))
    and not isinstance(value, jax.core.Tracer)
    and value.size > 1
  ):
    return f"Array(shape={value.shape}, dtype={value.dtype!r})"
  return repr(value)


def block(head: str, entries: list[str], tail: str) -> str:
  """``head`` + one indented entry per line + ``tail``; empty: ``head + tail``."""
  if not entries:
    return head + tail
  body = ",\n".join(entries)
  return f"{head}\n  {indent(body)}\n{tail}"


def variable_repr(var: Any) -> str:
  size, nbytes = size_bytes(var._raw_value)
  comment = f" # {format_size(size, nbytes)}" if size else ""
  entries = [f"value={value_repr(var._raw_value)}"]
  entries += [f"{k}={v!r}" for k, v in var._metadata.items()]
  return block(f"{type(var).__name__}({comment}", entries, ")")


def mapping_repr(name: str, items: list[tuple[Any, Any]]) -> str:
  return block(f"{name}({{", [f"{k!r}: {v!r}" for k, v in items], "})")


def nested_mapping_repr(name: str, items: list[tuple[Any, Any]], is_nested: Any) -> str:
  """``name({...})`` whose nested mappings (``is_nested(v)``) print as plain ``{...}``, as
  Flax prints a nested State."""

  def inner(items: list[tuple[Any, Any]], head: str, tail: str) -> str:
    entries = [
      f"{k!r}: " + (inner(list(v.items()), "{", "}") if is_nested(v) else repr(v)) for k, v in items
    ]
    return block(head, entries, tail)

  return inner(items, f"{name}({{", "})")
