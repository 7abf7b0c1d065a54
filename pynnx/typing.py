"""Typed Modules: jaxtyping annotations on fields and methods, checked by ``nnx.typed``.

``@nnx.typed`` on a Module class checks every annotated field once the outermost constructor
has returned, all fields in one jaxtyping dimension memo (``din`` must agree between ``kernel``
and ``bias``). ``@nnx.typed`` on a method checks its arguments and return value with the
instance's field dimensions bound. A Variable is checked by its value: ``nnx.Param[Float[Array,
"a b"]]`` asks for a ``Param`` whose value is a float ``(a, b)`` array, and a Variable given
where ``Float[Array, ...]`` is expected is checked by its value too. Checks run when Python runs
the code: inside ``nnx.jit`` that is at trace time only, so a compiled call pays nothing.

Non-array annotations (``int``, a Module class, ``list[int]``...) are checked with
``isinstance``, or with beartype's ``is_bearable`` when beartype is installed (the
``typecheck`` extra); without beartype, subscripted non-array forms are not checked.
"""

from __future__ import annotations

import collections
import functools
import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import jaxtyping

from ._core.errors import PynnxError
from ._core.pytree import Pytree
from ._core.variables import Variable

_is_bearable: Callable[..., bool] | None
try:  # optional: the `typecheck` extra
  from beartype.door import is_bearable as _is_bearable
except ImportError:  # pragma: no cover - exercised only without beartype
  _is_bearable = None


class TypeCheckError(PynnxError, jaxtyping.TypeCheckError):
  """A typed field, argument or return value does not fit its annotation.

  It is jaxtyping's ``TypeCheckError`` (so existing ``except`` clauses keep working) and a
  ``TypeError``.
  """


_HINTS_ATTR = "_pynnx_typed_hints"
_SCOPE_ATTR = "_pynnx_typed_scope"  # names visible where @nnx.typed was applied


@typing.no_type_check
def _is_array_hint(hint: Any) -> bool:
  return isinstance(hint, type) and issubclass(hint, jaxtyping.AbstractArray)


@typing.no_type_check
def _describe(value: Any) -> str:
  if isinstance(value, Variable):
    return f"{type(value).__name__} holding {_describe(value.get_value())}"
  shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
  if shape is not None and dtype is not None:
    return f"{dtype}{list(shape)}"
  return type(value).__name__


@typing.no_type_check
def _hint_name(hint: Any) -> str:
  if _is_array_hint(hint):
    array = hint.array_type
    array_name = " | ".join(
      t.__name__.rsplit(".", 1)[-1] for t in typing.get_args(array) or (array,)
    )
    return f"{hint.__name__.split('[')[0]}[{array_name}, {hint.dim_str!r}]"
  origin = typing.get_origin(hint)
  if isinstance(origin, type) and issubclass(origin, Variable):
    return f"{origin.__name__}[{', '.join(_hint_name(a) for a in typing.get_args(hint))}]"
  if origin in (typing.Union, types.UnionType):
    return " | ".join(_hint_name(a) for a in typing.get_args(hint))
  if hint is type(None):
    return "None"
  return getattr(hint, "__name__", repr(hint))


