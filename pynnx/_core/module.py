"""Module: the base class of layers and models.

A Module is a :class:`~pynnx.Pytree` (a registered, frozen-once-built JAX pytree) with the
conveniences of Flax NNX: ``sow``, ``perturb``, ``train()`` / ``eval()``,
``set_attributes``, ``iter_modules`` and ``iter_children``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import jax.numpy as jnp

from . import filters as filterlib
from . import pytree
from .config import resolve_graph
from .errors import AttributeNotFoundError, NotAVariableError
from .pytree import _CACHE_KEYS, Pytree
from .reprs import block, format_size, module_context, size_bytes, value_repr
from .tree import check_no_sharing, flatten_with_paths
from .variables import Perturbation, RngState, Variable, variable_type_from_name

Path = tuple[Hashable, ...]


def _append(prev: tuple, value: Any) -> tuple:
  return (*prev, value)


def _init_tuple() -> tuple:
  return ()


CAPTURES = "__captures__"
"""Attribute ``nnx.capture`` sets on every Module it watches: a tuple with one Variable per
captured type, holding ``{name: value}`` of what ``sow`` / ``perturb`` recorded."""


def _capture_cell(captures: Any, variable_type: type) -> Variable | None:
  cell: Variable
  for cell in captures:
    if type(cell) is variable_type:
      return cell
  return None


class Module(Pytree):
  """Base class for all layers and models.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> class MLP(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.layers = [nnx.Linear(2, 4, rngs=rngs), nnx.Linear(4, 1, rngs=rngs)]
    ...   def __call__(self, x):
    ...     for layer in self.layers:
    ...       x = layer(x)
    ...     return x
    >>> MLP(nnx.Rngs(0))(jnp.ones((3, 2))).shape
    (3, 1)
  """

  _pynnx_is_module = True

  # -- sow / perturb ---------------------------------------------------------------------
  def sow(
    self,
    variable_type: type[Variable] | str,
    name: str,
    value: Any,
    reduce_fn: Callable[[Any, Any], Any] = _append,
    init_fn: Callable[[], Any] = _init_tuple,
  ) -> None:
    """Records ``value`` in a Variable attribute ``name`` (a tuple of values by default)."""
    if isinstance(variable_type, str):
      variable_type = variable_type_from_name(variable_type, allow_register=True)
    captures = self.__dict__.get(CAPTURES)
    if captures is not None:  # inside nnx.capture: record there (other types are not kept)
      cell = _capture_cell(captures, variable_type)
      if cell is not None:
        values = dict(cell.value)
        values[name] = reduce_fn(values[name] if name in values else init_fn(), value)
        cell.value = values
      return
    current = self.__dict__.get(name)
    if isinstance(current, Variable):
      if not isinstance(current, variable_type):
        raise NotAVariableError(
          f"{type(self).__name__}.sow: attribute {name!r} already holds a "
          f"{type(current).__name__}, not a {variable_type.__name__}."
        )
      current[...] = reduce_fn(current[...], value)
    elif current is not None:
      raise NotAVariableError(
        f"{type(self).__name__}.sow: attribute {name!r} already holds a "
        f"{type(current).__name__}; choose another name."
      )
    else:
      self._pynnx_setattr(name, variable_type(reduce_fn(init_fn(), value)))

  def perturb(self, name: str, value: Any, variable_type: type[Variable] = Perturbation) -> Any:
    """Adds a zero Perturbation ``name`` to ``value``; its gradient is d(loss)/d(value)."""
    captures = self.__dict__.get(CAPTURES)
    if captures is not None:  # inside nnx.capture: the perturbation lives there
      cell = _capture_cell(captures, variable_type)
      if cell is None:
        return value
      values = dict(cell.value)
      if name not in values:
        values[name] = jnp.zeros_like(value)
        cell.value = values
      return values[name] + value
    current = self.__dict__.get(name)
    if current is None:
      current = variable_type(jnp.zeros_like(value))
      self._pynnx_setattr(name, current)
    return value + current[...]

  # -- static attribute updates ------------------------------------------------------------
  def set_attributes(
    self,
    *filters: Any,
    raise_if_not_found: bool = True,
    graph: bool | None = None,
    **attributes: Any,
  ) -> None:
    """Sets static attributes on this Module and its submodules that have them.

    ``filters`` restrict which submodules are touched (default: all). With ``graph=False``
    a Variable or Module reachable twice is an error (tree mode); otherwise (the default) a
    shared submodule is visited once.
    """
    if graph is False:
      check_no_sharing(flatten_with_paths(self)[0], f"{type(self).__name__}.set_attributes")
    preds = [filterlib.to_predicate(f) for f in filters] or [filterlib.to_predicate(...)]
    found = set()
    for path, module in self.iter_modules():
      if not any(p(path, module) for p in preds):
        continue
      for name, value in attributes.items():
        if name in module.__dict__:
          module._pynnx_setattr(name, value)
          found.add(name)
    missing = set(attributes) - found
    if missing and raise_if_not_found:
      raise AttributeNotFoundError(
        f"set_attributes: no submodule of {type(self).__name__} has the attribute(s) "
        f"{sorted(missing)}; pass raise_if_not_found=False to ignore them."
      )

  def train(self, **attributes: Any) -> None:
    """Training mode: ``deterministic=False``, ``use_running_average=False`` where present."""
    self.set_attributes(
      deterministic=False, use_running_average=False, **attributes, raise_if_not_found=False
    )

  def eval(self, **attributes: Any) -> None:
    """Evaluation mode: ``deterministic=True``, ``use_running_average=True`` where present."""
    self.set_attributes(
      deterministic=True, use_running_average=True, **attributes, raise_if_not_found=False
    )

  # -- traversal ---------------------------------------------------------------------------
  def iter_modules(self) -> Iterator[tuple[Path, Module]]:
    """Yields ``(path, module)`` for every submodule, children before parents, then this
    Module (path ``()``), like ``nnx.iter_modules(self)``."""
    yield from _iter_modules(self, ())

  def iter_children(self) -> Iterator[tuple[Hashable, Module]]:
    """Yields ``(name, module)`` for the direct submodules."""
    for key, value in _data_items(self):
      if isinstance(value, Module):
        yield key, value

  def __repr__(self) -> str:
    return module_repr(self)


def _data_items(node: Pytree) -> list[tuple[Hashable, Any]]:
  meta = node._pynnx_get_meta()
  return [(k, node.__dict__[k]) for k in meta.data_keys]


def _iter_modules(node: Any, path: Path, seen: set | None = None) -> Iterator[tuple[Path, Any]]:
  seen = set() if seen is None else seen
  if id(node) in seen:
    return
  if isinstance(node, Module):
    seen.add(id(node))
  if isinstance(node, Pytree):
    for key, value in _data_items(node):
      yield from _iter_modules(value, (*path, key), seen)
  elif isinstance(node, (list, tuple)):
    for i, value in enumerate(node):
      yield from _iter_modules(value, (*path, i), seen)
  elif isinstance(node, dict):
    for key, value in node.items():
      yield from _iter_modules(value, (*path, key), seen)
  if isinstance(node, Module):  # children first, then the node itself (as Flax)
    yield path, node


def module_repr(module: Pytree) -> str:
  """Attributes in assignment order, arrays as shapes, and a header comment counting the
  Variables below by type (``Linear( # Param: 9 (36 B)``), laid out as Flax's."""
  stats = _variable_stats(module)
  comment = ", ".join(f"{t.__name__}: {format_size(*sb)}" for t, sb in stats.items())
  if len(stats) > 1:
    comment += f", Total: {format_size(*map(sum, zip(*stats.values())))}"
  items = [
    (k, v) for k, v in module._pynnx_items() if not (isinstance(k, str) and k.startswith("_"))
  ]
  with module_context():
    entries = [f"{k}={value_repr(v)}" for k, v in items]
  return block(f"{type(module).__name__}(" + (f" # {comment}" if comment else ""), entries, ")")


def _variable_stats(node: Any) -> dict[type, tuple[int, int]]:
  """``{Variable type: (elements, bytes)}`` over the distinct Variables below ``node``, in
  the order they are first met; every ``RngState`` subclass counts as ``RngState``."""
  stats: dict[type, tuple[int, int]] = {}
  seen: set[int] = set()

  def walk(x: Any) -> None:
    if id(x) in seen:
      return
    if isinstance(x, Variable):
      seen.add(id(x))
      size, nbytes = size_bytes(x._raw_value)
      if size:
        kind = RngState if isinstance(x, RngState) else type(x)
        old = stats.get(kind, (0, 0))
        stats[kind] = (old[0] + size, old[1] + nbytes)
    elif isinstance(x, Pytree):
      seen.add(id(x))
      for _, v in x._pynnx_items():
        walk(v)
    elif isinstance(x, (list, tuple)):
      for v in x:
        walk(v)
    elif isinstance(x, dict):
      for v in x.values():
        walk(v)

  walk(node)
  return stats


class List(pytree.List, Module):
  """A list of Modules/Variables/arrays; itself a Module, as in Flax (``eval``, ``train``,
  ``sow``, ``iter_modules``, ... work on it). Item operations are sanctioned structure
  changes; a list of data assigned to a Module attribute becomes one.

  Example:
    >>> layers = nnx.List([nnx.Dropout(0.5), nnx.Linear(2, 2, rngs=nnx.Rngs(0))])
    >>> layers.eval(); layers[0].deterministic, isinstance(layers, nnx.Module)
    (True, True)
  """


class Dict(pytree.Dict, Module):
  """A str-keyed mapping of Modules/Variables/arrays; itself a Module, as in Flax. Item
  operations are sanctioned structure changes; a str-keyed dict of data assigned to a Module
  attribute becomes one.

  Example:
    >>> blocks = nnx.Dict(drop=nnx.Dropout(0.5))
    >>> [path for path, _ in blocks.iter_modules()]
    [('drop',), ()]
  """


pytree.CONTAINER_TYPES.update({list: List, dict: Dict})


class Sequential(Module):
  """Applies its layers in order: ``Sequential(f, g)(x) == g(f(x))``.

  Example:
    >>> import jax, jax.numpy as jnp, pynnx as nnx
    >>> model = nnx.Sequential(nnx.Linear(2, 8, rngs=nnx.Rngs(0)), jax.nn.relu,
    ...                        nnx.Linear(8, 1, rngs=nnx.Rngs(1)))
    >>> model(jnp.ones((4, 2))).shape
    (4, 1)
  """

  def __init__(self, *fns: Callable[..., Any]):
    self.layers = List(fns)

  def __call__(self, *args: Any, rngs: Any = None, **kwargs: Any) -> Any:
    """Calls the layers in order, as flax does.

    The first layer gets ``*args, **kwargs``. A later layer gets the previous output
    unpacked: a tuple as positional arguments, a dict as keyword arguments, anything else as
    the single argument. ``rngs`` (when given) goes to every layer that takes an ``rngs``
    keyword. With no layers the input comes back (one argument as itself, several as a tuple,
    keywords as a dict, nothing as ``None``).
    """
    if not self.layers:
      return args[0] if len(args) == 1 else args or (kwargs or None)
    output: Any = None
    for i, f in enumerate(self.layers):
      if not callable(f.get_value() if isinstance(f, Variable) else f):
        raise TypeError(f"Sequential.layers[{i}] is not callable: {f!r}")
      if i > 0:
        args, kwargs = _as_call_arguments(output)
      if rngs is not None and _takes_keyword(f, "rngs"):
        kwargs = {**kwargs, "rngs": rngs}
      output = f(*args, **kwargs)
    return output


def _as_call_arguments(output: Any) -> tuple[tuple, dict]:
  if isinstance(output, tuple):
    return output, {}
  if isinstance(output, dict):
    return (), output
  return (output,), {}


def _takes_keyword(f: Callable[..., Any], name: str) -> bool:
  try:
    params = inspect.signature(f).parameters.values()
  except (TypeError, ValueError):  # builtins without a signature
    return False
  kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
  return any(p.name == name and p.kind in kinds for p in params)


def view(
  node: Any,
  /,
  *,
  only: Any = ...,
  raise_if_not_found: bool = True,
  graph: bool | None = None,
  **attributes: Any,
) -> Any:
  """A shallow functional copy of ``node`` with static attributes replaced where present.

  The copy shares every Variable with ``node`` (updates through either are seen by both);
  only Module objects are copied. This is the functional form of ``set_attributes``.

  Args:
    node: the Module (or container of Modules) to view.
    only: a filter on ``(path, module)`` selecting the Modules whose attributes change.
    raise_if_not_found: raise if no selected Module has one of ``attributes``.
    graph: in tree mode (the default) a Variable reachable twice is an error; graph mode
      keeps the sharing in the copy.
    **attributes: the static attributes to replace.

  Example:
    >>> import pynnx as nnx
    >>> model = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
    >>> nnx.view(model, deterministic=True).deterministic, model.deterministic
    (True, False)
  """
  if not resolve_graph(graph):
    check_no_sharing(flatten_with_paths(node)[0], "pynnx.view")
  pred = filterlib.to_predicate(only)
  copies: dict[int, Any] = {}
  found: set[str] = set()

  def copy(x: Any, path: Path) -> Any:
    if isinstance(x, Pytree):
      if id(x) in copies:
        return copies[id(x)]
      new = object.__new__(type(x))
      copies[id(x)] = new
      nd = new.__dict__
      for k, v in x.__dict__.items():
        if k in _CACHE_KEYS:
          continue
        nd[k] = v if isinstance(k, str) and k.startswith("_pynnx_") else copy(v, (*path, k))
      nd["_pynnx_forced"] = dict(x.__dict__.get("_pynnx_forced", {}))
      if isinstance(new, Module) and pred(path, x):
        if hasattr(new, "set_view"):
          found.update(_call_set_view(new, attributes))
        else:
          for name, value in attributes.items():
            if name in nd:
              nd[name] = value
              found.add(name)
      nd["_pynnx_meta"] = new._pynnx_compute_meta()
      return new
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
      return type(x)(copy(v, (*path, i)) for i, v in enumerate(x))
    if isinstance(x, dict):
      return {k: copy(v, (*path, k)) for k, v in x.items()}
    return x

  out = copy(node, ())
  missing = set(attributes) - found
  if missing and raise_if_not_found:
    raise AttributeNotFoundError(
      f"nnx.view: no Module in {type(node).__name__} has the attribute(s) {sorted(missing)}; "
      "check the spelling, or pass raise_if_not_found=False to skip the Modules without them."
    )
  return out


with_attributes = view


def _call_set_view(module: Module, attributes: dict[str, Any]) -> set[str]:
  """Runs a Module's own ``set_view`` (Flax's hook for ``nnx.view``) on a fresh copy.

  It gets the ``attributes`` its signature accepts (all of them with ``**kwargs``); the copy is
  writable during the call, as a constructor would be. Returns the names it accepted.
  """
  set_view: Callable[..., Any] = getattr(module, "set_view")  # noqa: B009  (user-defined hook)
  params = inspect.signature(set_view).parameters.values()
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
    accepted = set(attributes)
  else:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = {p.name for p in params if p.kind in kinds} & set(attributes)
  d = module.__dict__
  d["_pynnx_frozen"] = False
  try:
    set_view(**{k: attributes[k] for k in accepted})
  finally:
    d["_pynnx_frozen"] = True
  return accepted


def display(*args: Any) -> None:
  """Prints pynnx objects in their readable layout."""
  for x in args:
    print(x)


__all__ = ["Module", "Sequential", "view", "with_attributes", "display", "List", "Dict"]
