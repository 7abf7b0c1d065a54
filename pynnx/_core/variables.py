"""Variables: the only mutable cells of a pynnx model.

A :class:`Variable` wraps one value (usually a ``jax.Array``) plus metadata. It is a JAX
pytree node whose single child is the value and whose static part is its type and metadata,
so ``jax.tree.map(f, module)`` maps over values and keeps Variable types.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

import jax
import jax.extend.core as jex_core
import numpy as np

from . import eager
from .errors import (
  ConfigError,
  LeakedTracerError,
  MetadataNotFoundError,
  NotAVariableError,
  StateMismatchError,
  TraceContextError,
  VariableAttributeError,
  VariableIndexError,
  VariableNameError,
)
from .reprs import variable_repr
from .varhooks import HOOK_KEYS, run_axis_hooks, run_create_hooks, unbox
from .varmeta import (
  REPORTED_DEFAULTS,
  aux_from_meta,
  creation_metadata,
  merged_metadata,
  meta_from_aux,
  reported_metadata,
)
from .varnames import register_variable_name, registered_type
from .varnames import variable_name_from_type as variable_name_from_type  # re-exported
from .varops import install_operators
from .varvalue import MISSING, as_array, is_number_list, read_index, write_index

A = TypeVar("A")


# --- trace frames ------------------------------------------------------------------------
# A pynnx transform rebuilds fresh Variables for its inner function inside a new frame.
# A Variable remembers the frame it was created in; writing to it from another frame means
# it was closed over instead of passed in, and its update would be lost: that is an error.


class Frame:
  """One pynnx transform's inner scope (a token; compared by identity)."""

  __slots__ = ("name", "parent")

  def __init__(self, name: str, parent: Frame | None):
    self.name = name
    self.parent = parent


class _FrameState(threading.local):
  """The innermost frame of the running thread (threads never see each other's traces)."""

  current: Frame | None = None


FRAMES = _FrameState()


def push_frame(name: str) -> Frame:
  frame = Frame(name, FRAMES.current)
  FRAMES.current = frame
  return frame


def pop_frame(frame: Frame) -> None:
  FRAMES.current = frame.parent


def _check_not_leaked(value: Any, var: Variable) -> Any:
  if (
    isinstance(value, jax.core.Tracer) and type(jex_core.find_top_trace(())).__name__ == "EvalTrace"
  ):
    raise LeakedTracerError(
      f"{type(var).__name__} holds a traced value ({type(value).__name__}) from a JAX "
      "transformation that has already finished: its update leaked out of the trace. This "
      "happens when a Module is mutated inside plain `jax.jit`/`jax.grad`/... without returning "
      "it. Use the pynnx transform instead (`nnx.jit`, `nnx.grad`, ...), which writes Variable "
      "updates back, or return the Module from the jitted function."
    )
  return value


class _Structure:
  """Global structure epoch: bumped by every sanctioned structural change (a Module
  attribute set through the internal setter, Variable metadata changes). Cached flatten
  plans remember the epoch they were computed at.

  Both counters are only ever increased under ``lock``, so no increment is lost when
  threads write concurrently: a cache may be invalidated too often, never too rarely.
  """

  def __init__(self) -> None:
    self.epoch = 0
    # Bumped by every Variable write: cached value lists compare against it.
    self.writes = 0
    self.lock = threading.Lock()

  def bump_writes(self) -> int:
    with self.lock:
      self.writes += 1
      return self.writes


STRUCTURE = _Structure()


def bump_structure() -> None:
  with STRUCTURE.lock:
    STRUCTURE.epoch += 1


# --- Variable ------------------------------------------------------------------------------


