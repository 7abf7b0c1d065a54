"""``nnx.custom_vjp``: ``jax.custom_vjp`` over the lift.

Graph mode differs only in what ``bwd`` receives and returns (States of the DiffState-selected
substates with graph_updates: ``graph_adapter.custom_vjp_bwd``). Tree mode follows ``jax.custom_vjp``: ``fwd(*args)`` returns ``(out, residuals)`` and
``bwd(*nondiff_args, residuals, g)`` receives the output cotangent ``g`` and returns one
cotangent per differentiable argument, shaped like it (a Module for a Module, e.g.
``nnx.clone(m)`` with its Params set).

How the arguments reach ``jax.custom_vjp`` (one call, built per call)::

  diff   inexact Params / inexact plain arrays of differentiable args  -> cotangents from bwd
  other  every other array leaf (BatchStat, rng state, all leaves of
         nondiff args, integer arrays)                                 -> zero cotangent
  static leaves that are not arrays (Python scalars, callables...)     -> closed over

The function returns ``(out, state)`` where ``state`` is the value of every Variable held in
``other``: that fixed structure is the same for ``fun`` and ``fwd``, and is written back to
the caller's Variables, so BatchStat / rng updates (and any update of a nondiff argument)
survive. Differentiated Params of differentiable arguments must not be updated: their new
value would have no cotangent. Non-differentiable arguments are carried to ``bwd`` through
the residuals, so they may hold traced arrays (unlike ``jax.custom_vjp``'s nondiff_argnums).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from .._core.errors import (
  ConfigError,
  GraphModeRequiredError,
  StructureChangeError,
  TraceContextError,
)
from .._core.variables import Variable, is_variable
from . import graph_adapter
from .autodiff import diff_mask, merge_masked, select_masked
from .flat import rebuild_arg, write_back
from .lift import MISSING, Call, Inner, Transform, wrap_or_decorate
from .outputs import leaf_paths

__all__ = ["custom_vjp", "CustomVjp", "custom_vjp_tree"]

_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)


class _Layout:
  """Where every leaf of every argument goes: ``diff``, ``other`` or static."""

  def __init__(self, flat: Any, nondiff: frozenset, masks: Sequence[Any]):
    self.plans = flat.plans
    self.n = len(flat.plans)
    self.diff_args = tuple(i for i in range(self.n) if i not in nondiff)
    self.masks = []  # per arg: differentiated leaves
    self.other = []  # (arg, leaf) of dynamic leaves that are not differentiated
    self.static: dict = {}  # (arg, leaf) -> value
    for i, (plan, vals) in enumerate(zip(flat.plans, flat.values)):
      mask = (False,) * len(vals) if i in nondiff else masks[i]
      self.masks.append(mask)
      for j, (kind, v, m) in enumerate(zip(plan.kinds, vals, mask)):
        if m:
          continue
        if kind is not None or isinstance(v, _ARRAY_TYPES):
          self.other.append((i, j))
        else:
          self.static[(i, j)] = v
    # the Variables among `other`: their values are the state output
    self.state_idx = tuple(
      k for k, (i, j) in enumerate(self.other) if self.plans[i].kinds[j] is not None
    )
    self.nondiff_other = tuple(k for k, (i, _) in enumerate(self.other) if i in nondiff)

  def split(self, values: Sequence[list]) -> tuple[tuple, list]:
    diff = tuple(select_masked(values[i], self.masks[i]) for i in self.diff_args)
    return diff, [values[i][j] for i, j in self.other]

  def assemble(self, diff: Sequence[list], other: Sequence[Any], only: Any = None) -> list:
    """Full leaf values per argument (``only``: the args to build; others stay None)."""
    full: list = [None] * self.n
    for i in range(self.n) if only is None else only:
      full[i] = [None] * len(self.masks[i])
    for i, d in zip(self.diff_args, diff):
      if full[i] is not None:
        full[i] = merge_masked(full[i], self.masks[i], d)
    for (i, j), v in (*zip(self.other, other), *self.static.items()):
      if full[i] is not None:
        full[i][j] = v
    return full


def custom_vjp_tree(
  fun: Callable,
  fwd: Callable,
  bwd: Callable,
  call: Call,
  nondiff_argnums: Sequence[int],
  api: str,
  masks: Sequence[Any],
) -> Any:
  """The core: ``fun(*args)`` of a bound call with the custom rule ``(fwd, bwd)``.

  ``masks[i]`` marks the differentiated leaves of argument ``i``.

  Differentiable arguments' Variables get cotangents from ``bwd``; the updates made to the
  other Variables are written back into the caller's Variables.
  """
  nondiff = frozenset(nondiff_argnums)
  flat = call.flat
  lay = _Layout(flat, nondiff, masks)
  names = call.names
  # (argument, position among its fresh Variables) of each state output
  state_leaves = [lay.other[k] for k in lay.state_idx]
  state_src = [(i, lay.plans[i].var_idx.index(j)) for i, j in state_leaves]

  def run(user_fn: Callable, diff: tuple, other: list, is_fwd: bool) -> tuple:
    full = lay.assemble(diff, other)
    with Inner(call.static, full, "custom_vjp", call=call) as scope:
      result = scope.call(user_fn)
      rebuilt = scope.rebuilt
      for i in lay.diff_args:
        _check_untouched(api, lay, i, rebuilt[i], full[i], names)
      state = tuple(rebuilt[i][1][pos]._raw_value for i, pos in state_src)
    if is_fwd:
      if not (isinstance(result, tuple) and len(result) == 2):
        raise ConfigError(
          f"{api}: fwd must return a pair (output, residuals), got {type(result).__name__}."
        )
      out, res = result
      return (out, state), (res, [other[k] for k in lay.nondiff_other])
    return result, state

  def primal(diff: tuple, other: list) -> tuple:
    return run(fun, diff, other, False)

  def fwd_rule(diff: tuple, other: list) -> tuple:
    return run(fwd, diff, other, True)

  def bwd_rule(residuals: tuple, g: tuple) -> tuple:
    res, nd_values = residuals
    out_g, _ = g  # the state outputs carry no gradient
    nd_other = [None] * len(lay.other)
    for k, v in zip(lay.nondiff_other, nd_values):
      nd_other[k] = v
    nd_args = sorted(nondiff)
    full = lay.assemble((), nd_other, only=nd_args)
    nd = [rebuild_arg(lay.plans[i], full[i])[0] for i in nd_args]
    cts = bwd(*nd, res, out_g)
    if not isinstance(cts, (tuple, list)) or len(cts) != len(lay.diff_args):
      got = (
        f"a {type(cts).__name__} of length {len(cts)}"
        if isinstance(cts, (tuple, list))
        else type(cts).__name__
      )
      raise StructureChangeError(
        f"{api}: bwd must return a tuple with one cotangent per differentiable argument "
        f"({len(lay.diff_args)}: positions {list(lay.diff_args)}), got {got}."
      )
    diff_cts = tuple(_cotangent(api, lay, i, ct) for i, ct in zip(lay.diff_args, cts))
    return diff_cts, None

  jfun = jax.custom_vjp(primal)
  jfun.defvjp(fwd_rule, bwd_rule)
  diff, other = lay.split(flat.values)
  out, state = jfun(diff, other)
  updates: list = [{} for _ in range(lay.n)]
  for (i, j), v in zip(state_leaves, state):
    updates[i][j] = v
  write_back(flat, updates)
  return out


def _check_untouched(
  api: str, lay: _Layout, i: int, rebuilt: tuple, values: list, names: Sequence[str]
) -> None:
  arg, fresh = rebuilt
  plan, mask = lay.plans[i], lay.masks[i]
  for j, var in zip(plan.var_idx, fresh):
    if mask[j] and var._raw_value is not values[j]:
      name = names[i] if i < len(names) else f"args[{i}]"
      raise TraceContextError(
        f"{api} updated {leaf_paths(arg, name)[j]}, a {plan.kinds[j][0].__name__} of a "
        "differentiable argument. In tree mode custom_vjp cannot carry updates of "
        "differentiated Variables. Pass the Variables to update through an argument listed "
        "in nondiff_argnums, or use graph mode (graph=True)."
      )


def _cotangent(api: str, lay: _Layout, i: int, ct: Any) -> list:
  """The cotangents of argument ``i``'s differentiated leaves, from bwd's Module-shaped one."""
  plan, mask = lay.plans[i], lay.masks[i]
  leaves, treedef = jax.tree_util.tree_flatten(ct, is_leaf=is_variable)
  if treedef != plan.treedef:
    raise StructureChangeError(
      f"{api}: the cotangent bwd returned for argument {i} does not have the argument's "
      f"structure.\n  argument:  {plan.treedef}\n  cotangent: {treedef}\n"
      "Return a value shaped like the argument, e.g. `nnx.clone(m)` with its Params set."
    )
  return [
    (leaf._raw_value if isinstance(leaf, Variable) else leaf) for leaf, m in zip(leaves, mask) if m
  ]


class CustomVjp(Transform):
  """A function with a custom VJP rule; define the rule with :meth:`defvjp`.

  Keyword arguments are bound to their positions by the function's signature (as
  ``jax.custom_vjp`` does); keyword-only parameters are not supported.
  """

  transform = "custom_vjp"

  spec_options = ("nondiff_argnums",)
  nondiff_argnums: tuple

  def __init__(self, fun: Callable, *, nondiff_argnums: Sequence[Any], **options: Any):
    if any(not isinstance(n, int) for n in nondiff_argnums) and options.get("graph") is False:
      raise GraphModeRequiredError(
        f"pynnx.custom_vjp({getattr(fun, '__name__', 'fun')}): nondiff_argnums contains "
        f"{tuple(nondiff_argnums)!r}; DiffState entries need graph mode. Use integer argnums "
        "with graph=False, or pass graph=True."
      )
    super().__init__(fun, nondiff_argnums=tuple(nondiff_argnums), **options)

  def setup(self) -> None:
    self.nondiff = tuple(n for n in self.nondiff_argnums if isinstance(n, int))
    self.wrt = {n.argnum: n.filter for n in self.nondiff_argnums if not isinstance(n, int)}
    seen = [n if isinstance(n, int) else getattr(n, "argnum", n) for n in self.nondiff_argnums]
    if len(set(seen)) != len(seen):
      raise ConfigError(f"{self.api}: nondiff_argnums {self.nondiff_argnums!r} repeats an index.")
    try:
      self._sig: inspect.Signature | None = inspect.signature(self.f)
    except (TypeError, ValueError):
      self._sig = None
    self._rule: list = [None, None]  # fwd, bwd: set by defvjp

  @property
  def fwd(self) -> Callable | None:
    return self._rule[0]

  @property
  def bwd(self) -> Callable | None:
    return self._rule[1]

  def defvjp(self, fwd: Callable, bwd: Callable, symbolic_zeros: bool = False) -> None:
    """Sets the rule: ``fwd(*args) -> (out, res)`` and ``bwd(*nondiff, res, g) -> cts``."""
    if symbolic_zeros:
      raise ConfigError(
        f"{self.api}.defvjp(..., symbolic_zeros=True) is not supported: bwd receives plain "
        f"(zero-filled) cotangents. Drop symbolic_zeros."
      )
    self._rule[:] = [fwd, bwd]

  def graph_filters(self, key: int | str, n_pos: int) -> tuple:
    # Graph mode: each differentiable Module splits into (selected substate, rest).
    if isinstance(key, int) and key not in self.nondiff:
      sel = self.wrt.get(key, ...)
      return (...,) if sel is ... else (sel, ...)
    return ()

  def _positional(self, args: tuple, kwargs: dict) -> tuple:
    if not kwargs:
      return args
    if self._sig is None:
      raise ConfigError(f"{self.api}: keyword arguments need a function with a signature.")
    bound = self._sig.bind(*args, **kwargs)
    if bound.kwargs:
      raise ConfigError(
        f"{self.api}: keyword-only arguments {sorted(bound.kwargs)} are not supported; "
        "make them positional."
      )
    return tuple(bound.args)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    args = self._positional(args, kwargs)
    if self.fwd is None or self.bwd is None:
      raise ConfigError(
        f"{self.api} has no rule yet: call `.defvjp(fwd, bwd)` before calling the function."
      )
    for i in self.nondiff:
      if not 0 <= i < len(args):
        raise ConfigError(
          f"{self.api}: nondiff_argnums contains {i} but the function was called with "
          f"{len(args)} positional arguments."
        )
    call = self.bind(args, {})
    # Differentiated: the selected substate's inexact Params (and inexact plain arrays);
    # the other Variables (BatchStat...) carry updates that are written back.
    masks = [diff_mask(call, s, False, params_only=True) for s in range(len(call.slots))]
    bwd = graph_adapter.custom_vjp_bwd(call.graph, call.slots, self, self.bwd)
    return custom_vjp_tree(self.f, self.fwd, bwd, call, self.nondiff, self.api, masks)


def custom_vjp(
  fun: Callable = MISSING,
  *,
  nondiff_argnums: Sequence[Any] = (),
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.custom_vjp``: a function of Modules with a hand-written VJP.

  In tree mode (the default) ``bwd(*nondiff_args, res, g)`` receives the output cotangent
  ``g`` and returns a tuple with one cotangent per differentiable argument, shaped like it.
  Only inexact ``Param`` leaves (and inexact plain arrays) take their cotangent from ``bwd``;
  other Variables (BatchStat, rng state) get none and may be updated inside the function —
  their updates are written back, as are updates of the arguments in ``nondiff_argnums``.

  Example:
    >>> class Foo(nnx.Module):
    ...   def __init__(self):
    ...     self.x = nnx.Param(jnp.array(1.0))
    >>> @nnx.custom_vjp
    ... def f(m):
    ...   return jnp.sin(m.x[...])
    >>> def f_fwd(m):
    ...   return f(m), (jnp.cos(m.x[...]), m)
    >>> def f_bwd(res, g):
    ...   cos_x, m = res
    ...   m_g = nnx.clone(m)
    ...   m_g.x[...] = 2 * cos_x * g  # deliberately twice the true gradient
    ...   return (m_g,)
    >>> f.defvjp(f_fwd, f_bwd)
    >>> m = Foo()
    >>> bool(jnp.allclose(nnx.grad(f)(m).x[...], 2 * jnp.cos(1.0)))
    True
  """
  return wrap_or_decorate(CustomVjp, locals())
