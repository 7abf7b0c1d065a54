"""Pytree: objects that register themselves as JAX pytrees and freeze once built.

Attributes holding Variables, Pytrees, arrays or containers of them are *data* (pytree
children); everything else is *static* (part of the treedef, so it must be hashable).
``nnx.data(...)`` / ``nnx.static(...)`` override the choice for one attribute.

An object is frozen when the outermost constructor running returns: a parent's
``__init__`` may still tie weights into children it just built. After that, assignment or
deletion raises :class:`~pynnx.FrozenModuleError`; sanctioned APIs use ``_pynnx_setattr``,
which bumps the global structure epoch so cached flatten plans stay correct.
"""

from __future__ import annotations

import dataclasses
import threading
import types
from collections.abc import Hashable, Iterator, MutableMapping, MutableSequence
from typing import Annotated, Any

import jax
import numpy as np

from .errors import FrozenModuleError, StaticAttributeError
from .reprs import block, mapping_repr
from .statics import static_key
from .variables import Variable, bump_structure

_INTERNAL = "_pynnx_"
# Per-object caches (flatten plans of the tree lift and of graph mode): never copied.
_CACHE_KEYS = frozenset({"_pynnx_lift_plan", "_pynnx_graph_plan", "_pynnx_graph_nodes"})


class _Build(threading.local):
  """Constructors running in this thread, and the objects they built (frozen at depth 0).

  Per thread: a constructor failing in one thread never affects objects built in another.
  """

  def __init__(self) -> None:
    self.depth = 0
    self.pending: list = []


BUILD = _Build()


# --- data / static markers --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Marker:
  value: Any
  kind: str  # "data" | "static"


_MISSING: Any = object()
_FIELD_KIND = "pynnx_kind"


def data(value: Any = _MISSING, /, **field_kwargs: Any) -> Any:
  """Marks an attribute as data (a pytree child), whatever it holds.

  ``self.x = nnx.data(value)`` marks one assignment; without a value it returns a
  ``dataclasses.field(**field_kwargs)`` for :func:`dataclass` field declarations.

  Example:
    >>> import pynnx as nnx
    >>> class Scale(nnx.Module):
    ...   def __init__(self):
    ...     self.factor = nnx.data(2.0)   # a traced leaf, not a compile-time constant
    >>> import jax; jax.tree.leaves(Scale())
    [2.0]
  """
  if value is _MISSING:
    return _field("data", field_kwargs)
  return _Marker(value, "data")


def static(value: Any = _MISSING, /, **field_kwargs: Any) -> Any:
  """Marks an attribute as static (part of the treedef; must be hashable); see :func:`data`."""
  if value is _MISSING:
    return _field("static", field_kwargs)
  return _Marker(value, "static")


def _field(kind: str, kwargs: dict) -> Any:
  metadata = {**kwargs.pop("metadata", {}), _FIELD_KIND: kind}
  return dataclasses.field(metadata=metadata, **kwargs)


class _KindMark:
  def __init__(self, kind: str):
    self.kind = kind

  def __repr__(self) -> str:
    return f"<pynnx {self.kind}>"


_DATA_MARK, _STATIC_MARK = _KindMark("data"), _KindMark("static")


class Data:
  """Annotation ``nnx.Data[T]``: a dataclass field of type ``T`` that is data."""

  def __class_getitem__(cls, item: Any) -> Any:
    return Annotated[item, _DATA_MARK]


class Static:
  """Annotation ``nnx.Static[T]``: a dataclass field of type ``T`` that is static."""

  def __class_getitem__(cls, item: Any) -> Any:
    return Annotated[item, _STATIC_MARK]


def _annotation_kind(annotation: Any) -> str | None:
  if isinstance(annotation, str):  # postponed annotations: read the spelling
    head = annotation.replace(" ", "").split("[", 1)[0].rsplit(".", 1)[-1]
    return {"Data": "data", "Static": "static"}.get(head)
  for mark in getattr(annotation, "__metadata__", ()):
    if isinstance(mark, _KindMark):
      return mark.kind
  return None