class Variable(Generic[A]):
  """A mutable cell holding one value and its metadata.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> w = nnx.Param(jnp.zeros((2,)), sharding_names=('model',))
    >>> w[...] = w[...] + 1
    >>> w.value, w.get_metadata('sharding_names')
    (Array([1., 1.], dtype=float32), ('model',))
  """

  __slots__ = ("_raw_value", "_metadata", "_frame", "__weakref__")
  _pynnx_type_name: ClassVar[str] = "Variable"
  _pynnx_has_hooks: ClassVar[bool] = False  # a subclass defines create_value / on_* hooks
  required_metadata: ClassVar[frozenset[str]] = frozenset({"hijax", "ref", "eager_sharding"})

  def __init__(self, value: A, **metadata: Any):
    if isinstance(value, Variable):
      raise NotAVariableError(
        f"{type(self).__name__}(...) was given a {type(value).__name__}; pass its value "
        f"instead: `{type(self).__name__}(v[...])`."
      )
    if getattr(value, "_pynnx_variable_metadata", False):
      # a value from nnx.with_metadata / with_partitioning initializers
      value, metadata = unbox(value, metadata)
    metadata = creation_metadata(type(self).__name__, metadata)
    if type(self)._pynnx_has_hooks or not HOOK_KEYS.isdisjoint(metadata):
      object.__setattr__(self, "_frame", FRAMES.current)  # the hooks may read the Variable
      value = run_create_hooks(self, value, metadata)
    value = eager.place(value, metadata, type(self).__name__)
    object.__setattr__(self, "_raw_value", value)
    object.__setattr__(self, "_metadata", metadata)
    object.__setattr__(self, "_frame", FRAMES.current)

  def __init_subclass__(cls, **kwargs: Any):
    super().__init_subclass__(**kwargs)
    cls._pynnx_has_hooks = cls.create_value is not Variable.create_value or any(
      hasattr(cls, k) for k in HOOK_KEYS
    )
    _register_variable_pytree(cls)

  # -- value access --------------------------------------------------------------------
  def get_value(self, *, index: Any = MISSING) -> A:
    """The value; with ``index``, ``value[index]`` (``v[index]`` is this).

    Example:
      >>> v = nnx.Param(jnp.arange(3.0))
      >>> v.get_value(index=1), v.get_value(index=...) is v.get_value()
      (Array(1., dtype=float32), True)
    """
    value = self._raw_value
    if isinstance(value, jax.core.Tracer):
      _check_not_leaked(value, self)
    if index is MISSING:
      return value
    return read_index(type(self).__name__, value, index)

  def set_value(self, value: A, *, index: Any = MISSING) -> None:
    """Replaces the value; with ``index``, writes ``value`` at ``index`` (``v[index] = x``).

    With ``index=...`` the value keeps its shape and dtype (``value`` is broadcast and cast).

    Example:
      >>> v = nnx.Param(jnp.zeros(3))
      >>> v.set_value(1.0, index=slice(1, None)); v[...]
      Array([0., 1., 1.], dtype=float32)
    """
    frame = FRAMES.current
    if frame is not None and self._frame is not frame:
      _raise_outer_write(self, frame)
    if isinstance(value, Variable):
      value = value.get_value()
    if index is not MISSING:
      current = self._raw_value
      if isinstance(current, jax.core.Tracer):
        _check_not_leaked(current, self)
      value = write_index(type(self).__name__, current, index, value)
    elif isinstance(value, list) and hasattr(self._raw_value, "shape") and is_number_list(value):
      # an array cell stays an array (a list value is a pytree)
      value = as_array(value, type(self).__name__)
    STRUCTURE.bump_writes()  # invalidates the transforms' cached value lists
    object.__setattr__(self, "_raw_value", value)

  @property
  def value(self) -> A:
    return self.get_value()

  @value.setter
  def value(self, value: A) -> None:
    self.set_value(value)

  @property
  def raw_value(self) -> A:
    return self._raw_value

  def __getitem__(self, key: Any) -> Any:
    return self.get_value(index=key)

  def __setitem__(self, key: Any, item: Any) -> None:
    """``v[...] = x`` writes into the cell: ``x`` is broadcast to the current value's shape
    and cast to its dtype (NumPy in-place assignment). ``v.value = x`` replaces the value."""
    self.set_value(item, index=key)

  def __delitem__(self, key: Any) -> None:
    """``del v[key]`` for a dict or list value (writes a copy without ``key``)."""
    current: Any = self.get_value()
    if not isinstance(current, (dict, list)):
      raise VariableIndexError(
        f"del {type(self).__name__}[{key!r}]: the {type(self).__name__} holds a "
        f"{type(current).__name__}, which has no items to delete. Assign a new value with "
        "`variable.value = x` instead."
      )
    new: Any = dict(current) if isinstance(current, dict) else list(current)
    del new[key]
    self.set_value(new)

  # -- metadata ------------------------------------------------------------------------
  def get_metadata(
    self, name: str | None = None, default: Any = MISSING, *, exclude_required: bool | None = None
  ) -> Any:
    """One metadata entry, or (no ``name``) a dict of all of them.

    Every Variable reports ``hijax``, ``ref`` and ``eager_sharding`` (its required
    metadata); ``exclude_required=True`` leaves them out.

    Example:
      >>> p = nnx.Param(jnp.zeros(2), note="x")
      >>> p.get_metadata("note"), p.get_metadata("other", None)
      ('x', None)
      >>> p.get_metadata(exclude_required=True)
      {'note': 'x'}
    """
    kind = type(self).__name__
    if name is None:
      if default is not MISSING:
        raise ConfigError(
          f"{kind}.get_metadata(default={default!r}) needs a name: the default is returned "
          f"when that entry is missing. Call `get_metadata(name, default)`."
        )
      if exclude_required:  # without hijax / ref / eager_sharding, as Flax
        return {k: v for k, v in self._metadata.items() if k not in REPORTED_DEFAULTS}
      return reported_metadata(self._metadata)
    if exclude_required is not None:
      raise ConfigError(
        f"{kind}.get_metadata({name!r}, exclude_required=...): exclude_required applies to "
        f"the whole dict only. Call `get_metadata({name!r})` or "
        f"`get_metadata(exclude_required={exclude_required})`."
      )
    if name in self._metadata:
      return self._metadata[name]
    if name in REPORTED_DEFAULTS:
      return REPORTED_DEFAULTS[name]
    if name == "sharding_names" and "out_sharding" in self._metadata:
      return self._metadata["out_sharding"]
    if default is not MISSING:
      return default
    raise MetadataNotFoundError(
      f"{kind} has no metadata {name!r} (it has {sorted(reported_metadata(self._metadata))}). "
      f"Pass a default, `get_metadata({name!r}, None)`, or set it with "
      f"`set_metadata({name}=...)`."
    )

  def set_metadata(self, *args: Any, **metadata: Any) -> None:
    """Sets metadata: ``set_metadata(name, value)``, ``set_metadata(**entries)``, or
    ``set_metadata(mapping)``, which replaces all metadata (as in Flax).

    Example:
      >>> p = nnx.Param(jnp.zeros(2), a=1)
      >>> p.set_metadata("b", 2); p.set_metadata(c=3); p.get_metadata(exclude_required=True)
      {'a': 1, 'b': 2, 'c': 3}
      >>> p.set_metadata({"d": 4}); p.get_metadata(exclude_required=True)
      {'d': 4}
    """
    kind = type(self).__name__
    if args and metadata:
      raise ConfigError(
        f"{kind}.set_metadata takes positional or keyword arguments, not both (got "
        f"{len(args)} positional and {sorted(metadata)}). Make two calls, or one with "
        "keywords only."
      )
    if len(args) == 2:
      new = merged_metadata(self._metadata, {args[0]: args[1]})
    elif len(args) == 1 and isinstance(args[0], Mapping):
      replacement = merged_metadata({}, dict(args[0]))
      for key in ("hijax", "ref", "eager_sharding"):
        if key not in args[0]:
          replacement.pop(key, None)
          if key in self._metadata:
            replacement[key] = self._metadata[key]
        elif replacement.get(key, REPORTED_DEFAULTS[key]) != self.get_metadata(key):
          raise StateMismatchError(
            f"{kind}.set_metadata(mapping) cannot change the required metadata {key!r} "
            f"(it is {self.get_metadata(key)!r}, the mapping has {args[0][key]!r}); leave "
            f"{key!r} out of the mapping, or create a new Variable."
          )
      new = replacement
    elif metadata and not args:
      new = merged_metadata(self._metadata, metadata)
    else:
      raise ConfigError(
        f"{kind}.set_metadata takes (name, value), one mapping, or keyword arguments; got "
        f"{len(args)} positional argument(s)"
        + (f" ({type(args[0]).__name__})" if len(args) == 1 else "")
        + ". Example: `set_metadata('note', 1)` or `set_metadata(note=1)`."
      )
    eager.check_var_options("Variable.set_metadata", new.get("hijax"), new.get("ref"))
    object.__setattr__(self, "_metadata", new)
    bump_structure()

  def replace(self, value: Any = MISSING, **metadata: Any) -> Variable[A]:
    """A new Variable of the same type with ``value`` and/or metadata replaced.

    Example:
      >>> p = nnx.Param(jnp.zeros(2), note="x")
      >>> q = p.replace(jnp.ones(2), note="y")
      >>> q[...], q.note, p.note
      (Array([1., 1.], dtype=float32), 'y', 'x')
    """
    kind = type(self).__name__
    if "raw_value" in metadata:
      raise ConfigError(
        f"{kind}.replace(raw_value=...): the new value is the first argument; call "
        f"`replace(value)` or `replace(value=...)`."
      )
    eager.check_var_options("Variable.replace", metadata.get("hijax"), metadata.get("ref"))
    new = object.__new__(type(self))
    object.__setattr__(new, "_raw_value", self._raw_value if value is MISSING else value)
    object.__setattr__(new, "_metadata", merged_metadata(self._metadata, metadata))
    object.__setattr__(new, "_frame", FRAMES.current)
    return new

  def copy(self, value: Any = MISSING, **updates: Any) -> Variable[A]:
    return self.replace(value, **updates)  # Flax's name and signature for `replace`

  def has_metadata(self, name: str) -> bool:
    """Whether ``name`` is a metadata entry (``hijax``, ``ref``, ``eager_sharding`` always are).

    Example:
      >>> p = nnx.Param(jnp.zeros(2), note="x")
      >>> p.has_metadata("note"), p.has_metadata("hijax"), p.has_metadata("other")
      (True, True, False)
    """
    return name in self._metadata or name in REPORTED_DEFAULTS

  def get_raw_value(self) -> A:
    """The stored value, without the leaked-tracer check of ``get_value``."""
    return self._raw_value

  def set_raw_value(self, value: A) -> None:
    """Stores ``value`` as is (same rules as ``set_value``)."""
    self.set_value(value)

  @property
  def var_type(self) -> type:
    return type(self)

  def copy_from(self, other: Variable[A]) -> None:
    """Takes ``other``'s value and metadata (``other`` must be of the same Variable type).

    Example:
      >>> a, b = nnx.Param(jnp.zeros(2), tag="a"), nnx.Param(jnp.ones(2), tag="b")
      >>> a.copy_from(b)
      >>> a[...], a.tag
      (Array([1., 1.], dtype=float32), 'b')
    """
    if type(other) is not type(self):
      raise StateMismatchError(
        f"copy_from: a {type(self).__name__} can only copy another {type(self).__name__}, "
        f"got {type(other).__name__}; use `variable[...] = other[...]` to copy the value only."
      )
    if other is self:
      return
    self.set_value(other.get_raw_value())
    object.__setattr__(self, "_metadata", dict(other._metadata))
    bump_structure()

  # -- Flax's Variable protocol (metadata, state copies, axis hooks) -----------------------
  @property
  def shape(self) -> tuple[int, ...]:
    """The value's shape (``AttributeError`` if the value has none, as in Flax).

    Example:
      >>> nnx.Param(jnp.zeros((2, 3))).shape
      (2, 3)
    """
    return self.get_value().shape  # type: ignore[attr-defined]

  @property
  def sharding_names(self) -> Any:
    """The logical sharding names (``out_sharding`` metadata), or None.

    Example:
      >>> nnx.Param(jnp.zeros((2,)), sharding_names=("model",)).sharding_names
      ('model',)
    """
    meta = self._metadata
    return meta.get("out_sharding", meta.get("sharding_names"))

  hijax = property(lambda self: False, doc="Always False: pynnx rejects ``hijax=True``.")
  ref = property(lambda self: False, doc="Always False: pynnx rejects ``ref=True``.")

  def create_value(self, value: A) -> A:
    """Called once by the constructor with the initial value; subclasses may override it
    to transform that value (the result is what the Variable stores).

    Example:
      >>> class Doubled(nnx.Variable):
      ...   def create_value(self, value): return value * 2
      >>> Doubled(jnp.ones(2))[...]
      Array([2., 2.], dtype=float32)
    """
    return value

  def del_metadata(self, name: str) -> None:
    """Deletes the metadata entry ``name`` (``KeyError`` if it is not set).

    Example:
      >>> p = nnx.Param(jnp.zeros(2), note="x"); p.del_metadata("note"); p.has_metadata("note")
      False
    """
    if name in self.required_metadata:
      raise StateMismatchError(
        f"{type(self).__name__}.del_metadata: cannot delete the required metadata {name!r} "
        f"(every Variable reports {sorted(self.required_metadata)}); set another value with "
        f"`set_metadata({name}=...)` instead."
      )
    meta = dict(self._metadata)
    del meta[name]  # KeyError for an unknown name, as in Flax
    object.__setattr__(self, "_metadata", meta)
    bump_structure()

  @classmethod
  def from_metadata(cls, value: Any, attributes: dict[str, Any]) -> Variable[Any]:
    """A new Variable of this type with ``value`` and the metadata dict ``attributes``
    (as returned by ``get_metadata()``); the constructor (and its sharding) is not run.

    Example:
      >>> p = nnx.Param(jnp.zeros(2), note="x")
      >>> q = nnx.Param.from_metadata(jnp.ones(2), p.get_metadata())
      >>> q[...], q.note
      (Array([1., 1.], dtype=float32), 'x')
    """
    eager.check_var_options(
      f"{cls.__name__}.from_metadata", attributes.get("hijax"), attributes.get("ref")
    )
    meta = {
      k: v
      for k, v in attributes.items()
      if not (k in REPORTED_DEFAULTS and v is REPORTED_DEFAULTS[k])
    }
    new = object.__new__(cls)
    object.__setattr__(new, "_raw_value", value)
    object.__setattr__(new, "_metadata", meta)
    object.__setattr__(new, "_frame", FRAMES.current)
    return new

  def to_state(self, value: Any = MISSING, **updates: Any) -> Variable[A]:
    """A copy of this Variable (same type, value and metadata), as Flax's ``to_state``.

    Example:
      >>> p = nnx.Param(jnp.zeros(2)); p.to_state() is p
      False
    """
    return self.copy(value, **updates)

  def update_from_state(self, variable_state: Variable[A]) -> None:
    """Takes the value and metadata of ``variable_state`` (the inverse of ``to_state``).

    Example:
      >>> p = nnx.Param(jnp.zeros(2)); p.update_from_state(nnx.Param(jnp.ones(2), note="x"))
      >>> p[...], p.note
      (Array([1., 1.], dtype=float32), 'x')
    """
    if not isinstance(variable_state, Variable):
      raise NotAVariableError(
        f"{type(self).__name__}.update_from_state expects a Variable, got "
        f"{type(variable_state).__name__}; to set the value only use `variable[...] = x`."
      )
    self.set_value(variable_state.get_raw_value())
    if self._metadata != variable_state._metadata:
      object.__setattr__(self, "_metadata", dict(variable_state._metadata))
      bump_structure()

  def add_axis(self, axis_index: int, axis_name: Any) -> None:
    """Runs the ``on_add_axis`` hooks (from ``VariableMetadata`` or the class), as a
    mapping transform adding axis ``axis_name`` at ``axis_index`` does; else nothing.

    Example:
      >>> nnx.Param(jnp.zeros(2)).add_axis(0, "batch")  # no hooks: nothing to do
    """
    run_axis_hooks(self, "on_add_axis", axis_index, axis_name)

  def remove_axis(self, axis_index: int, axis_name: Any) -> None:
    """Runs the ``on_remove_axis`` hooks (the inverse of :meth:`add_axis`)."""
    run_axis_hooks(self, "on_remove_axis", axis_index, axis_name)

  @property
  def type(self) -> type:
    return type(self)

  def __getattr__(self, name: str) -> Any:
    if name.startswith("__") or name in Variable.__slots__:
      raise AttributeError(name)
    try:
      metadata = object.__getattribute__(self, "_metadata")
    except AttributeError:
      raise AttributeError(name) from None
    if name in metadata:
      return metadata[name]
    if name in REPORTED_DEFAULTS:
      return REPORTED_DEFAULTS[name]
    if name == "sharding_names" and "out_sharding" in metadata:
      return metadata["out_sharding"]
    return getattr(self.get_value(), name)

  def __setattr__(self, name: str, value: Any) -> None:
    """``v.value = x`` sets the value; ``v.note = x`` the metadata entry ``note``."""
    if name == "value":
      self.set_value(value)
    elif name == "raw_value":
      self.set_raw_value(value)
    elif name.startswith("_"):
      object.__setattr__(self, name, value)
    elif hasattr(type(self), name):
      kind = type(self).__name__
      raise VariableAttributeError(
        f"Cannot set {kind}.{name}: it is a read-only {kind} attribute, not metadata. Store "
        f"metadata under another name, `set_metadata(my_{name}=...)`, or set the value with "
        "`variable[...] = x`."
      )
    else:
      self.set_metadata(name, value)

  def __delattr__(self, name: str) -> None:
    kind = type(self).__name__
    hint = (
      f"`variable.del_metadata({name!r})`"
      if name in self._metadata
      else f"nothing: {kind} has no metadata {name!r}"
    )
    raise VariableAttributeError(
      f"Cannot delete the attribute {name!r} of a {kind}. To delete a metadata entry use {hint}."
    )

  def __getstate__(self) -> dict:
    return {"value": self._raw_value, "metadata": self._metadata}

  def __setstate__(self, state: dict) -> None:
    object.__setattr__(self, "_raw_value", state["value"])
    object.__setattr__(self, "_metadata", state["metadata"])
    object.__setattr__(self, "_frame", FRAMES.current)

  # -- array protocol ----------------------------------------------------------------------
  def __jax_array__(self):
    return self.get_value()

  def __array__(self, dtype=None, copy=None):
    return np.asarray(self.get_value(), dtype=dtype)

  def __len__(self) -> int:
    return len(self.get_value())  # type: ignore[arg-type]

  def __iter__(self):
    return iter(self.get_value())  # type: ignore[call-overload]

  def __bool__(self) -> bool:
    return bool(self.get_value())

  def __int__(self) -> int:
    return int(self.get_value())  # type: ignore[call-overload]

  def __float__(self) -> float:
    return float(self.get_value())  # type: ignore[arg-type]

  def __index__(self) -> int:
    return operator.index(self.get_value())  # type: ignore[arg-type]

  def __hash__(self) -> int:
    return id(self)

  def __repr__(self) -> str:
    return variable_repr(self)

  # -- pytree ------------------------------------------------------------------------------
  def _pynnx_aux(self) -> tuple:
    return aux_from_meta(self._metadata)


