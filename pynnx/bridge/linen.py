"""Flax Linen modules inside pynnx (:class:`ToNNX`) and pynnx Modules inside Linen
(:class:`ToLinen`, :func:`to_linen`).

A :class:`ToNNX` holds the Linen module (static) and an :class:`~pynnx.Rngs`; after
:func:`lazy_init` its attributes mirror the Linen variables (``model.Dense_0['kernel']`` is a
:class:`~pynnx.Param`, ``model.BatchNorm_0['mean']`` a :class:`~pynnx.BatchStat`). A call runs
``linen_module.apply`` on the current values and writes the collections named by ``mutable``
back into the Variables, so the model trains under ``nnx.jit`` / ``nnx.grad`` / ``Optimizer``.

Flax is imported by this module only (``nnx.bridge.ToNNX`` loads it on first use).
"""

from __future__ import annotations

import contextvars
import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from flax import errors as flax_errors
from flax import linen
from flax.core import FrozenDict, meta

import pynnx as nnx
from pynnx._core.errors import BridgeError, LinenBridgeError

from . import variables as bv

__all__ = ["ToLinen", "ToNNX", "lazy_init", "to_linen"]

_PREFIX = "to_nnx__"
# Internal attribute of a ToNNX made by `linen_in_bridge_mdl`: the bridge Module call's scope
# (`.initializing`, `.mutable`), which the ToNNX follows as Flax's does.
_BRIDGE_SCOPE = "_pynnx_linen_bridge_scope"
# ids of the ToNNX objects inside a running `lazy_init` (they run Linen's `init`).
_INITIALIZING: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
  "pynnx_linen_initializing", default=frozenset()
)


def lazy_init(fn: nnx.Module | Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
  """Runs ``fn(*args, **kwargs)`` once so every :class:`ToNNX` inside creates its Variables.

  ``fn`` is a Module (called) or a bound method of one. Call it before ``nnx.jit``: creating
  Variables inside a tree-mode transform raises :class:`~pynnx.StructureChangeError`.

  Returns:
    ``fn``, so ``model = nnx.bridge.lazy_init(ToNNX(...), x)`` works.

  Example:
    >>> from flax import linen
    >>> model = nnx.bridge.ToNNX(linen.Dense(3), rngs=nnx.Rngs(0))
    >>> model = nnx.bridge.lazy_init(model, jnp.ones((1, 2)))
    >>> model.kernel.shape
    (2, 3)
  """
  module = fn if isinstance(fn, nnx.Module) else getattr(fn, "__self__", None)
  if not isinstance(module, nnx.Module) or not callable(fn):
    raise LinenBridgeError(
      f"nnx.bridge.lazy_init expects a pynnx Module or a bound method of one, got "
      f"{type(fn).__name__}; pass the model (`lazy_init(model, x)`) or its method "
      f"(`lazy_init(model.encode, x)`)."
    )
  ids = frozenset(id(m) for _, m in module.iter_modules() if isinstance(m, ToNNX))
  token = _INITIALIZING.set(_INITIALIZING.get() | ids)
  try:
    fn(*args, **kwargs)
  finally:
    _INITIALIZING.reset(token)
  return fn


def _linen_rngs(rngs: Any) -> dict[str, Any]:
  """One key per stream for Linen (``default`` serves as Linen's ``params``)."""
  if isinstance(rngs, nnx.Rngs):
    out = {name: stream() for name, stream in rngs.items()}
  elif isinstance(rngs, jax.Array):
    out = {"params": rngs}
  else:
    out = {}
  if "default" in out and "params" not in out:
    out["params"] = out.pop("default")
  return out


class _LinenRef:
  """The Linen module as a static attribute. A Linen module with a list field
  (``nn.Sequential([...])``) is unhashable; such a one is keyed by identity, so the compile
  cache still works (one entry per module object)."""

  __slots__ = ("module",)

  def __init__(self, module: linen.Module):
    self.module = module

  def _key(self) -> Any:
    try:
      return hash(self.module), self.module
    except TypeError:
      return id(self.module), None

  def __hash__(self) -> int:
    return hash(self._key()[0])

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, _LinenRef):
      return NotImplemented
    if self.module is other.module:
      return True
    mine, theirs = self._key(), other._key()
    return mine[1] is not None and theirs[1] is not None and mine[1] == theirs[1]

  def __repr__(self) -> str:
    return repr(self.module)


