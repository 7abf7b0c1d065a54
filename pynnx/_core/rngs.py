"""Random streams: ``Rngs`` holds named ``RngStream``s; each draw folds in a counter.

``Rngs(0)`` has one stream, ``default``; ``Rngs(params=0, dropout=1)`` has two. A stream
that is asked for but missing falls back to ``default``. Keys and counters are Variables
(``RngKey`` / ``RngCount``), so they flow through every transform like any other state.

Both classes sample directly: ``rngs.normal((2, 3))`` draws a key from the ``default`` stream
and calls ``jax.random.normal`` with it; ``rngs.params.uniform((2,))`` uses ``params``. The
helpers that walk a whole Module (``split_rngs``, ``fork_rngs``, ``reseed``...) live in
``pynnx/_rng_helpers.py``: they need the graph-mode walk.
"""

from __future__ import annotations

import inspect
import operator
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from . import filters as filterlib
from .errors import ArgumentTypeError, RngCallError, RngError, RngStreamNotFoundError
from .pytree import Pytree
from .variables import RngCount, RngKey

# Drawing a key reads and bumps the stream's counter; this lock makes that one step, so threads
# sharing an Rngs never draw the same key or lose a count.
_DRAW_LOCK = threading.RLock()

# The jax.random samplers and jax.nn.initializers constructors both classes expose as methods.
SAMPLERS = (
  "bits uniform randint permutation choice normal multivariate_normal truncated_normal "
  "bernoulli beta cauchy dirichlet exponential gamma loggamma poisson gumbel categorical "
  "laplace logistic pareto t chisquare f rademacher maxwell double_sided_maxwell weibull_min "
  "orthogonal generalized_normal ball rayleigh wald geometric triangular lognormal binomial "
  "multinomial"
).split()
INITIALIZERS = (
  "delta_orthogonal glorot_normal glorot_uniform he_normal he_uniform kaiming_normal "
  "kaiming_uniform lecun_normal lecun_uniform variance_scaling xavier_normal xavier_uniform"
).split()

SplitSpec = int | tuple[int, ...]


def _as_key(value: Any) -> jax.Array:
  if isinstance(value, int):
    return jax.random.key(value)
  try:
    value = jnp.asarray(value)
  except (TypeError, ValueError):  # a string, None, an object: not something JAX can hold
    raise RngError(
      f"An rng stream needs an int seed or a PRNG key, got {type(value).__name__} {value!r}: "
      "pass e.g. `nnx.Rngs(0)` or `nnx.Rngs(params=jax.random.key(0))`."
    ) from None
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


def _no_arguments(owner: str, tag: str, args: tuple, kwargs: dict) -> None:
  if args or kwargs:
    call = "rngs()" if owner == "Rngs" else f"rngs.{tag}()"
    raise RngCallError(
      f"{owner} (stream {tag!r}) was called with arguments, but `{call}` takes none: it draws "
      f"one key. To sample, use a jax.random-named method such as `rngs.normal((2, 3))` or "
      f"`rngs.{tag}.uniform((2, 3))`; a misspelt method name (`rngs.normall`) is read as a "
      "stream name and falls back to the 'default' stream."
    )


def _shape(k: SplitSpec) -> tuple[int, ...]:
  try:
    shape = tuple(map(operator.index, k)) if hasattr(k, "__iter__") else (operator.index(k),)
  except TypeError:
    raise ArgumentTypeError(
      f"An rng stream is split into a shape of ints, got {k!r}: e.g. `rngs.split(4)` or "
      "`rngs.params.split((2, 3))`."
    ) from None
  if any(n < 0 for n in shape):
    raise RngError(
      f"An rng stream is split into a shape of non-negative ints, got {k!r}: e.g. "
      "`rngs.split(4)` or `rngs.params.split((2, 3))`."
    )
  return shape


def _warn_fork_split() -> None:
  warnings.warn(
    "The 'split' argument of 'fork' is deprecated; use the 'split' method instead "
    "(`rngs.split(4)`, `rngs.params.split(4)`).",
    DeprecationWarning,
    stacklevel=3,
  )


