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

from .._core.config import resolve_graph
from .._core.variables import Param
from . import graph_adapter
from .lift import (
  MISSING,
  InnerFrame,
  MethodAware,
  SharingCheck,
  _new_var,
  argnames_of,
  changed,
  flatten_args,
  rebuild_arg,
  wrap_or_decorate,
  write_back,
)

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
    leaves.append(g if kind is None else _new_var(kind, g))
  return plan.treedef.unflatten(leaves)


class GradWrapped(MethodAware):
  """A function transformed by ``nnx.grad`` / ``nnx.value_and_grad``."""

  def __init__(
    self,
    f: Callable,
    *,
    argnums: int | Sequence[int],
    has_aux: bool,
    holomorphic: bool,
    allow_int: bool,
    return_value: bool,
    graph: Any,
    graph_updates: Any,
  ):
    functools.update_wrapper(self, f)
    self.f = f
    self.argnums = argnums
    self.has_aux = has_aux
    self.holomorphic = holomorphic
    self.allow_int = allow_int
    self.return_value = return_value
    self.graph = graph
    self.graph_updates = graph_updates
    name = "value_and_grad" if return_value else "grad"
    self.name = name
    self.check = SharingCheck(f"pynnx.{name}({getattr(f, '__name__', 'f')})", argnames_of(f))
    self.entries = tuple(argnums) if isinstance(argnums, (list, tuple)) else (argnums,)
    self.argnum_ints = tuple(
      e.argnum if isinstance(e, graph_adapter.DiffState) else e for e in self.entries
    )
    self.forced_graph = graph_adapter.specs_force_graph(f"pynnx.{name}", graph, argnums)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    entries, argnums = self.entries, self.argnum_ints
    for i in argnums:
      if not isinstance(i, int) or i >= len(args):
        raise TypeError(
          f"pynnx.{self.name}: argnums={self.argnums} but only {len(args)} positional "
          "arguments were given."
        )
    api = f"pynnx.{self.name}"
    call = None
    if self.forced_graph or resolve_graph(self.graph):
      # Graph mode: each differentiated root splits into (selected substate, rest).
      wrt = {e.argnum: e.filter for e in entries if isinstance(e, graph_adapter.DiffState)}

      def filters(path: tuple, root: Any) -> tuple:
        if path and path[0] == 0 and len(path) > 1 and path[1] in argnums:
          return (wrt.get(path[1], Param), ...)
        return ()

      args, kwargs, call = graph_adapter.to_tree(args, kwargs, api, self.graph_updates, filters)
    flat = flatten_args(args, self.check)
    if call is None:
      masks = {i: diff_mask(flat.plans[i], flat.values[i], self.allow_int) for i in argnums}
    else:
      masks = {
        i: graph_adapter.selected_mask(
          args[i], flat.cells[i], flat.values[i], lambda v: _inexact(v, self.allow_int)
        )
        for i in argnums
      }
    diff = tuple([v for v, m in zip(flat.values[i], masks[i]) if m] for i in argnums)
    f, has_aux, plans, values = self.f, self.has_aux, flat.plans, flat.values

    def inner(diff_values: tuple):
      full = list(values)
      for i, dv in zip(argnums, diff_values):
        it = iter(dv)
        full[i] = [next(it) if m else v for v, m in zip(values[i], masks[i])]
      with InnerFrame(self.name):
        rebuilt = [rebuild_arg(p, v) for p, v in zip(plans, full)]
        call_args, call_kwargs = [a for a, _ in rebuilt], kwargs
        if call is not None:
          call_args, call_kwargs, finish = graph_adapter.enter(call, call_args, kwargs)
        out = f(*call_args, **call_kwargs)
        updates = [changed(p, fr, v) for p, (_, fr), v in zip(plans, rebuilt, full)]
      if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
          raise TypeError(
            f"pynnx.{self.name}(..., has_aux=True): the function must return a pair "
            f"(loss, aux), got {type(out).__name__}."
          )
        loss, aux = out
      else:
        loss, aux = out, None
      if call is not None:
        aux = finish(aux)
      return loss, (aux, updates)

    (value, (aux, updates)), grads = jax.value_and_grad(
      inner, has_aux=True, holomorphic=self.holomorphic, allow_int=self.allow_int
    )(diff)
    write_back(flat, updates)
    shaped = tuple(grad_like(plans[i], masks[i], g) for i, g in zip(argnums, grads))
    if call is not None:
      aux = graph_adapter.exit(call, aux)
      shaped = tuple(graph_adapter.selected_state(g) for g in shaped)
    g_out = shaped if isinstance(self.argnums, (list, tuple)) else shaped[0]
    if self.return_value:
      return ((value, aux), g_out) if has_aux else (value, g_out)
    return (g_out, aux) if has_aux else g_out


def _make(return_value: bool):
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
    kw = dict(
      argnums=argnums,
      has_aux=has_aux,
      holomorphic=holomorphic,
      allow_int=allow_int,
      return_value=return_value,
      graph=graph,
      graph_updates=graph_updates,
    )
    return wrap_or_decorate(GradWrapped, f, kw)

  return transform


grad = _make(False)
grad.__name__ = "grad"
grad.__doc__ = """Lifted ``jax.grad``: the gradient of a Module is a Module of gradients.

Example:
  >>> import jax.numpy as jnp, pynnx as nnx
  >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  >>> grads = nnx.grad(lambda m, x: jnp.sum(m(x)))(m, jnp.ones((1, 2)))
  >>> type(grads).__name__, grads.kernel[...].shape
  ('Linear', (2, 3))
"""
value_and_grad = _make(True)
value_and_grad.__name__ = "value_and_grad"
value_and_grad.__doc__ = """Lifted ``jax.value_and_grad``: returns ``(value, grads)``.

Example:
  >>> import jax.numpy as jnp, pynnx as nnx
  >>> m = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  >>> loss, grads = nnx.value_and_grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(m)
  >>> loss.shape, grads.bias[...].shape
  ((), (1,))
"""
