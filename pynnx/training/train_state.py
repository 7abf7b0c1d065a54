"""``nnx.TrainState``: a functional (Linen-style) training state built on split/merge.

A TrainState is an immutable dataclass pytree holding a model's GraphDef, its parameters (a
State), the optax state, a step counter and the optax transformation. It suits code written
for ``flax.training.train_state`` and pure ``jax.jit`` steps; stateful code usually prefers
:class:`~pynnx.Optimizer`. Subclasses may add fields (each subclass becomes a dataclass pytree
too); ``create`` and ``apply_gradients`` accept values for them as keyword arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, dataclass_transform

import jax
import jax.numpy as jnp
import optax

import pynnx as nnx

__all__ = ["TrainState"]

TS = TypeVar("TS", bound="TrainState")
C = TypeVar("C", bound=type)


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def _register(cls: C) -> C:
  """Makes ``cls`` a frozen dataclass pytree; fields marked ``pytree_node=False`` are static."""
  dc: Any = dataclasses.dataclass(frozen=True)(cls)
  fields = dataclasses.fields(dc)
  data = [f.name for f in fields if f.metadata.get("pytree_node", True)]
  meta = [f.name for f in fields if not f.metadata.get("pytree_node", True)]
  jax.tree_util.register_dataclass(dc, data_fields=data, meta_fields=meta)
  return dc


class _ApplyCaller:
  """``caller(*args)`` or ``caller.method(*args)``: merge, call, split again."""

  def __init__(self, graphdef: Any, states: tuple[Any, ...], names: tuple[str, ...] = ()):
    self._graphdef = graphdef
    self._states = states
    self._names = names

  def __getattr__(self, name: str) -> _ApplyCaller:
    if name.startswith("__"):
      raise AttributeError(name)
    return _ApplyCaller(self._graphdef, self._states, (*self._names, name))

  def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, tuple[Any, Any]]:
    module = nnx.merge(self._graphdef, *self._states)
    fn = module
    for name in self._names:
      fn = getattr(fn, name)
    out = fn(*args, **kwargs)
    graph = not isinstance(self._graphdef, nnx.TreeGraphDef)
    return out, nnx.split(module, graph=graph)


@_register
class TrainState:
  """The GraphDef, parameters, optax state and step of a model, as one immutable pytree.

  Build it with :meth:`create`; :meth:`apply_gradients` returns the next state and
  :meth:`apply` runs the model on its parameters.

  Attributes:
    graphdef: the model's GraphDef (static).
    params: the optimized State (from ``nnx.split``).
    opt_state: the optax state of ``params``.
    step: the number of ``apply_gradients`` calls made.
    tx: the optax transformation (static).

  Example:
    >>> import optax
    >>> graphdef, params = nnx.split(nnx.Linear(2, 1, rngs=nnx.Rngs(0)))
    >>> state = nnx.TrainState.create(graphdef, params=params, tx=optax.sgd(0.1))
    >>> def loss_fn(params):
    ...   y, _ = state.apply(params)(jnp.ones((4, 2)))
    ...   return jnp.mean(y ** 2)
    >>> @jax.jit
    ... def train_step(state):
    ...   return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))
    >>> new_state = train_step(state)
    >>> int(new_state.step), bool(loss_fn(new_state.params) < loss_fn(state.params))
    (1, True)
  """

  graphdef: Any = dataclasses.field(metadata={"pytree_node": False})
  params: Any
  opt_state: Any
  step: Any
  tx: optax.GradientTransformation = dataclasses.field(metadata={"pytree_node": False})

  def __init_subclass__(cls, **kwargs: Any) -> None:
    super().__init_subclass__(**kwargs)
    _register(cls)

  @classmethod
  def create(
    cls: type[TS],
    graphdef: Any,
    *,
    params: Any,
    tx: optax.GradientTransformation,
    step: int = 0,
    **kwargs: Any,
  ) -> TS:
    """A new state at ``step`` with ``tx.init(params)`` as optax state.

    Args:
      graphdef: the model's GraphDef (from ``nnx.split``).
      params: the State to optimize.
      tx: an optax ``GradientTransformation``.
      step: the initial step.
      **kwargs: values for the fields a subclass adds.

    Returns:
      The new TrainState (of the class ``create`` is called on).
    """
    return cls(
      graphdef=graphdef,
      params=params,
      opt_state=tx.init(params),
      step=jnp.asarray(step),
      tx=tx,
      **kwargs,
    )

  def apply_gradients(self: TS, grads: Any, **kwargs: Any) -> TS:
    """The next state: one optax step on ``params`` with ``grads``, ``step`` plus one.

    Args:
      grads: gradients shaped like ``params`` (e.g. ``jax.grad`` of a function of them).
      **kwargs: replacement values for other fields (e.g. a subclass's ``batch_stats``).

    Returns:
      A new TrainState; this one is unchanged.
    """
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    return self.replace(params=params, opt_state=opt_state, step=self.step + 1, **kwargs)

  def apply(self, state: Any, *states: Any) -> _ApplyCaller:
    """A caller that runs the model merged from ``graphdef`` and the given States.

    ``state.apply(params)(x)`` calls the model, ``state.apply(params).encode(x)`` one of its
    methods; each returns ``(output, (graphdef, state))`` with the model's State after the
    call. A string names a field of this TrainState (``'params'``).

    Args:
      state: a State, or the name of a field holding one.
      *states: more States (or field names), e.g. batch statistics.

    Returns:
      The caller.
    """
    resolved = tuple(getattr(self, s) if isinstance(s, str) else s for s in (state, *states))
    return _ApplyCaller(self.graphdef, resolved)

  def replace(self: TS, **updates: Any) -> TS:
    """A copy with some fields replaced (``dataclasses.replace``)."""
    return dataclasses.replace(self, **updates)