class RngStream(Pytree):
  """One named random stream: ``stream()`` returns a fresh key each call.

  Example:
    >>> stream = nnx.Rngs(params=0).params
    >>> stream().shape, int(stream.count[...])
    ((), 1)
    >>> stream.normal((2,)).shape   # draws a key, then jax.random.normal(key, (2,))
    (2,)
    >>> stream.split(4).key.shape
    (4,)
  """

  def __init__(self, key: Any, *, tag: str):
    key = _as_key(key)
    self.key = RngKey(key, tag=tag)
    self.count = RngCount(jnp.zeros(key.shape, dtype=jnp.uint32), tag=tag)
    self.tag = tag

  def __call__(self, *args: Any, **kwargs: Any) -> jax.Array:
    _no_arguments("RngStream", self.tag, args, kwargs)
    with _DRAW_LOCK:
      count = self.count.get_value()
      self.count.set_value(count + 1)
    return _fold(self.key.get_value(), count)

  def split(self, k: SplitSpec) -> RngStream:
    """A new stream whose key is this stream's next key split into shape ``k``."""
    return type(self)(jax.random.split(self(), _shape(k)), tag=self.tag)

  def broadcast(self, k: SplitSpec) -> RngStream:
    """A new stream whose key is this stream's next key repeated into shape ``k``."""
    key = self()
    return type(self)(jnp.broadcast_to(key, _shape(k) + key.shape), tag=self.tag)

  def fork(self, *, split: SplitSpec | None = None) -> RngStream:
    """A new independent stream seeded with this stream's next key.

    ``split`` (deprecated, as in Flax: use :meth:`split`) splits that key into shape ``split``.
    """
    if split is not None:
      _warn_fork_split()
    key = self()
    if split is not None:
      key = jax.random.split(key, split)
    return type(self)(key, tag=self.tag)

  def __repr__(self) -> str:
    return f"RngStream(tag={self.tag!r}, key={self.key[...]!r}, count={self.count[...]!r})"


SplitMap = Mapping[Any, SplitSpec | None]


def _per_stream(spec: SplitSpec | SplitMap | None, method: str) -> list[tuple[Callable, Any]]:
  """``[(predicate, size)]`` from an int, a tuple or a ``{filter: size}`` mapping."""
  if spec is None or isinstance(spec, (int, tuple)):
    return [(filterlib.to_predicate(...), spec)]
  if isinstance(spec, Mapping):
    return [(filterlib.to_predicate(f), n) for f, n in spec.items()]
  raise RngError(
    f"Rngs.{method} takes an int, a tuple of ints or a {{filter: int}} mapping, got {spec!r}. "
    f"Example: rngs.{method}({{'params': 4, ...: None}})."
  )


def _first_match(rules: list[tuple[Callable, Any]], stream: RngStream) -> tuple[bool, Any]:
  for pred, n in rules:
    if pred((), stream):  # as in Flax: Rngs-level filters see an empty path (match by tag/type)
      return True, n
  return False, None


