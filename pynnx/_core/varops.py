"""Python operators of a Variable: they act on its value, as the value's own operators do.

``v + 1``, ``v @ w``, ``-v``, ``v < 0``, ``round(v)``, ``x in v``, ``v(...)`` all read the
value first. The augmented forms (``v += 1``) raise: Python would rebind the name ``v`` to the
result and leave the Variable unchanged. Write ``v[...] += 1`` instead.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from .errors import VariableInPlaceError

_BINARY: list[tuple[str, Callable[[Any, Any], Any]]] = [
  ("add", operator.add),
  ("sub", operator.sub),
  ("mul", operator.mul),
  ("truediv", operator.truediv),
  ("floordiv", operator.floordiv),
  ("mod", operator.mod),
  ("pow", operator.pow),
  ("matmul", operator.matmul),
  ("and", operator.and_),
  ("or", operator.or_),
  ("xor", operator.xor),
  ("lshift", operator.lshift),
  ("rshift", operator.rshift),
  ("divmod", divmod),
]
_COMPARISONS: list[tuple[str, Callable[[Any, Any], Any]]] = [
  ("lt", operator.lt),
  ("le", operator.le),
  ("gt", operator.gt),
  ("ge", operator.ge),
  ("eq", operator.eq),
  ("ne", operator.ne),  # elementwise, like arrays (and Flax)
]
_UNARY: list[tuple[str, Callable[[Any], Any]]] = [
  ("neg", operator.neg),
  ("pos", operator.pos),
  ("abs", operator.abs),
  ("invert", operator.invert),
  ("ceil", math.ceil),
  ("floor", math.floor),
  ("trunc", math.trunc),
  ("complex", complex),
]


def _binary(cls: type, op: Callable, reflected: bool = False):
  if reflected:

    def method(self, other):
      return op(other.get_value() if isinstance(other, cls) else other, self.get_value())
  else:

    def method(self, other):
      return op(self.get_value(), other.get_value() if isinstance(other, cls) else other)

  return method


def _unary(op: Callable):
  return lambda self: op(self.get_value())


def _no_inplace(variable: Any, name: str) -> Any:
  # Without this, Python falls back to `v = v + x`: the name is rebound to a plain array and
  # the Variable silently keeps its old value.
  kind = type(variable).__name__
  raise VariableInPlaceError(
    f"In-place operator `__i{name}__` on a {kind} Variable itself is not supported (it would "
    f"rebind the name to a plain array and leave the {kind} unchanged). Update its contents: "
    f"`variable[...] += x` or `variable.value = variable.value + x`."
  )


def _round(self: Any, ndigits: int = 0) -> Any:
  return round(self.get_value(), ndigits)  # ndigits=0 as Flax: `round(v)` keeps the dtype


def _contains(self: Any, item: Any) -> bool:
  return item in self.get_value()


def _call(self: Any, *args: Any, **kwargs: Any) -> Any:
  return self.get_value()(*args, **kwargs)


def install_operators(cls: type) -> None:
  """Defines the operators above on ``cls`` (the Variable base class)."""
  for name, op in _BINARY:
    setattr(cls, f"__{name}__", _binary(cls, op))
    setattr(cls, f"__r{name}__", _binary(cls, op, reflected=True))
    if name != "divmod":  # divmod has no augmented form
      setattr(cls, f"__i{name}__", (lambda n: lambda self, x: _no_inplace(self, n))(name))
  for name, op in _COMPARISONS:
    setattr(cls, f"__{name}__", _binary(cls, op))
  for name, uop in _UNARY:
    setattr(cls, f"__{name}__", _unary(uop))
  for name, method in (("round", _round), ("contains", _contains), ("call", _call)):
    setattr(cls, f"__{name}__", method)
