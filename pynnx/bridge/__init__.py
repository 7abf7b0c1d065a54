"""Interop with Equinox: ``nnx.bridge.from_equinox``, ``to_equinox``, ``convert_weights``."""

from .convert import convert_weights as convert_weights
from .equinox import Buffer as Buffer
from .equinox import EquinoxModule as EquinoxModule
from .equinox import from_equinox as from_equinox
from .equinox import to_equinox as to_equinox

__all__ = ["convert_weights", "Buffer", "EquinoxModule", "from_equinox", "to_equinox"]