def _raise_outer_write(var: Variable, frame: Frame) -> None:
  raise TraceContextError(
    f"Cannot mutate a {type(var).__name__} inside pynnx.{frame.name}: it was not passed to "
    f"the transformed function but closed over from an outer scope, so the update could not "
    f"be written back. Pass the Module or Variable that holds it as an argument of the "
    f"function given to pynnx.{frame.name} instead."
  )


install_operators(Variable)


def _register_variable_pytree(cls: type) -> None:
  def flatten_with_keys(v: Variable):
    return ((_VALUE_KEY, v._raw_value),), v._pynnx_aux()

  def flatten(v: Variable):
    return (v._raw_value,), v._pynnx_aux()

  def unflatten(aux: tuple, children: Any) -> Variable:
    new: Variable = object.__new__(cls)
    object.__setattr__(new, "_raw_value", children[0])
    object.__setattr__(new, "_metadata", meta_from_aux(aux))
    object.__setattr__(new, "_frame", FRAMES.current)
    return new

  jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)


_VALUE_KEY = jax.tree_util.GetAttrKey("value")
_register_variable_pytree(Variable)


def is_variable(x: Any) -> bool:
  return isinstance(x, Variable)


# --- the Variable types ------------------------------------------------------------------


class Param(Variable[A]):
  """A trainable parameter; what ``grad`` differentiates and ``Optimizer`` updates."""