def _as_dicts(tree: Mapping) -> nnx.Dict:
  return nnx.Dict({k: _as_dicts(v) if isinstance(v, Mapping) else v for k, v in tree.items()})


class ToNNX(nnx.Module):
  """A Flax Linen module as a pynnx Module.

  Args:
    module: the Linen module (an instance, not bound).
    rngs: an :class:`~pynnx.Rngs` (forked: the model gets its own streams), a key (the
      ``params`` stream) or None. Each call draws one key per stream for Linen; the
      ``default`` stream serves as Linen's ``params``.

  Call :func:`lazy_init` (or ``model.lazy_init(x)``) once with example inputs to create the
  Variables. A call takes Linen's ``apply`` options: ``rngs`` (overrides the stored streams),
  ``method`` and ``mutable`` (the collections to write back, e.g. ``['batch_stats']``;
  default none, as Linen's ``apply``). Other Linen methods are callable by name
  (``model.encode(x)``).

  Example:
    >>> from flax import linen
    >>> model = nnx.bridge.ToNNX(linen.Dense(3), rngs=nnx.Rngs(0)).lazy_init(jnp.ones((1, 2)))
    >>> model(jnp.ones((1, 2))).shape
    (1, 3)
    >>> sorted(nnx.state(model, nnx.Param))
    ['bias', 'kernel']
  """

  def __init__(self, module: linen.Module, rngs: nnx.Rngs | jax.Array | None = None):
    if not isinstance(module, linen.Module):
      raise BridgeError(
        f"nnx.bridge.ToNNX expects a flax.linen Module instance, got {type(module).__name__}; "
        f"pass e.g. `ToNNX(linen.Dense(3), rngs=nnx.Rngs(0))` (a pynnx Module needs no bridge)."
      )
    if isinstance(rngs, nnx.Rngs):
      rngs = rngs.fork()
    elif isinstance(rngs, jax.Array):
      rngs = nnx.Rngs(params=rngs)
    elif rngs is not None:
      raise BridgeError(
        f"nnx.bridge.ToNNX(rngs=...) takes an nnx.Rngs, a key or None, got "
        f"{type(rngs).__name__}; pass `rngs=nnx.Rngs({rngs!r})` for an integer seed."
      )
    self.to_nnx__module_ref = _LinenRef(module)
    self.to_nnx__rngs = rngs

  @property
  def to_nnx__module(self) -> linen.Module:
    """The wrapped Linen module."""
    return self.to_nnx__module_ref.module

  def lazy_init(self, *args: Any, **kwargs: Any) -> ToNNX:
    """``nnx.bridge.lazy_init(self, *args, **kwargs)``: creates the Variables, returns self."""
    return lazy_init(self, *args, **kwargs)

  def __getattr__(self, name: str) -> Any:
    # Only reached when normal lookup fails: Linen methods by name (`model.encode(x)`).
    ref = self.__dict__.get("to_nnx__module_ref")
    module = None if ref is None else ref.module
    method = getattr(type(module), name, None) if not name.startswith("_") else None
    if module is None or not callable(method):
      raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
    return functools.partial(self.__call__, method=method)

  def _set_linen_attrs(self, attrs: Mapping[str, Any]) -> None:
    for name, tree in attrs.items():
      self._pynnx_setattr(name, _as_dicts(tree) if isinstance(tree, Mapping) else tree)

  def _linen_attrs(self) -> dict[str, Any]:
    return {
      k: v
      for k, v in vars(self).items()
      if isinstance(k, str) and not k.startswith(_PREFIX) and not k.startswith("_")
    }

  def __call__(
    self,
    *args: Any,
    rngs: nnx.Rngs | jax.Array | None = None,
    method: Callable[..., Any] | str | None = None,
    mutable: Any = None,
    **kwargs: Any,
  ) -> Any:
    linen_rngs = _linen_rngs(self.to_nnx__rngs if rngs is None else rngs)
    lm = self.to_nnx__module
    bridge_scope = self.__dict__.get(_BRIDGE_SCOPE)
    if id(self) in _INITIALIZING.get() or getattr(bridge_scope, "initializing", False):
      out, updates = lm.init_with_output(linen_rngs, *args, method=method, **kwargs)
      self._set_linen_attrs(bv.linen_vars_to_nnx_attrs(updates))
      return out
    attrs = self._linen_attrs()
    if mutable is None:
      mutable = False if bridge_scope is None else bridge_scope.mutable
    try:
      out = lm.apply(
        bv.nnx_attrs_to_linen_vars(attrs),
        *args,
        rngs=linen_rngs,
        method=method,
        mutable=mutable,
        **kwargs,
      )
    except (flax_errors.ScopeCollectionNotFound, flax_errors.ScopeParamNotFoundError) as e:
      if attrs:
        raise
      raise LinenBridgeError(
        f"nnx.bridge.ToNNX({type(lm).__name__}) has no variables yet: call "
        f"`nnx.bridge.lazy_init(model, *example_args)` (or `model.lazy_init(...)`) once, "
        f"before the first call and outside nnx.jit. Linen said: {e}"
      ) from e
    if mutable is False:
      return out
    out, updates = out
    self._write_back(updates)
    return out

  def _write_back(self, updates: Mapping[str, Any]) -> None:
    """Mutated collections -> Variables: existing ones are updated in place, new ones added
    (a structural change: tree-mode transforms reject it, as they reject a new `sow`)."""
    new = nnx.traversals.flatten_mapping(
      bv.linen_vars_to_nnx_attrs(updates), is_leaf=lambda _, x: isinstance(x, nnx.Variable)
    )
    for path, variable in new.items():
      node: Any = self
      for i, key in enumerate(path):
        child = node.get(key) if isinstance(node, Mapping) else self._linen_attrs().get(key)
        last = i == len(path) - 1
        if child is None or (last and type(child) is not type(variable)):
          rest = path[i + 1 :]
          value: Any = variable
          for k in reversed(rest):
            value = {k: value}
          value = _as_dicts(value) if isinstance(value, Mapping) else value
          if node is self:
            self._pynnx_setattr(key, value)
          else:
            node[key] = value
          break
        if last:
          child.set_value(variable.get_value())
        node = child


