"""Structure checks for values that must keep their structure: loop and scan carries,
cond/switch operands. They run at trace time only and name the first path that differs.
:func:`final_carry` turns a loop's final carry back into the caller's objects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from .._core.errors import StructureChangeError
from .._core.paths import format_path, jax_path_to_parts
from .._core.variables import Variable, is_variable
from .flat import _get_raw, _kind
from .outputs import keep_callers, leaf_paths


def _describe(kind: Any) -> str:
  if kind is None:
    return "a plain value"
  typ, meta = kind
  return f"a {typ.__name__}" + (f" with metadata {dict(meta)}" if meta else "")


def _paths(tree: Any) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)[0]
  return {jax_path_to_parts(p): _kind(leaf) for p, leaf in flat}


def difference(before: Any, after: Any, root: str) -> str:
  """A sentence naming the first path where ``after``'s Variable structure leaves ``before``'s."""
  b, a = _paths(before), _paths(after)
  for p in b:
    if p not in a:
      return f"{format_path(p, root)} ({_describe(b[p])}) is missing"
  for p in a:
    if p not in b:
      return f"{format_path(p, root)} ({_describe(a[p])}) was added"
  for p in b:
    if b[p] != a[p]:
      return f"{format_path(p, root)} was {_describe(b[p])} and became {_describe(a[p])}"
  return f"the containers of {root} changed type"


def same_structure(plan: Any, tree: Any) -> tuple[bool, list]:
  leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_variable)
  return treedef == plan.treedef and tuple(map(_kind, leaves)) == plan.kinds, leaves


def aval_str(x: Any) -> str:
  t = jax.typeof(x)
  return t.str_short() if hasattr(t, "str_short") else str(t)


def same_type(x: Any, y: Any) -> bool:
  tx, ty = jax.typeof(x), jax.typeof(y)
  return tx.shape == ty.shape and tx.dtype == ty.dtype


def next_carry(
  api: str,
  who: str,
  plan: Any,
  fresh: Sequence[Variable],
  before: Sequence[Any],
  rebuilt: Any,
  out: Any,
  root: str,
) -> list:
  """The values of ``out`` as the next carry, after checking it keeps the carry's structure.

  ``rebuilt`` is the carry the body received (fresh Variables ``fresh`` holding ``before``);
  ``out`` must have its containers, Variable types and metadata, and every leaf's shape
  and dtype. A fresh Variable updated by the body must come back (not a copy in its
  place), or its update would be lost.
  """
  same, leaves = same_structure(plan, out)
  if not same:
    if out is None:
      raise StructureChangeError(
        f"{api}: {who} returned None; it must return the next carry, a value with the "
        f"structure of {root} (e.g. `return module, x`)."
      )
    raise StructureChangeError(
      f"{api}: the carry must keep its structure from step to step, but "
      f"{difference(rebuilt, out, root)} in what {who} returned. Return a value with exactly "
      f"the structure of {root} (same containers, Variable types and metadata)."
    )
  values = [_get_raw(x) if isinstance(x, Variable) else x for x in leaves]
  for i, (old, new) in enumerate(zip(before, values)):
    if not same_type(new, old):
      raise StructureChangeError(
        f"{api}: {who} changed {leaf_paths(rebuilt, root)[i]} from {aval_str(old)} to "
        f"{aval_str(new)}. The carry keeps every leaf's shape and dtype from step to step "
        f"(cast with `.astype` or reshape before returning)."
      )
  for i, var in zip(plan.var_idx, fresh):
    new = _get_raw(var)
    if new is not before[i] and leaves[i] is not var and values[i] is not new:
      raise StructureChangeError(
        f"{api}: {who} updated {leaf_paths(rebuilt, root)[i]} but returned another value in "
        f"its place, so the update would be lost. Return the carry it received (the same "
        f"Module / Variables), updated."
      )
  return values


def check_kept(api: str, who: str, plans: Sequence, before: Sequence, after: Sequence, roots):
  """Raises if ``who`` added/removed Variables or changed their metadata in an argument."""
  for plan, b, a, root in zip(plans, before, after, roots, strict=True):
    if not same_structure(plan, a)[0]:
      raise StructureChangeError(
        f"{api}: {who} changed the Variable structure of {root}: "
        f"{difference(b, a, root)}. Inside {api} the Variables may change value but not "
        f"their number, types, metadata or places (no `sow`, new Variables or metadata "
        f"changes). Make such changes outside the {api.split('.')[-1]} call."
      )


def final_carry(plan: Any, cells: Sequence, final: Sequence, caller: Any) -> tuple[Any, dict]:
  """After a loop: ``(carry, updates)``, the carry rebuilt around the caller's Variables
  (``cells``) and own Modules, and ``{leaf: value}`` of the final Variable values to write."""
  leaves = [c if k is not None else v for c, k, v in zip(cells, plan.kinds, final)]
  return keep_callers(plan.treedef.unflatten(leaves), caller), {i: final[i] for i in plan.var_idx}
