"""``nnx.jit``: ``jax.jit`` over the lift.

Options: ``static_argnums/argnames`` (bound by the lift), ``donate_argnums/argnames``,
``in_shardings`` (a prefix spec per positional argument, StateSharding in graph mode),
``out_shardings``. Updates travel as extra outputs: the changed cells, or every cell of a
donated argument (each donated buffer then has an output to alias, and no Variable keeps
a deleted buffer).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax

from .._core.errors import AxisSpecError, ConfigError
from . import graph_adapter
from .flat import all_values, changed
from .lift import MISSING, Inner, Transform, resolve_static, wrap_or_decorate
from .prefix import broadcast_prefix, is_spec_leaf

__all__ = ["jit", "JitWrapped"]


class JitWrapped(Transform):
  """A function transformed by ``nnx.jit``; call it like the original."""

  transform = "jit"
  spec_options = ("in_shardings",)
  in_shardings: Any
  out_shardings: Any
  donate_argnums: Any
  donate_argnames: Any
  keep_unused: bool
  device: Any
  backend: str | None
  inline: bool

  def setup(self) -> None:
    in_shardings, out_shardings = self.in_shardings, self.out_shardings
    if graph_adapter.uses_graph_specs(out_shardings):
      raise ConfigError(
        f"{self.api}: StateSharding in out_shardings is not supported; give the outputs "
        f"Sharding/PartitionSpec prefixes, or constrain Variables inside the function with "
        f"jax.lax.with_sharding_constraint."
      )
    nums, names = resolve_static(self.donate_argnums, self.donate_argnames, self.argnames)
    self.donate = (frozenset(nums), frozenset(names))
    # Leaf specs apply to a whole slot as they are; prefix trees and StateShardings are
    # expanded per leaf for each argument structure (_jitted).
    per_arg = in_shardings if isinstance(in_shardings, (tuple, list)) else (in_shardings,)
    self._simple = not self.forced_graph and all(is_spec_leaf(s) for s in per_arg)
    f, donate = self.f, self.donate

    def inner(static: Any, *values: Any):
      with Inner(static, values, "jit") as scope:
        out = scope.output(scope.call(f))
        updates = [
          (all_values if _donated(key, donate) else changed)(p, fr, v)
          for key, p, (_, fr), v in zip(static.layout, static.plans, scope.rebuilt, values)
        ]
      # Cached calls learn whether the output holds InputRefs from the length of the update
      # list (one more entry than slots; a list is unflattened in C++, a custom node is not).
      return out, updates + [None] if scope.marked else updates

    self._jit_kw = dict(
      keep_unused=self.keep_unused,
      device=self.device,
      backend=self.backend,
      inline=self.inline,
    )
    self._inner = self.named(inner)
    self._by_layout: dict = {}

  def slot_spec(self, key: int | str, n_pos: int) -> Any:
    specs = self.in_shardings
    if isinstance(key, str) or specs is None:
      return None
    if isinstance(specs, (tuple, list)):
      return specs[key] if key < len(specs) else None
    return specs

  def _jitted(self, call: Any) -> Any:
    """The jitted inner function for this call's layout (and argument structure when
    shardings are per-leaf), built once and cached."""
    static = call.static
    hit = static.memo.get("jit")
    if hit is not None:
      return hit
    cache_key = static  # one jitted function per call structure (equal structures share it)
    hit = self._by_layout.get(cache_key)
    if hit is not None:
      static.memo["jit"] = hit
      return hit
    donate = tuple(s for s, key in enumerate(static.layout) if _donated(key, self.donate))
    in_sh = None
    if self.in_shardings is not None:
      specs = self.specs_for(call)
      if isinstance(self.in_shardings, (tuple, list)) and len(self.in_shardings) != static.n_pos:
        raise AxisSpecError(
          f"{self.api}: in_shardings has {len(self.in_shardings)} entries for "
          f"{static.n_pos} positional arguments."
        )
      if self._simple:
        in_sh = tuple(specs)
      else:
        in_sh = tuple(
          list(broadcast_prefix(s, a, p, self.api, n, what="in_shardings"))
          for s, a, p, n in zip(specs, call.slots, static.plans, call.names)
        )
    out_sh = self.out_shardings
    jitted = jax.jit(
      # The call structure is bound, not a static argument: no hashing on the hot path.
      functools.partial(self._inner, static),
      donate_argnums=donate,
      in_shardings=in_sh,
      out_shardings=None if out_sh is None else (call.out_prefix(out_sh, None), None),
      **self._jit_kw,
    )
    if len(self._by_layout) > 32:
      self._by_layout.clear()
    self._by_layout[cache_key] = static.memo["jit"] = jitted
    return jitted

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    call = self.bind(args, kwargs)
    out, updates = self._jitted(call)(*call.flat.values)
    call.marked = len(updates) > len(call.slots)
    return call.finish(out, updates)

  def lower(self, *args: Any, **kwargs: Any) -> Any:
    """``jax.jit(...).lower`` for these arguments."""
    call = self.bind(args, kwargs)
    return self._jitted(call).lower(*call.flat.values)

  def trace(self, *args: Any, **kwargs: Any) -> Any:
    """``jax.jit(...).trace`` for these arguments."""
    call = self.bind(args, kwargs)
    return self._jitted(call).trace(*call.flat.values)

  def eval_shape(self, *args: Any, **kwargs: Any) -> Any:
    """Shapes and dtypes of the outputs, without running anything."""
    call = self.bind(args, kwargs)
    out = self._jitted(call).eval_shape(*call.flat.values)[0]
    return call.finish(out, [], structural=False)


def _donated(key: int | str, donate: tuple) -> bool:
  return key in donate[1] if isinstance(key, str) else key in donate[0]


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

  Positional and keyword arguments are traced alike (unless static); a Variable may appear
  only once across all of them in tree mode. An input Module or Variable returned comes
  back as the caller's own object.

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
  return wrap_or_decorate(JitWrapped, locals())
