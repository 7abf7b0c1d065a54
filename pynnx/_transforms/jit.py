"""``nnx.jit``: ``jax.jit`` over the lift."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax

from .._core.config import resolve_graph
from .._core.errors import AxisSpecError, ConfigError
from . import graph_adapter
from .lift import (
  MISSING,
  InnerFrame,
  MethodAware,
  SharingCheck,
  all_values,
  argnames_of,
  changed,
  check_not_bound,
  flatten_args,
  rebuild_arg,
  wrap_or_decorate,
  write_back,
)
from .prefix import broadcast_prefix, is_spec_leaf

__all__ = ["jit", "JitWrapped"]


def _as_tuple(x: Any, kind: type) -> tuple:
  if x is None:
    return ()
  if isinstance(x, kind):
    return (x,)
  return tuple(x)


def _resolve(
  nums: Any, names: Any, argnames: list[str] | None
) -> tuple[tuple[int, ...], tuple[str, ...]]:
  """Like jax.jit: one of argnums/argnames given -> the other inferred from the signature."""
  nums, names = _as_tuple(nums, int), _as_tuple(names, str)
  if argnames is not None:
    if nums and not names:
      names = tuple(argnames[i] for i in nums if i < len(argnames))
    elif names and not nums:
      nums = tuple(argnames.index(n) for n in names if n in argnames)
  return nums, names


class JitWrapped(MethodAware):
  """A function transformed by ``nnx.jit``; call it like the original."""

  def __init__(
    self,
    fun: Callable,
    *,
    in_shardings: Any,
    out_shardings: Any,
    static_argnums: Any,
    static_argnames: Any,
    donate_argnums: Any,
    donate_argnames: Any,
    keep_unused: bool,
    device: Any,
    backend: Any,
    inline: bool,
    graph: bool | None,
    graph_updates: bool | None,
  ):
    check_not_bound(fun, "jit")
    functools.update_wrapper(self, fun)
    self.fun = fun
    argnames = argnames_of(fun)
    self.static_argnums, self.static_argnames = _resolve(static_argnums, static_argnames, argnames)
    donate_nums, donate_names = _resolve(donate_argnums, donate_argnames, argnames)
    self.graph = graph
    self.graph_updates = graph_updates
    name = getattr(fun, "__name__", "fun")
    self.api = f"pynnx.jit({name})"
    dyn_names = [n for i, n in enumerate(argnames or []) if i not in self.static_argnums]
    self.check = SharingCheck(self.api, dyn_names)

    static_nums = set(self.static_argnums)

    def dyn_index(i: int) -> int:
      return i - sum(1 for s in static_nums if s < i)

    jit_donate = tuple(dyn_index(i) + 1 for i in donate_nums if i not in static_nums)
    jit_donate_names = tuple(n for n in donate_names if n not in self.static_argnames)
    self._graph_specs = graph_adapter.specs_force_graph(self.api, graph, in_shardings)
    if graph_adapter.uses_graph_specs(out_shardings):
      raise ConfigError(
        f"{self.api}: StateSharding in out_shardings is not supported; give the outputs "
        f"Sharding/PartitionSpec prefixes, or constrain Variables inside the function with "
        f"jax.lax.with_sharding_constraint."
      )
    # Per dynamic argument: one spec (for all its leaves) or a prefix tree of it.
    self._arg_shardings: tuple | None = None
    if isinstance(in_shardings, (tuple, list)):
      self._arg_shardings = tuple(s for i, s in enumerate(in_shardings) if i not in static_nums)
    elif in_shardings is not None:
      self._arg_shardings = (in_shardings,)  # broadcast to every argument below
    # Donated arguments return every Variable value (not only changed ones), so each
    # donated buffer has an output to alias and no cell is left holding a deleted buffer.
    donated = frozenset(dyn_index(i) for i in donate_nums if i not in static_nums)
    donated_kw = frozenset(jit_donate_names)

    fun_ = fun
    static_argnums_ = self.static_argnums

    def inner(static: tuple, *values: Any, **kwvalues: Any):
      plans, static_args, kwplans, static_kw, graph_static = static
      with InnerFrame("jit"):
        args, fresh = [], []
        for plan, vals in zip(plans, values):
          a, fr = rebuild_arg(plan, vals)
          args.append(a)
          fresh.append(fr)
        kwargs = {}
        kwfresh = {}
        for name, plan in kwplans:
          kwargs[name], kwfresh[name] = rebuild_arg(plan, kwvalues[name])
        for pos, value in zip(static_argnums_, static_args):
          args.insert(pos, value)
        kwargs.update(static_kw)
        if graph_static is not None:
          args, kwargs, finish = graph_adapter.enter(graph_static, args, kwargs)
        out = fun_(*args, **kwargs)
        if graph_static is not None:
          out = finish(out)
        updates = [
          (all_values if i in donated else changed)(p, fr, vals)
          for i, (p, fr, vals) in enumerate(zip(plans, fresh, values))
        ]
        kwupdates = {
          n: (all_values if n in donated_kw else changed)(p, kwfresh[n], kwvalues[n])
          for n, p in kwplans
        }
      return out, updates, kwupdates

    jit_out_shardings = out_shardings
    if out_shardings is not None:
      jit_out_shardings = (out_shardings, None, None)
    self._make_jitted = functools.partial(
      jax.jit,
      inner,
      static_argnums=(0,),
      donate_argnums=jit_donate,
      donate_argnames=jit_donate_names or None,
      out_shardings=jit_out_shardings,
      keep_unused=keep_unused,
      device=device,
      backend=backend,
      inline=inline,
    )
    # Leaf specs apply to a whole argument's value list as they are; prefix trees and
    # StateShardings are expanded per leaf for each argument structure (_jitted_for).
    leaf_specs = self._arg_shardings is None or all(is_spec_leaf(x) for x in self._arg_shardings)
    self._simple_shardings = leaf_specs and not self._graph_specs
    in_sh = self._arg_shardings
    if in_sh is not None and len(in_sh) == 1 and not isinstance(in_shardings, (tuple, list)):
      in_sh = in_sh[0]
    self._jitted = self._make_jitted(in_shardings=in_sh if self._simple_shardings else None)
    self._by_shardings: dict = {}

  def _jitted_for(self, args: Sequence[Any], plans: tuple) -> Any:
    """The jitted function for this argument structure when shardings are per-leaf."""
    hit = self._by_shardings.get(plans)
    if hit is not None:
      return hit
    specs = self._arg_shardings
    assert specs is not None
    if len(specs) == 1 and len(args) != 1:
      specs = specs * len(args)
    if len(specs) != len(args):
      raise AxisSpecError(
        f"{self.api}: in_shardings has {len(specs)} entries for {len(args)} dynamic arguments."
      )
    per_leaf = [
      list(
        broadcast_prefix(
          graph_adapter.node_prefix(spec, arg),
          arg,
          plan,
          self.api,
          f"args[{i}]",
          what="in_shardings",
        )
      )
      for i, (spec, arg, plan) in enumerate(zip(specs, args, plans))
    ]
    jitted = self._make_jitted(in_shardings=tuple(per_leaf))
    if len(self._by_shardings) > 32:
      self._by_shardings.clear()
    self._by_shardings[plans] = jitted
    return jitted

  def _prepare(self, args: tuple, kwargs: dict) -> tuple:
    """``(jitted, static, flat, kwvalues, kwflat)`` for one call."""
    graph_static = None
    if self._graph_specs or resolve_graph(self.graph):
      specs = self._arg_shardings or ()

      def filters(path: tuple, root: Any) -> tuple:
        if len(path) == 2 and path[0] == 0 and len(specs) == 1:
          return graph_adapter.spec_filters(specs[0])
        if len(path) == 2 and path[0] == 0 and path[1] < len(specs):
          return graph_adapter.spec_filters(specs[path[1]])
        return ()

      args, kwargs, graph_static = graph_adapter.to_tree(
        args, kwargs, self.api, self.graph_updates, filters if self._graph_specs else ()
      )
    static, flat, kwvalues, kwflat = self._prepare_tree(args, kwargs, graph_static)
    if self._simple_shardings:
      return self._jitted, static, flat, kwvalues, kwflat
    dyn = [a for i, a in enumerate(args) if i not in self.static_argnums]
    return self._jitted_for(dyn, flat.plans), static, flat, kwvalues, kwflat

  def _prepare_tree(self, args: tuple, kwargs: dict, graph_static: Any) -> tuple:
    dyn: Sequence[Any]
    if self.static_argnums:
      static_args = tuple(args[i] for i in self.static_argnums if i < len(args))
      dyn = [a for i, a in enumerate(args) if i not in self.static_argnums]
    else:
      static_args, dyn = (), args
    if self.static_argnames and kwargs:
      static_kw = tuple((n, kwargs[n]) for n in self.static_argnames if n in kwargs)
      kwargs = {n: v for n, v in kwargs.items() if n not in self.static_argnames}
    else:
      static_kw = ()
    flat = flatten_args(dyn, self.check)
    kwplans: tuple = ()
    kwvalues: dict = {}
    kwflat = None
    if kwargs:
      names = sorted(kwargs)
      kwflat = flatten_args([kwargs[n] for n in names])
      kwplans = tuple(zip(names, kwflat.plans))
      kwvalues = dict(zip(names, kwflat.values))
    static = (flat.plans, static_args, kwplans, static_kw, graph_static)
    return static, flat, kwvalues, kwflat

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    jitted, static, flat, kwvalues, kwflat = self._prepare(args, kwargs)
    out, updates, kwupdates = jitted(static, *flat.values, **kwvalues)
    write_back(flat, updates)
    if kwflat is not None:
      write_back(kwflat, [kwupdates[name] for name, _ in static[2]])
    if static[4] is not None:
      out = graph_adapter.exit(static[4], out)
    return out

  def lower(self, *args: Any, **kwargs: Any) -> Any:
    """``jax.jit(...).lower`` for these arguments."""
    jitted, static, flat, kwvalues, _ = self._prepare(args, kwargs)
    return jitted.lower(static, *flat.values, **kwvalues)

  def trace(self, *args: Any, **kwargs: Any) -> Any:
    """``jax.jit(...).trace`` for these arguments."""
    jitted, static, flat, kwvalues, _ = self._prepare(args, kwargs)
    return jitted.trace(static, *flat.values, **kwvalues)

  def eval_shape(self, *args: Any, **kwargs: Any) -> Any:
    """Shapes and dtypes of the outputs, without running anything."""
    jitted, static, flat, kwvalues, _ = self._prepare(args, kwargs)
    out, _, _ = jitted.eval_shape(static, *flat.values, **kwvalues)
    return out


def jit(
  fun: Callable = MISSING,
  *,
  in_shardings: Any = None,
  out_shardings: Any = None,
  static_argnums: int | Sequence[int] | None = None,
  static_argnames: str | Sequence[str] | None = None,
  donate_argnums: int | Sequence[int] | None = None,
  donate_argnames: str | Sequence[str] | None = None,
  keep_unused: bool = False,
  device: Any = None,
  backend: str | None = None,
  inline: bool = False,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.jit``: Modules are arguments, Variable updates are written back.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> class Counter(nnx.Module):
    ...   def __init__(self):
    ...     self.count = nnx.BatchStat(jnp.array(0))
    >>> @nnx.jit
    ... def step(c):
    ...   c.count[...] += 1
    >>> c = Counter(); step(c); step(c); int(c.count[...])
    2
  """
  kw = dict(
    in_shardings=in_shardings,
    out_shardings=out_shardings,
    static_argnums=static_argnums,
    static_argnames=static_argnames,
    donate_argnums=donate_argnums,
    donate_argnames=donate_argnames,
    keep_unused=keep_unused,
    device=device,
    backend=backend,
    inline=inline,
    graph=graph,
    graph_updates=graph_updates,
  )
  return wrap_or_decorate(JitWrapped, fun, kw)
