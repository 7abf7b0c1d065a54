"""The metadata methods of a Variable (Flax's Variable protocol), as a base class.

``get_metadata`` / ``set_metadata`` / ``has_metadata`` / ``del_metadata``, copies
(``replace``, ``copy``, ``to_state``, ``from_metadata``), ``copy_from`` /
``update_from_state``, the axis hooks and the read-only properties. They reach the Variable
through two primitives it defines: ``_pynnx_build`` (a new Variable from a value and stored
metadata) and ``_pynnx_put_metadata`` (store metadata, a structure change).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from . import eager
from .errors import (
  ConfigError,
  MetadataNotFoundError,
  NotAVariableError,
  StateMismatchError,
)
from .varhooks import run_axis_hooks
from .varmeta import REPORTED_DEFAULTS, merged_metadata, reported_metadata
from .varvalue import MISSING

V = TypeVar("V", bound="VariableMetadataMethods")


class VariableMetadataMethods:
  """Base class of :class:`~pynnx.Variable` holding its metadata methods."""

  __slots__ = ()

  if TYPE_CHECKING:  # defined by Variable
    _metadata: dict[str, Any]
    _raw_value: Any
    required_metadata: ClassVar[frozenset[str]]

    @classmethod
    def _pynnx_build(cls: type[V], value: Any, metadata: dict) -> V: ...
    def _pynnx_put_metadata(self, metadata: dict) -> None: ...
    def get_raw_value(self) -> Any: ...
    def get_value(self, *, index: Any = MISSING) -> Any: ...
    def set_value(self, value: Any, *, index: Any = MISSING) -> None: ...

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
    self._pynnx_put_metadata(new)

  def replace(self: V, value: Any = MISSING, **metadata: Any) -> V:
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
    raw = self._raw_value if value is MISSING else value
    return type(self)._pynnx_build(raw, merged_metadata(self._metadata, metadata))

  def copy(self: V, value: Any = MISSING, **updates: Any) -> V:
    return self.replace(value, **updates)  # Flax's name and signature for `replace`

  def has_metadata(self, name: str) -> bool:
    """Whether ``name`` is a metadata entry (``hijax``, ``ref``, ``eager_sharding`` always are).

    Example:
      >>> p = nnx.Param(jnp.zeros(2), note="x")
      >>> p.has_metadata("note"), p.has_metadata("hijax"), p.has_metadata("other")
      (True, True, False)
    """
    return name in self._metadata or name in REPORTED_DEFAULTS

  @property
  def var_type(self) -> type:
    return type(self)

  def copy_from(self, other: VariableMetadataMethods) -> None:
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
    self._pynnx_put_metadata(dict(other._metadata))

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

  def create_value(self, value: Any) -> Any:
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
    self._pynnx_put_metadata(meta)

  @classmethod
  def from_metadata(cls: type[V], value: Any, attributes: dict[str, Any]) -> V:
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
    return cls._pynnx_build(value, meta)

  def to_state(self: V, value: Any = MISSING, **updates: Any) -> V:
    """A copy of this Variable (same type, value and metadata), as Flax's ``to_state``.

    Example:
      >>> p = nnx.Param(jnp.zeros(2)); p.to_state() is p
      False
    """
    return self.copy(value, **updates)

  def update_from_state(self, variable_state: VariableMetadataMethods) -> None:
    """Takes the value and metadata of ``variable_state`` (the inverse of ``to_state``).

    Example:
      >>> p = nnx.Param(jnp.zeros(2)); p.update_from_state(nnx.Param(jnp.ones(2), note="x"))
      >>> p[...], p.note
      (Array([1., 1.], dtype=float32), 'x')
    """
    if not isinstance(variable_state, VariableMetadataMethods):
      raise NotAVariableError(
        f"{type(self).__name__}.update_from_state expects a Variable, got "
        f"{type(variable_state).__name__}; to set the value only use `variable[...] = x`."
      )
    self.set_value(variable_state.get_raw_value())
    if self._metadata != variable_state._metadata:
      self._pynnx_put_metadata(dict(variable_state._metadata))

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
