"""Hides pynnx's own frames from the tracebacks of errors raised inside transforms.

JAX filters its internal frames out of tracebacks (``JAX_TRACEBACK_FILTERING``); a library
joins that filter by registering its source files, as Equinox does for its own. The only
registration hook JAX has is in ``jax._src.traceback_util`` — a private module — so this is
the single file of pynnx that touches ``jax._src`` (DESIGN.md allows exactly this one use).
If a JAX release moves the hook, the import fails softly and tracebacks simply keep the
pynnx frames: nothing else depends on it.
"""

from __future__ import annotations

import os
from typing import Any

try:  # the documented exception: JAX's traceback filter has no public registration API
  from jax._src import traceback_util as _traceback_util
except ImportError:  # pragma: no cover - only on a JAX that moved the module
  _traceback_util = None  # type: ignore[assignment]


def api_boundary(fn: Any) -> Any:
  """``fn`` as a JAX API boundary: an error leaving it has the hidden frames filtered."""
  if _traceback_util is None:  # pragma: no cover
    return fn
  return _traceback_util.api_boundary(fn)


def hide_frames(path: str) -> None:
  """Registers the directory of ``path`` (a pynnx source file) with JAX's traceback filter."""
  if _traceback_util is None:  # pragma: no cover
    return
  register = getattr(_traceback_util, "register_exclusion", None)
  if register is not None:
    register(os.path.dirname(os.path.abspath(path)))
