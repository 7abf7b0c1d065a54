"""``nnx.jit_partial`` and ``nnx.cached_partial``: bind the Modules of a step function once.

``jit_partial(fun, *partial_args)`` is ``nnx.jit(fun)`` with ``partial_args`` always passed
first: calling it with the remaining (runtime) arguments traces and runs ``fun`` and writes the
Variable updates back into the partial arguments. As in Flax, argument numbers count the
partial arguments as one group: ``0`` is the group, ``1`` the first runtime argument, and so
on; and Variables may appear only among the partial arguments.

``cached_partial(f, *cached_args)`` binds the leading arguments of an already transformed
``f``. pynnx's lift caches the flattening of a frozen Module on the Module itself, so binding
is all that is needed for the fast path, in tree mode as in graph mode.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax

from .._core.config import resolve_graph, resolve_graph_updates
from .._core.errors import ConfigError, GraphModeRequiredError, TransformArgumentError
from .._core.variables import Variable, is_variable
from . import graph_adapter
from .jit import jit
from .lift import as_tuple, check_not_bound

__all__ = ["jit_partial", "cached_partial", "JitPartialWrapped"]


class JitPartialWrapped:
  """``nnx.jit(fun)`` with leading arguments bound: call it with the runtime arguments."""

  def __init__(
    self,
    fun: Callable,
    partial_args: tuple,
    *,
    static_argnums: Any,
    donate_argnums: Any,
    **jit_kw: Any,
  ):
    check_not_bound(fun, "jit_partial")
    functools.update_wrapper(self, fun, updated=())
    self.fun = fun
    self.partial_args = partial_args
    self.api = f"pynnx.jit_partial({getattr(fun, '__name__', 'f')})"
    n = len(partial_args)

    def full(nums: tuple[int, ...], what: str, group_ok: bool) -> tuple[int, ...]:
      out: list[int] = []
      for i in nums:
        if i == 0:
          if not group_ok:
            raise TransformArgumentError(
              f"{self.api}: {what}=0 names the partial arguments, which hold Modules and "
              f"cannot be static. Number the runtime arguments from 1 (the first runtime "
              f"argument is {what}=1)."
            )
          out.extend(range(n))
        elif i < 0:
          raise TransformArgumentError(
            f"{self.api}: negative {what} ({i}) are not supported; number the runtime "
            f"arguments from 1."
          )
        else:
          out.append(n + i - 1)
      return tuple(out)

    self.static_argnums = full(as_tuple(static_argnums, int), "static_argnums", False)
    self.donate_argnums = full(as_tuple(donate_argnums, int), "donate_argnums", True)
    self.jitted = jit(
      fun, static_argnums=self.static_argnums, donate_argnums=self.donate_argnums, **jit_kw
    )

  def _args(self, args: tuple, kwargs: dict) -> tuple:
    leaves = jax.tree_util.tree_leaves((args, kwargs), is_leaf=is_variable)
    if any(isinstance(x, Variable) for x in leaves):
      raise TransformArgumentError(
        f"{self.api} was called with a Variable among its runtime arguments. Only the partial "
        f"arguments may hold Variables (their updates are written back): bind the Module "
        f"when building it, e.g. `nnx.jit_partial(step, model, optimizer)`, and pass only "
        f"arrays at call time."
      )
    return (*self.partial_args, *args)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    return self.jitted(*self._args(args, kwargs), **kwargs)

  def lower(self, *args: Any, **kwargs: Any) -> Any:
    """``jax.jit(...).lower`` for these runtime arguments."""
    return self.jitted.lower(*self._args(args, kwargs), **kwargs)

  def trace(self, *args: Any, **kwargs: Any) -> Any:
    """``jax.jit(...).trace`` for these runtime arguments."""
    return self.jitted.trace(*self._args(args, kwargs), **kwargs)

  def eval_shape(self, *args: Any, **kwargs: Any) -> Any:
    """Shapes and dtypes of the outputs, without running anything."""
    return self.jitted.eval_shape(*self._args(args, kwargs), **kwargs)

  def __repr__(self) -> str:
    return f"<{self.api}>"


def jit_partial(
  fun: Callable,
  *partial_args: Any,
  in_shardings: Any = None,
  out_shardings: Any = None,
  static_argnums: int | Sequence[int] | None = None,
  static_argnames: str | Iterable[str] | None = None,
  donate_argnums: int | Sequence[int] | None = None,
  donate_argnames: str | Iterable[str] | None = None,
  keep_unused: bool = False,
  device: Any = None,
  backend: str | None = None,
  inline: bool = False,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> JitPartialWrapped:
  """``nnx.jit(fun)`` with ``partial_args`` bound as its first arguments.

  Args:
    fun: the function; its first ``len(partial_args)`` parameters receive ``partial_args``.
    *partial_args: Modules, Optimizers... bound once; their Variable updates are written back.
    in_shardings: as in ``nnx.jit``, one entry per argument of ``fun`` (partial first); a
      single value applies to all. StateSharding is not accepted.
    out_shardings: as in ``nnx.jit`` (StateSharding is not accepted).
    static_argnums: ``k >= 1`` is the k-th runtime argument (``0``, the whole group of
      partial arguments, is rejected).
    static_argnames: as in ``nnx.jit``.
    donate_argnums: ``0`` is the whole group of partial arguments, ``k >= 1`` is the k-th
      runtime argument.
    donate_argnames: as in ``nnx.jit``.
    keep_unused, device, backend, inline: as in ``nnx.jit``.
    graph: ``None`` for the configured default, ``True`` for graph mode.
    graph_updates: must not resolve to True in graph mode (structural changes cannot be
      propagated to the bound arguments).

  Raises:
    GraphModeRequiredError: graph mode with ``graph_updates`` resolving to True.
    TransformArgumentError: StateSharding in the shardings, ``static_argnums=0``, or a
      Variable among the runtime arguments (both are ValueErrors, as in Flax).

  Example:
    >>> class Counter(nnx.Module):
    ...   def __init__(self):
    ...     self.count = nnx.BatchStat(jnp.array(0))
    >>> def step(c, x):
    ...   c.count[...] += 1
    ...   return x * c.count[...]
    >>> c = Counter()
    >>> step_fn = nnx.jit_partial(step, c)
    >>> [int(step_fn(jnp.array(2))) for _ in range(2)], int(c.count[...])
    ([2, 4], 2)
  """
  options = dict(locals())  # first thing: exactly the parameters
  if resolve_graph(graph) and resolve_graph_updates(graph_updates):
    raise GraphModeRequiredError(
      f"pynnx.jit_partial({getattr(fun, '__name__', 'f')}): graph_updates is not supported: the "
      f"bound arguments' structure is fixed when jit_partial is built. Pass "
      f"graph_updates=False (or use tree mode, graph=False)."
    )
  if graph_adapter.uses_graph_specs(in_shardings, out_shardings):
    raise TransformArgumentError(
      "pynnx.jit_partial: in_shardings / out_shardings cannot contain StateSharding; give "
      "Sharding/PartitionSpec prefixes per argument instead."
    )
  return JitPartialWrapped(**options)


def cached_partial(
  f: Callable[..., Any],
  *cached_args: Any,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Callable[..., Any]:
  """Binds ``cached_args`` as the first arguments of the transformed function ``f``.

  pynnx transforms already cache each frozen Module's flattening on the Module (until its
  structure changes), so the bound call takes the fast path in both modes.

  Args:
    f: a transformed function (``nnx.jit(train_step)``...).
    *cached_args: its leading arguments (Modules, Optimizers...).
    graph: ``None`` for the configured default. In graph mode ``graph_updates`` must resolve
      to True, as in Flax; tree mode binds the arguments as they are.
    graph_updates: see ``graph``.

  Raises:
    GraphModeRequiredError: graph mode with ``graph_updates=False`` (a ValueError, as in Flax).

  Example:
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> forward = nnx.cached_partial(nnx.jit(lambda m, x: m(x)), m)
    >>> forward(jnp.ones(2)).shape
    (3,)
  """
  if not callable(f):
    raise ConfigError(
      f"pynnx.cached_partial binds arguments to a transformed function, got "
      f"{type(f).__name__} {f!r:.40}: `nnx.cached_partial(nnx.jit(step), model)`."
    )
  if resolve_graph(graph) and not resolve_graph_updates(graph_updates):
    raise GraphModeRequiredError(
      "pynnx.cached_partial in graph mode requires graph_updates=True (the cache follows the "
      "bound graph's structure). Pass graph_updates=True, or graph=False for tree mode."
    )

  @functools.wraps(f)
  def bound(*args: Any, **kwargs: Any) -> Any:
    return f(*cached_args, *args, **kwargs)

  return bound