def dataclass(
  cls: Any = None,
  /,
  *,
  init: bool = True,
  eq: bool = False,
  order: bool = False,
  unsafe_hash: bool = False,
  match_args: bool = True,
  kw_only: bool = False,
  slots: bool = False,
  weakref_slot: bool = False,
) -> Any:
  """``dataclasses.dataclass`` for Pytrees/Modules, honouring data/static declarations.

  Fields declared with ``nnx.data()`` / ``nnx.static()`` or annotated ``nnx.Data[T]`` /
  ``nnx.Static[T]`` are data / static; the rest are classified by value as usual.

  Example:
    >>> import jax, jax.numpy as jnp, pynnx as nnx
    >>> @nnx.dataclass
    ... class Affine(nnx.Module):
    ...   w: nnx.Param
    ...   scale: float = nnx.data(default=1.0)
    ...   name: str = nnx.static(default="affine")
    >>> a = Affine(nnx.Param(jnp.ones(2)))
    >>> len(jax.tree.leaves(a))   # w and scale
    2
  """
  options = dict(
    init=init,
    eq=eq,
    order=order,
    unsafe_hash=unsafe_hash,
    match_args=match_args,
    kw_only=kw_only,
    slots=slots,
    weakref_slot=weakref_slot,
    repr=False,  # Pytrees print in pynnx's layout
  )
  if cls is None:
    return lambda c: dataclass(c, **options)
  out = dataclasses.dataclass(cls, **options)
  kinds = {}
  for f in dataclasses.fields(out):
    kind = f.metadata.get(_FIELD_KIND) or _annotation_kind(f.type)
    if kind is None and isinstance(f.metadata.get("static"), bool):  # Flax's field metadata
      kind = "static" if f.metadata["static"] else "data"
    if kind is not None:
      kinds[f.name] = kind
  out._pynnx_field_kinds = {**getattr(out, "_pynnx_field_kinds", {}), **kinds}
  return out


_DATA_TYPES: set[type] = set()


def register_data_type(typ: type) -> type:
  """Declares instances of ``typ`` to be data wherever they appear (usable as a decorator)."""
  _DATA_TYPES.add(typ)
  return typ


def _is_array(x: Any) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct))


def is_data_value(value: Any) -> bool:
  """True if ``value`` is, or contains, a Variable, Pytree, array or registered data type."""
  if isinstance(value, (Variable, Pytree)) or _is_array(value):
    return True
  if _DATA_TYPES and isinstance(value, tuple(_DATA_TYPES)):
    return True
  if isinstance(value, (list, tuple, dict)):
    items = value.values() if isinstance(value, dict) else value
    return any(is_data_value(v) for v in items)
  return False


def is_data(value: Any, /) -> bool:
  """True if ``value`` itself is data: an array, a Variable, a Pytree or a registered type.

  Containers are not data themselves (``nnx.has_data`` finds the data inside one).

  Example:
    >>> import pynnx as nnx
    >>> nnx.is_data(jnp.ones(2)), nnx.is_data([jnp.ones(2)]), nnx.is_data(1.0)
    (True, False, False)
  """
  if isinstance(value, (Variable, Pytree)) or _is_array(value):
    return True
  return bool(_DATA_TYPES) and isinstance(value, tuple(_DATA_TYPES))


# --- flatten metadata -------------------------------------------------------------------


class _Meta:
  """The static half of a Pytree's flattening: data keys and static items (hashable)."""

  __slots__ = ("data_keys", "key_objs", "statics", "_hash")

  def __init__(self, data_keys: tuple, key_objs: tuple, statics: tuple):
    self.data_keys = data_keys
    self.key_objs = key_objs
    self.statics = statics
    self._hash: int | None = None

  def __hash__(self) -> int:
    if self._hash is None:
      self._hash = hash((self.data_keys, tuple((k, static_key(v)) for k, v in self.statics)))
    return self._hash

  def __eq__(self, other: object) -> bool:
    if self is other:
      return True
    if not isinstance(other, _Meta):
      return False
    try:  # tuples compare items by identity, then by ==: unhashable statics included
      return self.data_keys == other.data_keys and self.statics == other.statics
    except Exception:  # a static whose __eq__ gives no truth value: not the same
      return False

  def __repr__(self) -> str:
    return f"Meta(data={self.data_keys}, static={dict(self.statics)})"


