"""``nnx.tabulate``: a table of a model's calls, inputs, outputs and Variables.

The model is run once under ``jax.eval_shape`` (no computation, no change to its Variables or
random streams) while every Module call is recorded. Each call becomes a row: the Module's
path, type, input and output shapes, then one column per Variable type with the Variables the
Module holds directly and the total size of everything below it. Rendering uses ``rich``.
"""

from __future__ import annotations

import dataclasses
import io
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import numpy as np

import pynnx as nnx

__all__ = ["CallInfo", "filter_rng_streams", "tabulate"]


@dataclasses.dataclass(frozen=True)
class CallInfo:
  """One recorded method call (one table row).

  Attributes:
    call_order: position of the call in the run.
    object_id: ``id`` of the called object in the traced copy.
    type: the object's type.
    path: the object's path in the model (``()`` for the model itself).
    inputs_repr: the inputs, formatted (rich markup).
    outputs: the outputs, arrays as ``jax.ShapeDtypeStruct``.
    flops: estimated FLOPs of the call (with ``compute_flops=True``).
    vjp_flops: estimated FLOPs of its backward pass (with ``compute_vjp_flops=True``).
  """

  call_order: int
  object_id: int
  type: type
  path: tuple
  inputs_repr: str
  outputs: Any
  flops: int | None
  vjp_flops: int | None


def filter_rng_streams(row: CallInfo) -> bool:
  """The default ``row_filter``: drops calls of random streams (``rngs.dropout()``)."""
  return not issubclass(row.type, nnx.RngStream)


# --- formatting ---------------------------------------------------------------------------


def _array(x: Any) -> str:
  return f"[dim]{x.dtype}[/dim][{','.join(str(d) for d in x.shape)}]"


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _fmt(x: Any, indent: str = "") -> list[str]:
  """YAML-like lines: arrays as ``dtype[shape]``, sequences as ``- item``, dicts ``key: v``."""
  if hasattr(x, "shape") and hasattr(x, "dtype"):
    return [_array(x)]
  if isinstance(x, Mapping):
    lines = []
    for k in sorted(x, key=str):
      if x[k] is None:  # an empty output, as in flax's table
        continue
      sub = _fmt(x[k])
      if isinstance(x[k], Mapping):  # a nested mapping starts on its own line
        lines.append(f"{k}:")
        lines += [f"  {line}" for line in sub]
      else:
        lines.append(f"{k}: {sub[0]}")
        lines += [f"  {line}" for line in sub[1:]]
    return lines
  if isinstance(x, (list, tuple)):
    lines = []
    for item in x:
      sub = _fmt(item)
      lines.append(f"- {sub[0]}")
      lines += [f"  {line}" for line in sub[1:]]
    return lines
  return [x if isinstance(x, str) else repr(x)]


def _args_repr(args: tuple, kwargs: dict) -> str:
  lines = _fmt(args[0]) if len(args) == 1 else (_fmt(list(args)) if args else [])
  for k, v in kwargs.items():
    sub = _fmt(v)
    lines.append(f"{k}: {sub[0]}")
    lines += [f"  {line}" for line in sub[1:]]
  return "\n".join(lines)


def _size(value: Any) -> tuple[int, int]:
  """(elements, bytes); a typed key counts as one element of its key data's bytes."""
  if _is_key(value):
    return int(np.prod(value.shape)), int(jax.random.key_data(value).nbytes)
  shape = np.shape(value)
  count = int(np.prod(shape))
  return count, count * np.dtype(value.dtype).itemsize


def _bytes(n: int) -> str:
  for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
    if n >= scale:
      return f"{n / scale:.1f} {unit}"
  return f"{n} B"


def _total(count: int, nbytes: int) -> str:
  return f"[bold]{count:,}[/bold] [bold dim]({_bytes(nbytes)})[/bold dim]"


def _column(var: nnx.Variable) -> str:
  return "RngState" if isinstance(var, nnx.RngState) else type(var).__name__


# --- recording ----------------------------------------------------------------------------

_LOCAL = threading.local()


def _abstract(tree: Any, numbers: bool = False) -> Any:
  """Arrays as ``ShapeDtypeStruct``; with ``numbers``, Python numbers too (as JAX sees them)."""

  def leaf(x: Any) -> Any:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
      return jax.ShapeDtypeStruct(np.shape(x), x.dtype)
    if numbers and isinstance(x, (bool, int, float, complex)):
      return jax.ShapeDtypeStruct((), jax.numpy.asarray(x).dtype)
    return x

  return jax.tree.map(leaf, tree)


