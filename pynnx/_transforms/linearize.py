"""``nnx.vjp`` and ``nnx.jvp``: ``jax.vjp`` / ``jax.jvp`` over the lift.

Like ``nnx.grad``, both are Param-aware in tree mode: inexact ``Param`` values (and inexact
plain arrays) are the differentiated inputs; every other Variable (BatchStat, rng counters)
rides along as a constant. ``vjp_fn`` therefore returns cotangents shaped like the primals
(a Module for a Module) whose non-differentiated Variables hold ``None``, and ``jvp`` ignores
the tangents given for non-differentiated Variables. Variable updates made by the function
are written back once, when the forward pass runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._core.errors import ConfigError, StructureChangeError
from .._core.variables import Param, Variable, is_variable
from . import graph_adapter
from .autodiff import diff_mask, grad_like
from .lift import MISSING, Call, Inner, Transform

__all__ = ["vjp", "jvp"]


def _split(values: Sequence[Any], mask: Sequence[bool]) -> list:
  return [v for v, m in zip(values, mask) if m]


def _merge(values: Sequence[Any], mask: Sequence[bool], diff: Sequence[Any]) -> list:
  it = iter(diff)
  return [next(it) if m else v for v, m in zip(values, mask)]


def _lifted(f: Callable, call: Call, masks: Sequence[tuple], has_aux: bool, api: str, frame: str):
  """The pure function of the differentiated leaves that ``jax.vjp``/``jax.jvp`` sees.

  It returns ``(out, (aux, updates))``; the updates are auxiliary, so they are primal values.
  """
  static, values = call.static, call.flat.values

  def inner(*diff: list) -> tuple:
    full = [_merge(v, m, d) for v, m, d in zip(values, masks, diff)]
    with Inner(static, full, frame) as scope:
      out = scope.call(f)
      if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
          raise ConfigError(
            f"{api} with has_aux=True: the function must return a pair (output, aux), got "
            f"{type(out).__name__}. Return a tuple or set has_aux=False."
          )
        out, aux = out
      else:
        aux = None
      aux = scope.output(aux)
      updates = scope.updates()
    return out, (aux, updates)

  return inner


def _masks(call: Call) -> list:
  return [diff_mask(p, v, False) for p, v in zip(call.flat.plans, call.flat.values)]


class _ShapeCotangents:
  """Turns ``jax.vjp``'s cotangents (differentiated leaves only) into primal-shaped ones.

  Hashable, so the ``vjp_fn`` built from it is a ``jax.tree_util.Partial``: a pytree that
  can be passed into ``jax.jit`` / ``nnx.jit`` like JAX's own ``vjp_fn``.
  """

  __slots__ = ("plans", "masks", "graph", "_hash")

  def __init__(self, plans: tuple, masks: tuple, graph: bool):
    self.plans = plans
    self.masks = masks
    self.graph = graph  # graph mode: a Module's cotangent is the State of its Params
    self._hash = hash((plans, masks, graph))

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other: object) -> bool:
    return isinstance(other, _ShapeCotangents) and (self.plans, self.masks, self.graph) == (
      other.plans,
      other.masks,
      other.graph,
    )

  def __call__(self, jax_vjp_fn: Callable, cotangent: Any) -> tuple:
    cts = jax_vjp_fn(cotangent)
    shaped = tuple(grad_like(p, m, c) for p, m, c in zip(self.plans, self.masks, cts))
    if self.graph:
      shaped = tuple(graph_adapter.selected_state(g) for g in shaped)
    return shaped


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
  out = []
  for leaf, m, primal in zip(leaves, mask, primal_values):
    if not m:
      continue  # tangents of non-differentiated leaves (BatchStat, rng state...) are ignored
    value = leaf._raw_value if isinstance(leaf, Variable) else leaf
    out.append(jnp.zeros_like(primal) if value is None else value)
  return out


class VjpWrapped(Transform):
  """``nnx.vjp(f)``: calling it with primals returns ``(primals_out, vjp_fn[, aux])``.

  Primals are positional (as in ``jax.vjp``).
  """

  transform = "vjp"
  keywords = "reject"

  def __init__(self, f: Callable, *, has_aux: bool, graph: Any, graph_updates: Any):
    super().__init__(f, graph=graph, graph_updates=graph_updates)
    self.has_aux = has_aux
    self._built()

  def graph_filters(self, key: int | str, n_pos: int) -> tuple:
    return (Param, ...)  # graph mode: a Module's cotangent is the State of its Params

  def __call__(self, *primals: Any, **kwargs: Any) -> tuple:
    call = self.bind(primals, kwargs)
    masks = _masks(call)
    diff = [_split(v, m) for v, m in zip(call.flat.values, masks)]
    inner = _lifted(self.f, call, masks, self.has_aux, self.api, "vjp")
    out, jax_vjp_fn, (aux, updates) = jax.vjp(self.named(inner), *diff, has_aux=True)
    aux = call.finish(aux, updates)
    shape = _ShapeCotangents(call.static.plans, tuple(masks), call.graph is not None)
    vjp_fn = jax.tree_util.Partial(shape, jax_vjp_fn)
    return (out, vjp_fn, aux) if self.has_aux else (out, vjp_fn)


class JvpWrapped(Transform):
  """``nnx.jvp(f)``: call it as ``g(primals, tangents)``."""

  transform = "jvp"
  keywords = "reject"

  def __init__(self, f: Callable, *, has_aux: bool, graph: Any, graph_updates: Any):
    super().__init__(f, graph=graph, graph_updates=graph_updates)
    self.has_aux = has_aux
    self._built()

  def graph_filters(self, key: int | str, n_pos: int) -> tuple:
    return (Param, ...)

  def slot_names(self, layout: Sequence[int | str]) -> list[str]:
    known = self.argnames or []
    return [
      k if isinstance(k, str) else known[k] if k < len(known) else f"primals[{k}]" for k in layout
    ]

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
    if call.graph is not None:
      filters = [self.graph_filters(k, len(primals)) for k in call.static.layout]
      tangents, _ = graph_adapter.to_tree(tangents, filters, api, self.graph_updates)
    masks = _masks(call)
    diff, tans = [], []
    flat = call.flat
    for i, (plan, vals, mask, t) in enumerate(zip(flat.plans, flat.values, masks, tangents)):
      diff.append(_split(vals, mask))
      tans.append(_tangent_values(api, i, call.names[i], plan, mask, vals, t))
    inner = _lifted(self.f, call, masks, self.has_aux, api, "jvp")
    out, t_out, (aux, updates) = jax.jvp(self.named(inner), tuple(diff), tuple(tans), has_aux=True)
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