class BatchStat(Variable[A]):
  """A running statistic (e.g. BatchNorm's mean and var); not differentiated."""


class Cache(Variable[A]):
  """Decode-time cache (e.g. attention keys and values)."""


class Intermediate(Variable[A]):
  """Values recorded with ``Module.sow``."""


class Perturbation(Variable[A]):
  """Zero-valued probes added with ``Module.perturb`` to read intermediate gradients."""


class RngState(Variable[A]):
  """Base class of random-stream state."""


class RngKey(RngState[A]):
  """A stream's PRNG key."""


class RngCount(RngState[A]):
  """A stream's counter, advanced by each draw."""


class OptState(Variable[A]):
  """Base class of optimizer state."""


class OptArray(OptState[A]):
  """An array leaf of an optax state."""


class OptVariable(OptState[A]):
  """Optimizer state kept per parameter, with the parameter's metadata."""


def variable_type_from_name(
  name: str, /, *, base: type[Variable] = Variable, allow_register: bool = False
) -> type[Variable]:
  """The Variable type registered for a collection name (``'params'`` -> ``Param``).

  With ``allow_register=True`` an unknown name gets a new subclass of ``base``.
  """
  typ = registered_type(name)
  if typ is not None:
    return typ
  if allow_register:
    if not (isinstance(base, type) and issubclass(base, Variable)):
      raise NotAVariableError(
        f"variable_type_from_name(base=...) must be a Variable subclass, got {base!r}."
      )
    typ = type(name, (base,), {})
    register_variable_name(name, typ)
    return typ
  raise VariableNameError(
    f"No Variable type is registered under the name {name!r}; register one with "
    f"`nnx.register_variable_name({name!r}, MyVariable)` or pass allow_register=True."
  )


for _n, _t in [
  ("params", Param),
  ("batch_stats", BatchStat),
  ("cache", Cache),
  ("intermediates", Intermediate),
  ("perturbations", Perturbation),
  ("rngs", RngState),
]:
  register_variable_name(_n, _t)