def _recorder(name: str, original: Callable) -> Callable:
  """Wraps a method so that calls on the traced model's objects are recorded (once each)."""

  def recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
    state = getattr(_LOCAL, "state", None)
    key = (id(self), name)
    if state is None or key in state["active"] or id(self) not in state["paths"]:
      return original(self, *args, **kwargs)
    state["active"].add(key)
    try:
      slot = len(state["calls"])
      state["calls"].append(None)
      out = original(self, *args, **kwargs)
      state["calls"][slot] = (self, name, _abstract(args), _abstract(kwargs), _abstract(out, True))
      return out
    finally:
      state["active"].discard(key)

  recorded.__wrapped__ = original  # type: ignore[attr-defined]
  return recorded


def _patch(classes: set[type], names: dict[type, set[str]]) -> list[tuple[type, str, Any]]:
  undo = []
  for cls in classes:
    for name in names.get(cls, {"__call__"}):
      original = getattr(cls, name, None)
      if original is None or not callable(original):
        continue
      undo.append((cls, name, cls.__dict__.get(name, _MISSING)))
      setattr(cls, name, _recorder(name, original))
  return undo


_MISSING = object()


def _unpatch(undo: list[tuple[type, str, Any]]) -> None:
  for cls, name, previous in reversed(undo):
    if previous is _MISSING:
      delattr(cls, name)
    else:
      setattr(cls, name, previous)


def _modules(obj: Any) -> dict[int, tuple[tuple, Any]]:
  out: dict[int, tuple[tuple, Any]] = {}
  for path, node in nnx.iter_graph(obj, graph=True):
    if isinstance(node, (nnx.Module, nnx.RngStream)) or node is obj:
      out[id(node)] = (tuple(path), node)
  return out


def _record(obj: Any, method: str, args: tuple, kwargs: dict) -> list[tuple]:
  """Runs ``obj.method(*args, **kwargs)`` under ``jax.eval_shape``; returns the calls made."""
  classes = {type(node) for _, node in _modules(obj).values()}
  names = {type(obj): {"__call__", method}}
  rows: list[tuple] = []

  # Only arrays are traced; Python values (flags, scales, None) reach the call unchanged.
  treedef: Any  # jaxlib ships no stub for PyTreeDef
  leaves, treedef = jax.tree.flatten((args, kwargs))
  is_array = [hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves]
  arrays = [x for x, a in zip(leaves, is_array) if a]

  def run(obj: Any, arrays: list) -> Any:
    it = iter(arrays)
    args, kwargs = treedef.unflatten([next(it) if a else x for x, a in zip(leaves, is_array)])
    nodes = _modules(obj)
    _LOCAL.state = {"paths": {k: p for k, (p, _) in nodes.items()}, "calls": [], "active": set()}
    try:
      getattr(obj, method)(*args, **kwargs)
      seen = set()
      for self, name, a, k, out in _LOCAL.state["calls"]:
        key = (id(self), name, _args_repr(a, k))
        if self is not None and key not in seen:  # a repeated call is one row
          seen.add(key)
          rows.append((_LOCAL.state["paths"][id(self)], self, name, a, k, out))
    finally:
      _LOCAL.state = None
    return None

  undo = _patch(classes, names)
  try:
    jax.eval_shape(run, obj, arrays)
  finally:
    _unpatch(undo)
  return rows


def _flops(module: Any, name: str, args: Any, kwargs: Any, vjp: bool) -> int:
  """FLOPs of one recorded call (XLA's cost analysis; ``0`` where XLA reports none).

  With ``vjp=True``: the forward pass plus the pullback of its outputs.
  """

  def call(module: Any, args: Any, kwargs: Any) -> Any:
    return getattr(module, name)(*args, **kwargs)

  def backward(module: Any, args: Any, kwargs: Any) -> Any:
    out, pullback = jax.vjp(call, module, args, kwargs)
    return pullback(out)

  lowered = jax.jit(backward if vjp else call).lower(module, args, kwargs)
  cost = lowered.cost_analysis() or lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return int(cost["flops"]) if cost and "flops" in cost else 0


# --- the table ----------------------------------------------------------------------------


