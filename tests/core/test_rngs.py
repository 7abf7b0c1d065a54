"""Rngs and RngStream: determinism, counters, fallback, forking, split/fork/with_rngs, reseed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx


def data(key):
  return np.asarray(jax.random.key_data(key))


def same(a, b):
  return np.array_equal(data(a), data(b))


class Holder(nnx.Module):
  def __init__(self, rngs):
    self.rngs = rngs
    self.w = nnx.Param(jnp.zeros(()))


def test_deterministic_per_seed():
  a, b, c = nnx.Rngs(0), nnx.Rngs(0), nnx.Rngs(1)
  assert same(a.params(), b.params())
  assert not same(nnx.Rngs(0).params(), c.params())
  assert same(nnx.Rngs(0)(), jax.random.fold_in(jax.random.key(0), 0))


def test_counts_advance():
  rngs = nnx.Rngs(params=0)
  assert rngs.params.count[...] == 0
  k1 = rngs.params()
  k2 = rngs.params()
  assert rngs.params.count[...] == 2
  assert not same(k1, k2)
  assert same(k2, jax.random.fold_in(jax.random.key(0), 1))


def test_named_streams_are_independent():
  rngs = nnx.Rngs(params=0, dropout=0)
  rngs.params()
  assert rngs.dropout.count[...] == 0
  assert list(rngs) == ["params", "dropout"] and len(rngs) == 2
  assert "params" in rngs and "default" not in rngs
  assert [k for k, _ in rngs.items()] == ["params", "dropout"]
  assert repr(rngs) == "Rngs(params, dropout)"


def test_default_fallback():
  rngs = nnx.Rngs(0)
  k1 = rngs.params()
  k2 = rngs["dropout"]()
  assert rngs.default.count[...] == 2
  assert not same(k1, k2)
  both = nnx.Rngs(3, params=4)
  both.dropout()
  assert both.default.count[...] == 1 and both.params.count[...] == 0


def test_missing_stream_raises():
  rngs = nnx.Rngs(params=0)
  # Flax's message (code that prints it gets Flax's text); the streams and the fix in a note
  with pytest.raises(AttributeError, match=r"(?s)No RngStream named 'dropout'.*\['params'\]"):
    rngs.dropout()
  with pytest.raises(KeyError, match=r"(?s)No RngStream named 'dropout'.*nnx.Rngs\(dropout=seed"):
    rngs["dropout"]
  with pytest.raises(AttributeError) as info:
    rngs.dropout()
  assert str(info.value) == "No RngStream named 'dropout' found in Rngs."
  with pytest.raises(nnx.RngStreamNotFoundError, match="No RngStream named 'default'"):
    rngs()
  with pytest.raises(nnx.RngStreamNotFoundError, match="No RngStream named 'default'"):
    rngs.normal((2,))  # samplers on an Rngs use its default stream
  assert not hasattr(rngs, "dropout")


def test_stream_called_with_arguments():
  rngs = nnx.Rngs(0)
  with pytest.raises(nnx.RngCallError, match=r"stream 'default'.*rngs\.normal\(\(2, 3\)\)"):
    rngs.normall((2, 3))  # misspelt: falls back to the default stream, which takes no args
  with pytest.raises(TypeError, match=r"`rngs\(\)` takes none"):
    rngs(3)
  assert rngs.default.count[...] == 0  # nothing was drawn


def test_sampling_methods():
  rngs = nnx.Rngs(0, params=1)
  x = rngs.normal((2, 3))
  assert x.shape == (2, 3)
  assert np.array_equal(x, jax.random.normal(nnx.Rngs(0)(), (2, 3)))
  u = rngs.params.uniform((4,), minval=2.0, maxval=3.0)
  assert np.array_equal(u, jax.random.uniform(nnx.Rngs(1)(), (4,), minval=2.0, maxval=3.0))
  assert rngs.default.count[...] == 1 and rngs.params.count[...] == 1
  assert rngs.bernoulli(0.5, (5,)).dtype == jnp.bool_
  init = rngs.params.lecun_normal()
  w = init((3, 4))
  assert w.shape == (3, 4) and rngs.params.count[...] == 2
  assert not np.array_equal(init((3, 4)), w)  # every call of the initializer draws a key


def test_rngs_from_streams_restart_at_count_zero():
  src = nnx.Rngs(params=0)
  src.params()
  copy = nnx.Rngs(params=src.params, other=src.params)
  assert copy.params is not src.params and copy.params.count[...] == 0
  assert copy.other.tag == "other" and same(copy.other(), nnx.Rngs(params=0).params())


def test_bad_construction():
  with pytest.raises(nnx.RngError, match="Rngs needs at least one stream"):
    nnx.Rngs()
  with pytest.raises(nnx.RngError, match=r"needs an int seed or a PRNG key.*float32"):
    nnx.Rngs(jnp.ones((3,)))


def test_key_inputs():
  from_key = nnx.Rngs(jax.random.key(5))
  from_int_array = nnx.Rngs(jnp.array(5))
  from_raw = nnx.Rngs(jax.random.PRNGKey(5))
  from_dict = nnx.Rngs({"params": 5})
  for r in (from_int_array, from_raw):
    assert same(r(), nnx.Rngs(5)())
  assert same(from_key(), nnx.Rngs(5)())
  assert same(from_dict.params(), nnx.Rngs(params=5).params())


def test_stream_fork_split_broadcast():
  rngs = nnx.Rngs(params=0)
  forked = rngs.params.fork()
  assert isinstance(forked, nnx.RngStream) and forked.tag == "params"
  assert rngs.params.count[...] == 1 and forked.count[...] == 0
  split = rngs.params.split(4)
  assert split.key[...].shape == (4,) and split().shape == (4,)  # one key per split
  wide = rngs.params.broadcast((2, 3))
  keys = data(wide.key[...])
  assert keys.shape[:2] == (2, 3) and (keys == keys[0, 0]).all()
  with pytest.warns(DeprecationWarning, match="use the 'split' method"):
    assert rngs.params.fork(split=4).key.shape == (4,)


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_rngs_split_broadcast_fork():
  rngs = nnx.Rngs(params=0, dropout=1)
  forked = rngs.fork()
  assert isinstance(forked, nnx.Rngs) and list(forked) == ["params", "dropout"]
  assert not same(forked.params(), nnx.Rngs(params=0).params())
  assert rngs.split(3).params.key.shape == (3,)
  mixed = rngs.split({"params": 2, ...: (5, 2)})
  assert mixed.params.key.shape == (2,) and mixed.dropout.key.shape == (5, 2)
  kept = rngs.split({"params": 2, "dropout": None})
  assert kept.dropout.key.shape == () and kept.dropout.count[...] == 0
  assert rngs.broadcast({"dropout": 4}).dropout.key.shape == (4,)
  with pytest.warns(DeprecationWarning):
    assert rngs.fork(split={"params": 3}).params.key.shape == (3,)
  with pytest.raises(nnx.RngError, match=r"Rngs.split takes an int.*got 'x'"):
    rngs.split("x")


def test_rngs_are_pytrees():
  rngs = nnx.Rngs(params=0)
  leaves = jax.tree.leaves(rngs)
  assert len(leaves) == 2
  _, state = nnx.split(rngs)
  assert isinstance(state.params.key, nnx.RngKey) and isinstance(state.params.count, nnx.RngCount)
  assert state.params.key.tag == "params"
  _, keys, counts = nnx.split(rngs, nnx.RngKey, nnx.RngCount)
  assert list(keys.params) == ["key"] and list(counts.params) == ["count"]


class Pair(nnx.Module):
  def __init__(self, a, b):
    self.a = a
    self.b = b


def test_split_rngs_tree_mode_returns_a_copy():
  m = Holder(nnx.Rngs(params=0, dropout=1))
  out = nnx.split_rngs(m, splits=5, graph=False)
  assert isinstance(out, Holder) and out is not m and out.w is m.w
  assert out.rngs.params.key.shape == (5,) and out.rngs.params.count[...].shape == (5,)
  assert m.rngs.params.key.shape == () and m.rngs.params.count[...] == 1  # one draw
  only = nnx.split_rngs(m, splits=2, only="dropout", graph=False)
  assert only.rngs.params.key.shape == () and only.rngs.dropout.key.shape == (2,)


def test_split_rngs_graph_mode_in_place_and_restore():
  m = Holder(nnx.Rngs(params=0, dropout=1))
  with nnx.split_rngs(m, splits=5, graph=True, graph_updates=True):
    assert m.rngs.params.key[...].shape == (5,)
    assert m.rngs.params.count[...].shape == (5,)
  assert m.rngs.params.key[...].shape == ()
  assert m.rngs.params.count[...] == 1  # the split consumed one draw
  backups = nnx.split_rngs(m, splits=2, only="dropout", graph=True, graph_updates=True)
  assert m.rngs.params.key[...].shape == () and m.rngs.dropout.key[...].shape == (2,)
  nnx.restore_rngs(backups)
  assert m.rngs.dropout.key[...].shape == ()


def test_split_rngs_shared_stream():
  rngs = nnx.Rngs(0)
  pair = Pair(rngs, rngs)
  with nnx.split_rngs(pair, splits=3, graph=True, graph_updates=True) as backups:
    assert len(backups) == 1 and rngs.default.key.shape == (3,)  # split once
  out = nnx.split_rngs(pair, splits=3, graph=True, graph_updates=False)
  assert out.a is out.b and out.a.default.key.shape == (3,)
  with pytest.raises(
    nnx.SharedReferenceError,
    match=r"(?s)pynnx.split_rngs received .*model\.a\.default\.count\n.*model\.b.*split_rngs\(..., graph=True\)",
  ):
    nnx.split_rngs(pair, splits=3, graph=False)
  assert rngs.default.count[...] == 2  # the tree-mode error came before any draw


def test_split_rngs_squeeze_and_tuple():
  m = Holder(nnx.Rngs(0))
  out = nnx.split_rngs(m, splits=1, squeeze=True, graph=False)
  assert out.rngs.default.key.shape == ()
  assert nnx.split_rngs(m, splits=(2, 3), graph=False).rngs.default.key.shape == (2, 3)
  with pytest.raises(
    nnx.RngError, match=r"squeeze=True is only supported for splits=1, got splits=3"
  ):
    nnx.split_rngs(m, splits=3, squeeze=True)


def test_split_rngs_decorator(graph):
  m = Holder(nnx.Rngs(params=0))

  @nnx.split_rngs(splits=4, graph=graph)
  def shapes(model):
    return model.rngs.params.key[...].shape

  assert shapes(m) == (4,)
  assert m.rngs.params.key[...].shape == () and m.rngs.params.count[...] == 1


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_fork_rngs():
  m = Holder(nnx.Rngs(params=0, dropout=1))
  original = m.rngs.params.key[...]
  with nnx.fork_rngs(m, graph=True, graph_updates=True):
    assert not same(m.rngs.params.key[...], original)
    assert m.rngs.params.count[...] == 0
  assert same(m.rngs.params.key[...], original)
  out = nnx.fork_rngs(m, split={"params": 3}, graph=False)
  assert out.rngs.params.key[...].shape == (3,)
  assert same(out.rngs.dropout.key[...], m.rngs.dropout.key[...])  # not selected: not forked

  @nnx.fork_rngs(split=2)
  def shape(model):
    return model.rngs.params.key[...].shape

  assert shape(m) == (2,)
  with pytest.raises(nnx.RngError, match=r"fork_rngs: split takes an int.*got 'x'"):
    nnx.fork_rngs(m, split="x")


def test_with_rngs(graph):
  m = Holder(nnx.Rngs(params=0, dropout=1, noise=2))
  params_key = m.rngs.params.key[...]
  out = nnx.with_rngs(
    m, split={"dropout": 4}, broadcast={"noise": 2}, fork="params", graph=graph, graph_updates=False
  )
  assert out.rngs.dropout.key[...].shape == (4,)
  assert out.rngs.noise.key[...].shape == (2,)
  assert out.rngs.params.key[...].shape == () and not same(out.rngs.params.key[...], params_key)
  assert same(m.rngs.params.key[...], params_key)
  out = nnx.with_rngs(m, split={"dropout": 2}, only="noise", graph=graph, graph_updates=False)
  assert out.rngs.dropout.key[...].shape == ()  # excluded by only=
  with pytest.raises(nnx.RngError, match=r"model\.rngs\.params matches several rules"):
    nnx.with_rngs(m, split={"params": 2}, fork="params", graph=graph, graph_updates=False)


def test_with_rngs_in_place():
  m = Holder(nnx.Rngs(params=0))
  with nnx.with_rngs(m, split=3, graph=True, graph_updates=True):
    assert m.rngs.params.key.shape == (3,)
  assert m.rngs.params.key.shape == ()


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_reseed():
  m = Holder(nnx.Rngs(params=0, dropout=1))
  m.rngs.params()
  m.rngs.dropout()
  nnx.reseed(m, params=7)
  assert m.rngs.params.count[...] == 0 and m.rngs.dropout.count[...] == 1
  assert same(m.rngs.params(), nnx.Rngs(params=nnx.Rngs(params=7).params()).params())
  split = nnx.split_rngs(m, splits=3, graph=False)
  with pytest.raises(nnx.RngError, match=r"model\.rngs\.dropout has a key of shape \(3,\)"):
    nnx.reseed(split, dropout=2)
  nnx.reseed(split, dropout=2, policy="match_shape")
  assert split.rngs.dropout.key[...].shape == (3,)  # split keys stay split
  nnx.reseed(split, dropout=2, policy=lambda path, key, shape: jax.random.split(key, shape))
  with pytest.raises(nnx.RngError, match=r"policy must be 'scalars_only'.*got 'exact'"):
    nnx.reseed(m, dropout=1, policy="exact")


def test_reseed_reproduces_a_fresh_model():
  model = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=42))
  x = jnp.ones((16,))
  y1 = model(x)
  nnx.reseed(model, dropout=42)
  assert np.array_equal(model(x), y1)


def test_rng_draws_inside_jit_with_module_returned():
  m = Holder(nnx.Rngs(0))

  @jax.jit
  def step(model):
    return model, model.rngs()

  m2, key = step(m)
  assert m2.rngs.default.count[...] == 1
  assert same(key, nnx.Rngs(0)())


def test_graph_none_reads_set_graph_mode():
  m = Holder(nnx.Rngs(params=0))
  with nnx.set_graph_mode(True):
    backups = nnx.split_rngs(m, splits=2)  # graph mode, graph_updates default True: in place
    assert m.rngs.params.key.shape == (2,)
    nnx.restore_rngs(backups)
    with nnx.set_graph_updates(False):
      out = nnx.fork_rngs(m)
      assert out is not m and m.rngs.params.count[...] == 2
  assert isinstance(nnx.split_rngs(m, splits=2, graph=False), Holder)  # tree mode: a copy
  with nnx.split_rngs(m, splits=2):  # graph=None: in place in tree mode too (sanctioned)
    assert m.rngs.params.key.shape == (2,)
  assert m.rngs.params.key.shape == ()


def test_reseed_shared_stream_tree_mode_error():
  rngs = nnx.Rngs(dropout=0)
  both = Pair(rngs, rngs)
  with pytest.raises(nnx.SharedReferenceError, match=r"(?s)pynnx.reseed.*model\.a\.dropout\.count"):
    nnx.reseed(both, dropout=1)
  nnx.reseed(both, dropout=1, graph=True)
  assert same(rngs.dropout(), nnx.Rngs(dropout=nnx.Rngs(dropout=1).dropout()).dropout())


def test_with_rngs_and_fork_rngs_decorators(graph):
  m = Holder(nnx.Rngs(params=0, dropout=1))

  @nnx.with_rngs(split={"dropout": 3}, fork="params", graph=graph)
  def shapes(model):
    return model.rngs.dropout.key.shape, model.rngs.params.count[...].tolist()

  @nnx.fork_rngs(split={"params": 2}, graph=graph)
  def forked(model):
    return model.rngs.params.key.shape, model.rngs.dropout.count[...].tolist()

  assert shapes(m) == ((3,), 0)
  assert forked(m) == ((2,), 1)  # dropout: not forked; one key was drawn by shapes()
  assert m.rngs.dropout.key.shape == () and m.rngs.params.key.shape == ()
  assert m.rngs.params.count[...] == 2 and m.rngs.dropout.count[...] == 1
