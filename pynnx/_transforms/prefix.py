"""Prefix specs: one axis / spec per flattened leaf of an argument.

``in_axes``, ``out_axes``, shard_map's ``in_specs`` and jit's shardings describe an argument
with a *prefix* of it: a single value (``0``, ``None``, ``P('x')``) stands for every leaf
below it, and a container of the argument's shape (a tuple, a dict, a Module built with
``jax.tree.map(lambda _: 0, model)``) gives each part its own. A Variable inside a prefix
is a leaf whose value is the spec of that Variable.

:func:`broadcast_prefix` turns such a prefix into one spec per leaf of the argument's lift
plan (Variables are leaves), the form every transform hands to JAX.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from .._core.errors import AxisSpecError
from .._core.paths import format_path, key_to_part
from .._core.variables import Variable, is_variable

__all__ = ["broadcast_prefix", "is_spec_leaf"]


_LEAF: Any = jax.tree_util.tree_structure(0)


def _is_node(x: Any) -> bool:
  # an empty container (e.g. the empty State of a shared root) is a node, not a spec leaf
  return x is not None and jax.tree_util.tree_structure(x) != _LEAF


def is_spec_leaf(x: Any) -> bool:
  """Whether ``x`` ends a prefix: ``None``, a Variable, or anything that is not a pytree node."""
  return x is None or isinstance(x, Variable) or not _is_node(x)


def _children(x: Any) -> tuple[list, Any]:
  """One level of ``x``: ``[(key, child), ...]`` and the node's one-level treedef."""
  items, treedef = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
  return [(key_to_part(path[0]), child) for path, child in items], treedef


def _n_leaves(x: Any) -> int:
  return len(jax.tree_util.tree_leaves(x, is_leaf=is_variable))


def _describe(x: Any) -> str:
  if x is None:
    return "None"
  if isinstance(x, Variable):
    return f"a {type(x).__name__}"
  if isinstance(x, dict):
    return f"a dict with keys ({', '.join(sorted(map(repr, x)))})"
  if isinstance(x, (tuple, list)):
    return f"a {type(x).__name__} of length {len(x)}"
  if _is_node(x):
    return f"a {type(x).__name__}"
  if hasattr(x, "shape") and hasattr(x, "dtype"):
    return f"an array of shape {tuple(x.shape)}"
  return f"a leaf of type {type(x).__name__}"


def broadcast_prefix(
  prefix: Any,
  arg: Any,
  plan: Any,
  api: str,
  argname: str,
  *,
  what: str = "in_axes",
  leaf_ok: Callable[[Any], bool] | None = None,
  leaf_desc: str = "",
) -> tuple:
  """One spec per leaf of ``plan`` (the lift plan of ``arg``), from a prefix of ``arg``.

  Args:
    prefix: an int / None / other spec leaf for the whole argument, or a pytree prefix of it.
    arg: the argument the plan was computed from (used to walk the prefix).
    plan: its :class:`~pynnx._transforms.flat.ArgPlan`; the result has ``len(plan.kinds)``
      entries.
    api: the transform, for error messages (``"pynnx.vmap(f)"``).
    argname: the argument's name, the root of paths in error messages.
    what: which option the prefix came from (``"in_axes"``, ``"in_specs"``...).
    leaf_ok: validates each spec leaf; ``leaf_desc`` says what was expected.

  Raises:
    AxisSpecError: the prefix does not fit the argument, or a leaf fails ``leaf_ok``.

  Example:
    >>> from pynnx._transforms.lift import flatten_args
    >>> arg = {'a': jnp.ones(2), 'b': (jnp.ones(3), jnp.ones(4))}
    >>> plan = flatten_args([arg]).plans[0]
    >>> broadcast_prefix({'a': None, 'b': 0}, arg, plan, 'pynnx.vmap(f)', 'x')
    (None, 0, 0)
  """
  out: list = []

  def fail(path: tuple, spec: Any, sub: Any) -> None:
    raise AxisSpecError(
      f"{api}: {what} does not fit argument {argname!r} at {format_path(path, argname)}: the "
      f"spec has {_describe(spec)} where the argument has {_describe(sub)}. A spec is a prefix "
      f"of its argument: one value for the whole argument, or a container of the same "
      f"structure (e.g. `jax.tree.map(lambda _: 0, model)` for a Module) whose leaves are specs."
    )

  def leaf(spec: Any, path: tuple) -> Any:
    if leaf_ok is not None and not leaf_ok(spec):
      raise AxisSpecError(
        f"{api}: {what} for argument {argname!r} has {spec!r} at "
        f"{format_path(path, argname)}; expected {leaf_desc}."
      )
    return spec

  def match(spec: Any, sub: Any, path: tuple) -> None:
    if isinstance(spec, Variable):
      if not isinstance(sub, Variable):
        fail(path, spec, sub)
      out.append(leaf(spec.raw_value, path))
    elif is_spec_leaf(spec):
      out.extend([leaf(spec, path)] * _n_leaves(sub))
    else:
      if isinstance(sub, Variable) or not _is_node(sub):
        fail(path, spec, sub)
      (s_items, s_def), (a_items, a_def) = _children(spec), _children(sub)
      if s_def != a_def:
        fail(path, spec, sub)
      for (key, s_child), (_, a_child) in zip(s_items, a_items):
        match(s_child, a_child, (*path, key))

  if is_spec_leaf(prefix) and not isinstance(prefix, Variable):
    return (leaf(prefix, ()),) * len(plan.kinds)
  match(prefix, arg, ())
  return tuple(out)
