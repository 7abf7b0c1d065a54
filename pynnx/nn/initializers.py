"""Initializers: the ``jax.nn.initializers`` family under Flax's names.

Every initializer is a function ``init(key, shape, dtype=jnp.float32) -> Array``; the
factories (``lecun_normal()``, ``zeros_init()``, ...) return one. ``zeros`` and ``ones`` are
themselves initializers.

Example:
  >>> from pynnx import initializers
  >>> init = initializers.he_uniform()
  >>> init(jax.random.key(0), (3, 4)).shape
  (3, 4)
  >>> initializers.zeros_init()(jax.random.key(0), (2,))
  Array([0., 0.], dtype=float32)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Union, cast

import jax.nn.initializers as _jax_init
from jax.nn.initializers import Initializer, ones, zeros


class _Init:
  """A picklable, comparable initializer: the name of a ``jax.nn.initializers`` factory
  and its arguments. Equal arguments give equal (and equally hashed) initializers, so
  layers stored with them stay equal static attributes and Modules can be pickled."""

  __slots__ = ("name", "args", "kwargs", "_fn")

  def __init__(self, name: str, args: tuple, kwargs: dict):
    self.name = name
    self.args = args
    self.kwargs = tuple(sorted(kwargs.items()))
    self._fn = getattr(_jax_init, name)(*args, **kwargs)

  def __call__(self, key: Any, shape: Any, dtype: Any = None, out_sharding: Any = None) -> Any:
    kwargs = {} if out_sharding is None else {"out_sharding": out_sharding}
    if dtype is None:
      return self._fn(key, shape, **kwargs)
    return self._fn(key, shape, dtype, **kwargs)

  def __reduce__(self):
    return (_Init, (self.name, self.args, dict(self.kwargs)))

  def __eq__(self, other: object) -> bool:
    return isinstance(other, _Init) and (self.name, self.args, self.kwargs) == (
      other.name,
      other.args,
      other.kwargs,
    )

  def __hash__(self) -> int:
    return hash((self.name, self.args, self.kwargs))

  def __repr__(self) -> str:
    parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
    return f"{self.name}({', '.join(parts)})"


def _factory(name: str) -> Callable[..., Initializer]:
  jax_factory = getattr(_jax_init, name)

  def factory(*args: Any, **kwargs: Any) -> Initializer:
    return cast(Initializer, _Init(name, args, kwargs))

  factory.__name__ = name
  factory.__qualname__ = name
  factory.__doc__ = jax_factory.__doc__
  # inspect.signature(nnx.initializers.normal) shows jax's (and flax's) parameters
  factory.__signature__ = inspect.signature(jax_factory)  # type: ignore[attr-defined]
  return factory


constant = _factory("constant")
delta_orthogonal = _factory("delta_orthogonal")
glorot_normal = _factory("glorot_normal")
glorot_uniform = _factory("glorot_uniform")
he_normal = _factory("he_normal")
he_uniform = _factory("he_uniform")
kaiming_normal = _factory("kaiming_normal")
kaiming_uniform = _factory("kaiming_uniform")
lecun_normal = _factory("lecun_normal")
lecun_uniform = _factory("lecun_uniform")
normal = _factory("normal")
orthogonal = _factory("orthogonal")
truncated_normal = _factory("truncated_normal")
uniform = _factory("uniform")
variance_scaling = _factory("variance_scaling")
xavier_normal = _factory("xavier_normal")
xavier_uniform = _factory("xavier_uniform")

DtypeLikeInexact = Any
InitializerLike = Union[Initializer, Callable[..., Any]]


def zeros_init() -> Initializer:
  """An initializer that returns zeros (the factory form of :data:`zeros`)."""
  return zeros


def ones_init() -> Initializer:
  """An initializer that returns ones (the factory form of :data:`ones`)."""
  return ones


__all__ = [
  "DtypeLikeInexact",
  "Initializer",
  "constant",
  "delta_orthogonal",
  "glorot_normal",
  "glorot_uniform",
  "he_normal",
  "he_uniform",
  "kaiming_normal",
  "kaiming_uniform",
  "lecun_normal",
  "lecun_uniform",
  "normal",
  "ones",
  "ones_init",
  "orthogonal",
  "truncated_normal",
  "uniform",
  "variance_scaling",
  "xavier_normal",
  "xavier_uniform",
  "zeros",
  "zeros_init",
]
