"""``StateAxes`` in ``out_axes``: an output Module whose substates leave on different axes.

``nnx.vmap(..., out_axes=nnx.StateAxes({nnx.Param: 0, nnx.BatchStat: None}))`` on a function
that builds a Module stacks its Params along axis 0 and keeps one shared BatchStat. The graph
adapter turns a returned Module into a ``GraphNode`` (GraphDef + States). Inside the mapped
function, :func:`split_outputs` re-partitions each such node by the StateAxes filters and
hands JAX a plain tuple of States with a tuple of axes (the GraphDef, static, goes through a
side table); outside, :func:`join_outputs` puts the GraphNodes back for the graph exit.
"""

from __future__ import annotations

from typing import Any

from .._core import filters as filterlib
from .._core.errors import AxisSpecError
from .._core.paths import format_path
from .._core.state import State
from .._graph.api import GraphNode
from .graph_adapter import StateAxes, uses_graph_specs

__all__ = ["uses_state_out_axes", "split_outputs", "join_outputs"]


uses_state_out_axes = uses_graph_specs  # whether out_axes holds a StateAxes anywhere


def _partition(api: str, node: GraphNode, spec: StateAxes, where: str) -> tuple:
  entries: list[Any] = []
  for s in node.states:
    if not isinstance(s, State):
      raise AxisSpecError(
        f"{api}: out_axes gives a StateAxes at {where}, but the output there is a Variable; "
        f"give it an int or None."
      )
    entries.extend(s.flat_state())
  preds = [filterlib.to_predicate(f) for f in spec.filters]
  buckets: list[list] = [[] for _ in preds]
  for path, var in entries:
    for k, pred in enumerate(preds):
      if pred(path, var):
        buckets[k].append((path, var))
        break
    else:
      raise AxisSpecError(
        f"{api}: out_axes={spec!r} at {where} matches no filter for "
        f"{format_path(tuple(path), where)} ({type(var).__name__}). Add a filter for it, "
        f"or a catch-all `...: None`."
      )
  return tuple(State.from_flat_path(b) for b in buckets)


def split_outputs(api: str, spec: Any, out: Any, side: dict, path: tuple = ()) -> tuple:
  """Inside: ``(out', axes')`` with every GraphNode at a StateAxes replaced by its States."""
  where = format_path(path, "output")
  if isinstance(spec, StateAxes):
    if not isinstance(out, GraphNode):
      raise AxisSpecError(
        f"{api}: out_axes gives a StateAxes at {where}, but the output there is a "
        f"{type(out).__name__}, not a Module; give it an int or None."
      )
    side[path] = out.graphdef
    return _partition(api, out, spec, where), tuple(spec.axes)
  if isinstance(spec, (tuple, list)) and isinstance(out, (tuple, list)) and len(spec) == len(out):
    parts = [split_outputs(api, s, o, side, (*path, i)) for i, (s, o) in enumerate(zip(spec, out))]
    return type(out)(p[0] for p in parts), type(out)(p[1] for p in parts)
  if isinstance(spec, dict) and isinstance(out, dict) and set(spec) == set(out):
    by_key = {k: split_outputs(api, spec[k], out[k], side, (*path, k)) for k in out}
    return {k: p[0] for k, p in by_key.items()}, {k: p[1] for k, p in by_key.items()}
  if uses_graph_specs(spec):
    raise AxisSpecError(
      f"{api}: out_axes={spec!r} does not fit the output at {where} "
      f"({type(out).__name__}); a StateAxes must sit where the output is a Module."
    )
  return out, spec


def join_outputs(spec: Any, out: Any, side: dict, path: tuple = ()) -> Any:
  """Outside: the inverse of :func:`split_outputs` (States back into GraphNodes)."""
  if isinstance(spec, StateAxes):
    return GraphNode(side[path], tuple(out))
  if isinstance(spec, (tuple, list)) and isinstance(out, (tuple, list)):
    return type(out)(
      join_outputs(s, o, side, (*path, i)) for i, (s, o) in enumerate(zip(spec, out))
    )
  if isinstance(spec, dict) and isinstance(out, dict):
    return {k: join_outputs(spec[k], out[k], side, (*path, k)) for k in out}
  return out


def jax_out_axes(spec: Any) -> Any:
  """``out_axes`` as JAX receives it after :func:`split_outputs`: each StateAxes becomes the
  tuple of its axes (one per State)."""
  if isinstance(spec, StateAxes):
    return tuple(spec.axes)
  if isinstance(spec, (tuple, list)):
    return type(spec)(jax_out_axes(s) for s in spec)
  if isinstance(spec, dict):
    return {k: jax_out_axes(v) for k, v in spec.items()}
  return spec