# `no_type_check`: jaxtyping's import hook (and pytest plugin) must not wrap the checker's own
# functions in jaxtyped memos of their own; the dimension memo is the one opened below.
@typing.no_type_check
class _Checker:
  """Checks values in one jaxtyping memo, remembering where each named dimension was bound."""

  def __init__(self, owner: str):
    self.owner = owner
    self.bound: dict[str, tuple[int, str]] = {}

  def check(self, where: str, value: Any, hint: Any) -> None:
    problem = self._problem(where, value, hint)
    if problem is not None:
      raise TypeCheckError(
        f"nnx.typed: {self.owner}{where} should be {_hint_name(hint)} but is "
        f"{_describe(value)}: {problem}."
      )

  def _problem(self, where: str, value: Any, hint: Any) -> str | None:
    if hint is Any or hint is object:
      return None
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
      return self._problem(where, value, typing.get_args(hint)[0])
    if origin is typing.ClassVar:
      return None
    if origin in (typing.Union, types.UnionType):
      arms = typing.get_args(hint)
      if value is None and type(None) in arms:
        return None
      problems = [self._problem(where, value, a) for a in arms if a is not type(None)]
      if any(p is None for p in problems):
        return None
      return "; or ".join(p for p in problems if p)
    if isinstance(origin, type) and issubclass(origin, Variable):
      if not isinstance(value, origin):
        return f"expected a {origin.__name__}"
      args = typing.get_args(hint)
      return self._problem(where, value.get_value(), args[0]) if args else None
    if _is_array_hint(hint):
      if isinstance(value, Variable) and not isinstance(value, hint.array_type):
        value = value.get_value()  # a Variable where an array is expected: its value
      if isinstance(value, hint):
        self._record(where, value, hint)
        return None
      return self._explain(value, hint)
    if isinstance(hint, type) and origin is None:
      return None if isinstance(value, hint) else f"expected a {hint.__name__}"
    if _is_bearable is not None:
      return None if _is_bearable(value, hint) else "beartype rejects it"
    return None

  # -- dimension bookkeeping, for messages that name the dimension that disagreed -------------
  def _positions(self, hint: Any, ndim: int) -> list[tuple[int, Any]]:
    dims = hint.dims
    if hint.index_variadic is None:
      return list(enumerate(dims)) if len(dims) == ndim else []
    k = hint.index_variadic
    after = len(dims) - k - 1
    return list(enumerate(dims[:k])) + [(ndim - after + i, d) for i, d in enumerate(dims[k + 1 :])]

  def _record(self, where: str, value: Any, hint: Any) -> None:
    shape = tuple(value.shape)
    for i, dim in self._positions(hint, len(shape)):
      name = getattr(dim, "name", "")
      if type(dim).__name__ == "_NamedDim" and name not in self.bound and shape[i] != 1:
        self.bound[name] = (shape[i], f"{self.owner}{where}")

  def _explain(self, value: Any, hint: Any) -> str:
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None:
      return f"expected an array of type {hint.array_type.__name__}"
    if isinstance(hint.dtypes, tuple | list) and str(dtype) not in hint.dtypes:
      return f"dtype {dtype} is not one of the {hint.__name__.split('[')[0]} dtypes"
    dims = hint.dims
    if hint.index_variadic is None and len(dims) != len(shape):
      return f"it has {len(shape)} dimensions, the annotation {len(dims)}"
    for i, dim in self._positions(hint, len(shape)):
      name = getattr(dim, "name", "")
      if type(dim).__name__ == "_NamedDim" and name in self.bound:
        size, source = self.bound[name]
        if shape[i] != size and not (dim.broadcastable and shape[i] == 1):
          return f"dimension {name!r} is {shape[i]} here but {size} in {source}"
      fixed = getattr(dim, "size", None)
      if type(dim).__name__ == "_FixedDim" and shape[i] != fixed:
        return f"dimension {i} is {shape[i]}, the annotation fixes it to {fixed}"
    return f"its shape does not fit {hint.dim_str!r} (bound so far: {self._bindings()})"

  def _bindings(self) -> str:
    return ", ".join(f"{k}={v[0]}" for k, v in self.bound.items()) or "nothing"


@typing.no_type_check
def _field_hints(cls: type) -> dict[str, Any]:
  hints = cls.__dict__.get(_HINTS_ATTR)
  if hints is None:
    try:
      resolved = _resolve(cls)
    except Exception as e:
      raise TypeError(
        f"nnx.typed: cannot resolve the annotations of {cls.__name__}: {e}. Import every name "
        f"used in an annotation at module level."
      ) from e
    hints = {
      k: v
      for k, v in resolved.items()
      if not k.startswith("_") and typing.get_origin(v) is not typing.ClassVar
    }
    setattr(cls, _HINTS_ATTR, hints)
  return hints