def _sort_key(k: Any) -> tuple:
  return (0, k, "") if isinstance(k, int) else (1, 0, str(k))


class _PytreeMeta(type):
  def __call__(cls, *args: Any, **kwargs: Any):
    BUILD.depth += 1
    ok = False
    try:
      obj = super().__call__(*args, **kwargs)
      ok = True
    finally:
      BUILD.depth -= 1
      if BUILD.depth == 0:
        pending, BUILD.pending = BUILD.pending, []
        for o in pending:
          if not o.__dict__.get("_pynnx_frozen", False):
            if ok:
              o._pynnx_freeze()
            else:  # the constructor raised: an object that escaped must not stay mutable
              o.__dict__["_pynnx_frozen"] = True  # (its description is computed when asked)
    return obj


class Pytree(metaclass=_PytreeMeta):
  """Base class of pynnx objects that are JAX pytrees with a frozen structure."""

  _pynnx_auto_containers = True
  _pynnx_field_kinds: dict = {}  # set by nnx.dataclass from field declarations
  _pynnx_is_module = False  # Module sets it: its fixes (set_attributes, view) differ
  _pynnx_is_pytree = True  # False for `class Foo(nnx.Pytree, pytree=False)`: graph mode only

  def __init_subclass__(cls, pytree: bool | None = None, **kwargs: Any):
    super().__init_subclass__(**kwargs)
    if pytree is not None:
      if not isinstance(pytree, bool):
        raise TypeError(f"{cls.__name__}: `pytree=` takes True or False, got {pytree!r}.")
      cls._pynnx_is_pytree = pytree
    # `x: nnx.Data[T]` / `x: nnx.Static[T]` class annotations mark the attribute, as in Flax
    # (with or without nnx.dataclass); subclasses inherit their parents' marks.
    marked = {}
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
      kind = _annotation_kind(annotation)
      if kind is not None:
        marked[name] = kind
    if marked:
      cls._pynnx_field_kinds = {**cls._pynnx_field_kinds, **marked}
    if cls._pynnx_is_pytree:
      _register(cls)

  def __new__(cls, *args: Any, **kwargs: Any):
    obj = object.__new__(cls)
    d = obj.__dict__
    d["_pynnx_frozen"] = False
    d["_pynnx_forced"] = {}
    # Only objects built by a constructor wait to be frozen; copy/pickle call __new__ at
    # depth 0 and restore the frozen flag in __setstate__ (queueing them would leak them).
    if BUILD.depth > 0:
      BUILD.pending.append(obj)
    return obj

  # -- attribute protocol ------------------------------------------------------------------
  def __setattr__(self, name: str, value: Any) -> None:
    d = self.__dict__
    if d.get("_pynnx_frozen", False) and not name.startswith(_INTERNAL):
      raise FrozenModuleError(_frozen_message(self, name, value))
    self._pynnx_store(name, value)

  def __delattr__(self, name: str) -> None:
    if self.__dict__.get("_pynnx_frozen", False):
      kind = type(self).__name__
      alternative = (
        "`nnx.view(...)` for a modified copy"
        if type(self)._pynnx_is_module
        else f"construct a new {kind} without it"
      )
      raise FrozenModuleError(
        f"Cannot delete attribute {name!r} of {kind}: pynnx "
        f"{'Modules' if type(self)._pynnx_is_module else 'Pytrees'} are frozen once built. Use "
        f"`nnx.pop(obj, filter)` to remove Variables such as sown intermediates, or {alternative}."
      )
    del self.__dict__[name]
    self.__dict__["_pynnx_forced"].pop(name, None)

  def _pynnx_store(self, name: str, value: Any) -> None:
    d = self.__dict__
    missing = object()
    old_value, old_forced = d.get(name, missing), dict(d.get("_pynnx_forced", {}))
    if isinstance(value, _Marker):
      d["_pynnx_forced"][name] = value.kind
      value = value.value
    elif name in type(self)._pynnx_field_kinds:
      d["_pynnx_forced"][name] = type(self)._pynnx_field_kinds[name]
    elif name in d.get("_pynnx_forced", {}):
      del d["_pynnx_forced"][name]
    if type(self)._pynnx_auto_containers and d.get("_pynnx_forced", {}).get(name) != "static":
      value = _wrap_container(value)
    d[name] = value
    if d.get("_pynnx_frozen", False):
      try:
        d["_pynnx_meta"] = self._pynnx_compute_meta()
      except StaticAttributeError:
        # Roll back so a rejected change leaves the built object as it was.
        d["_pynnx_forced"] = old_forced
        if old_value is missing:
          del d[name]
        else:
          d[name] = old_value
        raise

  def _pynnx_setattr(self, name: str, value: Any) -> None:
    """Sanctioned structural change on a built object (bumps the structure epoch)."""
    self._pynnx_store(name, value)
    bump_structure()

  def _pynnx_delattr(self, name: str) -> None:
    d = self.__dict__
    del d[name]
    d["_pynnx_forced"].pop(name, None)
    if d.get("_pynnx_frozen", False):
      d["_pynnx_meta"] = self._pynnx_compute_meta()
    bump_structure()

  # -- classification ------------------------------------------------------------------
  def _pynnx_items(self) -> Iterator[tuple[Hashable, Any]]:
    for k, v in self.__dict__.items():
      if not (isinstance(k, str) and k.startswith(_INTERNAL)):
        yield k, v

  def _pynnx_key_obj(self, key: Hashable) -> Any:
    return jax.tree_util.GetAttrKey(key) if isinstance(key, str) else jax.tree_util.SequenceKey(key)

  def _pynnx_compute_meta(self) -> _Meta:
    forced = self.__dict__.get("_pynnx_forced", {})
    data_keys, statics = [], []
    for k, v in self._pynnx_items():
      kind = forced.get(k)
      if kind is None:
        kind = "data" if is_data_value(v) else "static"
      elif kind == "static" and is_data_value(v):  # Flax raises ValueError here too
        raise StaticAttributeError(
          f"{type(self).__name__}.{k} is marked static (nnx.static) but holds data "
          f"({type(v).__name__}): arrays, Variables and Modules are traced, never part of the "
          f"compile cache key. Assign it without nnx.static (`self.{k} = value`), or keep a "
          f"hashable description of it instead."
        )
      if kind == "data":
        data_keys.append(k)
      else:
        statics.append((k, v))
    data_keys.sort(key=_sort_key)
    statics.sort(key=lambda kv: _sort_key(kv[0]))
    return _Meta(tuple(data_keys), tuple(self._pynnx_key_obj(k) for k in data_keys), tuple(statics))

  def _pynnx_freeze(self) -> None:
    d = self.__dict__
    d["_pynnx_meta"] = self._pynnx_compute_meta()
    d["_pynnx_frozen"] = True

  def _pynnx_get_meta(self) -> _Meta:
    meta = self.__dict__.get("_pynnx_meta")
    if meta is None or not self.__dict__.get("_pynnx_frozen", False):
      meta = self._pynnx_compute_meta()
    return meta

  # -- copying / pickling --------------------------------------------------------------
  def __getstate__(self) -> dict:
    return {k: v for k, v in self.__dict__.items() if k not in _CACHE_KEYS}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)


