"""``nnx.remat``: ``jax.checkpoint`` over the lift.

The wrapped function's intermediates are recomputed in the backward pass instead of being
stored. Modules are arguments like in every pynnx transform and their Variable updates are
written back. Static arguments (``static_argnums``) are closed over, so Python control flow
may depend on them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from .._core.config import resolve_graph
from . import graph_adapter
from .lift import (
  MISSING,
  InnerFrame,
  MethodAware,
  SharingCheck,
  argnames_of,
  changed,
  check_not_bound,
  flatten_args,
  rebuild_arg,
  wrap_or_decorate,
  write_back,
)

__all__ = ["remat"]


class RematWrapped(MethodAware):
  """A function transformed by ``nnx.remat``; call it like the original."""

  def __init__(
    self,
    f: Callable,
    *,
    prevent_cse: bool,
    static_argnums: Any,
    policy: Any,
    graph: bool | None,
    graph_updates: bool | None,
  ):
    check_not_bound(f, "remat")
    functools.update_wrapper(self, f)
    self.f = f
    self.prevent_cse = prevent_cse
    self.static_argnums = (
      (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)
    )
    self.policy = policy
    self.graph = graph
    self.graph_updates = graph_updates
    self.api = f"pynnx.remat({getattr(f, '__name__', 'f')})"
    self.argnames = argnames_of(f) or []
    self._checks: dict = {}

  def _check(self, dyn_idx: tuple) -> SharingCheck:
    check = self._checks.get(dyn_idx)
    if check is None:
      names = [self.argnames[i] if i < len(self.argnames) else f"args[{i}]" for i in dyn_idx]
      check = self._checks[dyn_idx] = SharingCheck(self.api, [*names, "kwargs"])
    return check

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    gs = None
    if resolve_graph(self.graph):
      args, kwargs, gs = graph_adapter.to_tree(args, kwargs, self.api, self.graph_updates)
    n = len(args)
    static = {i % n: args[i % n] for i in self.static_argnums if -n <= i < n}
    dyn_idx = tuple(i for i in range(n) if i not in static)
    flat = flatten_args([*(args[i] for i in dyn_idx), kwargs], self._check(dyn_idx))
    plans, f = flat.plans, self.f

    def inner(values: list):
      with InnerFrame("remat"):
        rebuilt = [rebuild_arg(p, v) for p, v in zip(plans, values, strict=True)]
        it = iter(a for a, _ in rebuilt[:-1])
        pos = [static[i] if i in static else next(it) for i in range(n)]
        kw = rebuilt[-1][0]
        if gs is not None:
          pos, kw, finish = graph_adapter.enter(gs, pos, kw)
          out = finish(f(*pos, **kw))
        else:
          out = f(*pos, **kw)
        updates = [changed(p, fr, v) for p, (_, fr), v in zip(plans, rebuilt, values, strict=True)]
      return out, updates

    checkpointed = jax.checkpoint(inner, prevent_cse=self.prevent_cse, policy=self.policy)
    out, updates = checkpointed(flat.values)
    write_back(flat, updates)
    if gs is not None:
      out = graph_adapter.exit(gs, out)
    return out


def remat(
  f: Callable = MISSING,
  *,
  prevent_cse: bool = True,
  static_argnums: Any = (),
  policy: Callable[..., bool] | None = None,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.checkpoint`` (``jax.remat``): recompute ``f``'s intermediates on the
  backward pass instead of storing them.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> block = nnx.remat(lambda m, x: jnp.sin(m(x)))
    >>> grads = nnx.grad(lambda m, x: jnp.sum(block(m, x)))(m, jnp.ones((4, 2)))
    >>> grads.kernel[...].shape
    (2, 3)
  """
  kw = dict(
    prevent_cse=prevent_cse,
    static_argnums=static_argnums,
    policy=policy,
    graph=graph,
    graph_updates=graph_updates,
  )
  return wrap_or_decorate(RematWrapped, f, kw)
