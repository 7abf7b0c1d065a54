"""pynnx layers and Linen modules as submodules of an ``nnx.bridge.Module``.

``nnx_in_bridge_mdl(factory)`` builds a pynnx Module from the running bridge module's rng
streams; ``linen_in_bridge_mdl(linen_module)`` wraps a Linen module in a
:class:`~pynnx.bridge.ToNNX`. Inside a ``@compact`` method the result becomes an attribute
(auto-named, or ``name=``); in ``setup()`` assign it yourself. Either way ``apply`` loads the
given variables into it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pynnx as nnx
from pynnx._core.errors import LinenBridgeError

from .linen import _BRIDGE_SCOPE, ToNNX
from .linen_module import _auto_name, _Frame, current_context

__all__ = ["linen_in_bridge_mdl", "nnx_in_bridge_mdl"]


def _parent(what: str) -> _Frame:
  frame = current_context()
  if frame is None or frame.module.__dict__.get("_pynnx_bridge_scope") is None:
    raise LinenBridgeError(
      f"nnx.bridge.{what}() runs inside a bridge Module's `setup()` or `@compact` method "
      f"during `init` / `apply`; outside one, build the module directly."
    )
  return frame


def _attach(frame: _Frame, module: Any, name: str | None, kind: type) -> Any:
  if frame.in_compact:
    setattr(frame.module, name if name is not None else _auto_name(frame, kind), module)
  return module


def nnx_in_bridge_mdl(factory: Callable[[nnx.Rngs], nnx.Module], name: str | None = None) -> Any:
  """``factory(rngs)`` as a submodule of the running bridge Module.

  Example:
    >>> class Head(nnx.bridge.Module):
    ...   @nnx.bridge.compact
    ...   def __call__(self, x):
    ...     return nnx.bridge.nnx_in_bridge_mdl(lambda rngs: nnx.Linear(2, 3, rngs=rngs))(x)
    >>> variables = Head().init(jax.random.key(0), jnp.ones((1, 2)))
    >>> variables["params"]["Linear_0"]["kernel"].shape
    (2, 3)
  """
  frame = _parent("nnx_in_bridge_mdl")
  rngs = frame.module.__dict__["_pynnx_bridge_scope"].rngs
  if not isinstance(rngs, nnx.Rngs):  # apply without rngs: the values come from variables
    rngs = nnx.Rngs(0)
  module = factory(rngs)
  return _attach(frame, module, name, type(module))


def linen_in_bridge_mdl(linen_module: Any, name: str | None = None) -> ToNNX:
  """``nnx.bridge.ToNNX(linen_module)`` as a submodule of the running bridge Module.

  Example:
    >>> from flax import linen
    >>> class Wrap(nnx.bridge.Module):
    ...   @nnx.bridge.compact
    ...   def __call__(self, x):
    ...     return nnx.bridge.linen_in_bridge_mdl(linen.Dense(3))(x)
    >>> variables = Wrap().init(jax.random.key(0), jnp.ones((1, 2)))
    >>> variables["params"]["Dense_0"]["kernel"].shape
    (2, 3)
  """
  frame = _parent("linen_in_bridge_mdl")
  scope = frame.module.__dict__["_pynnx_bridge_scope"]
  rngs = scope.rngs if isinstance(scope.rngs, nnx.Rngs) else None
  module = ToNNX(linen_module, rngs=rngs)
  module.__dict__[_BRIDGE_SCOPE] = scope
  return _attach(frame, module, name, type(linen_module))
