"""split_rngs / fork_rngs / with_rngs / reseed / backup_keys / restore_rngs.

Each walks a whole Module, so each takes ``graph=`` (``None`` reads ``nnx.set_graph_mode``):

* ``graph=True, graph_updates=True`` (``nnx.compat``'s default): the streams are changed in
  place, each shared stream once; the call returns ``SplitBackups`` (a context manager) that
  ``nnx.restore_rngs`` or ``with`` puts back.
* otherwise (tree mode, pynnx's default): the call returns a copy of ``node`` with new
  streams; the original keeps its keys but the counters of the streams drawn from advance.

Used as decorators (``@nnx.split_rngs(splits=4)``) they apply to the function's arguments
around each call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp

from ._core import filters as filterlib
from ._core.config import resolve_graph, resolve_graph_updates
from ._core.errors import RngError
from ._core.paths import format_path
from ._core.rngs import Rngs, RngStream
from ._core.tree import check_no_sharing, flatten_with_paths
from ._graph import api as graph_api
from ._recursive_map import rebuild

StreamBackup = tuple[RngStream, jax.Array, jax.Array] | tuple[RngStream, jax.Array]
Path = tuple


class SplitBackups:
  """The original keys and counts of streams changed in place; restores them on ``__exit__``.

  Example:
    >>> rngs = nnx.Rngs(0)
    >>> with nnx.split_rngs(rngs, splits=4, graph=True, graph_updates=True):
    ...   rngs.default.key.shape
    (4,)
    >>> rngs.default.key.shape
    ()
  """

  def __init__(self, backups: list[StreamBackup]):
    self.backups = backups

  def __iter__(self) -> Iterator[StreamBackup]:
    return iter(self.backups)

  def __len__(self) -> int:
    return len(self.backups)

  def __enter__(self) -> SplitBackups:
    return self

  def __exit__(self, *exc: Any) -> Literal[False]:
    restore_rngs(self)
    return False


def restore_rngs(backups: Iterable[StreamBackup], /) -> None:
  """Puts back the keys (and counts) saved by ``split_rngs`` / ``fork_rngs`` / ``backup_keys``.

  Example:
    >>> rngs = nnx.Rngs(0)
    >>> backups = nnx.fork_rngs(rngs, graph=True, graph_updates=True)
    >>> nnx.restore_rngs(backups)
    >>> int(rngs.default.count[...])   # the fork drew one key
    1
  """
  for backup in backups:
    stream = backup[0]
    stream.key.set_value(backup[1])
    if len(backup) == 3:
      stream.count.set_value(backup[2])


def _streams(node: Any, api: str, graph: bool) -> list[tuple[Path, RngStream]]:
  """The RngStreams of ``node``, each once (graph mode) or checked unshared (tree mode)."""
  if graph:
    items = graph_api.iter_graph(node)
  else:
    check_no_sharing(flatten_with_paths(node)[0], api)
    items = graph_api.iter_graph(node)  # no sharing, so the graph walk visits every stream
  return [(p, x) for p, x in items if isinstance(x, RngStream)]


def _selected(pred: Callable, path: Path, stream: RngStream) -> bool:
  return bool(pred((*path, "key"), stream.key) and pred((*path, "count"), stream.count))


def _set(stream: RngStream, key: jax.Array, backups: list[StreamBackup]) -> None:
  backups.append((stream, stream.key.get_value(), stream.count.get_value()))
  stream.key.set_value(key)
  stream.count.set_value(jnp.zeros(key.shape, dtype=jnp.uint32))


def _new_stream(stream: RngStream, key: jax.Array) -> RngStream:
  return type(stream)(key, tag=stream.tag)


_MISSING: Any = object()


def _as_decorator(op: Callable[..., Any], in_place: bool) -> Callable[[Callable], Callable]:
  def decorator(f: Callable) -> Callable:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
      if in_place:
        with op((args, kwargs)):
          return f(*args, **kwargs)
      args, kwargs = op((args, kwargs))
      return f(*args, **kwargs)

    return wrapper

  return decorator


def split_rngs(
  node: Any = _MISSING,
  /,
  *,
  splits: int | tuple[int, ...],
  only: Any = ...,
  squeeze: bool = False,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Splits the key of every stream matching ``only`` into shape ``splits`` (for vmap/scan).

  Each selected stream draws one key, splits it, and restarts with count 0.

  Args:
    node: a Module, Rngs or any pytree of them; omitted: returns a decorator that splits the
      decorated function's arguments around each call.
    splits: the shape of the split keys (an int or a tuple of ints).
    only: a filter selecting streams (its key and count must both match).
    squeeze: with ``splits=1``, keep a scalar key (the first of the split).
    graph: graph mode (shared streams split once) or tree mode (a shared stream raises);
      ``None``: the configured mode.
    graph_updates: ``True`` (the default) with ``graph=None`` or ``graph=True`` splits in
      place and returns ``SplitBackups``; an explicit ``graph=False`` or
      ``graph_updates=False`` returns a split copy, as Flax's tree mode does.

  Returns:
    ``SplitBackups`` (in place) or a copy of ``node`` with split streams.

  Example:
    >>> rngs = nnx.Rngs(params=0, dropout=1)
    >>> split = nnx.split_rngs(rngs, splits=4, only='params', graph=False)  # a copy
    >>> split.params.key.shape, split.dropout.key.shape, rngs.params.key.shape
    ((4,), (), ())
    >>> with nnx.split_rngs(rngs, splits=4, only='params'):  # in place, restored on exit
    ...   rngs.params.key.shape
    (4,)
  """
  # graph=None: in place (a sanctioned mutator, DESIGN decision 2), as Flax code expects
  # from its default graph mode; an explicit graph=False returns a copy, as Flax's tree mode.
  in_place = resolve_graph_updates(graph_updates) and (graph is None or bool(graph))
  graph = resolve_graph(graph)
  if squeeze and splits != 1:
    raise RngError(
      f"split_rngs: squeeze=True is only supported for splits=1, got splits={splits!r}. "
      "Drop squeeze=True, or use splits=1."
    )

  def split_key(stream: RngStream) -> jax.Array:
    key = jax.random.split(stream(), splits)
    return key[0] if squeeze else key

  pred = filterlib.to_predicate(only)

  def apply(target: Any) -> Any:
    if in_place:
      backups: list[StreamBackup] = []
      for path, stream in _streams(target, "pynnx.split_rngs", graph):
        if _selected(pred, path, stream):
          key = split_key(stream)  # drawn first: the backup keeps the advanced count
          _set(stream, key, backups)
      return SplitBackups(backups)

    def f(path: Path, x: Any) -> Any:
      if isinstance(x, RngStream) and _selected(pred, path, x):
        return _new_stream(x, split_key(x))
      return x

    return rebuild(f, target, graph, "pynnx.split_rngs")

  return _as_decorator(apply, in_place) if node is _MISSING else apply(node)