class Rngs(Pytree):
  """A set of named random streams.

  Example:
    >>> rngs = nnx.Rngs(params=0, dropout=1)
    >>> k1, k2 = rngs.params(), rngs.params()   # different keys: the count advances
    >>> bool((jax.random.key_data(k1) != jax.random.key_data(k2)).any())
    True
    >>> rngs.dropout.bernoulli(0.5, (3,)).shape
    (3,)
  """

  def __init__(self, default: Any = None, /, **streams: Any):
    if default is not None:
      if isinstance(default, Mapping):
        streams = {**default, **streams}
      else:
        streams = {**streams, "default": default}
    if not streams:
      raise RngError("Rngs needs at least one stream: nnx.Rngs(0) or nnx.Rngs(params=0, ...).")
    for name, value in streams.items():
      if isinstance(value, RngStream):  # as in Flax: a new stream from its key, count 0
        value = value.key.get_value()
      setattr(self, name, RngStream(value, tag=name))

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
    # The message is Flax's, word for word (code prints it); the rule and the fix are a note,
    # which tracebacks show under it.
    err = RngStreamNotFoundError(f"No RngStream named {name!r} found in Rngs.")
    err.add_note(
      f"It has no 'default' stream to fall back to; its streams are "
      f"{[k for k, _ in self._streams()]}. Create it with nnx.Rngs({name}=seed, ...) or add a "
      "default: nnx.Rngs(seed, ...)."
    )
    raise err

  def __getattr__(self, name: str) -> RngStream:
    if name.startswith("_"):
      raise AttributeError(name)
    return self._stream(name)

  def __getitem__(self, name: str) -> RngStream:
    return self._stream(name)

  def __call__(self, *args: Any, **kwargs: Any) -> jax.Array:
    _no_arguments("Rngs", "default", args, kwargs)
    return self._stream("default")()

  def __contains__(self, name: Any) -> bool:
    return isinstance(self.__dict__.get(name), RngStream)

  def __iter__(self) -> Iterator[str]:
    return iter(k for k, _ in self._streams())

  def __len__(self) -> int:
    return len(self._streams())

  def items(self) -> list[tuple[str, RngStream]]:
    return self._streams()

  def split(self, k: SplitSpec | SplitMap) -> Rngs:
    """A new Rngs whose matching streams are split into shape ``k`` (per filter if a mapping).

    Streams no filter matches (or mapped to ``None``) restart from their key with count 0.

    Example:
      >>> new = nnx.Rngs(params=0, dropout=1).split({'params': 4, ...: None})
      >>> new.params.key.shape, new.dropout.key.shape
      ((4,), ())
    """
    out: dict[str, Any] = {}
    for name, stream in self._streams():
      hit, n = _first_match(_per_stream(k, "split"), stream)
      out[name] = stream.split(n) if hit and n is not None else stream
    return Rngs(out)  # a mapping: a stream named "default" is not a keyword here

  def broadcast(self, k: SplitSpec | SplitMap | None) -> Rngs:
    """A new Rngs whose matching streams hold their next key repeated into shape ``k``.

    Example:
      >>> new = nnx.Rngs(0).broadcast(3)
      >>> keys = jax.random.key_data(new.default.key[...])
      >>> new.default.key.shape, bool((keys[0] == keys[2]).all())
      ((3,), True)
    """
    out: dict[str, Any] = {}
    for name, stream in self._streams():
      hit, n = _first_match(_per_stream(k, "broadcast"), stream)
      out[name] = stream.broadcast(n) if hit and n is not None else stream
    return Rngs(out)  # a mapping: a stream named "default" is not a keyword here

  def fork(self, /, *, split: SplitSpec | SplitMap | None = None) -> Rngs:
    """A new Rngs whose streams are seeded with the next key of each of these streams.

    ``split`` (deprecated, as in Flax: use :meth:`split`) also splits the matching streams.

    Example:
      >>> rngs = nnx.Rngs(params=1, dropout=2)
      >>> forked = rngs.fork()
      >>> int(rngs.params.count[...]), int(forked.params.count[...])
      (1, 0)
    """
    if split is not None:
      _warn_fork_split()
    rules = [] if split is None else _per_stream(split, "fork")
    out: dict[str, Any] = {}
    for name, stream in self._streams():
      _, n = _first_match(rules, stream)
      key = stream()
      out[name] = key if n is None else jax.random.split(key, n)
    return Rngs(out)  # a mapping: a stream named "default" is not a keyword here

  def __repr__(self) -> str:
    return f"Rngs({', '.join(k for k, _ in self._streams())})"


def _sampler(name: str) -> Callable:
  fn = getattr(jax.random, name)

  def method(self: Any, *args: Any, **kwargs: Any) -> jax.Array:
    return fn(self(), *args, **kwargs)

  method.__doc__ = (
    f"Draws the next key of this stream (an ``Rngs``: its ``default`` stream) and returns "
    f"``jax.random.{name}(key, *args, **kwargs)``."
  )
  params = list(inspect.signature(fn).parameters.values())[1:]
  self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
  method.__signature__ = inspect.Signature([self_param, *params])  # type: ignore[attr-defined]
  return method


def _initializer(name: str) -> Callable:
  make = getattr(jax.nn.initializers, name)

  def method(self: Any, *args: Any, **kwargs: Any) -> Callable:
    init = make(*args, **kwargs)

    def keyless(*init_args: Any, **init_kwargs: Any) -> jax.Array:
      return init(self(), *init_args, **init_kwargs)

    return keyless

  method.__doc__ = (
    f"``jax.nn.initializers.{name}(*args, **kwargs)`` without the key argument: the returned "
    f"``init(shape, dtype=...)`` draws its key from this stream on each call."
  )
  return method


for _cls in (Rngs, RngStream):
  for _name, _make in [(n, _sampler) for n in SAMPLERS] + [(n, _initializer) for n in INITIALIZERS]:
    _method = _make(_name)
    _method.__name__ = _name
    _method.__qualname__ = f"{_cls.__name__}.{_name}"
    setattr(_cls, _name, _method)
del _cls, _name, _make, _method
