"""pynnx Modules written Linen-style: ``nnx.bridge.Module`` and ``nnx.bridge.compact``.

A :class:`Module` subclass is a dataclass whose fields are its hyperparameters. Its
parameters and submodules are created lazily, as in Linen: ``self.param(...)`` /
``self.variable(...)`` and submodules built inside a :func:`compact` method (auto-named
``Dense_0``, ``Dense_1``... or ``name=``), or attributes assigned in ``setup()``. ``init`` and
``apply`` take and return Linen's ``{collection: nested dict}`` variables.

Each ``init`` / ``apply`` works on a clone of the module, so the module itself stays as built
(pynnx Modules are frozen); the clone is *bound* for the call (it has a scope: the rng
streams, the input variables and whether it is initializing) and only a bound module may
create attributes, through pynnx's sanctioned setter.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import jax
import numpy as np
import typing_extensions as tpe

import pynnx as nnx
from pynnx._core.errors import LinenBridgeError

from . import variables as bv
from .linen import ToNNX

__all__ = ["Module", "compact", "current_context", "current_module"]

F = TypeVar("F", bound=Callable[..., Any])
_SCOPE = "_pynnx_bridge_scope"  # internal attribute (pytree machinery ignores `_pynnx_*`)
_PATH = "_pynnx_bridge_path"


@dataclasses.dataclass
class _Scope:
  rngs: Any  # nnx.Rngs, or _NoRngs when the call got none
  initializing: bool
  store: dict[tuple, nnx.Variable]  # input (and superseded) Variables by attribute path
  mutable: Any = False  # the call's `mutable`; a Linen submodule (ToNNX) applies with it


@dataclasses.dataclass
class _Frame:
  module: Module
  in_compact: bool
  type_counter: dict[type, int] = dataclasses.field(default_factory=dict)


_STACK: contextvars.ContextVar[tuple[_Frame, ...]] = contextvars.ContextVar(
  "pynnx_bridge_module_stack", default=()
)


def current_context() -> _Frame | None:
  """The innermost running bridge-Module method: ``.module``, ``.in_compact``,
  ``.type_counter`` (None outside ``init`` / ``apply``).

  Example:
    >>> nnx.bridge.current_context() is None
    True
  """
  frames = _STACK.get()
  return frames[-1] if frames else None


def current_module() -> Module | None:
  """The bridge Module whose method is running (None outside ``init`` / ``apply``)."""
  frame = current_context()
  return None if frame is None else frame.module


def _auto_name(frame: _Frame, cls: type) -> str:
  index = frame.type_counter.get(cls, 0)
  frame.type_counter[cls] = index + 1
  return f"{cls.__name__}_{index}"


def _push(frame: _Frame) -> contextvars.Token:
  return _STACK.set((*_STACK.get(), frame))


def _bound_modules(value: Any, path: tuple) -> list[tuple[tuple, Module]]:
  """The bridge Modules in ``value`` (itself, or inside lists / dicts / pynnx Modules)."""
  if isinstance(value, Module):
    return [(path, value)]
  if isinstance(value, (nnx.Variable, jax.Array)):
    return []
  items: Iterable[tuple[Any, Any]]
  if isinstance(value, Mapping):
    items = value.items()
  elif isinstance(value, (list, tuple, nnx.List)):
    items = enumerate(value)
  elif isinstance(value, nnx.Module):
    items = ((k, v) for k, v in vars(value).items() if not str(k).startswith("_"))
  else:
    return []
  return [m for k, v in items for m in _bound_modules(v, (*path, k))]


def _load(value: Any, path: tuple, store: dict[tuple, nnx.Variable]) -> None:
  """Loads the stored values of the Variables found in ``value`` (a pynnx layer built in
  ``setup`` starts from its own random init; the input variables win, as in Linen). A
  :class:`~pynnx.bridge.ToNNX` with no Variables yet gets the stored ones under its path."""
  if isinstance(value, ToNNX) and not value._linen_attrs():
    n = len(path)
    mine = {p[n:]: v for p, v in store.items() if p[:n] == path and len(p) > n}
    if mine:
      value._set_linen_attrs(nnx.traversals.unflatten_mapping(mine))
    return
  if isinstance(value, nnx.Variable):
    found = [((), value)]
  elif isinstance(value, nnx.Module) and not isinstance(value, Module):
    found = list(nnx.to_flat_state(nnx.state(value)))
  else:
    return
  for sub, variable in found:
    stored = store.get((*path, *sub))
    if stored is not None and isinstance(variable, type(stored)):
      variable.set_value(stored.get_value())


def _bind(module: Module, scope: _Scope, path: tuple) -> None:
  module.__dict__[_SCOPE] = scope
  module.__dict__[_PATH] = path
  setup = getattr(type(module), "setup", None)
  if setup is not None:
    token = _push(_Frame(module, in_compact=False))
    try:
      setup(module)
    finally:
      _STACK.reset(token)


class _ModuleMeta(type(nnx.Module)):  # type: ignore[misc]
  def __call__(cls, *args: Any, **kwargs: Any) -> Any:
    frames = _STACK.get()
    frame = frames[-1] if frames else None
    name = kwargs.get("name")
    if "name" in kwargs and "name" not in {f.name for f in dataclasses.fields(cls)}:
      kwargs.pop("name")
    parent = kwargs.pop("parent", frame.module if frame else None)
    if name is not None and not isinstance(name, str):
      raise LinenBridgeError(
        f"{cls.__name__}(name=...) must be a str, got {type(name).__name__}; e.g. "
        f"`{cls.__name__}(..., name='encoder')`."
      )
    module = super().__call__(*args, **kwargs)
    if frame is None or parent is None or parent.__dict__.get(_SCOPE) is None:
      return module
    if name is None and frame.in_compact:
      name = _auto_name(frame, cls)
    if name is not None:
      setattr(parent, name, module)
    return module


@tpe.dataclass_transform(field_specifiers=(dataclasses.field,))
class Module(nnx.Module, metaclass=_ModuleMeta):
  """Base class of pynnx Modules written Linen-style (``nnx.bridge.Module``).

  Example:
    >>> class Dense(nnx.bridge.Module):
    ...   features: int
    ...   @nnx.bridge.compact
    ...   def __call__(self, x):
    ...     w = self.param("kernel", nnx.initializers.lecun_normal(), (x.shape[-1], self.features))
    ...     return x @ w
    >>> variables = Dense(3).init(jax.random.key(0), jnp.ones((1, 2)))
    >>> variables["params"]["kernel"].shape
    (2, 3)
    >>> Dense(3).apply(variables, jnp.ones((1, 2))).shape
    (1, 3)
  """

  def __init_subclass__(cls, **kwargs: Any) -> None:
    super().__init_subclass__(**kwargs)
    nnx.dataclass(cls)

  # -- binding ------------------------------------------------------------------------------
  def _scope(self, what: str) -> _Scope:
    scope = self.__dict__.get(_SCOPE)
    if scope is None:
      raise LinenBridgeError(
        f"{type(self).__name__}.{what} needs a bound module: call it inside `init` / `apply` "
        f"(`{type(self).__name__}(...).init(key, x)`), from `setup()` or a method decorated "
        f"with `@nnx.bridge.compact`."
      )
    return scope

  def __setattr__(self, name: str, value: Any) -> None:
    scope = self.__dict__.get(_SCOPE)
    if scope is None:
      return super().__setattr__(name, value)
    # A bound module grows lazily (Linen-style), through pynnx's sanctioned setter.
    path = (*self.__dict__[_PATH], name)
    old = self.__dict__.get(name)
    for sub, child in _bound_modules(old, path):  # a re-created child keeps its Variables
      for p, v in nnx.to_flat_state(nnx.state(child)):
        scope.store[(*sub, *p)] = v
    _load(value, path, scope.store)
    self._pynnx_setattr(name, value)
    for sub, child in _bound_modules(value, path):
      if child.__dict__.get(_SCOPE) is None:
        _bind(child, scope, sub)

  # -- Linen's lazy creation ----------------------------------------------------------------
  def is_initializing(self) -> bool:
    """True inside ``init`` / ``init_with_output``."""
    return self._scope("is_initializing()").initializing

  def make_rng(self, name: str = "default") -> jax.Array:
    """A fresh key from stream ``name`` of the ``rngs`` given to ``init`` / ``apply``."""
    return self._scope("make_rng()").rngs[name]()

  def _create(
    self, name: str, var_type: type, make: Callable[[Callable[[], Any]], Any], what: str
  ) -> Any:
    """``make(key_fn)`` builds the value; ``key_fn()`` is called only if it needs a key."""
    scope = self._scope(what)
    current = self.__dict__.get(name)
    if isinstance(current, nnx.Variable):
      if not isinstance(current, var_type):
        raise LinenBridgeError(
          f"{type(self).__name__}.{what}: attribute {name!r} already holds a "
          f"{type(current).__name__}, not a {var_type.__name__}; pick another name."
        )
      return current
    stored = scope.store.get((*self.__dict__[_PATH], name))
    if stored is None:
      variable = var_type(make(lambda: self.make_rng("params")))
    else:
      meta: dict[str, Any] = {}

      def abstract() -> Any:
        out = make(lambda: jax.random.key(0))  # shapes only: no key drawn from the streams
        if isinstance(out, nnx.VariableMetadata):
          meta.update(out.metadata)
          return out.raw_value
        return out

      want = np.shape(jax.eval_shape(abstract))
      have = np.shape(stored.get_value())
      if want != have:
        raise LinenBridgeError(
          f"{type(self).__name__}.{what}: the stored {name!r} at "
          f"{'/'.join(map(str, (*self.__dict__[_PATH], name)))} has shape {have}, but its "
          f"initializer gives {want}; pass variables made by `init` of this configuration."
        )
      variable = var_type(stored.get_value(), **{**meta, **_extra_metadata(stored)})
    setattr(self, name, variable)
    return variable

  def param(
    self, name: str, init_fn: Callable[..., Any], *init_args: Any, unbox: bool = True, **init_kwargs
  ) -> nnx.Param:
    """The :class:`~pynnx.Param` ``name``: created from ``init_fn(make_rng('params'), ...)``
    on first use, or from the variables given to ``apply``. ``unbox`` is Linen's; a Param's
    metadata stays on the Variable either way."""
    del unbox
    return self._create(
      name,
      nnx.Param,
      lambda key_fn: init_fn(key_fn(), *init_args, **init_kwargs),
      f"param({name!r})",
    )

  def variable(
    self,
    col: str,
    name: str,
    init_fn: Callable[..., Any] | None = None,
    *init_args: Any,
    unbox: bool = True,
    **init_kwargs: Any,
  ) -> nnx.Variable:
    """The Variable ``name`` of Linen collection ``col`` (its type is the one registered for
    ``col``), created from ``init_fn(*init_args, **init_kwargs)`` on first use."""
    del unbox
    if init_fn is None:
      raise LinenBridgeError(
        f"{type(self).__name__}.variable({col!r}, {name!r}) needs an init_fn, e.g. "
        f"`self.variable({col!r}, {name!r}, jnp.zeros, (3,))`."
      )
    var_type = nnx.variable_type_from_name(col, allow_register=True)
    return self._create(
      name,
      var_type,
      lambda _: init_fn(*init_args, **init_kwargs),
      f"variable({col!r}, {name!r})",
    )

  @property
  def variables(self) -> dict[str, Any]:
    """This module's Variables as Linen variables (``{collection: nested dict}``)."""
    return _linen_variables(self)

  # -- Linen's entry points ------------------------------------------------------------------
  def apply(
    self,
    variables: Mapping[str, Any],
    *args: Any,
    rngs: int | jax.Array | Mapping[str, Any] | nnx.Rngs | None = None,
    method: Callable[..., Any] | str = "__call__",
    mutable: Any = False,
    **kwargs: Any,
  ) -> Any:
    """Runs ``method`` on a clone of this module bound to ``variables``; with ``mutable``
    (``True``, a collection name or a list of names) it also returns those collections."""
    return _run(self, variables, args, kwargs, rngs, method, mutable, initializing=False)

  def init_with_output(
    self,
    rngs: int | jax.Array | Mapping[str, Any] | nnx.Rngs | None = None,
    *args: Any,
    method: Callable[..., Any] | str = "__call__",
    **kwargs: Any,
  ) -> tuple[Any, dict[str, Any]]:
    """``(output, variables)`` of a first call that creates every Variable."""
    return _run(self, {}, args, kwargs, rngs, method, True, initializing=True)

  def init(
    self,
    rngs: int | jax.Array | Mapping[str, Any] | nnx.Rngs | None = None,
    *args: Any,
    method: Callable[..., Any] | str = "__call__",
    **kwargs: Any,
  ) -> dict[str, Any]:
    """The Linen variables a first call creates (``{'params': ..., ...}``)."""
    return self.init_with_output(rngs, *args, method=method, **kwargs)[1]


