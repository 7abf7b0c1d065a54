"""Public split / merge / state / update / clone / pop / iter_graph / flatten / unflatten.

Each resolves ``graph=`` once (``None`` reads ``nnx.set_graph_mode``) and dispatches to the
tree-mode implementation (``_core/tree.py``) or the graph-mode one (``_graph/api.py``).
``merge`` and ``unflatten`` decide the mode from the GraphDef they are given.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ._core import tree
from ._core.config import resolve_graph
from ._core.errors import ArgumentTypeError, CloneArgumentError
from ._core.state import FlatState, State
from ._core.variables import Variable
from ._graph import api as graph_api


def split(node: Any, *filters: Any, graph: bool | None = None) -> tuple:
  """Splits ``node`` into a GraphDef and one State per filter.

  Example:
    >>> import pynnx as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> graphdef, params = nnx.split(model, nnx.Param)
    >>> sorted(params.keys())
    ['bias', 'kernel']
  """
  if resolve_graph(graph):
    return graph_api.split(node, *filters)
  return tree.split(node, *filters)


def merge(graphdef_or_graphstate: Any, /, *states: Any, copy: bool = False) -> Any:
  """Rebuilds a Module from a GraphDef and States, or from GraphStates (see ``unpack``).

  The mode is taken from the GraphDef. The Module holds the States' Variables themselves;
  ``copy=True`` gives it copies instead.

  Example:
    >>> import pynnx as nnx
    >>> graphdef, state = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> type(nnx.merge(graphdef, state)).__name__
    'Linear'
  """
  if not isinstance(graphdef_or_graphstate, (tree.GraphDef, tree.GraphState)):
    raise ArgumentTypeError(
      "pynnx.merge: the first argument must be a GraphDef (or a GraphState), got "
      f"{type(graphdef_or_graphstate).__name__} {graphdef_or_graphstate!r:.40}. Pass what "
      "nnx.split returned: `graphdef, state = nnx.split(model); nnx.merge(graphdef, state)`."
    )
  graphdef, all_states = tree.split_graph_states((graphdef_or_graphstate, *states))
  if isinstance(graphdef, tree.TreeGraphDef):
    return tree.merge(graphdef, *all_states, copy=copy)
  return graph_api.merge(graphdef, *all_states, copy=copy)


def unpack(node: Any, *filters: Any, graph: bool | None = None) -> Any:
  """Like ``split``, but each State comes bundled with the GraphDef as a ``GraphState``.

  Returns one GraphState for zero or one filter, else a tuple of them.

  Example:
    >>> import pynnx as nnx
    >>> model = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    >>> params, stats = nnx.unpack(model, nnx.Param, nnx.BatchStat)
    >>> type(nnx.merge(params, stats)).__name__
    'BatchNorm'
  """
  graphdef_, *states = split(node, *filters, graph=graph)
  if len(states) == 1:
    return tree.GraphState(graphdef_, states[0])
  return tuple(tree.GraphState(graphdef_, s) for s in states)


def state(node: Any, *filters: Any, graph: bool | None = None) -> Any:
  """The State of ``node`` (one per filter if several are given)."""
  if resolve_graph(graph):
    return graph_api.state(node, *filters)
  return tree.state(node, *filters)


def graphdef(node: Any, *, graph: bool | None = None) -> Any:
  """The GraphDef of ``node``."""
  if resolve_graph(graph):
    return graph_api.graphdef(node)
  return tree.graphdef(node)


def update(node: Any, state: Any, /, *states: Any, graph: bool | None = None) -> None:
  """Writes the values of ``states`` into ``node``'s Variables.

  Each of ``states`` is a State, a GraphState or a nested dict of arrays (a pure dict, as
  ``nnx.to_pure_dict`` makes); a partial one updates only the paths it has.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    >>> nnx.update(model, {'bias': jnp.ones(2)})
    >>> model.bias[...]
    Array([1., 1.], dtype=float32)
  """
  plain = [_update_state(node, s) for s in (state, *states)]
  if resolve_graph(graph):
    return graph_api.update(node, *plain)
  return tree.update(node, *plain)


def _update_state(node: Any, s: Any) -> Any:
  """One of ``update``'s states as a State or FlatState; a nested dict of values is accepted,
  as in Flax."""
  if isinstance(s, tree.GraphState):
    return s._state
  if isinstance(s, (State, FlatState)) or isinstance(node, Variable):
    return s
  if isinstance(s, Mapping):
    return State(s)
  raise ArgumentTypeError(
    f"pynnx.update: expected a State (or a nested dict of values) to write into the "
    f"{type(node).__name__}, got {type(s).__name__} {s!r:.40}. Pass e.g. "
    "`nnx.update(model, nnx.state(other_model))`."
  )


def clone(
  node: Any, variables: bool = True, *, arrays: bool = False, graph: bool | None = None
) -> Any:
  """A copy of ``node``'s structure.

  Args:
    node: the Module (or any graph of Modules / Variables) to copy.
    variables: give the copy new Variables (default); with False it shares ``node``'s.
    arrays: also copy the array buffers, so the copy can be donated (needs ``variables``).
    graph: graph mode (keeps sharing inside ``node``) or tree mode; default from
      ``nnx.set_graph_mode``.

  Example:
    >>> import pynnx as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> copy = nnx.clone(model)
    >>> copy.kernel is model.kernel, nnx.clone(model, variables=False).kernel is model.kernel
    (False, True)
  """
  if arrays and not variables:
    raise CloneArgumentError(
      "nnx.clone(..., variables=False, arrays=True): copied arrays need new Variables to "
      "hold them. Pass variables=True, or arrays=False to share everything."
    )
  if not variables:
    graphdef_, *states = split(node, graph=graph)
    return merge(graphdef_, *states)
  out = graph_api.clone(node) if resolve_graph(graph) else tree.clone(node)
  if arrays:
    for _, leaf in iter_graph(out, graph=graph):
      if isinstance(leaf, Variable):
        leaf.set_value(jax.tree.map(_copy_array, leaf.get_value()))
  return out


def _copy_array(x: Any) -> Any:
  return jnp.array(x, copy=True) if isinstance(x, jax.Array) else x


def pop(node: Any, *filters: Any, graph: bool | None = None) -> Any:
  """Removes the Variables matching ``filters`` from ``node`` and returns them."""
  if resolve_graph(graph):
    return graph_api.pop(node, *filters)
  return tree.pop(node, *filters)


def iter_graph(node: Any, *, graph: bool | None = None) -> Iterator[tuple[tuple, Any]]:
  """Yields ``(path, value)`` for every node and leaf of ``node``."""
  if resolve_graph(graph):
    return graph_api.iter_graph(node)
  return tree.iter_graph(node)


def flatten(node: Any, /, *, with_paths: bool = True, graph: bool | None = None) -> tuple:
  """``(graphdef, flat_state)`` of ``node``; ``with_paths=False`` gives a list of leaves."""
  graphdef_, flat = graph_api.flatten(node) if resolve_graph(graph) else tree.flatten(node)
  return (graphdef_, flat) if with_paths else (graphdef_, flat.leaves)


def unflatten(graphdef: Any, state: Any, /, *, copy_variables: bool = False) -> Any:
  """Inverse of ``flatten``: takes a FlatState, a State or a list of leaves (in order).

  ``copy_variables=True`` gives the result copies of the Variables instead of the ones in
  ``state``.
  """
  state = _as_flat(graphdef, state)
  if copy_variables:
    state = FlatState([(p, v.copy() if isinstance(v, Variable) else v) for p, v in state])
  if isinstance(graphdef, tree.TreeGraphDef):
    return tree.unflatten(graphdef, state)
  return graph_api.unflatten(graphdef, state)


def _as_flat(graphdef: Any, state: Any) -> Any:
  if isinstance(state, State):
    state = state.flat_state()
  elif isinstance(state, list) and not (state and isinstance(state[0], tuple)):
    paths = graphdef.paths if isinstance(graphdef, tree.TreeGraphDef) else graph_api.paths(graphdef)
    state = FlatState(list(zip(paths, state, strict=True)))
  return state