def _frozen_message(obj: Pytree, name: str, value: Any) -> str:
  """The error for ``obj.name = value`` on a built object, with a fix that works for it."""
  kind = type(obj).__name__
  is_module = type(obj)._pynnx_is_module
  root = "model" if is_module else "obj"
  where = f"`{root}.{name}`"
  head = (
    f"Cannot set attribute {name!r} of {kind} ({where} if it is the top-level object): pynnx "
    f"{'Modules' if is_module else 'Pytrees'} are frozen once built (the outermost "
    "constructor has returned). "
  )
  current = obj.__dict__.get(name)
  if isinstance(current, Variable):
    return head + (
      f"{where} holds a {type(current).__name__}: change its value in place with "
      f"`{root}.{name}[...] = new_value` (or `{root}.{name}.value = new_value`)."
    )
  if isinstance(current, Pytree) or isinstance(value, Pytree):
    return head + (
      f"To swap a sub-{'Module' if is_module else 'object'}, build the {kind} with the new one "
      "(pass it to the constructor), or keep swappable parts in an `nnx.List` / `nnx.Dict`, "
      f"whose items can be replaced: `{root}.layers[0] = new_layer`."
    )
  if is_module:
    return head + (
      f"To change a static attribute use `{root}.set_attributes({name}=...)` or the "
      f"functional `nnx.view({root}, {name}=...)`; to rebuild, construct a new {kind}."
    )
  return head + (
    f"Construct a new {kind} with the new {name!r}"
    f"{' (`dataclasses.replace(obj, ...)` for an nnx.dataclass)' if hasattr(obj, '__dataclass_fields__') else ''}"
    f", or hold the value in a Variable (`obj.{name}[...] = ...`) if it must change."
  )