def tabulate(
  obj: Any,
  *input_args: Any,
  depth: int | None = None,
  method: str = "__call__",
  row_filter: Callable[[CallInfo], bool] = filter_rng_streams,
  table_kwargs: Mapping[str, Any] = MappingProxyType({}),
  column_kwargs: Mapping[str, Any] = MappingProxyType({}),
  console_kwargs: Mapping[str, Any] = MappingProxyType({}),
  compute_flops: bool = False,
  compute_vjp_flops: bool = False,
  **input_kwargs: Any,
) -> str:
  """A table of the calls ``obj.method(*input_args, **input_kwargs)`` makes, as a string.

  Args:
    obj: the model (a Module, or any object holding Modules).
    *input_args: positional arguments of the call (arrays or ``jax.ShapeDtypeStruct``).
    depth: show calls at most this deep (``None``: all).
    method: the method of ``obj`` to run.
    row_filter: keeps the :class:`CallInfo` rows it returns True for.
    table_kwargs: extra arguments of ``rich.table.Table``.
    column_kwargs: extra arguments of ``rich.table.Table.add_column``.
    console_kwargs: extra arguments of ``rich.console.Console``.
    compute_flops: add a ``flops`` column (compiles each call).
    compute_vjp_flops: add a ``vjp_flops`` column (compiles each call's backward pass).
    **input_kwargs: keyword arguments of the call.

  Returns:
    The rendered table.

  Example:
    >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.relu)
    >>> plain = {"force_terminal": False, "width": 120}  # no colour codes
    >>> table = nnx.tabulate(model, jnp.ones((4, 2)), console_kwargs=plain)
    >>> "Linear" in table and "Total Parameters: 9 (36 B)" in table
    True
  """
  try:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
  except ImportError as e:  # pragma: no cover - rich ships with the test extra (via flax)
    raise ImportError("nnx.tabulate renders with `rich`: pip install rich") from e
  rows = _record(obj, method, input_args, input_kwargs)
  nodes = {p: node for p, node in _modules(obj).values()}
  variables = [(tuple(p), v) for p, v in nnx.iter_graph(obj, graph=True) if _is_var(v)]
  columns = sorted({_column(v) for _, v in variables})
  infos = []
  paths: dict[int, tuple] = {}
  for order, (path, self, name, args, kwargs, out) in enumerate(rows):
    module = nodes.get(path, obj)
    flops = _flops(module, name, args, kwargs, False) if compute_flops else None
    vjp_flops = _flops(module, name, args, kwargs, True) if compute_vjp_flops else None
    shown = path if name == "__call__" else (*path, name)
    info = CallInfo(
      order, id(self), type(self), shown, _args_repr(args, kwargs), out, flops, vjp_flops
    )
    paths[id(self)] = path
    if (depth is None or len(path) <= depth) and row_filter(info):
      infos.append(info)

  table = Table(
    title=f"{type(obj).__name__} Summary",
    show_header=True,
    show_lines=True,
    show_footer=True,
    **table_kwargs,
  )
  heads = ["path", "type", "inputs", "outputs"]
  heads += ["flops"] * compute_flops + ["vjp_flops"] * compute_vjp_flops + columns
  totals = {c: [0, 0] for c in columns}
  for _, v in variables:
    n, b = _size(v.get_value())
    totals[_column(v)][0] += n
    totals[_column(v)][1] += b
  # "Total" sits in the last column before the Variable columns
  footer: dict[str, Any] = {heads[len(heads) - len(columns) - 1]: Text("Total", justify="right")}
  footer.update({c: _total(*totals[c]) for c in columns})
  for head in heads:
    table.add_column(head, footer=footer.get(head, ""), **column_kwargs)
  for info in infos:
    row = ["/".join(str(p) for p in info.path), info.type.__name__]
    row += [info.inputs_repr, "\n".join(_fmt(info.outputs))]
    if compute_flops:
      row.append(str(info.flops))
    if compute_vjp_flops:
      row.append(str(info.vjp_flops))
    for column in columns:
      row.append(_cell(paths[info.object_id], column, variables))
    table.add_row(*row)
  count = sum(t[0] for t in totals.values())
  nbytes = sum(t[1] for t in totals.values())
  table.caption = f"\nTotal Parameters: {_total(count, nbytes)}"
  table.caption_style = "bold"
  options = {"force_terminal": True, "force_jupyter": False, **console_kwargs}
  buffer = io.StringIO()
  Console(file=buffer, **options).print(table)
  return buffer.getvalue()


_REQUIRED_METADATA = frozenset({"hijax", "ref", "eager_sharding"})


def _is_var(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def _cell(path: tuple, column: str, variables: list[tuple[tuple, nnx.Variable]]) -> str:
  """The Variables of ``column`` held directly at ``path``, then the total below ``path``."""
  n = len(path)
  below = [(p, v) for p, v in variables if p[:n] == path and _column(v) == column]
  if not below:
    return ""
  direct: dict[str, Any] = {}
  for p, v in below:
    if len(p) == n + 1:
      value = _array(v.get_value())
      # Flax leaves out the keys every Variable reports (its `Variable.required_metadata`).
      metadata = {k: m for k, m in v.get_metadata().items() if k not in _REQUIRED_METADATA}
      direct[str(p[n])] = {"value": value, **metadata} if metadata else value
  count = sum(_size(v.get_value())[0] for _, v in below)
  nbytes = sum(_size(v.get_value())[1] for _, v in below)
  total = _total(count, nbytes)
  return "\n".join(_fmt(direct)) + "\n\n" + total if direct else total
