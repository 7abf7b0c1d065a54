"""``nnx.capture``: return what ``Module.sow`` / ``Module.perturb`` record as outputs.

While the wrapped function runs, every Module of the watched Module's tree holds one Variable
per captured type (attribute ``__captures__``); ``sow`` and ``perturb`` write there instead of
adding attributes, so the Module's structure is the same before and after the call. Because
they are Variables, they travel through transforms like any other state: ``capture`` works
inside a transformed function and around one (``nnx.capture(nnx.jit(f), nnx.Intermediate)``).
Afterwards the records are gathered into a State by Module path and the attribute is removed.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from .._core.errors import TransformArgumentError
from .._core.module import CAPTURES, Module
from .._core.state import State
from .._core.variables import Variable

__all__ = ["capture"]


def _init_by_path(init: Any) -> dict[tuple, list[tuple[str, Variable]]]:
  """``{module path: [(name, Variable), ...]}`` from an ``init`` State."""
  out: dict[tuple, list[tuple[str, Variable]]] = {}
  for path, var in init.flat_state():
    if not isinstance(var, Variable):
      raise TransformArgumentError(
        f"nnx.capture: init must be a State of Variables (as returned by nnx.capture); the "
        f"entry at {'/'.join(map(str, path))} is a {type(var).__name__}."
      )
    out.setdefault(tuple(path[:-1]), []).append((path[-1], var))
  return out


def _wrap_methods(cls: type, variable_type: type, patched: list) -> None:
  """Makes the public methods and ``__call__`` defined by ``cls`` sow their outputs."""
  for name, method in list(cls.__dict__.items()):
    if not callable(method) or isinstance(method, type):
      continue
    if name.startswith("_") and name != "__call__":
      continue

    def wrapper(self: Any, *args: Any, _method: Any = method, _name: str = name, **kw: Any):
      out = _method(self, *args, **kw)
      self.sow(variable_type, _name, out)
      return out

    functools.update_wrapper(wrapper, method)
    patched.append((cls, name, method))
    setattr(cls, name, wrapper)


def capture(
  fn: Callable | type[Variable],
  *var_types: type[Variable],
  init: State | None = None,
  method_outputs: type[Variable] | None = None,
) -> Callable:
  """Wraps ``fn`` so that it also returns what its Modules ``sow`` (or ``perturb``).

  Args:
    fn: a function whose first argument is the Module to watch, a Module (its ``__call__``)
      or a bound method of a Module. A Variable type instead starts a decorator:
      ``nnx.capture(nnx.Intermediate)(fn)``.
    *var_types: the Variable types to return, one State each (``sow`` of other types is not
      kept while capturing).
    init: a State (by Module path) of initial records; ``perturb`` adds these values, which is
      how gradients with respect to intermediates are taken.
    method_outputs: also sow the output of every public method and ``__call__`` of the
      watched Modules' classes under the method's name, with this Variable type.

  Returns:
    A function returning ``out`` when ``var_types`` is empty, ``(out, state)`` for one type
    and ``(out, state_1, ..., state_n)`` for several.

  Example:
    >>> class Net(nnx.Module):
    ...   def __init__(self):
    ...     self.lin = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    ...   def __call__(self, x):
    ...     y = self.lin(x)
    ...     self.sow(nnx.Intermediate, 'features', y)
    ...     return y.sum()
    >>> out, inter = nnx.capture(Net(), nnx.Intermediate)(jnp.ones(2))
    >>> inter['features'][...][0].shape
    (2,)
  """
  if isinstance(fn, type) and issubclass(fn, Variable):
    types = (fn, *var_types)
    return lambda f: capture(f, *types, init=init, method_outputs=method_outputs)
  for t in var_types:
    if not (isinstance(t, type) and issubclass(t, Variable)):
      raise TransformArgumentError(
        f"nnx.capture: var_types must be Variable types (e.g. nnx.Intermediate), got {t!r}."
      )
  if inspect.ismethod(fn) and isinstance(fn.__self__, Module):
    owner: Module | None = fn.__self__
  elif isinstance(fn, Module):
    owner = fn
  else:
    owner = None

  @functools.wraps(fn, updated=())
  def wrapper(*args: Any, **kwargs: Any) -> Any:
    module = owner if owner is not None else (args[0] if args else None)
    if not isinstance(module, Module):
      raise TransformArgumentError(
        f"nnx.capture: the first argument of the wrapped function must be the Module to "
        f"watch, got {type(module).__name__}. Pass the Module first, or wrap the Module or "
        f"one of its bound methods instead."
      )
    seeds = _init_by_path(init) if init is not None else {}
    modules = list(module.iter_modules())
    for path, m in modules:
      if CAPTURES in m.__dict__:
        raise TransformArgumentError(
          f"nnx.capture: {type(m).__name__} at path {path} is already being captured; "
          f"nested captures of the same Module are not supported."
        )
    for path, m in modules:
      records: dict[type, dict] = {t: {} for t in var_types}
      for name, var in seeds.get(tuple(path), []):
        records.setdefault(type(var), {})[name] = var.raw_value
      m._pynnx_setattr(CAPTURES, tuple(t(v) for t, v in records.items()))
    patched: list = []
    try:
      if method_outputs is not None:
        for cls in {type(m) for _, m in modules}:
          _wrap_methods(cls, method_outputs, patched)
      out = fn(*args, **kwargs)
    finally:
      for cls, name, method in reversed(patched):
        setattr(cls, name, method)
      found = []
      for path, m in modules:
        cells = m.__dict__.get(CAPTURES, ())
        if CAPTURES in m.__dict__:
          m._pynnx_delattr(CAPTURES)
        for cell in cells:
          for name, value in cell.raw_value.items():
            found.append(((*path, name), type(cell)(value)))
    if not var_types:
      return out
    states = [State.from_flat_path([(p, v) for p, v in found if type(v) is t]) for t in var_types]
    return (out, *states)

  return wrapper
