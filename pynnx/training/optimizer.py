"""``nnx.Optimizer``: an optax optimizer whose state lives in Variables.

The Optimizer is a frozen :class:`~pynnx.Pytree` holding a step counter (:class:`OptState`)
and the optax state, with every array leaf wrapped in a Variable: per-parameter leaves
(Adam's ``mu``/``nu``) are :class:`OptVariable` s carrying the parameter's metadata (e.g.
sharding names), the rest (counts, hyperparameters) are :class:`OptArray` s. Because it is a
pytree of Variables, an Optimizer passed to ``nnx.jit`` has its state written back like a
model's, and it can be donated.

The Optimizer does **not** hold the model: ``update(model, grads)`` takes it each time. In
tree mode a Param reachable from both the model and the Optimizer would be a shared
reference. :class:`ModelAndOptimizer` is the variant that keeps the model (it owns it, so
nothing is shared).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from .. import _functional
from .._core import filters as filterlib
from .._core import tree as treelib
from .._core.config import resolve_graph
from .._core.errors import ArgumentTypeError, StateMismatchError
from .._core.module import module_repr
from .._core.paths import format_path
from .._core.pytree import Pytree, data
from .._core.state import State
from .._core.variables import OptArray, OptState, OptVariable, Param, Variable, is_variable

Path = tuple[Hashable, ...]

__all__ = ["Optimizer", "ModelAndOptimizer"]


def _model_variables(model: Any, graph: bool | None, api: str) -> list[tuple[Path, Any]]:
  """``[(path, leaf)]`` of the model; tree mode rejects shared Variables."""
  if resolve_graph(graph):
    return list(_functional.state(model, graph=True).flat_state())
  flat, _ = treelib.flatten_with_paths(model)
  treelib.check_no_sharing(flat, api)
  return flat


def _select(flat: list[tuple[Path, Any]], wrt: Any) -> list[tuple[Path, Variable]]:
  pred = filterlib.to_predicate(wrt)
  return [(p, v) for p, v in flat if isinstance(v, Variable) and pred(p, v)]


def _grad_leaves(grads: Any) -> dict[Path, Any]:
  """``{path: leaf}`` of a gradient given as a State, a Module or any pytree."""
  if isinstance(grads, State):
    return dict(grads.flat_state())
  flat, _ = treelib.flatten_with_paths(grads)
  return dict(flat)


def _wrap_opt_state(opt_state: Any, params: list[tuple[Path, Variable]]) -> Any:
  """optax state (raw arrays) -> the same tree with Variable leaves."""
  paths = tuple(p for p, _ in params)
  metadata = {p: v.get_metadata() for p, v in params}

  def wrap(x: Any) -> Any:
    if isinstance(x, State):
      flat = x.flat_state()
      if set(flat.paths) == set(paths):
        # A parameter-shaped subtree (e.g. Adam's moments): keep each Param's metadata.
        return State.from_flat_path([(p, _opt_variable(leaf, metadata[p])) for p, leaf in flat])
      return jax.tree.map(OptArray, x)
    return OptArray(x)

  return jax.tree.map(wrap, opt_state, is_leaf=lambda x: isinstance(x, State))


def _opt_variable(leaf: Any, metadata: dict[str, Any]) -> Any:
  """Wraps one array leaf; an empty pytree placeholder (optax's ``MaskedNode``) stays as is."""
  treedef: Any = jax.tree.structure(leaf)  # jaxlib ships no stub for PyTreeDef
  if treedef.num_leaves == 1 and treedef.num_nodes == 1:
    return OptVariable(leaf, **metadata)
  return leaf


def _unwrap(tree: Any) -> Any:
  return jax.tree.map(lambda v: v.get_value(), tree, is_leaf=is_variable)


class Optimizer(Pytree):
  """An optax optimizer for the Variables of a model selected by ``wrt``.

  Args:
    model: the model whose Variables will be optimized (it is not stored).
    tx: an optax ``GradientTransformation``.
    wrt: a filter selecting the Variables to optimize, usually ``nnx.Param`` (or a subclass
      such as ``nnx.LoRAParam``, or any filter: ``nnx.PathContains('head')``, ...).
    graph: ``True`` to read the model in graph mode (shared Variables are optimized once);
      ``None`` reads ``nnx.set_graph_mode``.

  Attributes:
    step: an :class:`OptState` counting the updates made.
    tx: the optax transformation.
    opt_state: the optax state, its array leaves wrapped in :class:`OptArray` /
      :class:`OptVariable`.
    wrt: the filter.

  Example:
    >>> import optax
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    >>> loss_fn = lambda m: jnp.mean(m(jnp.ones((4, 2))) ** 2)
    >>> before = loss_fn(model)
    >>> _ = optimizer.update(model, nnx.grad(loss_fn)(model))
    >>> bool(loss_fn(model) < before), int(optimizer.step[...])
    (True, 1)
  """

  def __init__(
    self, model: Any, tx: optax.GradientTransformation, *, wrt: Any, graph: bool | None = None
  ):
    api = f"pynnx.{type(self).__name__}"
    filterlib.to_predicate(wrt)  # rejects a malformed filter here, not at the first update
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
      raise ArgumentTypeError(
        f"{api}: tx must be an optax.GradientTransformation, got {type(tx).__name__} "
        f"{tx!r:.40}. Pass e.g. `{type(self).__name__}(model, optax.adam(1e-3), wrt=nnx.Param)`."
      )
    if model is None:
      raise ArgumentTypeError(
        f"{api}: model is None; pass the Module to optimize: "
        f"`{type(self).__name__}(model, tx, wrt=nnx.Param)`."
      )
    params = _select(_model_variables(model, graph, api), wrt)
    self.step = OptState(jnp.array(0, dtype=jnp.uint32))
    self.tx = tx
    self.wrt = tuple(wrt) if isinstance(wrt, list) else wrt  # static: must be hashable
    self.graph = graph
    self._param_paths = tuple(p for p, _ in params)
    pure = State.from_flat_path([(p, v.get_value()) for p, v in params])
    self.opt_state = data(_wrap_opt_state(tx.init(pure), params))

  def update(self, model: Any, grads: Any, /, **kwargs: Any) -> Any:
    """Applies one optax step to ``model`` with ``grads``; returns the updates.

    Args:
      model: the model given at construction (or one with the same structure).
      grads: gradients from ``nnx.grad``: a Module shaped like ``model`` (tree mode; entries
        outside ``wrt`` are ignored) or a ``State`` (graph mode).
      **kwargs: passed to ``tx.update`` (for ``GradientTransformationExtraArgs`` such as
        ``optax.scale_by_backtracking_linesearch``).

    Returns:
      The optax updates, a ``State`` of arrays keyed like the optimized Variables.
    """
    api = f"pynnx.{type(self).__name__}.update"
    params = _select(_model_variables(model, self.graph, api), self.wrt)
    paths = tuple(p for p, _ in params)
    if paths != self._param_paths:
      _raise_structure_changed(api, self._param_paths, paths)
    grad_leaves = _grad_leaves(grads)
    grad_values = []
    for path, var in params:
      grad_values.append(_grad_value(api, grad_leaves, path, var))
    param_state = State.from_flat_path([(p, v.get_value()) for p, v in params])
    grad_state = State.from_flat_path(list(zip(paths, grad_values, strict=True)))
    opt_def: jax.tree_util.PyTreeDef  # jaxlib ships no stub for it: these read as Any
    new_def: jax.tree_util.PyTreeDef
    opt_vars, opt_def = jax.tree.flatten(self.opt_state, is_leaf=is_variable)
    opt_state = opt_def.unflatten([v.get_value() for v in opt_vars])
    updates, new_opt_state = self.tx.update(grad_state, opt_state, param_state, **kwargs)
    new_params = optax.apply_updates(param_state, updates)
    new_leaves, new_def = jax.tree.flatten(new_opt_state)
    if new_def != jax.tree.structure(opt_state):
      raise StateMismatchError(
        f"{api}: tx.update returned an optimizer state of structure {new_def}, but tx.init "
        f"gave {jax.tree.structure(opt_state)}. The optax transformation must keep its "
        "state's structure."
      )
    for var, value in zip(opt_vars, new_leaves, strict=True):
      var.set_value(value)
    new_values = dict(new_params.flat_state())
    for path, var in params:
      var.set_value(new_values[path])
    self.step[...] = self.step[...] + 1
    return updates

  def __repr__(self) -> str:
    return module_repr(self)


def _grad_value(api: str, leaves: dict[Path, Any], path: Path, var: Variable) -> Any:
  where = format_path(path, "grads")
  if path not in leaves:
    raise StateMismatchError(
      f"{api}: grads has no entry at {where}, but the Optimizer updates "
      f"{format_path(path)} ({type(var).__name__}). Pass the gradients of the same model, "
      "e.g. `grads = nnx.grad(loss_fn)(model)`, and make sure they cover every Variable "
      "selected by `wrt`."
    )
  leaf = leaves[path]
  value = leaf.get_value() if isinstance(leaf, Variable) else leaf
  if value is None:
    raise StateMismatchError(
      f"{api}: grads holds no gradient (None) at {where}, a {type(var).__name__} selected "
      f"by wrt. nnx.grad only differentiates inexact Params; narrow `wrt` to those "
      "(e.g. wrt=nnx.Param)."
    )
  shape, expected = jnp.shape(value), jnp.shape(var.get_value())
  if shape != expected:
    raise StateMismatchError(
      f"{api}: the gradient at {where} has shape {shape} but {format_path(path)} has "
      f"shape {expected}. Pass the gradients of the model being updated."
    )
  return value


def _raise_structure_changed(api: str, before: tuple, now: tuple) -> None:
  gone = [p for p in before if p not in set(now)]
  new = [p for p in now if p not in set(before)]
  parts = []
  if gone:
    parts.append("no longer in the model: " + ", ".join(format_path(p) for p in gone[:8]))
  if new:
    parts.append("new in the model: " + ", ".join(format_path(p) for p in new[:8]))
  if not parts:
    parts.append("the same Variables in a different order")
  raise StateMismatchError(
    f"{api}: the Variables selected by wrt differ from those the Optimizer was created for ("
    + "; ".join(parts)
    + "). Pass the model given to the constructor, or build a new "
    "Optimizer for the changed model."
  )


class ModelAndOptimizer(Optimizer):
  """An :class:`Optimizer` that also holds its model: ``update(grads)`` needs no model.

  ``optimizer.model`` is the model; pass the ModelAndOptimizer (not the model besides it)
  to transforms such as ``nnx.jit``, since in tree mode a model reachable twice is a shared
  reference.

  Example:
    >>> import optax
    >>> state = nnx.ModelAndOptimizer(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), optax.sgd(0.1))
    >>> grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(state.model)
    >>> _ = state.update(grads); int(state.step[...])
    1
  """

  def __init__(self, model: Any, tx: optax.GradientTransformation, *, wrt: Any = Param):
    super().__init__(model, tx, wrt=wrt)
    self.model = model

  def update(self, grads: Any, /, **kwargs: Any) -> Any:  # type: ignore[override]
    """Applies one optax step to ``self.model`` with ``grads``; returns the updates."""
    return super().update(self.model, grads, **kwargs)