def _register(cls: type) -> None:
  def flatten_with_keys(obj: Any):
    meta = obj._pynnx_get_meta()
    d = obj.__dict__
    return [(ko, d[k]) for ko, k in zip(meta.key_objs, meta.data_keys)], meta

  def flatten(obj: Any):
    meta = obj._pynnx_get_meta()
    d = obj.__dict__
    return [d[k] for k in meta.data_keys], meta

  def unflatten(meta: _Meta, children: Any) -> Any:
    obj: Any = object.__new__(cls)
    d = obj.__dict__
    d["_pynnx_forced"] = {}
    d.update(meta.statics)
    d.update(zip(meta.data_keys, children))
    d["_pynnx_meta"] = meta
    d["_pynnx_frozen"] = True
    return obj

  jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)


# --- containers ---------------------------------------------------------------------------


class List(Pytree):
  """A list of Modules/Variables/arrays; item operations are sanctioned structure changes.

  Items are classified like attributes (data or static); ``nnx.data(x)`` / ``nnx.static(x)``
  force one item's kind. Supports the whole ``list`` protocol.

  Example:
    >>> import pynnx as nnx
    >>> layers = nnx.List([nnx.Param(1.0), nnx.Param(2.0)])
    >>> layers.append(nnx.Param(3.0)); len(layers)
    3
  """

  _pynnx_auto_containers = False

  def __init__(self, items: Any = ()):
    self._set_items(list(items), bump=False)

  def _pynnx_key_obj(self, key: Hashable) -> Any:
    # str keys: attributes added by Module methods (`layers.sow(...)`), as in Flax
    return jax.tree_util.SequenceKey(key) if isinstance(key, int) else jax.tree_util.GetAttrKey(key)

  def _pynnx_delattr(self, name: Any) -> None:
    if isinstance(name, str):  # an attribute a Module method added (`sow`, `nnx.capture`)
      Pytree._pynnx_delattr(self, name)
    else:
      del self[name]  # keeps indices contiguous: later items shift down, as with list.pop

  # Items are classified like attributes: Variables/Modules/arrays are data (children),
  # anything else (e.g. an activation function in a Sequential) is static and hashable.

  def __len__(self) -> int:
    return sum(1 for k in self.__dict__ if isinstance(k, int))

  def _items_list(self) -> list:
    d: dict[Any, Any] = self.__dict__
    return [d[i] for i in range(len(self))]

  def _marked_items(self) -> list:
    """The items with their forced kinds as markers, so the kinds move with the items."""
    forced = self.__dict__["_pynnx_forced"]
    return [_Marker(v, forced[i]) if i in forced else v for i, v in enumerate(self._items_list())]

  def _set_items(self, items: list, bump: bool = True) -> None:
    d: dict[Any, Any] = self.__dict__
    old = self._marked_items()
    for k in [k for k in d if isinstance(k, int)]:
      del d[k]
    forced = d["_pynnx_forced"]
    forced.clear()
    for i, item in enumerate(items):
      if isinstance(item, _Marker):
        forced[i], item = item.kind, item.value
      d[i] = item if forced.get(i) == "static" else _wrap_container(item)
    if d.get("_pynnx_frozen", False):
      try:
        d["_pynnx_meta"] = self._pynnx_compute_meta()
      except StaticAttributeError:
        self._set_items(old)  # a rejected item leaves the list as it was
        raise
    if bump:
      bump_structure()

  def __getitem__(self, i: Any) -> Any:
    items = self._items_list()
    return items[i]

  def __setitem__(self, i: Any, value: Any) -> None:
    items = self._marked_items()
    items[i] = value
    self._set_items(items)

  def __delitem__(self, i: Any) -> None:
    items = self._marked_items()
    del items[i]
    self._set_items(items)

  def __iter__(self) -> Iterator[Any]:
    return iter(self._items_list())

  def __reversed__(self) -> Iterator[Any]:
    return reversed(self._items_list())

  def __contains__(self, value: object) -> bool:
    return any(v is value or _plain_eq(v, value) for v in self._items_list())

  def __iadd__(self, values: Any) -> List:
    self.extend(values)
    return self

  def append(self, value: Any) -> None:
    self._set_items([*self._marked_items(), value])

  def extend(self, values: Any) -> None:
    self._set_items([*self._marked_items(), *values])

  def insert(self, index: int, value: Any) -> None:
    items = self._marked_items()
    items.insert(index, value)
    self._set_items(items)

  def pop(self, index: int = -1) -> Any:
    items = self._marked_items()
    out = items.pop(index)
    self._set_items(items)
    return out.value if isinstance(out, _Marker) else out

  def remove(self, value: Any) -> None:
    del self[self.index(value)]

  def index(self, value: Any, start: int = 0, stop: int | None = None) -> int:
    items = self._items_list()
    for i in range(start, len(items) if stop is None else stop):
      if items[i] is value or _plain_eq(items[i], value):
        return i
    raise ValueError(f"{value!r} is not in the nnx.List")

  def count(self, value: Any) -> int:
    return sum(1 for v in self._items_list() if v is value or _plain_eq(v, value))

  def reverse(self) -> None:
    self._set_items(self._marked_items()[::-1])

  def clear(self) -> None:
    self._set_items([])

  def __repr__(self) -> str:
    return block("List([", [repr(x) for x in self], "])")