def _get_method(module: Any, method: Callable[..., Any] | str | None) -> Callable[..., Any]:
  if method is None:
    method = "__call__"
  found = getattr(type(module), method, None) if isinstance(method, str) else method
  if not callable(found):
    raise LinenBridgeError(
      f"ToLinen(nnx_method={method!r}): {type(module).__name__} has no callable of that name; "
      f"pass a method name of {type(module).__name__} or a function taking the module first."
    )
  return found


class ToLinen(linen.Module):
  """A pynnx Module class as a Flax Linen module.

  The pynnx Module is built from ``nnx_class(*args, **kwargs, rngs=nnx.Rngs(...))`` on each
  call (from Linen's rng streams; ``skip_rng=True`` omits ``rngs``), loaded with the Linen
  variables, called, and its Variables written back to the mutable collections: ``Param`` to
  ``params``, ``BatchStat`` to ``batch_stats``, ... (:func:`pynnx.register_variable_name`).
  ``metadata_fn`` turns each Variable into its Linen value (default
  :func:`~pynnx.bridge.variables.to_linen_var`; ``None`` stores bare values).

  Example:
    >>> model = nnx.bridge.ToLinen(nnx.Linear, args=(2, 3))
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 2)))
    >>> jax.tree.map(jnp.shape, dict(variables["params"]))
    {'bias': (3,), 'kernel': (2, 3)}
    >>> model.apply(variables, jnp.ones((1, 2))).shape
    (1, 3)
  """

  nnx_class: Callable[..., nnx.Module]
  args: Sequence = ()
  kwargs: Mapping[str, Any] = FrozenDict({})
  skip_rng: bool = False
  metadata_fn: Callable[[nnx.Variable], Any] | None = bv.to_linen_var

  def _build(self) -> nnx.Module:
    kwargs = dict(self.kwargs)
    if not self.skip_rng:
      assert self.scope is not None
      streams: dict[str, Any] = {name: self.make_rng(name) for name in self.scope.rngs}
      if not self.is_initializing() and "default" not in streams:
        streams["default"] = 0  # a fixed seed where Linen passed no rngs
      kwargs["rngs"] = nnx.Rngs(streams)
    return self.nnx_class(*self.args, **kwargs)

  @linen.compact
  def __call__(
    self, *args: Any, nnx_method: Callable[..., Any] | str | None = None, **kwargs: Any
  ) -> Any:
    module = self._build()
    if not self.is_initializing():
      self._load(module)
    out = _get_method(module, nnx_method)(module, *args, **kwargs)
    self._store(module)
    return out

  def _load(self, module: nnx.Module) -> None:
    unboxed = meta.unbox(dict(self.variables))
    values: dict[tuple, Any] = {}
    for collection in unboxed.values():
      values |= nnx.traversals.flatten_mapping(collection)
    known = {tuple(p) for p, _ in nnx.to_flat_state(nnx.state(module))}
    unknown = sorted("/".join(map(str, p)) for p in values if p not in known)
    if unknown:
      warnings.warn(
        f"ToLinen({getattr(self.nnx_class, '__name__', self.nnx_class)}): the Linen variables "
        f"hold paths the pynnx Module does not have (ignored): {unknown}",
        stacklevel=3,
      )
    loaded = {p: v for p, v in values.items() if p in known}
    nnx.update(module, nnx.traversals.unflatten_mapping(loaded))

  def _store(self, module: nnx.Module) -> None:
    grouped: dict[str, dict[tuple, Any]] = {}
    for path, variable in nnx.to_flat_state(nnx.state(module, nnx.Not(nnx.RngState))):
      collection = nnx.variable_name_from_type(type(variable), allow_register=True)
      value = variable.get_value() if self.metadata_fn is None else self.metadata_fn(variable)
      grouped.setdefault(collection, {})[tuple(path)] = value
    for collection, flat in grouped.items():
      if not self.is_mutable_collection(collection):
        continue
      for name, value in nnx.traversals.unflatten_mapping(flat).items():
        self.put_variable(collection, name, value)

  def __getattr__(self, name: str) -> Any:
    try:
      return super().__getattr__(name)
    except AttributeError:
      kwargs = self.__dict__.get("kwargs") or {}
      if name in kwargs:
        return kwargs[name]
      method = getattr(self.__dict__.get("nnx_class"), name, None)
      if name.startswith("_") or not callable(method):
        raise
      return functools.partial(self.__call__, nnx_method=method)


def to_linen(
  nnx_class: Callable[..., nnx.Module],
  *args: Any,
  metadata_fn: Callable[[nnx.Variable], Any] | None = bv.to_linen_var,
  name: str | None = None,
  skip_rng: bool = False,
  abstract_init: bool = True,
  **kwargs: Any,
) -> ToLinen:
  """``ToLinen(nnx_class, args=args, kwargs=kwargs, ...)`` with the constructor arguments
  passed directly.

  ``abstract_init`` is accepted for Flax parity: both values build the module the same way
  (its Variables are what Linen's ``init`` returns).

  Example:
    >>> layer = nnx.bridge.to_linen(nnx.Linear, 2, 3, use_bias=False)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 2)))
    >>> list(variables["params"])
    ['kernel']
  """
  return ToLinen(
    nnx_class,
    args=args,
    kwargs=FrozenDict(kwargs),
    skip_rng=skip_rng,
    metadata_fn=metadata_fn,
    name=name,
  )
