"""Equinox models inside pynnx: ``from_equinox`` wraps one, ``to_equinox`` gives it back.

A bridged model is a real pynnx Module (:class:`EquinoxModule`). Its attributes mirror the
Equinox model's fields: every inexact array becomes a :class:`~pynnx.Param`, every other array a
:class:`Buffer`, and the entries of an ``eqx.nn.State`` become :class:`~pynnx.BatchStat` cells
at the path of the ``StateIndex`` that owns them. Everything else (activation functions, static
fields, flags) stays in the Module's static part. Calling a method rebuilds the Equinox model
from the current Variable values (a trace-time step: inside ``nnx.jit`` it costs nothing per
call) and calls the Equinox method.

Equinox is imported lazily: pynnx imports without it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import jax

import pynnx as nnx
from pynnx._core.errors import BridgeError


class Buffer(nnx.Variable):
  """A non-differentiable array of a bridged Equinox model (an integer or boolean array)."""


def _eqx() -> Any:
  try:
    import equinox
  except ImportError as e:  # pragma: no cover - equinox is a runtime dependency
    raise ImportError("pynnx.bridge needs equinox: `pip install equinox`.") from e
  return equinox


class _Opaque:
  """Holds an unhashable static leaf (compared and hashed by identity)."""

  __slots__ = ("value",)

  def __init__(self, value: Any):
    self.value = value

  def __repr__(self) -> str:
    return f"<{type(self.value).__name__}>"


def _hashable(value: Any) -> Any:
  try:
    hash(value)
  except TypeError:
    return _Opaque(value)
  return value


def _unwrap(value: Any) -> Any:
  return value.value if isinstance(value, _Opaque) else value


# A path step into the mirror: ("attr", name) or ("item", key).
Step = tuple[str, Any]


def _steps(keypath: tuple, what: str) -> tuple[Step, ...]:
  out = []
  for k in keypath:
    if isinstance(k, jax.tree_util.GetAttrKey):
      out.append(("attr", k.name))
    elif isinstance(k, jax.tree_util.SequenceKey):
      out.append(("item", k.idx))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      out.append(("item", k.key))
    elif isinstance(k, jax.tree_util.DictKey) and isinstance(k.key, str):
      out.append(("key", k.key))
    else:
      raise BridgeError(
        f"nnx.bridge.from_equinox: the array at {what}{jax.tree_util.keystr(keypath)} sits under "
        f"a pytree key {k!r} that pynnx cannot name (only attributes, sequence indices and "
        f"string dict keys). Store it under an attribute, a list or a str-keyed dict."
      )
  return tuple(out)


def _path_str(steps: tuple[Step, ...]) -> str:
  text = ""
  for kind, k in steps:
    text += f".{k}" if kind == "attr" else f"[{k!r}]"
  return text


@dataclasses.dataclass(frozen=True)
class _Spec:
  """The hashable skeleton of a bridged model: how to rebuild it from Variable values."""

  treedef: Any  # of the Equinox model, StateIndex objects as leaves
  leaves: tuple  # per leaf: ("var", steps) or ("static", value)
  state_treedef: Any  # of the eqx.nn.State, or None
  state_leaves: tuple  # steps per State leaf
  eqx_type: type
  rng_stream: str


class _Fields(nnx.Module):
  """A pynnx node mirroring one Equinox sub-module (attributes named as its fields)."""

  _eqx_name: str  # the Equinox class's name, for the repr

  def __repr__(self) -> str:
    return nnx.Module.__repr__(self).replace("_Fields(", f"{self._eqx_name}(", 1)


def _build_mirror(tree: Any, source: Any) -> Any:
  """Turns ``{step: subtree-or-Variable}`` into pynnx nodes (``_Fields``, ``List``, ``Dict``).

  ``source`` is the Equinox object at the same place (for the node's display name).
  """
  if not isinstance(tree, dict):
    return tree
  kinds = {kind for kind, _ in tree}
  if kinds == {"item"}:
    size = max(k for _, k in tree) + 1
    items = [
      _build_mirror(tree[("item", i)], _child(source, ("item", i))) if ("item", i) in tree else None
      for i in range(size)
    ]
    return nnx.List(items)
  if kinds == {"key"}:
    return nnx.Dict(
      {k: _build_mirror(v, _child(source, s)) for s, v in tree.items() for k in [s[1]]}
    )
  node = _Fields()
  for step, sub in tree.items():
    setattr(node, step[1], _build_mirror(sub, _child(source, step)))
  node._eqx_name = type(source).__name__
  return node


def _child(source: Any, step: Step) -> Any:
  try:
    return getattr(source, step[1]) if step[0] == "attr" else source[step[1]]
  except Exception:  # a leaf of a custom pytree: only used for display names
    return None


def _read(node: Any, steps: tuple[Step, ...]) -> Any:
  for kind, k in steps:
    node = getattr(node, k) if kind == "attr" else node[k]
  return node


_RESERVED = frozenset({"deterministic", "rngs", "_eqx_spec"})


class EquinoxModule(nnx.Module):
  """A pynnx Module wrapping an Equinox model; build it with :func:`from_equinox`.

  Attributes mirror the Equinox fields (``bridged.layers[0].weight`` is a ``Param``); calling
  the Module or any method of the Equinox class calls the Equinox method on a model rebuilt
  from the current values. ``eval()`` / ``train()`` switch ``eqx.nn.inference_mode``.

  Example:
    >>> import equinox as eqx
    >>> mlp = eqx.nn.MLP(2, 1, 8, 2, key=jax.random.key(0))
    >>> bridged = nnx.bridge.from_equinox(mlp)
    >>> bridged(jnp.ones(2)).shape
    (1,)
    >>> type(bridged.layers[0].weight).__name__
    'Param'
  """

  def __init__(
    self,
    model: Any,
    state: Any = None,
    *,
    rngs: nnx.Rngs | None = None,
    rng_stream: str = "dropout",
  ):
    eqx = _eqx()
    if not isinstance(model, eqx.Module):
      raise BridgeError(
        f"nnx.bridge.from_equinox expects an eqx.Module, got {type(model).__name__}. Wrap "
        f"plain functions or containers in an eqx.Module first."
      )
    if state is not None and not isinstance(state, eqx.nn.State):
      raise BridgeError(
        f"nnx.bridge.from_equinox(model, state): state must be the eqx.nn.State returned by "
        f"eqx.nn.make_with_state, got {type(state).__name__}."
      )
    is_index = lambda x: isinstance(x, eqx.nn.StateIndex)  # noqa: E731
    flat, treedef = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_index)
    mirror: dict = {}
    leaves = []
    indices = []
    for keypath, leaf in flat:
      if eqx.is_array(leaf):
        steps = _steps(keypath, "model")
        kind = nnx.Param if jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact) else Buffer
        _insert(mirror, steps, kind(leaf))
        leaves.append(("var", steps))
      else:
        if is_index(leaf):
          indices.append((keypath, leaf))
        leaves.append(("static", _hashable(leaf)))
    state_treedef, state_leaves = None, []  # type: tuple[Any, list]
    if state is not None:
      state_treedef, state_leaves = _mirror_state(eqx, state, indices, mirror)
    elif indices:
      where = jax.tree_util.keystr(indices[0][0])
      raise BridgeError(
        f"nnx.bridge.from_equinox: the model is stateful (model{where} is an "
        f"eqx.nn.StateIndex) but no state was given. Build it with "
        f"`model, state = eqx.nn.make_with_state(Layer)(...)` and call "
        f"`nnx.bridge.from_equinox(model, state)`."
      )
    for step, sub in mirror.items():
      if step[1] in _RESERVED:
        raise BridgeError(
          f"nnx.bridge.from_equinox: {type(model).__name__} has a field {step[1]!r}, a name the "
          f"bridge uses itself ({sorted(_RESERVED)}). Rename the field."
        )
      setattr(self, step[1], _build_mirror(sub, _child(model, step)))
    self._eqx_spec = _Spec(
      treedef, tuple(leaves), state_treedef, tuple(state_leaves), type(model), rng_stream
    )
    self.deterministic = None  # None: Equinox's own flags; True/False: eqx.nn.inference_mode
    self.rngs = rngs

  # -- rebuilding ----------------------------------------------------------------------------
  def _rebuild(self) -> tuple[Any, Any]:
    spec: _Spec = self.__dict__["_eqx_spec"]
    values = [_read(self, x[1])[...] if x[0] == "var" else _unwrap(x[1]) for x in spec.leaves]
    model = jax.tree_util.tree_unflatten(spec.treedef, values)
    if self.deterministic is not None:
      model = _eqx().nn.inference_mode(model, self.deterministic)
    state = None
    if spec.state_treedef is not None:
      state_values = [_read(self, steps)[...] for steps in spec.state_leaves]
      state = jax.tree_util.tree_unflatten(spec.state_treedef, state_values)
    return model, state

  def _call_method(self, name: str, *args: Any, **kwargs: Any) -> Any:
    spec: _Spec = self.__dict__["_eqx_spec"]
    model, state = self._rebuild()
    method = getattr(model, name)
    params = _parameters(spec.eqx_type, name)
    if "key" in params and kwargs.get("key") is None and self.rngs is not None:
      kwargs["key"] = self.rngs[spec.rng_stream]()
    if state is None:
      return method(*args, **kwargs)
    if "state" not in params:
      return method(*args, **kwargs)
    out = method(*args, state=state, **kwargs)
    eqx = _eqx()
    if not (isinstance(out, tuple) and out and isinstance(out[-1], eqx.nn.State)):
      raise BridgeError(
        f"{spec.eqx_type.__name__}.{name} takes `state` but returned "
        f"{type(out).__name__}, not a tuple ending with the new eqx.nn.State."
      )
    new_values = jax.tree_util.tree_leaves(out[-1])
    for steps, value in zip(spec.state_leaves, new_values):
      _read(self, steps)[...] = value
    rest = out[:-1]
    return rest[0] if len(rest) == 1 else rest

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    return self._call_method("__call__", *args, **kwargs)

  def __getattr__(self, name: str) -> Any:
    if name.startswith("_"):
      raise AttributeError(name)
    spec = self.__dict__.get("_eqx_spec")
    if spec is None:
      raise AttributeError(name)
    attr = inspect.getattr_static(spec.eqx_type, name, None)
    if callable(attr) and not isinstance(attr, type | staticmethod | classmethod):
      return functools.partial(self._call_method, name)
    model, _ = self._rebuild()
    return getattr(model, name)


def _insert(tree: dict, steps: tuple[Step, ...], value: Any) -> None:
  for step in steps[:-1]:
    tree = tree.setdefault(step, {})
  tree[steps[-1]] = value


def _mirror_state(eqx: Any, state: Any, indices: list, mirror: dict) -> tuple[Any, list]:
  """Puts each State entry under its StateIndex's path, as BatchStat cells."""
  by_marker = {index.marker: (keypath, index) for keypath, index in indices}
  _, markers = state.tree_flatten()
  state_leaves = []
  for marker in markers:
    if marker not in by_marker:
      raise BridgeError(
        f"nnx.bridge.from_equinox: the eqx.nn.State holds an entry {marker!r} that no "
        f"StateIndex of the model owns. Pass the state made together with this model by "
        f"eqx.nn.make_with_state."
      )
    keypath, index = by_marker[marker]
    value_flat = jax.tree_util.tree_flatten_with_path(state.get(index))[0]
    for subpath, leaf in value_flat:
      steps = _steps(keypath, "model") + _steps(subpath, "state")
      _insert(mirror, steps, nnx.BatchStat(leaf))
      state_leaves.append(steps)
  return jax.tree_util.tree_structure(state), state_leaves


@functools.cache
def _parameters(cls: type, name: str) -> frozenset:
  fn = getattr(cls, name)
  try:
    return frozenset(inspect.signature(fn).parameters)
  except (TypeError, ValueError):  # builtins without a signature
    return frozenset()


def from_equinox(
  model: Any,
  state: Any = None,
  *,
  rngs: nnx.Rngs | None = None,
  rng_stream: str = "dropout",
) -> EquinoxModule:
  """Wraps an Equinox model as a pynnx Module whose arrays are Variables.

  Args:
    model: an ``eqx.Module``.
    state: for a model made with ``eqx.nn.make_with_state``, its ``eqx.nn.State``; its entries
      become ``BatchStat`` cells that the calls update in place.
    rngs: where methods taking ``key=`` get a key when the caller passes none.
    rng_stream: the stream of ``rngs`` to draw from (default ``'dropout'``, falling back to the
      default stream).

  Returns:
    An :class:`EquinoxModule`: inexact arrays are ``Param``s, other arrays ``Buffer``s, paths
    mirror the Equinox attributes (``layers[0].weight``).

  Example:
    >>> import equinox as eqx
    >>> mlp = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
    >>> bridged = nnx.bridge.from_equinox(mlp)
    >>> sorted(path for path, _ in nnx.state(bridged, nnx.Param).flat_state())[:2]
    [('layers', 0, 'bias'), ('layers', 0, 'weight')]
  """
  return EquinoxModule(model, state, rngs=rngs, rng_stream=rng_stream)


def to_equinox(bridged: nnx.Module) -> Any:
  """The Equinox model of a bridged Module, with its current (trained) values.

  Returns the ``eqx.Module`` of the original class, or ``(model, state)`` when the model was
  bridged with a state.

  Example:
    >>> import equinox as eqx
    >>> mlp = eqx.nn.MLP(2, 1, 4, 1, key=jax.random.key(0))
    >>> eqx.tree_equal(mlp, nnx.bridge.to_equinox(nnx.bridge.from_equinox(mlp)))
    Array(True, dtype=bool)
  """
  if not isinstance(bridged, EquinoxModule):
    raise BridgeError(
      f"nnx.bridge.to_equinox expects a Module made by nnx.bridge.from_equinox, got "
      f"{type(bridged).__name__}. For a pynnx layer use nnx.bridge.convert_weights(layer)."
    )
  model, state = bridged._rebuild()
  return model if state is None else (model, state)