@typing.no_type_check
def _resolve(obj: Any, scope: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """``get_type_hints``, also seeing the names visible where ``nnx.typed`` was applied."""
  try:
    return typing.get_type_hints(obj, include_extras=True)
  except NameError:
    if scope is None:
      scope = getattr(obj, _SCOPE_ATTR, None)  # a class inherits its typed base's scope
    if scope is None:
      raise
    return typing.get_type_hints(obj, localns=scope, include_extras=True)


@typing.no_type_check
def _scope(depth: int) -> Mapping[str, Any]:
  """The names visible at the caller: its globals (live) and, in a function, its locals."""
  frame = sys._getframe(depth + 1)
  local = {} if frame.f_locals is frame.f_globals else dict(frame.f_locals)
  return collections.ChainMap(local, frame.f_globals)


@typing.no_type_check
def _check_fields(checker: _Checker, obj: Any, prefix: str) -> None:
  for name, hint in _field_hints(type(obj)).items():
    if name not in obj.__dict__:
      continue  # not set by this constructor (e.g. a subclass-only attribute)
    checker.check(f"{prefix}{name}", obj.__dict__[name], hint)


@typing.no_type_check
@jaxtyping.jaxtyped(typechecker=None)  # one jaxtyping dimension memo per check
def _check_object(obj: Any) -> None:
  _check_fields(_Checker(type(obj).__name__), obj, ".")


@typing.no_type_check
def _typed_class(cls: type, scope: Mapping[str, Any]) -> type:
  if not (isinstance(cls, type) and issubclass(cls, Pytree)):
    raise TypeError(
      f"nnx.typed decorates pynnx Modules/Pytrees and their methods, got the class "
      f"{cls.__name__}. For other classes use jaxtyping's @jaxtyped(typechecker=beartype)."
    )
  if getattr(cls, "_pynnx_typed", False):
    return cls  # a subclass of a typed class: already checked (with all its annotations)
  inherited = cls._pynnx_freeze

  @typing.no_type_check
  def _pynnx_freeze(self: Any) -> None:
    inherited(self)
    _check_object(self)

  cls._pynnx_freeze = _pynnx_freeze  # type: ignore[method-assign]
  cls._pynnx_typed = True  # type: ignore[attr-defined]
  setattr(cls, _SCOPE_ATTR, scope)
  return cls


@typing.no_type_check
def _typed_function(fn: Callable, scope: Mapping[str, Any]) -> Callable:
  signature = inspect.signature(fn)
  name = getattr(fn, "__qualname__", getattr(fn, "__name__", "function")).split("<locals>.")[-1]
  hints_box: list[dict] = []

  @typing.no_type_check
  def hints() -> dict:
    if not hints_box:
      try:
        hints_box.append(_resolve(fn, scope))
      except Exception as e:
        raise TypeError(f"nnx.typed: cannot resolve the annotations of {name}: {e}.") from e
    return hints_box[0]

  @typing.no_type_check
  @jaxtyping.jaxtyped(typechecker=None)
  def checked(*args: Any, **kwargs: Any) -> Any:
    checker = _Checker(name)
    try:
      bound = signature.bind(*args, **kwargs)
    except TypeError as e:
      raise TypeError(f"{name}: {e}") from None
    params = list(signature.parameters)
    if params and params[0] == "self" and isinstance(args[0] if args else None, Pytree):
      _check_fields(checker, args[0], "(self).")
    hs = hints()
    for arg, value in bound.arguments.items():
      if arg in hs and signature.parameters[arg].kind not in (
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
      ):
        checker.check(f"({arg}=)", value, hs[arg])
    out = fn(*args, **kwargs)
    if "return" in hs:
      checker.check(" return value", out, hs["return"])
    return out

  functools.update_wrapper(checked, fn)
  return checked


def typed(obj: Any) -> Any:
  """Checks jaxtyping annotations of a Module's fields, or of a function's arguments.

  On a Module class, every annotated field is checked once the outermost constructor has
  returned, in one dimension memo. On a method, the arguments and return value are checked with
  the instance's field dimensions bound. A failure raises :class:`TypeCheckError` (a
  ``jaxtyping.TypeCheckError``) naming the field or argument and the dimension that disagreed.

  Example:
    >>> from jaxtyping import Array, Float
    >>> @nnx.typed
    ... class Affine(nnx.Module):
    ...   w: nnx.Param[Float[Array, "din dout"]]
    ...   b: nnx.Param[Float[Array, "dout"]]
    ...   def __init__(self, din, dout):
    ...     self.w = nnx.Param(jnp.zeros((din, dout)))
    ...     self.b = nnx.Param(jnp.zeros((dout,)))
    ...   @nnx.typed
    ...   def __call__(self, x: Float[Array, "batch din"]) -> Float[Array, "batch dout"]:
    ...     return x @ self.w + self.b
    >>> Affine(2, 3)(jnp.ones((4, 2))).shape
    (4, 3)
    >>> try:
    ...   Affine(2, 3)(jnp.ones((4, 5)))
    ... except nnx.TypeCheckError as e:
    ...   print(str(e).splitlines()[0])
    nnx.typed: Affine.__call__(x=) should be Float[Array, 'batch din'] but is float32[4, 5]: dimension 'din' is 5 here but 2 in Affine.__call__(self).w.
  """
  if isinstance(obj, type):
    return _typed_class(obj, _scope(1))
  if callable(obj):
    return _typed_function(obj, _scope(1))
  raise TypeError(f"nnx.typed decorates a Module class or a function, got {type(obj).__name__}.")


__all__ = ["TypeCheckError", "typed"]