def _plain_eq(a: Any, b: Any) -> bool:
  """``a == b`` for non-data values only (arrays and Variables compare elementwise)."""
  if is_data(a) or is_data(b):
    return False
  try:
    return bool(a == b)
  except Exception:  # noqa: BLE001  (an exotic __eq__: treat as different)
    return False


class _UnshadowedMethod:
  """A method an item of the same name cannot hide: Dict items live in the instance
  ``__dict__``, which beats plain methods, so ``{'keys': ..., 'values': ...}`` (an attention
  cache, say) would otherwise break ``d.values()``. Data descriptors win over ``__dict__``."""

  def __init__(self, fn: Any):
    self.fn = fn
    self.__doc__ = fn.__doc__

  def __get__(self, obj: Any, objtype: Any = None) -> Any:
    return self.fn if obj is None else types.MethodType(self.fn, obj)

  def __set__(self, obj: Any, value: Any) -> None:
    # Only here to make this a data descriptor; an item of this name is stored as usual.
    obj.__dict__[self.fn.__name__] = value


class Dict(Pytree):
  """A str-keyed mapping of Modules/Variables/arrays; item operations are sanctioned."""

  _pynnx_auto_containers = False

  def __init__(self, items: Any = (), **kwargs: Any):
    for k, v in dict(items, **kwargs).items():
      self._check_key(k)
      self.__dict__[k] = _wrap_container(v)

  @staticmethod
  def _check_key(k: Any) -> None:
    if not isinstance(k, str) or k.startswith(_INTERNAL):
      raise TypeError(f"nnx.Dict keys must be strings not starting with {_INTERNAL!r}, got {k!r}.")

  def _pynnx_key_obj(self, key: Hashable) -> Any:
    return jax.tree_util.DictKey(key)

  def _pynnx_keys(self) -> list:
    return [k for k, _ in self._pynnx_items()]

  def __getitem__(self, key: str) -> Any:
    try:
      return self.__dict__[key]
    except KeyError:
      raise KeyError(key) from None

  def __setitem__(self, key: str, value: Any) -> None:
    self._check_key(key)
    self._pynnx_setattr(key, value)

  def __delitem__(self, key: str) -> None:
    self._pynnx_delattr(key)

  def __contains__(self, key: object) -> bool:
    return key in self._pynnx_keys()

  def __iter__(self) -> Iterator[str]:
    return iter(self._pynnx_keys())

  def __len__(self) -> int:
    return len(self._pynnx_keys())

  @_UnshadowedMethod
  def keys(self):
    return self._pynnx_keys()

  @_UnshadowedMethod
  def values(self):
    return [self.__dict__[k] for k in self._pynnx_keys()]

  @_UnshadowedMethod
  def items(self):
    return [(k, self.__dict__[k]) for k in self._pynnx_keys()]

  @_UnshadowedMethod
  def get(self, key: str, default: Any = None) -> Any:
    return self.__dict__.get(key, default) if key in self else default

  @_UnshadowedMethod
  def setdefault(self, key: str, default: Any = None) -> Any:
    if key not in self:
      self[key] = default
    return self[key]

  @_UnshadowedMethod
  def pop(self, key: str, *default: Any) -> Any:
    if key not in self:
      if default:
        return default[0]
      raise KeyError(key)
    value = self[key]
    del self[key]
    return value

  @_UnshadowedMethod
  def popitem(self) -> tuple[str, Any]:
    keys = self._pynnx_keys()
    if not keys:
      raise KeyError("popitem(): nnx.Dict is empty")
    return keys[0], self.pop(keys[0])  # the first key, as MutableMapping.popitem (and Flax)

  @_UnshadowedMethod
  def update(self, other: Any = (), /, **kwargs: Any) -> None:
    for k, v in dict(other, **kwargs).items():
      self[k] = v

  @_UnshadowedMethod
  def clear(self) -> None:
    for k in self._pynnx_keys():
      del self[k]

  def __repr__(self) -> str:
    return mapping_repr("Dict", self.items())


# The classes `_wrap_container` builds. module.py registers its nnx.List / nnx.Dict here
# (they are Modules, as in Flax; module.py is the tier above this one).
CONTAINER_TYPES: dict[type, type] = {}


def _wrap_container(value: Any) -> Any:
  """Data-holding lists/dicts become nnx.List/nnx.Dict, so their edits are tracked."""
  if type(value) is list and is_data_value(value):
    return CONTAINER_TYPES.get(list, List)(value)
  if type(value) is dict and is_data_value(value) and all(isinstance(k, str) for k in value):
    return CONTAINER_TYPES.get(dict, Dict)(value)
  return value


_register(Pytree)
MutableSequence.register(List)
MutableMapping.register(Dict)


class Object(Pytree, pytree=False):
  """Flax's base class for graph-mode objects that are not JAX pytrees (``pytree=False``).

  Such objects work with graph-mode APIs (``nnx.split(obj, graph=True)``, ``graph=True``
  transforms); tree-mode APIs reject them.
  """

  def __init_subclass__(cls, pytree: bool | None = None, **kwargs: Any):
    if pytree:
      raise TypeError(f"{cls.__name__}: nnx.Object subclasses are never pytrees (pytree=False).")
    super().__init_subclass__(**kwargs)
