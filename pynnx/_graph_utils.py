"""Graph utilities on the public split/merge: traversal, metadata, abstract models, contexts.

Each function that walks a graph takes ``graph=`` where Flax's does (``None`` reads
``nnx.set_graph_mode``). ``split_context`` / ``merge_context`` split and merge several
objects as one graph, so sharing between them survives.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

import jax

from . import _functional as fn
from ._core import filters as filterlib
from ._core.config import resolve_graph
from ._core.eager import check_var_options
from ._core.errors import SharedReferenceError, UnsupportedOptionError, UpdateContextError
from ._core.module import Module
from ._core.paths import format_path
from ._core.pytree import Pytree, is_data
from ._core.sharding import sharding_names
from ._core.state import State
from ._core.tree import GraphDef
from ._core.variables import Variable, is_variable
from ._graph import api as graph_api
from ._graph.graphdef import GraphDef as GraphModeGraphDef
from ._update_context import current_update_context, transplant

A = TypeVar("A")
M = TypeVar("M", bound=Module)
Path = tuple[Hashable, ...]
PureState = tuple[GraphDef, State]


# --- traversal ----------------------------------------------------------------------------


def iter_modules(module: Any, /, *, graph: bool | None = None) -> Iterator[tuple[Path, Module]]:
  """Yields ``(path, module)`` for every Module in ``module``, children before parents.

  Example:
    >>> import pynnx as nnx
    >>> model = nnx.Sequential(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))
    >>> paths = [p for p, _ in nnx.iter_modules(model)]
    >>> paths
    [('layers', 0), ('layers',), ()]
  """
  for path, value in fn.iter_graph(module, graph=graph):
    if isinstance(value, Module):
      yield path, value


def iter_children(node: Any, /, *, graph: bool | None = None) -> Iterator[tuple[Hashable, Any]]:
  """Yields ``(key, child)`` for the direct Module and Variable children of ``node``.

  Example:
    >>> import pynnx as nnx
    >>> keys = [k for k, _ in nnx.iter_children(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))]
    >>> keys
    ['bias', 'kernel']
  """
  for path, value in fn.iter_graph(node, graph=graph):
    if len(path) == 1 and isinstance(value, (Module, Variable)):
      yield path[0], value


def iter_module_children(
  node: Any, /, *, graph: bool | None = None
) -> Iterator[tuple[Hashable, Any]]:
  """Yields ``(key, module)`` for the direct Module children of ``node``."""
  for key, value in iter_children(node, graph=graph):
    if isinstance(value, Module):
      yield key, value


def find_duplicates(node: Any, /, *, only: Any = ...) -> list[list[Path]]:
  """The paths of every Module or Variable reachable more than once, grouped per object.

  Example:
    >>> import pynnx as nnx
    >>> w = nnx.Param(1.0)
    >>> nnx.find_duplicates(nnx.Dict(a=w, b=w))
    [[('a',), ('b',)]]
  """
  pred = filterlib.to_predicate(only)
  seen: dict[int, list[Path]] = {}

  def walk(x: Any, path: Path) -> None:
    if isinstance(x, (Pytree, Variable)):
      if id(x) in seen:
        seen[id(x)].append(path)
        return
      seen[id(x)] = [path] if pred(path, x) else []
      if isinstance(x, Pytree):
        for k in x._pynnx_get_meta().data_keys:
          walk(x.__dict__[k], (*path, k))
      return
    if isinstance(x, (list, tuple)):
      for i, v in enumerate(x):
        walk(v, (*path, i))
    elif isinstance(x, dict):
      for k, v in x.items():
        walk(v, (*path, k))

  walk(node, ())
  return [paths for paths in seen.values() if len(paths) > 1]


def view_info(node: Any, /, *, only: Any = ..., graph: bool | None = None) -> str:
  """Lists, per Module type in ``node``, what ``nnx.view`` can change.

  Only Modules with a ``set_view`` method (Flax's hook) are listed: its parameters, in
  signature order, each followed by its description from the method's ``Args:`` section, as
  Flax prints them. (``nnx.view`` also replaces static attributes by name; those are listed by
  ``vars(module)``.)

  Example:
    >>> import pynnx as nnx
    >>> print(nnx.view_info(nnx.Dropout(0.5, rngs=nnx.Rngs(0))))
    Dropout:
      deterministic: bool | None = None
        if True, disables dropout masking.
  """
  pred = filterlib.to_predicate(only)
  by_type: dict[str, list[str]] = {}
  for path, module in iter_modules(node, graph=graph):
    name = type(module).__qualname__
    if pred(path, module) and name not in by_type and hasattr(module, "set_view"):
      by_type[name] = _set_view_lines(type(module).set_view)
  lines = []
  for name in sorted(by_type):
    lines.append(f"{name}:")
    lines += by_type[name]
  return "\n".join(lines)


def _set_view_lines(set_view: Callable[..., Any]) -> list[str]:
  """``name: annotation = default`` per parameter of ``set_view``, with its ``Args:`` text."""
  sig = inspect.signature(set_view)
  # Without a docstring Flax prints the raw signature; pynnx still lists the parameters.
  descriptions = _docstring_args(inspect.getdoc(set_view) or "")
  out = []
  for p in sig.parameters.values():
    if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
      continue
    annotation = p.annotation
    if not isinstance(annotation, str):
      annotation = "" if annotation is p.empty else inspect.formatannotation(annotation)
    annotation = f": {annotation}" if annotation else ""
    default = "" if p.default is p.empty else f" = {p.default}"
    out.append(f"  {p.name}{annotation}{default}")
    if p.name in descriptions:
      out.append(descriptions[p.name])
  return out


def _docstring_args(doc: str) -> dict[str, str]:
  """The entries of a Google-style ``Args:`` section, each indented by four spaces."""
  lines = doc.split("\n")
  if "Args:" not in lines:
    return {}
  out: dict[str, list[str]] = {}
  current: list[str] | None = None
  for line in lines[lines.index("Args:") + 1 :]:
    if line and not line.startswith("  "):
      break  # the next section (Returns:, Example:, ...)
    if line.startswith("  ") and not line.startswith("    ") and ":" in line:
      name, _, text = line.partition(":")
      current = out[name.strip()] = ["    " + text.strip()]
    elif current is not None and line.strip():
      current.append(line)
  return {k: "\n".join(v) for k, v in out.items()}


# --- Variables ----------------------------------------------------------------------------


def with_vars(
  node: A,
  /,
  *,
  hijax: bool | None = None,
  ref: bool | None = None,
  mutable: bool | None = None,
  only: Any = ...,
  allow_duplicates: bool = False,
) -> A:
  """A view of ``node`` (new Modules, the same Variables) after checking Variable options.

  pynnx Variables are plain mutable cells, so ``hijax=True``, ``ref=True`` and
  ``mutable=False`` raise :class:`~pynnx.UnsupportedOptionError` instead of being ignored.
  A Variable reachable twice raises unless ``allow_duplicates=True``.

  Example:
    >>> import pynnx as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> nnx.with_vars(model, hijax=False).kernel is model.kernel
    True
  """
  check_var_options("nnx.with_vars", hijax, ref)
  if mutable is False:
    raise UnsupportedOptionError(
      "nnx.with_vars: mutable=False (read-only Variables) is not supported by pynnx; to "
      "keep values from changing, pass a copy (`nnx.clone(model)`) instead."
    )
  duplicates = find_duplicates(node, only=only)
  if duplicates and not allow_duplicates:
    raise SharedReferenceError(
      "nnx.with_vars: these paths hold the same object: "
      + "; ".join(", ".join(format_path(p) for p in group) for group in duplicates)
      + ". Pass allow_duplicates=True to accept shared references."
    )
  return graph_api.merge(*graph_api.split(node))  # new Modules holding the same Variables


vars_as = with_vars


def set_metadata(node: Any, /, *, only: Any = Variable, **metadata: Any) -> None:
  """Sets ``metadata`` on every Variable of ``node`` matching ``only`` (in place).

  Example:
    >>> import pynnx as nnx
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> nnx.set_metadata(model, only=nnx.Param, frozen=True)
    >>> model.kernel.get_metadata('frozen')
    True
  """
  pred = filterlib.to_predicate(only)
  for path, value in graph_api.iter_graph(node):
    if isinstance(value, Variable) and pred(path, value):
      value.set_metadata(**metadata)


def variables(node: Any, *filters: Any, graph: bool | None = None) -> Any:
  """The Variables of ``node`` as State(s), like :func:`nnx.state`."""
  return fn.state(node, *filters, graph=graph)


def as_pure(tree: A) -> A:
  """``tree`` with every Variable replaced by its value (e.g. before serialization).

  Example:
    >>> import pynnx as nnx
    >>> _, state = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    >>> jax.tree.map(jnp.shape, nnx.as_pure(state))
    State({
      'bias': (3,),
      'kernel': (2, 3)
    })
  """
  return jax.tree.map(lambda x: x.get_value() if is_variable(x) else x, tree, is_leaf=is_variable)


pure = as_pure


def has_data(value: Any, /) -> list[Any]:
  """The data leaves inside ``value`` (arrays, Variables, Pytrees, registered data types).

  Example:
    >>> import pynnx as nnx
    >>> nnx.has_data([1, 'a', jnp.ones(2)])
    [Array([1., 1.], dtype=float32)]
  """
  return [x for x in jax.tree.leaves(value, is_leaf=is_data) if is_data(x)]


def check_pytree(pytree: Any) -> None:
  """Raises if ``pytree`` is not a Pytree or one of its static attributes is not hashable."""
  if not isinstance(pytree, Pytree):
    raise TypeError(f"nnx.check_pytree expects a Pytree, got a {type(pytree).__name__}.")
  pytree._pynnx_compute_meta()


# --- abstract models ------------------------------------------------------------------------


def as_abstract(tree: A, graph: bool | None = None) -> A:
  """Adds shardings to abstract Variables (``ShapeDtypeStruct`` values) from their metadata.

  A Variable whose value is a ``jax.ShapeDtypeStruct`` without a sharding, and which has
  ``out_sharding`` / ``sharding_names`` metadata, gets a ``NamedSharding`` on its ``mesh``
  metadata or the current mesh (``jax.set_mesh``). Other values are left alone.
  """

  def annotate(x: Any) -> Any:
    if not isinstance(x, Variable):
      return x
    value = x.get_value()
    names = sharding_names(x)
    if not isinstance(value, jax.ShapeDtypeStruct) or names is None or value.sharding:
      return x
    mesh = x.get_metadata("mesh", None) or jax.sharding.get_abstract_mesh()
    if mesh.empty:
      return x
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*names))
    return x.replace(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding))

  if not resolve_graph(graph):
    return jax.tree.map(annotate, tree, is_leaf=is_variable)
  graphdef, state = fn.split(tree, graph=True)  # keeps shared Variables shared
  return fn.merge(graphdef, jax.tree.map(annotate, state, is_leaf=is_variable))


abstract_with_sharding = as_abstract


def get_abstract_model(init_fn: Callable[[], Any], mesh: Any, *, graph: bool | None = None):
  """``(graphdef, abstract_state)`` of the model ``init_fn`` builds, sharded on ``mesh``.

  Nothing is allocated: the state holds ``ShapeDtypeStruct``s whose shardings come from the
  Variables' sharding metadata, ready for ``jax.jit(..., out_shardings=...)`` or orbax.
  """
  use_graph = resolve_graph(graph)
  with jax.set_mesh(mesh):
    if use_graph:
      abstract = graph_api.from_tree(jax.eval_shape(lambda: graph_api.to_tree(init_fn())))
    else:
      abstract = jax.eval_shape(init_fn)
    graphdef, state = fn.split(abstract, graph=use_graph)

    def shard(x: Any) -> Any:
      if not isinstance(x, Variable):
        return x
      names = sharding_names(x) or ()
      sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*names))
      value = x.get_value()
      return x.replace(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding))

    state = jax.tree.map(shard, state, is_leaf=is_variable)
  return graphdef, state


# --- split / merge contexts -------------------------------------------------------------------


class SplitContext:
  """Splits several objects as one graph: an object shared with an earlier split is stored
  there and referenced here (graph mode). Use through :func:`split_context`."""

  def __init__(self) -> None:
    self._outer: dict[int, tuple[int, int]] = {}
    self._roots = 0
    self._record: list[Any] | None = None  # an update context's outer split: the roots

  def split(self, node: Any, *filters: Any) -> tuple:
    """Like ``nnx.split(node, *filters, graph=True)``, sharing with earlier calls kept."""
    if self._record is not None:
      self._record.append(node)
    p = graph_api.plan(node, self._outer) if self._outer else graph_api.plan(node)
    for j, o in enumerate(p.objects):
      self._outer.setdefault(id(o), (self._roots, j))
    self._roots += 1
    return (p.graphdef, *graph_api.partition(p, filters, "SplitContext.split"))

  def flatten(self, node: Any, *filters: Any, with_paths: bool = True) -> tuple:
    """Like :meth:`split` with flat states (lists of leaves if ``with_paths=False``)."""
    graphdef, *states = self.split(node, *filters)
    flats = [s.flat_state() if isinstance(s, State) else s for s in states]
    return (graphdef, *(f if with_paths else f.leaves for f in flats))


class MergeContext:
  """Merges the results of one :class:`SplitContext`, in the same order, restoring the
  sharing between them. Use through :func:`merge_context`."""

  def __init__(self) -> None:
    self._tables: list[dict[int, Any]] = []
    self._targets: list[Any] | None = None  # an update context's outer merge: the roots
    self._memo: dict[int, Any] = {}

  def merge(self, graphdef: GraphModeGraphDef, state: Any, /, *states: Any) -> Any:
    """Like ``nnx.merge``, resolving references to objects of earlier merges."""
    flat = graph_api.collect_flat(graphdef, (state, *states), "MergeContext.merge")
    node, table = graph_api.rebuild(graphdef, flat, outer=self._tables, api="MergeContext.merge")
    self._tables.append(table)
    if self._targets is not None and len(self._tables) <= len(self._targets):
      return transplant(self._targets[len(self._tables) - 1], node, self._memo)
    return node

  def unflatten(self, graphdef: GraphModeGraphDef, flat_state: Any, /, *flat_states: Any) -> Any:
    """Like :meth:`merge` for flat states (or lists of leaves in ``flatten`` order)."""
    states = []
    for f in (flat_state, *flat_states):
      if isinstance(f, list) and not (f and isinstance(f[0], tuple)):
        f = list(zip(graph_api.paths(graphdef), f, strict=True))
      states.append(State.from_flat_path(f))
    return self.merge(graphdef, *states)


@contextlib.contextmanager
def split_context(ctxtag: Hashable | None = None) -> Iterator[SplitContext]:
  """A :class:`SplitContext` for a ``with`` block; ``ctxtag`` joins the active
  :func:`~pynnx.update_context` of that tag (its first split block is the outer split).

  Example:
    >>> import pynnx as nnx
    >>> w = nnx.Param(1.0)
    >>> a, b = nnx.Dict(w=w), nnx.Dict(w=w)
    >>> with nnx.split_context() as ctx:
    ...   ga, sa = ctx.split(a)
    ...   gb, sb = ctx.split(b)        # w is stored in sa only
    >>> with nnx.merge_context() as ctx:
    ...   a2, b2 = ctx.merge(ga, sa), ctx.merge(gb, sb)
    >>> a2['w'] is b2['w']
    True
  """
  ctx = SplitContext()
  if ctxtag is not None:
    ctx._record = current_update_context(ctxtag).begin_split()
  yield ctx


@contextlib.contextmanager
def merge_context(ctxtag: Hashable | None = None, inner: bool | None = None):
  """A :class:`MergeContext` for a ``with`` block (see :func:`split_context`).

  With ``ctxtag`` (inside :func:`~pynnx.update_context`), ``inner=True`` merges inside the
  transform; ``inner=False`` is the outer merge, which returns the outer split's objects
  updated with the results.
  """
  if ctxtag is None and inner is not None:
    raise UnsupportedOptionError(
      "nnx.merge_context(inner=...): inner/outer merges belong to update contexts; pass the "
      "context's tag too (`nnx.merge_context(tag, inner=...)`) or leave `inner` unset."
    )
  ctx = MergeContext()
  if ctxtag is not None:
    update = current_update_context(ctxtag)
    if inner is None:
      raise UpdateContextError(
        f"nnx.merge_context({ctxtag!r}) needs `inner=True` (a merge inside the transform) or "
        "`inner=False` (the outer merge, which updates the objects split outside)."
      )
    if not inner:
      ctx._targets = update.take_outer_roots("nnx.merge_context")
  yield ctx
