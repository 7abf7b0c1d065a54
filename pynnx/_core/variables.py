"""Variables: the only mutable cells of a pynnx model.

A :class:`Variable` wraps one value (usually a ``jax.Array``) plus metadata. It is a JAX
pytree node whose single child is the value and whose static part is its type and metadata,
so ``jax.tree.map(f, module)`` maps over values and keeps Variable types.
"""

from __future__ import annotations

import operator
import threading
from typing import Any, ClassVar, Generic, TypeVar

import jax
import jax.extend.core as jex_core
import numpy as np

from . import eager
from .errors import (
  LeakedTracerError,
  NotAVariableError,
  TraceContextError,
  VariableAttributeError,
  VariableIndexError,
  VariableNameError,
)
from .reprs import variable_repr
from .varapi import VariableMetadataMethods
from .varhooks import HOOK_KEYS, run_create_hooks, unbox
from .varmeta import (
  REPORTED_DEFAULTS,
  aux_from_meta,
  creation_metadata,
  meta_from_aux,
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


class Variable(VariableMetadataMethods, Generic[A]):
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

  def get_raw_value(self) -> A:
    """The stored value, without the leaked-tracer check of ``get_value``."""
    return self._raw_value

  def set_raw_value(self, value: A) -> None:
    """Stores ``value`` as is (same rules as ``set_value``)."""
    self.set_value(value)

  # -- the primitives of the metadata methods (varapi) ----------------------------------
  @classmethod
  def _pynnx_build(cls, value: Any, metadata: dict) -> Any:
    """A new Variable of this type holding ``value`` and the stored-form ``metadata``."""
    new = object.__new__(cls)
    object.__setattr__(new, "_raw_value", value)
    object.__setattr__(new, "_metadata", metadata)
    object.__setattr__(new, "_frame", FRAMES.current)
    return new

  def _pynnx_put_metadata(self, metadata: dict) -> None:
    """Stores ``metadata`` (stored form): a structure change."""
    object.__setattr__(self, "_metadata", metadata)
    bump_structure()

  # -- attributes ------------------------------------------------------------------------

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
