"""Eager sharding and Variable defaults: settings read when a Variable is created.

With eager sharding on (the default, as in Flax), a Variable created with ``out_sharding``
(or ``sharding_names``) metadata under a mesh (``jax.set_mesh`` or a ``mesh`` metadata
entry) has its value placed with that sharding right away. ``logical_axis_rules`` renames
logical axis names to mesh axis names at that moment.

``var_defaults`` reports Flax's ``hijax`` / ``ref`` defaults; pynnx implements neither (see
``docs/migrating.md``), so turning one on raises instead of being ignored.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
from jax.sharding import NamedSharding, PartitionSpec

from .errors import AxisSpecError, ConfigError, MeshAxisError, UnsupportedOptionError


class _Settings:
  eager_sharding: bool = True
  axis_rules: tuple = ()


_SETTINGS = _Settings()


class use_eager_sharding:  # noqa: N801  (Flax's name; a class so it works as a context)
  """Turns eager sharding on or off: now, or for a ``with`` block.

  Example:
    >>> import pynnx as nnx
    >>> with nnx.use_eager_sharding(False):
    ...   nnx.using_eager_sharding()
    False
    >>> nnx.using_eager_sharding()
    True
  """

  def __init__(self, value: bool, /):
    if not isinstance(value, bool):
      raise ConfigError(f"nnx.use_eager_sharding(value) takes True or False, got {value!r}.")
    self._previous = _SETTINGS.eager_sharding
    self._value = value
    _SETTINGS.eager_sharding = value

  def __enter__(self) -> use_eager_sharding:
    return self

  def __exit__(self, *exc: Any) -> None:
    _SETTINGS.eager_sharding = self._previous

  def __call__(self, f: Callable[..., Any]) -> Callable[..., Any]:
    """As a decorator: the setting holds while ``f`` runs, and not before.

    Example:
      >>> @nnx.use_eager_sharding(False)
      ... def inside():
      ...   return nnx.using_eager_sharding()
      >>> inside(), nnx.using_eager_sharding()
      (False, True)
    """
    _SETTINGS.eager_sharding = self._previous  # the constructor set it: undo until called
    value = self._value

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
      with use_eager_sharding(value):
        return f(*args, **kwargs)

    return wrapper

  @classmethod
  def current_value(cls) -> bool:
    """The setting now in force (``nnx.using_eager_sharding()``)."""
    return _SETTINGS.eager_sharding

  @classmethod
  def get_default(cls) -> bool:
    """The setting outside any ``use_eager_sharding``: True."""
    return True


def using_eager_sharding() -> bool:
  """Whether new Variables with sharding metadata are placed eagerly (default True)."""
  return _SETTINGS.eager_sharding


@contextlib.contextmanager
def logical_axis_rules(rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
  """Maps logical axis names to mesh axes while Variables are created in this block.

  Example:
    >>> import pynnx as nnx
    >>> with nnx.logical_axis_rules([('embed', None)]):
    ...   nnx.Param(jnp.ones(2), out_sharding=('embed',)).get_metadata('out_sharding')
    ('embed',)
  """
  rules = tuple(rules)
  for rule in rules:
    if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)):
      raise ConfigError(
        f"nnx.logical_axis_rules takes (logical_name, mesh_axes) pairs, got {rule!r}."
      )
  previous = _SETTINGS.axis_rules
  _SETTINGS.axis_rules = rules
  try:
    yield
  finally:
    _SETTINGS.axis_rules = previous


def apply_axis_rules(names: tuple, extra_rules: Any) -> tuple:
  """``names`` with logical axis names renamed by the current ``logical_axis_rules`` and
  ``extra_rules`` (a Variable's ``sharding_rules`` metadata); a name both map differently
  raises :class:`~pynnx.AxisSpecError` (a ``ValueError``, as in Flax)."""
  rules = dict(_SETTINGS.axis_rules)
  for name, axes in extra_rules or ():
    if name in rules and rules[name] != axes:
      raise AxisSpecError(
        f"Inconsistent logical axis rules for {name!r}: nnx.logical_axis_rules maps it to "
        f"{rules[name]!r}, the Variable's sharding_rules metadata to {axes!r}. Drop one of "
        "the two rules or make them agree."
      )
    rules[name] = axes
  return tuple(rules.get(n, n) if isinstance(n, str) else n for n in names)


def _current_mesh(metadata: Mapping[str, Any]) -> Any:
  mesh = metadata.get("mesh")
  if mesh is not None:
    return mesh
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def _axes_of(name: Any) -> tuple:
  return () if name is None else name if isinstance(name, tuple) else (name,)


def _check_axes(kind: str, given: tuple, names: tuple, mesh: Any, metadata: Mapping) -> None:
  """Raises if ``names`` (``given`` after the axis rules) uses an axis ``mesh`` lacks."""
  axes = tuple(mesh.axis_names)
  bad = [
    (g, a)
    for g, n in zip(given, names)
    for a in _axes_of(n)
    if a not in axes and a is not PartitionSpec.UNCONSTRAINED
  ]
  if not bad:
    return
  missing = list(dict.fromkeys(a for _, a in bad))
  logical = bad[0][0] if isinstance(bad[0][0], str) else bad[0][1]
  renamed = f" (after the axis rules: {names!r})" if names != given else ""
  rules = metadata.get("sharding_rules")
  rules_note = f", sharding_rules={rules!r}" if rules else ""
  raise MeshAxisError(
    f"nnx.{kind}(..., out_sharding={given!r}{rules_note}){renamed}: the mesh has no "
    f"{'axis' if len(missing) == 1 else 'axes'} {', '.join(repr(a) for a in missing)}; its "
    f"axes are {axes!r}. With eager sharding the value is placed on the mesh when the "
    f"Variable is created. Fix: use the mesh's axis names, map the logical name with "
    f"`nnx.logical_axis_rules([({logical!r}, {axes[0]!r})])` (None to replicate), or keep "
    f"the names as metadata only with `eager_sharding=False` or "
    f"`nnx.use_eager_sharding(False)`."
  )


def place(value: Any, metadata: Mapping[str, Any], kind: str = "Variable") -> Any:
  """``value`` placed by its ``out_sharding`` / ``sharding_names`` metadata, if eager.

  Without a mesh the value is left where it is (Flax raises; see ``docs/migrating.md``).
  A name that is not an axis of the mesh (after ``logical_axis_rules``) raises
  :class:`~pynnx.MeshAxisError`, as Flax raises a ``ValueError``.
  """
  if not _SETTINGS.eager_sharding or not metadata.get("eager_sharding", True):
    return value
  names = metadata.get("out_sharding")
  if names is None:
    names = metadata.get("sharding_names")
  if names is None or not isinstance(value, jax.Array):
    return value
  mesh = _current_mesh(metadata)
  if mesh is None:
    return value
  given = tuple(names)
  names = apply_axis_rules(given, metadata.get("sharding_rules"))
  _check_axes(kind, given, names, mesh, metadata)
  spec = PartitionSpec(*names)
  if isinstance(value, jax.core.Tracer) or isinstance(mesh, jax.sharding.AbstractMesh):
    if mesh.are_all_axes_explicit:
      return jax.sharding.reshard(value, spec)
    return jax.lax.with_sharding_constraint(value, NamedSharding(mesh, spec))
  return jax.device_put(value, NamedSharding(mesh, spec))


class VarDefaults(NamedTuple):
  """Flax's Variable defaults: pynnx Variables are plain (no hijax, no Ref)."""

  hijax: bool
  ref: bool


_DEFAULTS = VarDefaults(hijax=False, ref=False)


def check_var_options(api: str, hijax: Any, ref: Any) -> None:
  """Raises for ``hijax=True`` / ``ref=True``: pynnx never ignores an option."""
  for name, value in (("hijax", hijax), ("ref", ref)):
    if value:
      raise UnsupportedOptionError(
        f"{api}: {name}=True is not supported by pynnx. Flax's {name} Variables update "
        "themselves inside plain `jax.jit`; in pynnx pass the Module to `nnx.jit` (or "
        "another pynnx transform), which writes Variable updates back. Drop the "
        f"`{name}=True` argument (see docs/migrating.md, 'Variables')."
      )


@contextlib.contextmanager
def _no_change() -> Iterator[VarDefaults]:
  yield _DEFAULTS


def var_defaults(*, hijax: bool | None = None, ref: bool | None = None) -> Any:
  """Flax's Variable defaults (``VarDefaults(hijax=False, ref=False)`` in pynnx).

  With arguments it returns a context manager; ``hijax=True`` or ``ref=True`` raise
  :class:`~pynnx.UnsupportedOptionError` because pynnx has no such Variables.

  Example:
    >>> import pynnx as nnx
    >>> nnx.var_defaults()
    VarDefaults(hijax=False, ref=False)
  """
  check_var_options("nnx.var_defaults", hijax, ref)
  if hijax is None and ref is None:
    return _DEFAULTS
  return _no_change()