def _extra_metadata(variable: nnx.Variable) -> dict[str, Any]:
  return {
    k: v for k, v in variable.get_metadata().items() if k not in nnx.Variable.required_metadata
  }


def _linen_variables(module: nnx.Module) -> dict[str, Any]:
  grouped: dict[str, dict[tuple, Any]] = {}
  for path, variable in nnx.to_flat_state(nnx.state(module, nnx.Not(nnx.RngState))):
    collection = nnx.variable_name_from_type(type(variable), allow_register=True)
    grouped.setdefault(collection, {})[tuple(path)] = bv.to_linen_var(variable)
  return {c: nnx.traversals.unflatten_mapping(flat) for c, flat in grouped.items()}


class _NoRngs:
  """The streams of a call made without ``rngs`` (pynnx's Rngs needs one): asking raises."""

  def __getitem__(self, name: str) -> Any:
    raise LinenBridgeError(
      f"make_rng({name!r}) needs a key, but init / apply got no rngs; pass e.g. "
      f"`rngs={{{name!r}: jax.random.key(0)}}` (or a key / int seed for every stream)."
    )


def _as_rngs(rngs: Any) -> Any:
  if rngs is None:
    return _NoRngs()
  if isinstance(rngs, nnx.Rngs):
    return rngs
  if isinstance(rngs, Mapping):
    return nnx.Rngs(rngs)
  if isinstance(rngs, (int, jax.Array)):
    return nnx.Rngs(rngs)
  raise LinenBridgeError(
    f"rngs must be an int seed, a key, a dict of keys or an nnx.Rngs, got "
    f"{type(rngs).__name__}; e.g. `init(jax.random.key(0), x)`."
  )


