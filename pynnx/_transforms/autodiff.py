"""``nnx.grad`` and ``nnx.value_and_grad``: Param-aware autodiff over the lift.

In tree mode the gradient has the shape of the argument: a Module for a Module. Inexact
``Param`` values (and inexact plain arrays) are differentiated; every other Variable
(BatchStat, rng counters, ...) comes back holding ``None``, so models with running
statistics and dropout just work. Their updates are written back like in any transform.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._core.errors import ConfigError
from .._core.variables import Param
from . import graph_adapter
from .lift import MISSING, Inner, Transform, new_var, wrap_or_decorate

__all__ = ["grad", "value_and_grad"]


def _inexact(value: Any, allow_int: bool) -> bool:
  dtype = getattr(value, "dtype", None)
  if dtype is None:
    if isinstance(value, bool):
      return False
    if isinstance(value, (float, complex)):
      return True
    return allow_int and isinstance(value, int)
  if jnp.issubdtype(dtype, jnp.inexact):
    return True
  return allow_int and jnp.issubdtype(dtype, jnp.integer)


def diff_mask(plan: Any, values: Sequence[Any], allow_int: bool) -> tuple[bool, ...]:
  """Which leaves of an argument are differentiated: inexact Params and plain leaves."""
  out = []
  for kind, value in zip(plan.kinds, values):
    if kind is None:
      out.append(_inexact(value, allow_int))
    else:
      out.append(issubclass(kind[0], Param) and _inexact(value, allow_int))
  return tuple(out)


def grad_like(plan: Any, mask: Sequence[bool], grads: Sequence[Any]) -> Any:
  """The gradient shaped like the argument: Variables keep their type, non-diff hold None."""
  it = iter(grads)
  leaves = []
  for kind, m in zip(plan.kinds, mask):
    g = next(it) if m else None
    leaves.append(g if kind is None else new_var(kind, g))
  return plan.treedef.unflatten(leaves)


class GradWrapped(Transform):
  """A function transformed by ``nnx.grad`` / ``nnx.value_and_grad``.

  Keyword arguments are traced but never differentiated (as in ``jax.grad``); their
  Variable updates are written back like every other argument's.
  """

  transform = "grad"
  spec_name = "argnums"

  def __init__(
    self,
    f: Callable,
    *,
    argnums: int | Sequence[int],
    has_aux: bool,
    holomorphic: bool,
    allow_int: bool,
    graph: Any,
    graph_updates: Any,
  ):
    super().__init__(f, graph=graph, graph_updates=graph_updates, specs=(argnums,))
    self.argnums = argnums
    self.has_aux = has_aux
    self.holomorphic = holomorphic
    self.allow_int = allow_int
    entries = tuple(argnums) if isinstance(argnums, (list, tuple)) else (argnums,)
    self.diff_argnums = tuple(
      e.argnum if isinstance(e, graph_adapter.DiffState) else e for e in entries
    )
    self.wrt = {e.argnum: e.filter for e in entries if isinstance(e, graph_adapter.DiffState)}
    self._built()

  def graph_filters(self, key: int | str, n_pos: int) -> tuple:
    # Graph mode: each differentiated root splits into (selected substate, rest).
    if isinstance(key, int) and key in self.diff_argnums:
      sel = self.wrt.get(key, Param)
      return (...,) if sel is ... else (sel, ...)
    return ()

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    argnums = self.diff_argnums
    for i in argnums:
      if not isinstance(i, int) or i >= len(args):
        raise ConfigError(
          f"{self.api}: argnums={self.argnums} but only {len(args)} positional arguments were "
          f"given; differentiated arguments must be passed positionally."
        )
    call = self.bind(args, kwargs)
    flat = call.flat
    inexact = functools.partial(_inexact, allow_int=self.allow_int)
    if call.graph is None:
      masks = {i: diff_mask(flat.plans[i], flat.values[i], self.allow_int) for i in argnums}
    else:
      masks = {
        i: tuple(  # the selected substate of each graph root, and plain arrays outside roots
          sel or (kind is None and plain)
          for sel, kind, plain in zip(
            graph_adapter.selected_mask(call.slots[i], flat.cells[i], flat.values[i], inexact),
            flat.plans[i].kinds,
            diff_mask(flat.plans[i], flat.values[i], self.allow_int),
          )
        )
        for i in argnums
      }
    diff = tuple([v for v, m in zip(flat.values[i], masks[i]) if m] for i in argnums)
    f, has_aux, static, values = self.f, self.has_aux, call.static, flat.values

    def inner(diff_values: tuple):
      full = list(values)
      for i, dv in zip(argnums, diff_values):
        it = iter(dv)
        full[i] = [next(it) if m else v for v, m in zip(values[i], masks[i])]
      with Inner(static, full, self.transform) as scope:
        out = scope.call(f)
        if has_aux:
          if not (isinstance(out, tuple) and len(out) == 2):
            raise ConfigError(
              f"pynnx.{self.transform}(..., has_aux=True): the function must return a pair "
              f"(loss, aux), got {type(out).__name__}."
            )
          loss, aux = out
        else:
          loss, aux = out, None
        aux = scope.output(aux)
        updates = scope.updates()
      return loss, (aux, updates)

    (value, (aux, updates)), grads = jax.value_and_grad(
      self.named(inner), has_aux=True, holomorphic=self.holomorphic, allow_int=self.allow_int
    )(diff)
    aux = call.finish(aux, updates)
    shaped = tuple(grad_like(flat.plans[i], masks[i], g) for i, g in zip(argnums, grads))
    if call.graph is not None:
      shaped = tuple(graph_adapter.selected_state(g) for g in shaped)
    g_out = shaped if isinstance(self.argnums, (list, tuple)) else shaped[0]
    return self.result(value, aux, g_out)

  def result(self, value: Any, aux: Any, grads: Any) -> Any:
    return (grads, aux) if self.has_aux else grads


class ValueAndGradWrapped(GradWrapped):
  """A function transformed by ``nnx.value_and_grad``."""

  transform = "value_and_grad"

  def result(self, value: Any, aux: Any, grads: Any) -> Any:
    return ((value, aux), grads) if self.has_aux else (value, grads)


def _make(cls: type):
  def transform(
    f: Callable = MISSING,
    *,
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    holomorphic: bool = False,
    allow_int: bool = False,
    reduce_axes: Sequence = (),
    graph: bool | None = None,
    graph_updates: bool | None = None,
  ) -> Any:
    if reduce_axes:
      raise ConfigError(
        f"pynnx.{cls.transform}: reduce_axes is deprecated in JAX and not supported; drop it."
      )
    kw = dict(
      argnums=argnums,
      has_aux=has_aux,
      holomorphic=holomorphic,
      allow_int=allow_int,
      graph=graph,
      graph_updates=graph_updates,
    )
    return wrap_or_decorate(cls, f, kw)

  return transform


grad = _make(GradWrapped)
grad.__name__ = "grad"
grad.__doc__ = """Lifted ``jax.grad``: the gradient of a Module is a Module of gradients.

Example:
  >>> import jax.numpy as jnp, pynnx as nnx
  >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> grads = nnx.grad(lambda m, x: jnp.sum(m(x)))(m, jnp.ones((1, 2)))
  >>> type(grads).__name__, grads.kernel[...].shape
  ('Linear', (2, 3))
"""
value_and_grad = _make(ValueAndGradWrapped)
value_and_grad.__name__ = "value_and_grad"
value_and_grad.__doc__ = """Lifted ``jax.value_and_grad``: returns ``(value, grads)``.

Example:
  >>> import jax.numpy as jnp, pynnx as nnx
  >>> m = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  >>> loss, grads = nnx.value_and_grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(m)
  >>> loss.shape, grads.bias[...].shape
  ((), (1,))
"""
