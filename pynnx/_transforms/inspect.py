"""``nnx.make_jaxpr`` and ``nnx.checkify``: ``jax.make_jaxpr`` / ``checkify.checkify`` over the lift.

``make_jaxpr`` traces the function with each Variable's value as one input of the jaxpr (in
flattening order, then the other arguments) and returns the ``ClosedJaxpr`` of the user
function's outputs; nothing is run, so no Variable is updated. ``checkify`` runs the function
with JAX's functional error checks and returns ``(error, out)``; Variable updates are written
back like in every transform.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.experimental import checkify as checkify_lib

from .._core.config import resolve_graph_updates
from .._core.errors import TransformArgumentError
from .lift import MISSING, Inner, Transform, wrap_or_decorate

__all__ = ["make_jaxpr", "checkify"]


class MakeJaxprWrapped(Transform):
  """A function transformed by ``nnx.make_jaxpr``: calling it returns the ClosedJaxpr."""

  transform = "make_jaxpr"

  def setup(self) -> None:
    if resolve_graph_updates(self.graph_updates):
      raise TransformArgumentError(
        "pynnx.make_jaxpr does not support graph_updates=True: it only traces the function, "
        "so structural changes could never reach the caller's Modules. Pass "
        "graph_updates=False (e.g. `nnx.make_jaxpr(f, graph_updates=False)`)."
      )

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    call = self.bind(args, kwargs)
    f, static = self.f, call.static

    def inner(*values: Any):
      with Inner(static, values, "make_jaxpr", call=call) as scope:
        out = scope.call(f)
        # the jaxpr's outputs are the user's outputs only; the graph finish may wrap them
        scope.output(out)
      return out

    return jax.make_jaxpr(self.named(inner))(*call.flat.values)


def make_jaxpr(
  f: Callable = MISSING,
  *,
  graph: bool | None = None,
  graph_updates: bool | None = None,
  static_argnums: int | tuple[int, ...] = (),
) -> Any:
  """Lifted ``jax.make_jaxpr``: the jaxpr of ``f`` with Modules as arguments.

  Each Variable's value is one input of the jaxpr. Nothing runs, so no Variable changes.

  Args:
    f: the function to trace.
    graph: ``None`` for the configured default, ``True`` for graph mode.
    graph_updates: must resolve to False (tracing cannot propagate structural changes); it
      defaults to the configured value, which is True unless changed with
      ``nnx.set_graph_updates(False)``.
    static_argnums: positional arguments passed as Python values (not traced).

  Raises:
    TransformArgumentError: ``graph_updates`` resolves to True (a ValueError, as in Flax).

  Example:
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> jaxpr = nnx.make_jaxpr(lambda m, x: m(x), graph_updates=False)(m, jnp.ones(2))
    >>> len(jaxpr.jaxpr.invars)  # bias, kernel, x
    3
  """
  return wrap_or_decorate(MakeJaxprWrapped, locals())


class CheckifyWrapped(Transform):
  """A function transformed by ``nnx.checkify``: calling it returns ``(error, out)``."""

  transform = "checkify"
  errors: Any

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    call = self.bind(args, kwargs)
    inner = checkify_lib.checkify(self.run_once(call), errors=self.errors)
    err, (out, updates) = inner(*call.flat.values)
    return err, call.finish(out, updates)


def checkify(
  f: Callable,
  errors: frozenset = checkify_lib.user_checks,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.experimental.checkify.checkify``: functional error checks with Modules.

  Args:
    f: the function to check; it may call ``checkify.check`` and contain ``nnx.jit``.
    errors: the set of error kinds to enable (``checkify.user_checks``, ``float_checks``...).
    graph: ``None`` for the configured default, ``True`` for graph mode.
    graph_updates: graph mode only: propagate structural changes.

  Returns:
    A function returning ``(error, out)``; ``error.throw()`` raises a failed check.

  Example:
    >>> from jax.experimental import checkify
    >>> def f(m, x):
    ...   checkify.check(jnp.all(x > 0), 'x must be positive')
    ...   return m(x)
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> err, y = nnx.checkify(f)(m, -jnp.ones(2))
    >>> err.get()
    'x must be positive (`check` failed)'
  """
  return wrap_or_decorate(CheckifyWrapped, locals())