def _split_rules(split: Any, api: str, arg: str) -> list[tuple[Any, Callable, Any]]:
  if split is None:
    return []
  if isinstance(split, (int, tuple)):
    split = {...: split}
  if not isinstance(split, Mapping):
    raise RngError(
      f"{api}: {arg} takes an int, a tuple of ints or a {{filter: int}} mapping, got "
      f"{split!r}. Example: {arg}={{'params': 4, ...: None}}."
    )
  return [(f, filterlib.to_predicate(f), n) for f, n in split.items()]


def fork_rngs(
  node: Any = _MISSING,
  /,
  *,
  split: Mapping[Any, int | tuple[int, ...] | None] | int | tuple[int, ...] | None = None,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Gives every selected stream a new key: its next key, split when ``split`` says so.

  ``split=None`` forks every stream; an int or tuple also splits every stream; a
  ``{filter: shape or None}`` mapping forks only the streams a filter matches (the first
  match decides; ``None`` forks without splitting).

  Args:
    node: a Module, Rngs or any pytree of them; omitted: returns a decorator.
    split: as above.
    graph: graph mode (shared streams forked once) or tree mode; ``None``: the configured one.
    graph_updates: ``True`` with ``graph=None`` / ``graph=True`` forks in place and returns
      ``SplitBackups``; an explicit ``graph=False`` returns a forked copy.

  Returns:
    ``SplitBackups`` (in place) or a copy of ``node`` with forked streams.

  Example:
    >>> rngs = nnx.Rngs(params=0, dropout=1)
    >>> forked = nnx.fork_rngs(rngs, split={'params': 2}, graph=False)  # a copy
    >>> forked.params.key.shape, int(rngs.params.count[...]), forked.params.count[...].tolist()
    ((2,), 1, [0, 0])
  """
  # graph=None: in place (a sanctioned mutator, DESIGN decision 2), as Flax code expects
  # from its default graph mode; an explicit graph=False returns a copy, as Flax's tree mode.
  in_place = resolve_graph_updates(graph_updates) and (graph is None or bool(graph))
  graph = resolve_graph(graph)
  rules = _split_rules({...: None} if split is None else split, "fork_rngs", "split")

  def fork_key(path: Path, stream: RngStream) -> jax.Array | None:
    for _, pred, n in rules:
      if _selected(pred, path, stream):
        key = stream()
        return key if n is None else jax.random.split(key, n)
    return None

  def apply(target: Any) -> Any:
    if in_place:
      backups: list[StreamBackup] = []
      for path, stream in _streams(target, "pynnx.fork_rngs", graph):
        key = fork_key(path, stream)
        if key is not None:
          _set(stream, key, backups)
      return SplitBackups(backups)

    def f(path: Path, x: Any) -> Any:
      key = fork_key(path, x) if isinstance(x, RngStream) else None
      return x if key is None else _new_stream(x, key)

    return rebuild(f, target, graph, "pynnx.fork_rngs")

  return _as_decorator(apply, in_place) if node is _MISSING else apply(node)


def with_rngs(
  node: Any = _MISSING,
  /,
  *,
  split: Mapping[Any, int | tuple[int, ...]] | int | tuple[int, ...] | None = None,
  fork: Any = None,
  broadcast: Mapping[Any, int | tuple[int, ...]] | int | tuple[int, ...] | None = None,
  only: Any = True,
  graph: bool | None = None,
  graph_updates: bool | None = None,
) -> Any:
  """Splits, broadcasts or forks streams by filter.

  For each stream ``only`` selects, the first matching filter of ``split`` (an int/tuple:
  every stream), of ``broadcast`` and of ``fork`` (a filter or a list of filters) is found;
  a split wins over a broadcast, which wins over a fork. A stream matched by two rules whose
  filters are both specific (not ``...``/``True``) is an error. Unmatched streams are kept.

  Args:
    node: a Module, Rngs or any pytree of them; omitted: returns a decorator.
    split: shapes to split keys into (``{filter: shape}`` or one shape for all streams).
    fork: the streams to fork (new key from the stream's next key, same shape).
    broadcast: shapes to repeat the stream's next key into.
    only: a filter on the streams to touch at all.
    graph: graph mode or tree mode; ``None``: the configured one.
    graph_updates: ``True`` with ``graph=None`` / ``graph=True`` changes the streams in place
      and returns ``SplitBackups`` (Flax raises NotImplementedError for graph mode in place);
      an explicit ``graph=False`` returns a copy.

  Returns:
    A copy of ``node`` with the new streams, or ``SplitBackups`` (graph mode, in place).

  Example:
    >>> rngs = nnx.Rngs(params=0, dropout=1)
    >>> new = nnx.with_rngs(rngs, split={'params': 4}, fork=nnx.Not('params'), graph=False)
    >>> new.params.key.shape, new.dropout.key.shape
    ((4,), ())
  """
  # graph=None: in place (a sanctioned mutator, DESIGN decision 2), as Flax code expects
  # from its default graph mode; an explicit graph=False returns a copy, as Flax's tree mode.
  in_place = resolve_graph_updates(graph_updates) and (graph is None or bool(graph))
  graph = resolve_graph(graph)
  split_rules = _split_rules(split, "with_rngs", "split")
  broadcast_rules = _split_rules(broadcast, "with_rngs", "broadcast")
  if fork is None:
    forks: list = []
  elif isinstance(fork, str) or not isinstance(fork, (list, tuple)):
    forks = [fork]
  else:
    forks = list(fork)
  fork_rules = [(f, filterlib.to_predicate(f), None) for f in forks]
  only_pred = filterlib.to_predicate(only)

  def new_key(path: Path, stream: RngStream) -> jax.Array | None:
    if not only_pred(path, stream):
      return None
    hits: dict[str, tuple[Any, Any]] = {}
    for rule, rules in (
      ("split", split_rules),
      ("broadcast", broadcast_rules),
      ("fork", fork_rules),
    ):
      for filt, pred, n in rules:
        if pred(path, stream):
          hits[rule] = (filt, n)
          break
    specific = [r for r, (filt, _) in hits.items() if filt is not ... and filt is not True]
    if len(specific) > 1:
      rules_text = "\n".join(f"  - {r} matches filter {filt!r}" for r, (filt, _) in hits.items())
      raise RngError(
        f"with_rngs: the RngStream at {format_path(path)} matches several rules:\n{rules_text}\n"
        "Make the filters disjoint, or use `...` for the catch-all rule."
      )
    if "split" in hits:
      return jax.random.split(stream(), hits["split"][1])
    if "broadcast" in hits:
      key = stream()
      shape = hits["broadcast"][1]
      shape = (shape,) if isinstance(shape, int) else tuple(shape)
      return jnp.broadcast_to(key, shape + key.shape)
    if "fork" in hits:
      return stream()
    return None

  def apply(target: Any) -> Any:
    if in_place:
      backups: list[StreamBackup] = []
      for path, stream in _streams(target, "pynnx.with_rngs", graph):
        key = new_key(path, stream)
        if key is not None:
          _set(stream, key, backups)
      return SplitBackups(backups)

    def f(path: Path, x: Any) -> Any:
      key = new_key(path, x) if isinstance(x, RngStream) else None
      return x if key is None else _new_stream(x, key)

    return rebuild(f, target, graph, "pynnx.with_rngs")

  return _as_decorator(apply, in_place) if node is _MISSING else apply(node)


def backup_keys(node: Any, /, *, graph: bool | None = None) -> list[StreamBackup]:
  """``[(stream, key)]`` for every stream of ``node``: ``nnx.restore_rngs`` puts the keys back.

  Example:
    >>> rngs = nnx.Rngs(0)
    >>> backups = nnx.compat.backup_keys(rngs)
    >>> nnx.reseed(rngs, default=1)
    >>> nnx.restore_rngs(backups)
    >>> nnx.restore_rngs(backups)  # idempotent: keys only, the counts are left as they are
  """
  graph = resolve_graph(graph)
  return [(s, s.key.get_value()) for _, s in _streams(node, "pynnx.backup_keys", graph)]


def _scalars_only(path: Path, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  if shape != ():
    raise RngError(
      f"reseed: the stream at {format_path(path)} has a key of shape {shape}, and "
      "policy='scalars_only' (the default) reseeds scalar keys only. Pass "
      "policy='match_shape' to split the new key to that shape, or a callable "
      "(path, key, shape) -> new key."
    )
  return key


def _match_shape(path: Path, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return key if shape == () else jax.random.split(key, shape)


def reseed(
  node: Any,
  /,
  *,
  graph: bool | None = None,
  policy: Literal["scalars_only", "match_shape"]
  | Callable[[tuple, jax.Array, tuple[int, ...]], jax.Array] = "scalars_only",
  **stream_keys: Any,
) -> None:
  """Restarts the named streams of ``node`` as if freshly built with those seeds.

  Each stream tagged ``name`` gets the next key of a fresh ``nnx.Rngs(name=seed)`` stream (in
  walk order) and count 0, so a model built with ``nnx.Rngs(dropout=42)`` and a model reseeded
  with ``dropout=42`` draw the same keys.

  Args:
    node: the Module (or Rngs, or pytree of them) whose streams are reseeded in place.
    graph: graph mode (shared streams reseeded once) or tree mode; ``None``: the configured one.
    policy: for streams whose key is not a scalar (split streams): ``'scalars_only'`` raises,
      ``'match_shape'`` splits the new key to the stream's shape, a callable
      ``(path, key, shape) -> new_key`` decides.
    **stream_keys: stream name -> int seed or key.

  Example:
    >>> model = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=42))
    >>> x = jnp.ones((8,))
    >>> y1 = model(x)
    >>> nnx.reseed(model, dropout=42)
    >>> bool((model(x) == y1).all())
    True
  """
  if policy == "scalars_only":
    policy_fn: Callable = _scalars_only
  elif policy == "match_shape":
    policy_fn = _match_shape
  elif callable(policy):
    policy_fn = policy
  else:
    raise RngError(
      f"reseed: policy must be 'scalars_only', 'match_shape' or a callable "
      f"(path, key, shape) -> key, got {policy!r}."
    )
  graph = resolve_graph(graph)
  streams = _streams(node, "pynnx.reseed", graph)
  if not stream_keys:
    return
  fresh = Rngs(stream_keys)
  for path, stream in streams:
    tag = getattr(stream.key, "tag", stream.tag)
    if tag in stream_keys:
      key = policy_fn(path, fresh[tag](), tuple(stream.key.get_value().shape))
      stream.key.set_value(key)
      stream.count.set_value(jnp.zeros(key.shape, dtype=jnp.uint32))
