"""Randomness, differentially: each snippet runs on ``flax.nnx`` and on ``pynnx``.

Compared: key streams (``jax.random.key_data``), sampled values, shapes, dtypes, counters and
the builtin class of every error. Snippets take the library as their first argument so the
same code runs on both; the ``graph`` fixture runs the mode-dependent ones in both modes.
"""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx

flax_nnx = pytest.importorskip("flax.nnx")

BUILTINS = (KeyError, AttributeError, TypeError, ValueError, NotImplementedError)


class Raised:
  def __init__(self, error: Exception):
    self.error = error

  def __repr__(self) -> str:
    return f"Raised({type(self.error).__name__}: {self.error})"


def run(snippet, nnx, *args):
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)  # fork(split=...) warns in both
      return snippet(nnx, *args)
  except Exception as e:  # noqa: BLE001  (the class is what is compared)
    return Raised(e)


def plain(x):
  """Key arrays as their raw data, arrays as numpy: values compared bit for bit."""
  if isinstance(x, Raised):
    return x
  if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    return ("key", np.asarray(jax.random.key_data(x)))
  if isinstance(x, (jax.Array, np.ndarray)):
    return np.asarray(x)
  if isinstance(x, dict):
    return {k: plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return type(x)(plain(v) for v in x)
  return x


def assert_same(a, b, where="result"):
  if isinstance(a, Raised) or isinstance(b, Raised):
    assert isinstance(a, Raised) and isinstance(b, Raised), f"{where}: flax {a!r}, pynnx {b!r}"
    builtin = next(c for c in type(a.error).__mro__ if c in BUILTINS)
    assert isinstance(b.error, builtin), f"{where}: flax raised {a!r}, pynnx {b!r}"
    return
  if isinstance(a, np.ndarray):
    assert isinstance(b, np.ndarray), f"{where}: flax array, pynnx {type(b).__name__}"
    assert a.shape == b.shape and a.dtype == b.dtype, (
      f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    )
    np.testing.assert_array_equal(a, b, err_msg=where)
  elif isinstance(a, dict):
    assert a.keys() == b.keys(), f"{where}: keys {list(a)} vs {list(b)}"
    for k in a:
      assert_same(a[k], b[k], f"{where}[{k!r}]")
  elif isinstance(a, (list, tuple)):
    assert len(a) == len(b), f"{where}: length {len(a)} vs {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
      assert_same(x, y, f"{where}[{i}]")
  else:
    assert a == b, f"{where}: flax {a!r}, pynnx {b!r}"


def compare(snippet, *args):
  expected = plain(run(snippet, flax_nnx, *args))
  got = plain(run(snippet, pynnx, *args))
  assert_same(expected, got)
  return expected


def stream_state(rngs):
  """Key data and counts of every stream of an Rngs, by name."""
  return {name: (s.key[...], s.count[...]) for name, s in rngs.items()}


def holder_class(nnx):
  class Holder(nnx.Module):
    def __init__(self, rngs):
      self.rngs = rngs
      self.w = nnx.Param(jnp.ones((2,)))

  return Holder


def pair_class(nnx):
  class Pair(nnx.Module):
    def __init__(self, a, b):
      self.a = a
      self.b = b

  return Pair


# --- signatures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name",
  [
    "split_rngs",
    "fork_rngs",
    "with_rngs",
    "reseed",
    "restore_rngs",
    "recursive_map",
    "map",
    "Rngs.split",
    "Rngs.broadcast",
    "Rngs.fork",
    "RngStream.split",
    "RngStream.broadcast",
    "RngStream.fork",
  ],
)
def test_signatures_match_flax(name):
  def params(lib):
    obj = lib
    for part in name.split("."):
      obj = getattr(obj, part)
    return [
      (p.name, p.kind, p.default if isinstance(p.default, (int, str, type(None))) else "<obj>")
      for p in inspect.signature(obj).parameters.values()
    ]

  assert params(pynnx) == params(flax_nnx)


# --- key streams --------------------------------------------------------------------------


def test_key_stream_sequence():
  def snippet(nnx):
    rngs = nnx.Rngs(0, params=1, dropout=jax.random.key(7))
    keys = [rngs(), rngs.params(), rngs.dropout(), rngs.other(), rngs["params"](), rngs.default()]
    return keys, stream_state(rngs), list(rngs), len(rngs), "params" in rngs

  compare(snippet)


def test_key_stream_from_existing_stream():
  def snippet(nnx):
    src = nnx.Rngs(params=3)
    src.params()
    rngs = nnx.Rngs(params=src.params, extra=src.params)
    return rngs.params(), rngs.extra(), stream_state(rngs), stream_state(src)

  compare(snippet)