def _is_mutable(mutable: Any, collection: str) -> bool:
  if isinstance(mutable, bool):
    return mutable
  if isinstance(mutable, str):
    return collection == mutable
  return collection in mutable


def _run(module, variables, args, kwargs, rngs, method, mutable, *, initializing):
  fn = getattr(type(module), method, None) if isinstance(method, str) else method
  fn = getattr(fn, "__func__", fn)
  if not callable(fn) or not inspect.signature(fn).parameters:
    raise LinenBridgeError(
      f"{type(module).__name__}.apply(method={method!r}): not a method of the module; pass a "
      f"method name or a function whose first argument is the module."
    )
  flat = nnx.traversals.flatten_mapping(
    bv.linen_vars_to_nnx_attrs(variables), is_leaf=lambda _, x: isinstance(x, nnx.Variable)
  )
  clone = nnx.clone(module)
  scope = _Scope(_as_rngs(rngs), initializing, dict(flat), mutable)
  token = _push(_Frame(clone, in_compact=False))
  try:
    _bind(clone, scope, ())
    out = fn(clone, *args, **kwargs)
  finally:
    _STACK.reset(token)
  if mutable is False:
    return out
  collections = _linen_variables(clone)
  return out, {c: v for c, v in collections.items() if _is_mutable(mutable, c)}


def compact(f: F) -> F:
  """Marks a method whose submodules are created inline (auto-named ``Class_0``, ...).

  Example:
    >>> class MLP(nnx.bridge.Module):
    ...   @nnx.bridge.compact
    ...   def __call__(self, x):
    ...     return Scale()(Scale(name="last")(x))
    >>> class Scale(nnx.bridge.Module):
    ...   @nnx.bridge.compact
    ...   def __call__(self, x):
    ...     return x * self.param("s", nnx.initializers.ones, (x.shape[-1],))
    >>> sorted(MLP().init(0, jnp.ones((1, 2)))["params"])
    ['Scale_0', 'last']
  """

  @functools.wraps(f)
  def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
    if not isinstance(self, Module):
      raise LinenBridgeError(
        f"@nnx.bridge.compact methods belong to an nnx.bridge.Module, got "
        f"{type(self).__name__}; subclass nnx.bridge.Module."
      )
    token = _push(_Frame(self, in_compact=True))
    try:
      return f(self, *args, **kwargs)
    finally:
      _STACK.reset(token)

  return wrapper  # type: ignore[return-value]
