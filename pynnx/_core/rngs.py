"""Random streams: ``Rngs`` holds named ``RngStream``s; each draw folds in a counter.

``Rngs(0)`` has one stream, ``default``; ``Rngs(params=0, dropout=1)`` has two. A stream
that is asked for but missing falls back to ``default``. Keys and counters are Variables
(``RngKey`` / ``RngCount``), so they flow through every transform like any other state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, Literal

import jax
import jax.numpy as jnp

from . import filters as filterlib
from .errors import RngError
from .pytree import Pytree
from .tree import iter_graph
from .variables import RngCount, RngKey


def _as_key(value: Any) -> jax.Array:
  if isinstance(value, int):
    return jax.random.key(value)
  value = jnp.asarray(value)
  if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
    return value
  if value.dtype == jnp.uint32 and value.shape[-1:] == (2,):
    return jax.random.wrap_key_data(value)
  if jnp.issubdtype(value.dtype, jnp.integer) and value.ndim == 0:
    return jax.random.key(value)
  raise RngError(
    f"An rng stream needs an int seed or a PRNG key, got an array of dtype {value.dtype} and "
    f"shape {value.shape}."
  )


def _fold(key: jax.Array, count: jax.Array) -> jax.Array:
  if key.ndim == 0:
    return jax.random.fold_in(key, count)
  flat_key, flat_count = key.reshape(-1), jnp.broadcast_to(count, key.shape).reshape(-1)
  return jax.vmap(jax.random.fold_in)(flat_key, flat_count).reshape(key.shape)


class RngStream(Pytree):
  """One named random stream: ``stream()`` returns a fresh key each call."""

  def __init__(self, key: Any, *, tag: str):
    key = _as_key(key)
    self.key = RngKey(key, tag=tag)
    self.count = RngCount(jnp.zeros(key.shape, dtype=jnp.uint32), tag=tag)
    self.tag = tag

  def __call__(self) -> jax.Array:
    key = _fold(self.key[...], self.count[...])
    self.count[...] = self.count[...] + 1
    return key

  def fork(self, *, split: int | tuple[int, ...] | None = None) -> RngStream:
    """A new independent stream derived from this one (optionally with split keys)."""
    key = self()
    if split is not None:
      key = jax.random.split(key, split)
    return RngStream(key, tag=self.tag)

  def __repr__(self) -> str:
    return f"RngStream(tag={self.tag!r}, key={self.key[...]!r}, count={self.count[...]!r})"


class Rngs(Pytree):
  """A set of named random streams.

  Example:
    >>> import pynnx as nnx
    >>> rngs = nnx.Rngs(params=0, dropout=1)
    >>> k1, k2 = rngs.params(), rngs.params()   # different keys: the count advances
    >>> bool((jax.random.key_data(k1) != jax.random.key_data(k2)).any())
    True
  """

  def __init__(self, default: Any = None, /, **streams: Any):
    if default is not None:
      if isinstance(default, dict):
        streams = {**default, **streams}
      else:
        streams = {"default": default, **streams}
    if not streams:
      raise RngError("Rngs needs at least one stream: nnx.Rngs(0) or nnx.Rngs(params=0, ...).")
    for name, value in streams.items():
      stream = value if isinstance(value, RngStream) else RngStream(value, tag=name)
      setattr(self, name, stream)

  def _streams(self) -> list[tuple[str, RngStream]]:
    return [(k, v) for k, v in self.__dict__.items() if isinstance(v, RngStream)]

  def _stream(self, name: str) -> RngStream:
    d = self.__dict__
    stream = d.get(name)
    if isinstance(stream, RngStream):
      return stream
    default = d.get("default")
    if isinstance(default, RngStream):
      return default
    raise RngError(
      f"Rngs has no stream {name!r} and no 'default' stream to fall back to; its streams are "
      f"{[k for k, _ in self._streams()]}. Create it with nnx.Rngs({name}=seed, ...)."
    )

  def __getattr__(self, name: str) -> RngStream:
    if name.startswith("_"):
      raise AttributeError(name)
    return self._stream(name)

  def __getitem__(self, name: str) -> RngStream:
    return self._stream(name)

  def __call__(self) -> jax.Array:
    return self._stream("default")()

  def __contains__(self, name: str) -> bool:
    return isinstance(self.__dict__.get(name), RngStream)

  def __iter__(self) -> Iterator[str]:
    return iter(k for k, _ in self._streams())

  def __len__(self) -> int:
    return len(self._streams())

  def items(self) -> list[tuple[str, RngStream]]:
    return self._streams()

  def fork(self, /, *, split: Any = None) -> Rngs:
    """A new Rngs whose streams are forked from these (``split``: int or {filter: int})."""
    out = {}
    for name, stream in self._streams():
      n = _splits_for(split, (name,), stream)
      out[name] = stream.fork(split=n)
    return Rngs(**out)

  def __repr__(self) -> str:
    return f"Rngs({', '.join(k for k, _ in self._streams())})"


def _splits_for(split: Any, path: tuple, stream: RngStream) -> Any:
  if split is None or isinstance(split, (int, tuple)):
    return split
  if isinstance(split, dict):
    for f, n in split.items():  # first matching filter wins: a stream is split once
      if filterlib.to_predicate(f)(path, stream):
        return n
    return None
  raise RngError(f"split must be an int, a tuple of ints or a {{filter: int}} dict, got {split!r}.")


def _find_streams(nodes: Any) -> list[tuple[tuple, RngStream]]:
  found, seen = [], set()
  for path, x in iter_graph(nodes):
    if isinstance(x, RngStream) and id(x) not in seen:
      seen.add(id(x))
      found.append((path, x))
  return found


class _Restore:
  """Returned by split_rngs / fork_rngs: restores the original keys on ``__exit__``."""

  def __init__(self, backups: list[tuple[RngStream, Any, Any]]):
    self.backups = backups

  def __enter__(self) -> _Restore:
    return self

  def __exit__(self, *exc: Any) -> Literal[False]:
    self.restore()
    return False

  def restore(self) -> None:
    for stream, key, count in self.backups:
      stream.key.value = key
      stream.count.value = count


def _rewrite(node: Any, only: Any, make: Callable[[tuple, RngStream], Any]) -> _Restore:
  pred = filterlib.to_predicate(only)
  backups = []
  for path, stream in _find_streams(node):
    if not (pred(path, stream) or pred((*path, "key"), stream.key)):
      continue
    new_key = make(path, stream)
    if new_key is None:
      continue
    backups.append((stream, stream.key[...], stream.count[...]))
    stream.key.value = new_key
    stream.count.value = jnp.zeros(new_key.shape, dtype=jnp.uint32)
  return _Restore(backups)


def _decorator_or_apply(apply: Callable[[Any], _Restore], node: Any) -> Any:
  if node is not _MISSING:
    return apply(node)

  def decorator(f: Callable) -> Callable:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
      with apply((args, kwargs)):
        return f(*args, **kwargs)

    return wrapper

  return decorator


_MISSING: Any = object()


def split_rngs(
  node: Any = _MISSING, /, *, splits: int | tuple[int, ...], only: Any = ..., squeeze: bool = False
) -> Any:
  """Splits the keys of the matching streams into ``splits`` keys (for vmap/scan).

  As a call it returns a context manager that restores the streams; as a decorator
  (``@nnx.split_rngs(splits=4)``) it splits around every call of the function.
  """

  def make(path: tuple, stream: RngStream) -> Any:
    key = stream()
    return key if squeeze and splits == 1 else jax.random.split(key, splits)

  return _decorator_or_apply(lambda n: _rewrite(n, only, make), node)


def fork_rngs(node: Any = _MISSING, /, *, split: Any = None) -> Any:
  """Gives matching streams a fresh forked key (``split``: int or {filter: int})."""

  def make(path: tuple, stream: RngStream) -> Any:
    n = _splits_for(split, path, stream)
    key = stream()
    return key if n is None else jax.random.split(key, n)

  return _decorator_or_apply(lambda n: _rewrite(n, ..., make), node)


def with_rngs(node: Any = _MISSING, /, *, split: Any = None, fork: Any = None) -> Any:
  """Splits streams matching ``split`` ({filter: int}) and forks those matching ``fork``."""

  def make(path: tuple, stream: RngStream) -> Any:
    n = _splits_for(split, path, stream) if split is not None else None
    if n is not None:
      return jax.random.split(stream(), n)
    if fork is not None and filterlib.to_predicate(fork)(path, stream):
      return stream()
    return None

  return _decorator_or_apply(lambda n: _rewrite(n, ..., make), node)


def reseed(node: Any, /, **stream_seeds: Any) -> None:
  """Resets the named streams of ``node`` to new seeds (counts back to 0)."""
  for _, stream in _find_streams(node):
    if stream.tag in stream_seeds:
      key = _as_key(stream_seeds[stream.tag])
      old = stream.key[...]
      if old.shape and not key.shape:
        key = jax.random.split(key, old.shape)
      stream.key.value = key
      stream.count.value = jnp.zeros(key.shape, dtype=jnp.uint32)