def test_split_stream_called_outside_vmap_is_a_documented_difference():
  """Flax raises (fold_in on a key array); pynnx draws one key per split (docs/migrating.md)."""

  def snippet(nnx):
    stream = nnx.Rngs(params=0).params.split((2, 3))
    return stream(), stream.count[...], stream.key[...]

  flax_result = run(snippet, flax_nnx)
  assert isinstance(flax_result, Raised) and isinstance(flax_result.error, ValueError)
  keys, count, base = run(snippet, pynnx)
  expected = jax.vmap(jax.random.fold_in)(base.reshape(-1), jnp.zeros(6, jnp.uint32))
  assert np.array_equal(jax.random.key_data(keys), jax.random.key_data(expected.reshape(2, 3)))
  assert count.shape == (2, 3) and (count == 1).all()


SAMPLER_CALLS = {
  "bits": ((3,),),
  "uniform": ((3,),),
  "randint": ((3,), 0, 10),
  "permutation": (5,),
  "choice": (jnp.arange(5), (3,)),
  "normal": ((3,),),
  "multivariate_normal": (jnp.zeros(2), jnp.eye(2)),
  "truncated_normal": (-1.0, 1.0, (3,)),
  "bernoulli": (0.3, (3,)),
  "beta": (2.0, 3.0, (3,)),
  "cauchy": ((3,),),
  "dirichlet": (jnp.ones(3),),
  "exponential": ((3,),),
  "gamma": (2.0, (3,)),
  "loggamma": (2.0, (3,)),
  "poisson": (3.0, (3,)),
  "gumbel": ((3,),),
  "categorical": (jnp.zeros(4),),
  "laplace": ((3,),),
  "logistic": ((3,),),
  "pareto": (2.0, (3,)),
  "t": (3.0, (3,)),
  "chisquare": (3.0, (3,)),
  "f": (2.0, 3.0, (3,)),
  "rademacher": ((3,),),
  "maxwell": ((3,),),
  "double_sided_maxwell": (0.0, 1.0, (3,)),
  "weibull_min": (1.0, 2.0, (3,)),
  "orthogonal": (3,),
  "generalized_normal": (2.0, (3,)),
  "ball": (3,),
  "rayleigh": (1.0, (3,)),
  "wald": (1.0, (3,)),
  "geometric": (0.5, (3,)),
  "triangular": (0.0, 0.5, 1.0, (3,)),
  "lognormal": (),
  "binomial": (10.0, 0.5, (3,)),
  "multinomial": (10.0, jnp.array([0.2, 0.3, 0.5])),
}


def test_sampler_list_matches_flax():
  def methods(cls):
    return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}

  for name in ("Rngs", "RngStream"):
    flax_methods = methods(getattr(flax_nnx, name))
    assert flax_methods <= methods(getattr(pynnx, name)), flax_methods - methods(
      getattr(pynnx, name)
    )
  assert set(SAMPLER_CALLS) <= methods(flax_nnx.Rngs)


@pytest.mark.parametrize("name", sorted(SAMPLER_CALLS))
def test_samplers(name):
  args = SAMPLER_CALLS[name]

  def snippet(nnx):
    rngs = nnx.Rngs(0, params=1)
    a = getattr(rngs, name)(*args)
    b = getattr(rngs.params, name)(*args)
    c = getattr(rngs, name)(*args)  # the second draw from the default stream
    return a, b, c, stream_state(rngs)

  compare(snippet)


@pytest.mark.parametrize("name", ["lecun_normal", "glorot_uniform", "variance_scaling"])
def test_initializer_methods(name):
  args = (2.0, "fan_in", "normal") if name == "variance_scaling" else ()

  def snippet(nnx):
    rngs = nnx.Rngs(params=4)
    init = getattr(rngs.params, name)(*args)
    return init((3, 4)), init((2, 2), jnp.float16), stream_state(rngs)

  compare(snippet)


# --- Rngs.split / broadcast / fork ----------------------------------------------------------


@pytest.mark.parametrize(
  "method, arg",
  [
    ("split", 3),
    ("split", (2, 2)),
    ("split", {"params": 2, "dropout": None, ...: (1, 2)}),
    ("broadcast", 2),
    ("broadcast", {"params": (2, 3), ...: None}),
    ("fork", None),
    ("fork", 2),
    ("fork", {"dropout": 3}),
  ],
)
def test_rngs_split_broadcast_fork(method, arg):
  def snippet(nnx):
    rngs = nnx.Rngs(params=0, dropout=1, noise=2)
    rngs.params()
    new = rngs.fork(split=arg) if method == "fork" else getattr(rngs, method)(arg)
    return stream_state(new), stream_state(rngs)

  compare(snippet)


