"""Interop with Equinox and Flax Linen (``nnx.bridge``).

Equinox: ``from_equinox``, ``to_equinox``, ``convert_weights``. Linen, under Flax's names:
``ToNNX``, ``lazy_init``, ``ToLinen``, ``to_linen``, ``Module`` / ``compact`` (Linen-style
pynnx Modules), ``with_partitioning``, ``NNXMeta`` and the ``variables`` helpers. The Linen names load ``flax`` on first use, so pynnx imports without it.
"""

import importlib
from typing import Any

from ..nn import initializers as initializers
from .convert import convert_weights as convert_weights
from .equinox import Buffer as Buffer
from .equinox import EquinoxModule as EquinoxModule
from .equinox import from_equinox as from_equinox
from .equinox import to_equinox as to_equinox

# name -> submodule that defines it (imported, with flax, when the name is first read)
_LINEN = {
  "ToNNX": "linen",
  "ToLinen": "linen",
  "lazy_init": "linen",
  "to_linen": "linen",
  "Module": "linen_module",
  "compact": "linen_module",
  "current_context": "linen_module",
  "current_module": "linen_module",
  "nnx_in_bridge_mdl": "linen_interop",
  "linen_in_bridge_mdl": "linen_interop",
  "NNXMeta": "variables",
  "with_partitioning": "variables",
  "variables": None,
}

__all__ = [
  "initializers",
  "convert_weights",
  "Buffer",
  "EquinoxModule",
  "from_equinox",
  "to_equinox",
  *_LINEN,
]


def __getattr__(name: str) -> Any:
  if name not in _LINEN:
    raise AttributeError(f"module 'pynnx.bridge' has no attribute {name!r}")
  try:
    module = importlib.import_module(f"{__name__}.{_LINEN[name] or name}")
  except ImportError as e:
    if e.name is None or not e.name.startswith("flax"):
      raise
    raise ImportError(
      f"nnx.bridge.{name} wraps Flax Linen and needs flax: `pip install flax`."
    ) from e
  return module if _LINEN[name] is None else getattr(module, name)


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_LINEN))
