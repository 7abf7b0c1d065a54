"""``nnx.EMA``: an exponential moving average of a model's Variables.

The average lives in its own Variables (copies made at construction), so an ``EMA`` passed to
``nnx.jit`` next to the model and the Optimizer is written back like them, with no shared
reference. :meth:`EMA.apply_to` builds a model whose tracked Variables *are* the averages.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp

import pynnx as nnx

from .._core.paths import format_path

A = TypeVar("A")

__all__ = ["EMA"]


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def _copy_variables(state: Any) -> Any:
  """The same State with each Variable replaced by a fresh one holding a copy of its value."""

  def copy(path: Any, leaf: Any) -> Any:
    if not isinstance(leaf, nnx.Variable):
      where = format_path(tuple(_key(k) for k in path), "params")
      raise nnx.NotAVariableError(
        f"pynnx.EMA: the value at {where} is a {type(leaf).__name__}, not a Variable; EMA "
        "averages Variables only. Pass a Module, or select Variables with the `only` filter "
        "(e.g. only=nnx.Param)."
      )
    return type(leaf)(jnp.copy(leaf.get_value()), **leaf.get_metadata())

  return jax.tree_util.tree_map_with_path(copy, state, is_leaf=_is_variable)


def _key(k: Any) -> Any:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return k


class EMA(nnx.Pytree):
  """Keeps ``ema = decay * ema + (1 - decay) * value`` for the Variables of ``params``.

  Args:
    params: a Module (or any object holding Variables) to average.
    decay: the weight of the running average in each update, usually close to 1.
    only: a filter selecting the Variables to average (default: all of them).
    graph: ``True`` to read ``params`` in graph mode (shared Variables averaged once);
      ``None`` reads ``nnx.set_graph_mode``.

  Attributes:
    params: a State of Variables holding the averages.
    decay: the decay.
    filter: the ``only`` filter.
    graph: the mode.

  Example:
    >>> import optax
    >>> model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    >>> ema = nnx.EMA(model, decay=0.5, only=nnx.Param)
    >>> @nnx.jit
    ... def train_step(model, optimizer, ema, x):
    ...   grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    ...   optimizer.update(model, grads)
    ...   ema.update(model)
    >>> before = model.kernel[...]
    >>> train_step(model, optimizer, ema, jnp.ones((1, 2)))
    >>> bool(jnp.allclose(ema.params['kernel'].value, (before + model.kernel[...]) / 2))
    True
    >>> ema_model = ema.apply_to(model)  # evaluates with the averaged weights
    >>> ema_model.kernel is ema.params['kernel']
    True
  """

  def __init__(self, params: Any, decay: float, *, only: Any = ..., graph: bool | None = None):
    self.graph = graph
    self.decay = decay
    self.filter = tuple(only) if isinstance(only, list) else only  # static: must be hashable
    self.params = nnx.data(_copy_variables(nnx.state(params, only, graph=graph)))

  def update(self, updates: Any) -> None:
    """Moves each average towards the matching Variable of ``updates``.

    Args:
      updates: the object given at construction (or one with the same structure), usually
        the model after an optimizer step.
    """
    api = "pynnx.EMA.update"
    new = dict(nnx.state(updates, self.filter, graph=self.graph).flat_state())
    averages = list(self.params.flat_state())
    missing = [p for p, _ in averages if p not in new]
    extra = [p for p in new if p not in dict(averages)]
    if missing or extra:
      parts = []
      if missing:
        parts.append("missing: " + ", ".join(format_path(p) for p in missing[:8]))
      if extra:
        parts.append("not averaged: " + ", ".join(format_path(p) for p in extra[:8]))
      raise nnx.StateMismatchError(
        f"{api}: the Variables selected by the EMA's filter differ from those it was built "
        f"for ({'; '.join(parts)}). Pass the model given to the constructor, or build a new "
        "EMA for the changed model."
      )
    for path, average in averages:
      value = new[path]
      value = value.get_value() if isinstance(value, nnx.Variable) else value
      average[...] = self.decay * average[...] + (1.0 - self.decay) * value

  def apply_to(self, model: A) -> A:
    """A model like ``model`` whose averaged Variables are this EMA's ``params``.

    Variables outside the filter are ``model``'s own. Since the Variables are shared (not
    copied), the returned model follows later :meth:`update` calls.

    Args:
      model: the model given at construction (or one with the same structure).

    Returns:
      A new model of the same type.
    """
    graphdef, state = nnx.split(model, graph=self.graph)
    return nnx.merge(graphdef, state, self.params)