def test_stream_split_broadcast_fork():
  def snippet(nnx):
    s = nnx.Rngs(params=5).params
    return stream_state(nnx.Rngs(a=s.split(3), b=s.broadcast((2,)), c=s.fork())), s.count[...]

  compare(snippet)


# --- split_rngs / fork_rngs / with_rngs -----------------------------------------------------


@pytest.mark.parametrize(
  "kwargs",
  [
    {"splits": 4},
    {"splits": (2, 3), "only": "dropout"},
    {"splits": 1, "squeeze": True},
    {"splits": 3, "squeeze": True},
    {"splits": 2, "only": "missing"},
  ],
)
def test_split_rngs_copy(graph, kwargs):
  def snippet(nnx):
    m = holder_class(nnx)(nnx.Rngs(params=0, dropout=1))
    out = nnx.split_rngs(m, **kwargs, graph=graph, graph_updates=False)
    return stream_state(out.rngs), stream_state(m.rngs), out.w is m.w

  compare(snippet)


def test_split_rngs_in_place_and_restore():
  def snippet(nnx):
    m = holder_class(nnx)(nnx.Rngs(params=0, dropout=1))
    backups = nnx.split_rngs(m, splits=3, only="params", graph=True, graph_updates=True)
    inside = stream_state(m.rngs), m.rngs.dropout()
    nnx.restore_rngs(backups)
    return inside, stream_state(m.rngs), len(list(backups))

  compare(snippet)


def test_split_rngs_decorator(graph):
  def snippet(nnx):
    m = holder_class(nnx)(nnx.Rngs(params=0))

    @nnx.split_rngs(splits=4, graph=graph, graph_updates=graph)
    def f(model):
      return stream_state(model.rngs)

    return f(m), stream_state(m.rngs)

  compare(snippet)


def test_split_rngs_vmap_decorator(graph):
  def snippet(nnx):
    @nnx.split_rngs(splits=3, graph=graph, graph_updates=graph)
    @nnx.vmap(in_axes=0, out_axes=0, graph=graph)
    def draw(rngs):
      return rngs.normal((2,))

    rngs = nnx.Rngs(0)
    return draw(rngs), stream_state(rngs)

  compare(snippet)


def test_shared_rngs(graph):
  def snippet(nnx):
    rngs = nnx.Rngs(0)
    pair = pair_class(nnx)(rngs, rngs)
    if graph:
      with nnx.split_rngs(pair, splits=2, graph=True, graph_updates=True):
        inside = stream_state(rngs)
      out = nnx.split_rngs(pair, splits=2, graph=True, graph_updates=False)
      return inside, stream_state(rngs), out.a is out.b, stream_state(out.a)
    return nnx.split_rngs(pair, splits=2, graph=False)

  compare(snippet)


@pytest.mark.parametrize(
  "split", [None, 2, (1, 2), {"params": 3}, {"params": None, "dropout": 2}, {"nothing": 2}]
)
def test_fork_rngs(graph, split):
  def snippet(nnx):
    m = holder_class(nnx)(nnx.Rngs(params=0, dropout=1))
    out = nnx.fork_rngs(m, split=split, graph=graph, graph_updates=False)
    copy = stream_state(out.rngs), stream_state(m.rngs)
    if not graph:
      return copy
    backups = nnx.fork_rngs(m, split=split, graph=True, graph_updates=True)
    inside = stream_state(m.rngs)
    nnx.restore_rngs(backups)
    return copy, inside, stream_state(m.rngs)

  compare(snippet)


@pytest.mark.parametrize(
  "kwargs",
  [
    {"split": 4},
    {"split": {"params": 4}, "fork": flax_nnx.Not("params")},
    {"split": {"params": 4, ...: (2, 2)}},
    {"broadcast": 3, "only": "noise"},
    {"broadcast": {"dropout": (2,)}, "fork": ...},
    {"fork": ["params", "noise"]},
    {"split": {"params": 2}, "fork": "params"},  # two specific rules: an error
    {"split": 2, "fork": "params"},  # a catch-all and a specific rule: the split wins
  ],
  ids=lambda kw: ",".join(kw),
)
def test_with_rngs(graph, kwargs):
  def snippet(nnx):
    kw = dict(kwargs)
    if nnx is pynnx and "fork" in kw and isinstance(kw["fork"], flax_nnx.Not):
      kw["fork"] = pynnx.Not("params")
    m = holder_class(nnx)(nnx.Rngs(params=0, dropout=1, noise=2))
    out = nnx.with_rngs(m, **kw, graph=graph, graph_updates=False)
    return stream_state(out.rngs), stream_state(m.rngs)

  compare(snippet)


