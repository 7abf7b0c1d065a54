"""Variables: the only mutable cells of a pynnx model.

A :class:`Variable` wraps one value (usually a ``jax.Array``) plus metadata. It is a JAX
pytree node whose single child is the value and whose static part is its type and metadata,
so ``jax.tree.map(f, module)`` maps over values and keeps Variable types.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

import jax
import jax.extend.core as jex_core
import numpy as np

from . import eager
from .errors import (
  LeakedTracerError,
  NotAVariableError,
  ShapeError,
  StateMismatchError,
  TraceContextError,
  VariableInPlaceError,
)
from .reprs import variable_repr
from .varhooks import HOOK_KEYS, run_axis_hooks, run_create_hooks, unbox

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
    metadata = _creation_metadata(type(self).__name__, metadata)
    if type(self)._pynnx_has_hooks or not HOOK_KEYS.isdisjoint(metadata):
      object.__setattr__(self, "_frame", FRAMES.current)  # the hooks may read the Variable
      value = run_create_hooks(self, value, metadata)
    value = eager.place(value, metadata)
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
  def get_value(self) -> A:
    value = self._raw_value
    if isinstance(value, jax.core.Tracer):
      _check_not_leaked(value, self)
    return value

  def set_value(self, value: A) -> None:
    frame = FRAMES.current
    if frame is not None and self._frame is not frame:
      _raise_outer_write(self, frame)
    if isinstance(value, Variable):
      value = value.get_value()
    elif isinstance(value, list) and hasattr(self._raw_value, "shape") and _is_number_list(value):
      value = _as_array(value, self)  # an array cell stays an array (a list value is a pytree)
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
    value: Any = self.get_value()
    if key is Ellipsis:
      return value
    return value[key]

  def __setitem__(self, key: Any, item: Any) -> None:
    """``v[...] = x`` writes into the cell: ``x`` is broadcast to the current value's shape
    and cast to its dtype (NumPy in-place assignment). ``v.value = x`` replaces the value."""
    if isinstance(item, Variable):
      item = item.get_value()
    current: Any = self.get_value()
    if key is Ellipsis:
      self.set_value(_fill(self, current, item))
    elif isinstance(current, (dict, list)):
      # A pytree-valued Variable (Flax allows `v['a'] = 1`): write a modified copy, so the
      # change goes through set_value like any other write.
      new: Any = dict(current) if isinstance(current, dict) else list(current)
      new[key] = item
      self.set_value(new)
    else:
      self.set_value(current.at[key].set(item))

  # -- metadata ------------------------------------------------------------------------
  def get_metadata(
    self, name: str | None = None, default: Any = ..., *, exclude_required: bool | None = None
  ) -> Any:
    if name is None:
      if exclude_required:  # without hijax / ref / eager_sharding, as Flax
        return {k: v for k, v in self._metadata.items() if k not in _REPORTED_DEFAULTS}
      return {**_REPORTED_DEFAULTS, **self._metadata}
    if name in self._metadata:
      return self._metadata[name]
    if name in _REPORTED_DEFAULTS:
      return _REPORTED_DEFAULTS[name]
    if name == "sharding_names" and "out_sharding" in self._metadata:
      return self._metadata["out_sharding"]
    if default is not ...:
      return default
    raise AttributeError(f"{type(self).__name__} has no metadata {name!r}.")

  def set_metadata(self, *args: Any, **metadata: Any) -> None:
    if args:
      if len(args) == 2:
        metadata = {args[0]: args[1], **metadata}
      elif len(args) == 1 and isinstance(args[0], dict):
        metadata = {**args[0], **metadata}
      else:
        raise TypeError("set_metadata takes (name, value), a dict, or keyword arguments.")
    eager.check_var_options("Variable.set_metadata", metadata.get("hijax"), metadata.get("ref"))
    object.__setattr__(self, "_metadata", {**self._metadata, **metadata})
    bump_structure()

  def replace(self, value: Any = ..., **metadata: Any) -> Variable[A]:
    """A new Variable of the same type with ``value`` and/or metadata replaced."""
    eager.check_var_options("Variable.replace", metadata.get("hijax"), metadata.get("ref"))
    new = object.__new__(type(self))
    object.__setattr__(new, "_raw_value", self._raw_value if value is ... else value)
    object.__setattr__(new, "_metadata", {**self._metadata, **metadata})
    object.__setattr__(new, "_frame", FRAMES.current)
    return new

  def copy(self, value: Any = ..., **updates: Any) -> Variable[A]:
    return self.replace(value, **updates)  # Flax's name and signature for `replace`

  def has_metadata(self, name: str) -> bool:
    """Whether ``name`` was set as metadata on this Variable (defaults do not count)."""
    return name in self._metadata

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
      if not (k in _REPORTED_DEFAULTS and v is _REPORTED_DEFAULTS[k])
    }
    new = object.__new__(cls)
    object.__setattr__(new, "_raw_value", value)
    object.__setattr__(new, "_metadata", meta)
    object.__setattr__(new, "_frame", FRAMES.current)
    return new

  def to_state(self, value: Any = ..., **updates: Any) -> Variable[A]:
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
    if name in _REPORTED_DEFAULTS:
      return _REPORTED_DEFAULTS[name]
    if name == "sharding_names" and "out_sharding" in metadata:
      return metadata["out_sharding"]
    return getattr(self.get_value(), name)

  def __setattr__(self, name: str, value: Any) -> None:
    if name == "value":
      self.set_value(value)
    elif name.startswith("_"):
      object.__setattr__(self, name, value)
    else:
      self.set_metadata(name, value)

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


_UNHASHABLE = (list, dict, set)


class _Frozen:
  """Metadata value that is a list / dict / set, made hashable for the static pytree aux
  (a jit cache key) while the Variable gets the original value back."""

  __slots__ = ("value", "key")

  def __init__(self, value: Any):
    self.value = value
    self.key = _freeze(value)

  def __hash__(self) -> int:
    return hash(self.key)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, _Frozen) and self.key == other.key

  def __repr__(self) -> str:
    return repr(self.value)


def _freeze(v: Any) -> Any:
  if isinstance(v, dict):
    return ("dict", tuple(sorted((repr(k), _freeze(x)) for k, x in v.items())))
  if isinstance(v, (list, tuple)):
    return (type(v).__name__, tuple(_freeze(x) for x in v))
  if isinstance(v, set):
    return ("set", frozenset(_freeze(x) for x in v))
  try:
    hash(v)
  except TypeError:
    return ("id", id(v))
  return v


def aux_from_meta(meta: dict) -> tuple:
  """A Variable's metadata as hashable pytree aux data (lists, dicts and sets frozen)."""
  items = meta.items()
  if any(type(v) in _UNHASHABLE for _, v in items):
    return tuple(sorted((k, _Frozen(v) if type(v) in _UNHASHABLE else v) for k, v in items))
  return tuple(sorted(items))


