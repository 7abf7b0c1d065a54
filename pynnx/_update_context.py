"""``nnx.update_context``: split/merge bookkeeping across a raw ``jax`` transform.

Inside ``with nnx.update_context(tag):`` the first ``nnx.split_context(tag)`` block is the
*outer* split: it remembers the objects it splits (its roots). Splits and merges inside the
jax transform (``merge_context(tag, inner=True)``, later ``split_context(tag)`` blocks) are
plain ones. The *outer* merge (``merge_context(tag, inner=False)``) rebuilds each result and
writes it into the matching outer root, in split order: Variables take the new values and
metadata, changed static attributes (``model.eval()`` inside) are set, Variables added inside
(``sow``) are adopted, removed ones dropped. It returns the caller's own objects, as Flax does.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Hashable
from typing import Any

from ._core.errors import UpdateContextError
from ._core.pytree import List, Pytree
from ._core.variables import Variable

_STACK: contextvars.ContextVar[tuple[UpdateContext, ...]] = contextvars.ContextVar(
  "pynnx_update_contexts", default=()
)


class UpdateContext:
  """The bookkeeping of one ``update_context`` block (see :func:`update_context`)."""

  def __init__(self, tag: Hashable):
    self.tag = tag
    self.outer_roots: list[Any] | None = None  # set by the outer split, cleared by the merge

  def __repr__(self) -> str:
    return f"UpdateContext(tag={self.tag!r})"

  def begin_split(self) -> list[Any] | None:
    """The list an outer split records its roots in, or None for an inner split."""
    if self.outer_roots is None:
      self.outer_roots = []
      return self.outer_roots
    return None

  def take_outer_roots(self, api: str) -> list[Any]:
    """The outer split's roots, for the outer merge (which ends this round)."""
    roots = self.outer_roots
    if roots is None:
      raise UpdateContextError(
        f"{api}: the outer merge (`inner=False`) of update context {self.tag!r} found no outer "
        f"split; call `nnx.split_context({self.tag!r})` on the objects before the transform."
      )
    self.outer_roots = None
    return roots


class _UpdateContextManager:
  """What :func:`update_context` returns: a ``with`` block or a decorator."""

  def __init__(self, tag: Hashable):
    self.tag = tag
    self._tokens: list[contextvars.Token] = []

  def __enter__(self) -> UpdateContext:
    ctx = UpdateContext(self.tag)
    self._tokens.append(_STACK.set((*_STACK.get(), ctx)))
    return ctx

  def __exit__(self, *exc: Any) -> None:
    _STACK.reset(self._tokens.pop())

  def __call__(self, f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
      with _UpdateContextManager(self.tag):
        return f(*args, **kwargs)

    return wrapper


def update_context(tag: Hashable) -> Any:
  """Split/merge bookkeeping for a raw jax transform, so objects come back as themselves.

  Works as a ``with`` block (yielding the :class:`UpdateContext`) or as a decorator. The
  first ``nnx.split_context(tag)`` block inside is the outer split; ``nnx.merge_context(tag,
  inner=True)`` / ``nnx.split_context(tag)`` inside the transform are plain; the outer
  ``nnx.merge_context(tag, inner=False)`` writes the results into the outer objects and
  returns them.

  Example:
    >>> class Counter(nnx.Module):
    ...   def __init__(self):
    ...     self.count = nnx.BatchStat(jnp.array(0))
    >>> m1 = Counter()
    >>> with nnx.update_context("step"):
    ...   with nnx.split_context("step") as ctx:
    ...     graphdef, state = ctx.split(m1)
    ...   @jax.jit
    ...   def f(graphdef, state):
    ...     with nnx.merge_context("step", inner=True) as ctx:
    ...       m2 = ctx.merge(graphdef, state)
    ...     m2.count[...] += 1
    ...     with nnx.split_context("step") as ctx:
    ...       return ctx.split(m2)
    ...   graphdef, state = f(graphdef, state)
    ...   with nnx.merge_context("step", inner=False) as ctx:
    ...     m3 = ctx.merge(graphdef, state)
    >>> m3 is m1, int(m1.count[...])
    (True, 1)
  """
  return _UpdateContextManager(tag)


def current_update_context(tag: Hashable) -> UpdateContext:
  """The innermost active :class:`UpdateContext` of ``tag``.

  Example:
    >>> with nnx.update_context("a") as ctx:
    ...   nnx.current_update_context("a") is ctx
    True
  """
  for ctx in reversed(_STACK.get()):
    if ctx.tag == tag:
      return ctx
  raise UpdateContextError(
    f"No update context found for tag {tag!r}: call this inside "
    f"`with nnx.update_context({tag!r}):` (or a function decorated with it)."
  )


_MISSING: Any = object()


def _same(a: Any, b: Any) -> bool:
  if a is b:
    return True
  if isinstance(a, (Pytree, Variable)) or isinstance(b, (Pytree, Variable)):
    return False
  try:
    return bool(a == b)
  except Exception:  # noqa: BLE001  (arrays of several elements, exotic __eq__: not the same)
    return False


def transplant(orig: Any, new: Any, memo: dict[int, Any]) -> Any:
  """Writes ``new`` (rebuilt from a transform's output) into ``orig`` (the caller's object)
  where their types match, and returns what the caller's graph should hold."""
  if id(new) in memo:
    return memo[id(new)]
  if isinstance(new, Variable):
    if type(orig) is type(new):
      orig.update_from_state(new)
      memo[id(new)] = orig
      return orig
    return new
  if not (isinstance(new, Pytree) and type(orig) is type(new)):
    return new
  memo[id(new)] = orig
  od: dict[Any, Any] = orig.__dict__
  nd: dict[Any, Any] = new.__dict__
  key: Any  # attribute names, List indices or Dict keys
  for key, nv in list(new._pynnx_items()):
    ov = od.get(key, _MISSING)
    res = memo.get(id(nv), nv) if ov is _MISSING else transplant(ov, nv, memo)
    if ov is _MISSING or not _same(ov, res):
      orig._pynnx_setattr(key, res)
  stale: list[Any] = [k for k, _ in orig._pynnx_items() if k not in nd]
  if isinstance(orig, List):  # remove list items from the end, so indices stay valid
    stale.sort(key=lambda k: -k if isinstance(k, int) else 0)
  for key in stale:
    orig._pynnx_delattr(key)
  return orig