# --- reseed / restore -------------------------------------------------------------------------


def test_reseed_matches_fresh_stream(graph):
  def snippet(nnx):
    m = holder_class(nnx)(nnx.Rngs(params=0, dropout=1))
    m.rngs.dropout()
    nnx.reseed(m, dropout=42, graph=graph)
    return stream_state(m.rngs), m.rngs.dropout(), m.rngs.normal((2,))

  compare(snippet)


def test_reseed_two_streams_same_tag(graph):
  def snippet(nnx):
    Pair = pair_class(nnx)
    m = Pair(nnx.Rngs(dropout=1), nnx.Rngs(dropout=2))
    nnx.reseed(m, dropout=7, graph=graph)
    return stream_state(m.a), stream_state(m.b)

  compare(snippet)


@pytest.mark.parametrize(
  "policy",
  [
    "scalars_only",
    "match_shape",
    "callable",
    pytest.param("bogus", marks=pytest.mark.no_typecheck("passes mistyped arguments on purpose")),
  ],
)
def test_reseed_policies(graph, policy):
  def snippet(nnx):
    m = holder_class(nnx)(nnx.Rngs(params=0, dropout=1))
    m = nnx.split_rngs(m, splits=3, only="dropout", graph=graph, graph_updates=False)
    p = (
      (lambda path, key, shape: key if shape == () else jax.random.split(key, shape)[::-1])
      if policy == "callable"
      else policy
    )
    nnx.reseed(m, dropout=5, params=6, policy=p, graph=graph)
    return stream_state(m.rngs)

  compare(snippet)


def test_reseed_dropout_layer_reproduces():
  def snippet(nnx):
    model = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=42))
    x = jnp.ones((32,))
    y1 = model(x)
    nnx.reseed(model, dropout=42)
    return y1, model(x), stream_state(nnx.Rngs(r=model.rngs))

  compare(snippet)


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "case",
  ["getattr", "getitem", "call", "sampler_without_default", "stream_with_args", "rngs_with_args"],
)
def test_missing_stream_and_call_errors(case):
  def snippet(nnx):
    rngs = nnx.Rngs(params=0)
    if case == "getattr":
      return rngs.dropout()
    if case == "getitem":
      return rngs["dropout"]()
    if case == "call":
      return rngs()
    if case == "sampler_without_default":
      return rngs.normal((2,))
    if case == "stream_with_args":
      return rngs.params((2, 3))
    return rngs((2, 3))

  result = compare(snippet)
  assert isinstance(result, Raised)


# --- recursive_map / map ----------------------------------------------------------------------


def test_recursive_map_streams(graph):
  def snippet(nnx):
    m = holder_class(nnx)(nnx.Rngs(params=0, dropout=1))
    seen = []

    def f(path, x):
      if isinstance(x, (nnx.RngStream, nnx.Variable)):
        seen.append((path, type(x).__name__))
      return x

    out = nnx.recursive_map(f, m, graph=graph)
    return seen, out is m, out.w is m.w

  compare(snippet)


def test_map_values(graph):
  def snippet(nnx):
    m = holder_class(nnx)(nnx.Rngs(params=0))
    doubled = nnx.map(lambda path, v: v[...] * 2 if path[-1] == "w" else v, m, graph=graph)
    same_var = nnx.map(lambda path, v: v, m, graph=graph)
    return doubled.w[...], type(doubled.w).__name__, same_var.w is m.w, doubled is m

  compare(snippet)


def test_reference_split_rngs_vmap_scan_model(graph):
  """The reference's stacked-blocks example: same params, dropout keys and outputs."""

  def snippet(nnx):
    class Block(nnx.Module):
      def __init__(self, features, *, rngs):
        self.linear = nnx.Linear(features, features, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)

      def __call__(self, x):
        return jnp.tanh(self.dropout(self.linear(x)))

    @nnx.split_rngs(splits=3, graph=graph)
    @nnx.vmap(in_axes=(0,), out_axes=0, graph=graph)
    def create_block(rngs):
      return Block(4, rngs=rngs)

    rngs = nnx.Rngs(0)
    blocks = create_block(rngs)

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, graph=graph)
    def forward(x, block):
      return block(x)

    y = forward(jnp.linspace(-1.0, 1.0, 8).reshape(2, 4), blocks)
    dropout = blocks.dropout.rngs
    return blocks.linear.kernel[...], y, dropout.key[...], dropout.count[...], stream_state(rngs)

  compare(snippet)