def meta_from_aux(aux: tuple) -> dict:
  """The metadata dict of a Variable from its pytree aux data (see ``_pynnx_aux``)."""
  meta = dict(aux)
  for k, v in meta.items():
    if type(v) is _Frozen:
      meta[k] = v.value
  return meta


def _is_number_list(value: list) -> bool:
  """A (nested) list of Python numbers: stored in a Variable as an array."""
  return all(
    isinstance(x, (bool, int, float, complex)) or (isinstance(x, list) and _is_number_list(x))
    for x in value
  )


def _as_array(value: Any, var: Variable) -> Any:
  try:
    return jax.numpy.asarray(value)
  except (TypeError, ValueError) as e:
    raise ShapeError(
      f"{type(var).__name__}: cannot store the list {value!r} as an array ({e}). Give an "
      f"array of one shape (`jnp.asarray(...)`), or a tuple / dict for a pytree value."
    ) from None


def _fill(var: Variable, current: Any, item: Any) -> Any:
  """``item`` broadcast into ``current``'s shape and dtype, for ``var[...] = item``."""
  shape, dtype = getattr(current, "shape", None), getattr(current, "dtype", None)
  if item is None or shape is None or dtype is None or isinstance(current, jax.ShapeDtypeStruct):
    return _as_array(item, var) if isinstance(item, list) else item
  if getattr(item, "shape", None) == shape and getattr(item, "dtype", None) == dtype:
    return item
  if isinstance(item, list):
    item = _as_array(item, var)
  try:
    return jax.numpy.broadcast_to(jax.numpy.asarray(item, dtype=dtype), shape)
  except (TypeError, ValueError) as e:
    got = getattr(item, "shape", ())
    raise ShapeError(
      f"{type(var).__name__}[...] = x writes into the cell's shape {tuple(shape)} and dtype "
      f"{dtype}, but x has shape {tuple(got)} ({e}). To replace the value with one of another "
      f"shape, assign `.value = x` instead."
    ) from None


# Metadata every Flax Variable reports; pynnx stores an entry only when it differs.
_REPORTED_DEFAULTS = {"hijax": False, "ref": False, "eager_sharding": True}


def _creation_metadata(kind: str, metadata: dict) -> dict:
  """Checks Flax's creation options and drops the ones equal to their defaults."""
  eager.check_var_options(f"nnx.{kind}(...)", metadata.get("hijax"), metadata.get("ref"))
  metadata = {k: v for k, v in metadata.items() if k not in ("hijax", "ref")}
  if "sharding_names" in metadata and "out_sharding" not in metadata:
    # Flax 0.12's key for the older `sharding_names` (still answered as an alias).
    metadata["out_sharding"] = metadata.pop("sharding_names")
  if metadata.get("eager_sharding", False) is True:
    del metadata["eager_sharding"]
  elif "eager_sharding" not in metadata and not eager.using_eager_sharding():
    metadata["eager_sharding"] = False  # created with eager sharding off: remember it
  return metadata


def _raise_outer_write(var: Variable, frame: Frame) -> None:
  raise TraceContextError(
    f"Cannot mutate a {type(var).__name__} inside pynnx.{frame.name}: it was not passed to "
    f"the transformed function but closed over from an outer scope, so the update could not "
    f"be written back. Pass the Module or Variable that holds it as an argument of the "
    f"function given to pynnx.{frame.name} instead."
  )


