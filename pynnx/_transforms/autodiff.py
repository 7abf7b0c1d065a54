"""``nnx.grad``, ``nnx.value_and_grad``, ``nnx.vjp``, ``nnx.jvp``: Param-aware autodiff.

In tree mode the gradient has the shape of the argument: a Module for a Module. Inexact
``Param`` values (and inexact plain arrays) are differentiated; every other Variable of a
Module (BatchStat, rng counters, ...) comes back holding ``None``, so models with running
statistics and dropout just work. Their updates are written back like in any transform. A
State or a bare Variable argument is the caller's own selection: all of its inexact
Variables are differentiated (``Call.selected``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._core.errors import ConfigError, StructureChangeError
from .._core.variables import Param, Variable, is_variable
from . import graph_adapter
from .flat import new_var
from .lift import MISSING, Call, Inner, Transform, wrap_or_decorate

__all__ = ["grad", "value_and_grad", "vjp", "jvp"]


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


def diff_mask(call: Call, s: int, allow_int: bool, params_only: bool = False) -> tuple[bool, ...]:
  """Which leaves of slot ``s`` are differentiated: inexact plain leaves, and inexact
  Variables the call selects (``Call.selected``: Params, or graph mode's filtered substate),
  only Params among them with ``params_only``."""
  selected = call.selected(s)
  return tuple(
    _inexact(value, allow_int)
    and (kind is None or (selected(cell) and (not params_only or issubclass(kind[0], Param))))
    for kind, value, cell in zip(call.flat.plans[s].kinds, call.flat.values[s], call.flat.cells[s])
  )


def grad_like(plan: Any, mask: Sequence[bool], grads: Sequence[Any], form: Callable) -> Any:
  """The gradient shaped like the argument: Variables keep their type, non-diff hold None;
  ``form`` (``Call.user_grad``) gives it the form the user gets."""
  values = merge_masked([None] * len(mask), mask, grads)
  leaves = [g if kind is None else new_var(kind, g) for kind, g in zip(plan.kinds, values)]
  return form(plan.treedef.unflatten(leaves))


def select_masked(values: Sequence[Any], mask: Sequence[bool]) -> list:
  return [v for v, m in zip(values, mask) if m]


def merge_masked(values: Sequence[Any], mask: Sequence[bool], diff: Sequence[Any]) -> list:
  it = iter(diff)
  return [next(it) if m else v for v, m in zip(values, mask)]


def _lifted(transform: Transform, call: Call, masks: dict, has_aux: bool) -> Callable:
  """The pure function of the differentiated leaves that ``jax.vjp``/``jvp``/``grad`` see.

  ``masks[slot]`` marks the differentiated leaves of each differentiated slot; the function
  takes their values (one list per slot) and returns ``(out, (aux, updates))`` — updates
  are auxiliary, so they are primal values.
  """
  static, values, slots = call.static, call.flat.values, tuple(masks)

  def inner(*diff: list) -> tuple:
    full = list(values)
    for s, d in zip(slots, diff):
      full[s] = merge_masked(values[s], masks[s], d)
    with Inner(static, full, transform.transform, call=call) as scope:
      out = scope.call(transform.f)
      if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
          raise ConfigError(
            f"pynnx.{transform.transform}(..., has_aux=True): the function must return a pair "
            f"(output, aux), got {type(out).__name__}. Return a tuple or set has_aux=False."
          )
        out, aux = out
      else:
        aux = None
      aux = scope.output(aux)
      updates = scope.updates()
    return out, (aux, updates)

  return transform.named(inner)


class GradWrapped(Transform):
  """A function transformed by ``nnx.grad`` / ``nnx.value_and_grad``.

  Keyword arguments are traced but never differentiated (as in ``jax.grad``); their
  Variable updates are written back like every other argument's.
  """

  transform = "grad"
  argnums: Any
  has_aux: bool
  holomorphic: bool
  allow_int: bool
  spec_options = ("argnums",)

  def setup(self) -> None:
    argnums = self.argnums
    entries = tuple(argnums) if isinstance(argnums, (list, tuple)) else (argnums,)
    self.diff_argnums = tuple(
      e.argnum if isinstance(e, graph_adapter.DiffState) else e for e in entries
    )
    self.wrt = {e.argnum: e.filter for e in entries if isinstance(e, graph_adapter.DiffState)}

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
    masks = {i: diff_mask(call, i, self.allow_int) for i in argnums}
    diff = tuple(select_masked(flat.values[i], masks[i]) for i in argnums)
    inner = _lifted(self, call, masks, self.has_aux)
    (value, (aux, updates)), grads = jax.value_and_grad(
      lambda d: inner(*d), has_aux=True, holomorphic=self.holomorphic, allow_int=self.allow_int
    )(diff)
    aux = call.finish(aux, updates)
    form = call.user_grad()
    shaped = tuple(grad_like(flat.plans[i], masks[i], g, form) for i, g in zip(argnums, grads))
    g_out = shaped if isinstance(self.argnums, (list, tuple)) else shaped[0]
    return self.result(value, aux, g_out)

  def result(self, value: Any, aux: Any, grads: Any) -> Any:
    return (grads, aux) if self.has_aux else grads


class ValueAndGradWrapped(GradWrapped):
  """A function transformed by ``nnx.value_and_grad``."""

  transform = "value_and_grad"

  def result(self, value: Any, aux: Any, grads: Any) -> Any:
    return ((value, aux), grads) if self.has_aux else (value, grads)


def _make(cls: type[GradWrapped]):
  def transform(
    f: Callable = MISSING,
    *,
    argnums: int | graph_adapter.DiffState | Sequence[int | graph_adapter.DiffState] = 0,
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
    options: dict[str, Any] = dict(f=f, argnums=argnums, has_aux=has_aux, holomorphic=holomorphic)
    options.update(allow_int=allow_int, graph=graph, graph_updates=graph_updates)
    return wrap_or_decorate(cls, options)

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


def _masks(call: Call) -> dict:
  return {s: diff_mask(call, s, False) for s in range(len(call.slots))}


class _ShapeCotangents:
  """Turns ``jax.vjp``'s cotangents (differentiated leaves only) into primal-shaped ones.

  Hashable, so the ``vjp_fn`` built from it is a ``jax.tree_util.Partial``: a pytree that
  can be passed into ``jax.jit`` / ``nnx.jit`` like JAX's own ``vjp_fn``.
  """

  __slots__ = ("plans", "masks", "form", "_key", "_hash")

  def __init__(self, plans: tuple, masks: tuple, form: Callable):
    self.plans = plans
    self.masks = masks
    self.form = form  # Call.user_grad: graph mode's cotangent of a Module is a State
    self._key = (plans, masks, form)
    self._hash = hash(self._key)

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other: object) -> bool:
    return isinstance(other, _ShapeCotangents) and self._key == other._key

  def __call__(self, jax_vjp_fn: Callable, cotangent: Any) -> tuple:
    cts = jax_vjp_fn(cotangent)
    return tuple(grad_like(p, m, c, self.form) for p, m, c in zip(self.plans, self.masks, cts))


def _tangent_values(
  api: str, i: int, name: str, plan: Any, mask: tuple, primal_values: list, tangent: Any
) -> list:
  """The tangents of argument ``i``'s differentiated leaves (raw values, in leaf order)."""
  leaves, treedef = jax.tree_util.tree_flatten(tangent, is_leaf=is_variable)
  if treedef != plan.treedef:
    raise StructureChangeError(
      f"{api}: tangents[{i}] does not have the structure of primals[{i}] ({name}).\n"
      f"  primal:  {plan.treedef}\n  tangent: {treedef}\n"
      "Build the tangent from the primal, e.g. `jax.tree.map(jnp.zeros_like, module)`."
    )
  # tangents of non-differentiated leaves (BatchStat, rng state...) are ignored
  values = select_masked([x._raw_value if isinstance(x, Variable) else x for x in leaves], mask)
  primals = select_masked(primal_values, mask)
  return [jnp.zeros_like(p) if v is None else v for v, p in zip(values, primals)]


class _Linearized(Transform):
  """Shared by vjp and jvp: positional primals, Params differentiated in graph mode too."""

  keywords = "reject"
  has_aux: bool

  def graph_filters(self, key: int | str, n_pos: int) -> tuple:
    return (Param, ...)  # graph mode: a Module's cotangent is the State of its Params


class VjpWrapped(_Linearized):
  """``nnx.vjp(f)``: calling it with primals returns ``(primals_out, vjp_fn[, aux])``.

  Primals are positional (as in ``jax.vjp``).
  """

  transform = "vjp"

  def __call__(self, *primals: Any, **kwargs: Any) -> tuple:
    call = self.bind(primals, kwargs)
    masks = _masks(call)
    diff = [select_masked(v, m) for v, m in zip(call.flat.values, masks.values())]
    out, jax_vjp_fn, (aux, updates) = jax.vjp(
      _lifted(self, call, masks, self.has_aux), *diff, has_aux=True
    )
    aux = call.finish(aux, updates)
    shape = _ShapeCotangents(call.static.plans, tuple(masks.values()), call.user_grad())
    vjp_fn = jax.tree_util.Partial(shape, jax_vjp_fn)
    return (out, vjp_fn, aux) if self.has_aux else (out, vjp_fn)


class JvpWrapped(_Linearized):
  """``nnx.jvp(f)``: call it as ``g(primals, tangents)``."""

  transform = "jvp"
  positional_name = "primals"

  def __call__(self, primals: Any, tangents: Any) -> tuple:
    api = self.api
    for what, seq in (("primals", primals), ("tangents", tangents)):
      if not isinstance(seq, (tuple, list)):
        raise ConfigError(
          f"{api}: {what} must be a tuple with one entry per argument of the function, got "
          f"{type(seq).__name__}. For a single argument write `({what[:-1]},)`."
        )
    if len(primals) != len(tangents):
      raise StructureChangeError(
        f"{api}: got {len(primals)} primals but {len(tangents)} tangents; give one tangent "
        "per primal."
      )
    call = self.bind(tuple(primals), {})
    tangents = call.slot_form(tangents)
    masks = _masks(call)
    diff, tans = [], []
    flat = call.flat
    for i, (plan, vals, t) in enumerate(zip(flat.plans, flat.values, tangents)):
      diff.append(select_masked(vals, masks[i]))
      tans.append(_tangent_values(api, i, call.names[i], plan, masks[i], vals, t))
    inner = _lifted(self, call, masks, self.has_aux)
    out, t_out, (aux, updates) = jax.jvp(inner, tuple(diff), tuple(tans), has_aux=True)
    aux = call.finish(aux, updates)
    return (out, t_out, aux) if self.has_aux else (out, t_out)


def vjp(
  f: Callable = MISSING,
  *primals: Any,
  has_aux: bool = False,
  reduce_axes: Sequence = (),
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.vjp``: Modules are primals, Variable updates are written back.

  ``nnx.vjp(f, *primals)`` returns ``(primals_out, vjp_fn)`` (``(primals_out, vjp_fn, aux)``
  with ``has_aux=True``); ``vjp_fn(cotangent)`` returns one cotangent per primal, shaped like
  it: a Module for a Module, whose non-differentiated Variables (anything but inexact
  ``Param`` values) hold ``None``. ``nnx.vjp(f)`` or ``@nnx.vjp(...)`` returns ``f``
  transformed, to be called with the primals.

  Example:
    >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((1, 2))
    >>> out, vjp_fn = nnx.vjp(lambda m, x: jnp.sum(m(x)), m, x)
    >>> m_grad, x_grad = vjp_fn(jnp.ones_like(out))
    >>> type(m_grad).__name__, m_grad.kernel[...].shape, x_grad.shape
    ('Linear', (2, 3), (1, 2))
  """
  if reduce_axes:
    raise ConfigError("pynnx.vjp: reduce_axes is deprecated in JAX and not supported; drop it.")
  kw: dict[str, Any] = dict(has_aux=has_aux, graph=graph, graph_updates=graph_updates)
  if f is MISSING:
    if primals:
      raise ConfigError("pynnx.vjp: primals were given without a function: nnx.vjp(f, *primals).")
    return lambda fn: VjpWrapped(fn, **kw)
  wrapped = VjpWrapped(f, **kw)
  return wrapped(*primals) if primals else wrapped


def jvp(
  f: Callable = MISSING,
  primals: Any = MISSING,
  tangents: Any = MISSING,
  *,
  has_aux: bool = False,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Lifted ``jax.jvp``: Modules are primals and Modules of tangents are their tangents.

  ``nnx.jvp(f, primals, tangents)`` returns ``(primals_out, tangent_out)`` (plus ``aux`` with
  ``has_aux=True``). Only inexact ``Param`` values and inexact plain arrays are perturbed: the
  tangents given for other Variables (BatchStat, rng state) are ignored, and a tangent
  Variable holding ``None`` counts as zero. ``nnx.jvp(f)`` / ``@nnx.jvp(...)`` returns ``g``
  to call as ``g(primals, tangents)``.

  Example:
    >>> m = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((1, 2))
    >>> m_t = jax.tree.map(jnp.zeros_like, m)
    >>> out, t = nnx.jvp(lambda m, x: jnp.sum(m(x)), (m, x), (m_t, jnp.ones_like(x)))
    >>> bool(jnp.allclose(t, jnp.sum(m.kernel[...])))
    True
  """
  kw: dict[str, Any] = dict(has_aux=has_aux, graph=graph, graph_updates=graph_updates)
  if f is MISSING:
    return lambda fn: JvpWrapped(fn, **kw)
  wrapped = JvpWrapped(f, **kw)
  if primals is MISSING and tangents is MISSING:
    return wrapped
  if primals is MISSING or tangents is MISSING:
    raise ConfigError("pynnx.jvp: give both primals and tangents: nnx.jvp(f, primals, tangents).")
  return wrapped(primals, tangents)