def _binary(op: Callable, reflected: bool = False):
  if reflected:

    def method(self, other):
      return op(other.get_value() if isinstance(other, Variable) else other, self.get_value())
  else:

    def method(self, other):
      return op(self.get_value(), other.get_value() if isinstance(other, Variable) else other)

  return method


def _no_inplace(variable: Variable, name: str) -> Any:
  # Without this, Python falls back to `v = v + x`: the name is rebound to a plain array and
  # the Variable silently keeps its old value.
  kind = type(variable).__name__
  raise VariableInPlaceError(
    f"In-place operator `__i{name}__` on a {kind} Variable itself is not supported (it would "
    f"rebind the name to a plain array and leave the {kind} unchanged). Update its contents: "
    f"`variable[...] += x` or `variable.value = variable.value + x`."
  )


for _name, _op in [
  ("add", operator.add),
  ("sub", operator.sub),
  ("mul", operator.mul),
  ("truediv", operator.truediv),
  ("floordiv", operator.floordiv),
  ("mod", operator.mod),
  ("pow", operator.pow),
  ("matmul", operator.matmul),
  ("and", operator.and_),
  ("or", operator.or_),
  ("xor", operator.xor),
  ("lshift", operator.lshift),
  ("rshift", operator.rshift),
  ("divmod", divmod),
]:
  setattr(Variable, f"__{_name}__", _binary(_op))
  setattr(Variable, f"__r{_name}__", _binary(_op, reflected=True))
  if _name != "divmod":  # divmod has no augmented form
    setattr(Variable, f"__i{_name}__", (lambda n: lambda self, x: _no_inplace(self, n))(_name))
for _name, _op in [
  ("lt", operator.lt),
  ("le", operator.le),
  ("gt", operator.gt),
  ("ge", operator.ge),
  ("eq", operator.eq),
  ("ne", operator.ne),  # elementwise, like arrays (and Flax)
]:
  setattr(Variable, f"__{_name}__", _binary(_op))
_UNARY_OPS: list[tuple[str, Callable[..., Any]]] = [
  ("neg", operator.neg),
  ("pos", operator.pos),
  ("abs", operator.abs),
  ("invert", operator.invert),
]
for _name, _uop in _UNARY_OPS:
  setattr(Variable, f"__{_name}__", (lambda op: lambda self: op(self.get_value()))(_uop))


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


# --- collection names (Linen-style names <-> Variable types) ------------------------------

_NAME_TO_TYPE: dict[str, type[Variable]] = {}
_TYPE_TO_NAME: dict[type[Variable], str] = {}


def register_variable_name(
  name: str, typ: type[Variable] | None = None, *, overwrite: bool = False
):
  """Associates a collection name (e.g. ``'params'``) with a Variable type.

  Usable directly or as a class decorator (``@nnx.register_variable_name('stats')``).
  """
  if typ is None:
    return lambda t: register_variable_name(name, t, overwrite=overwrite)
  if not overwrite and name in _NAME_TO_TYPE and _NAME_TO_TYPE[name] is not typ:
    raise ValueError(
      f"The name {name!r} is already registered for {_NAME_TO_TYPE[name].__name__}; pass "
      "overwrite=True to replace it."
    )
  _NAME_TO_TYPE[name] = typ
  _TYPE_TO_NAME[typ] = name
  return typ


def variable_name_from_type(typ: type[Variable], *, allow_register: bool = False) -> str:
  """The collection name of a Variable type (``Param`` -> ``'params'``)."""
  if typ in _TYPE_TO_NAME:
    return _TYPE_TO_NAME[typ]
  if allow_register:
    name = typ.__name__
    register_variable_name(name, typ)
    return name
  raise ValueError(
    f"{typ.__name__} has no registered collection name; register one with "
    f"nnx.register_variable_name(name, {typ.__name__}) or pass allow_register=True."
  )


def variable_type_from_name(
  name: str, /, *, base: type[Variable] = Variable, allow_register: bool = False
) -> type[Variable]:
  """The Variable type registered for a collection name (``'params'`` -> ``Param``).

  With ``allow_register=True`` an unknown name gets a new subclass of ``base``.
  """
  if name in _NAME_TO_TYPE:
    return _NAME_TO_TYPE[name]
  if allow_register:
    if not (isinstance(base, type) and issubclass(base, Variable)):
      raise NotAVariableError(
        f"variable_type_from_name(base=...) must be a Variable subclass, got {base!r}."
      )
    typ = type(name, (base,), {})
    register_variable_name(name, typ)
    return typ
  raise ValueError(f"No Variable type is registered under the name {name!r}.")


for _n, _t in [
  ("params", Param),
  ("batch_stats", BatchStat),
  ("cache", Cache),
  ("intermediates", Intermediate),
  ("perturbations", Perturbation),
  ("rngs", RngState),
]:
  register_variable_name(_n, _t)
