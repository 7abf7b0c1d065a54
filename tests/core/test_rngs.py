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
  with pytest.raises(nnx.RngError, match=r"Rngs has no stream 'dropout'.*\['params'\]"):
    rngs.dropout()
  with pytest.raises(nnx.RngError, match="no stream 'default'"):
    rngs()


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


def test_stream_fork():
  rngs = nnx.Rngs(params=0)
  forked = rngs.params.fork()
  assert isinstance(forked, nnx.RngStream) and forked.tag == "params"
  assert rngs.params.count[...] == 1 and forked.count[...] == 0
  split = rngs.params.fork(split=4)
  assert split.key[...].shape == (4,)
  assert split().shape == (4,)  # one key per split


def test_rngs_fork():
  rngs = nnx.Rngs(params=0, dropout=1)
  forked = rngs.fork()
  assert isinstance(forked, nnx.Rngs) and list(forked) == ["params", "dropout"]
  assert not same(forked.params(), nnx.Rngs(params=0).params())
  assert rngs.fork(split=3).params.key[...].shape == (3,)
  mixed = rngs.fork(split={"params": 2, ...: 5})
  assert mixed.params.key[...].shape == (2,) and mixed.dropout.key[...].shape == (5,)
  with pytest.raises(nnx.RngError, match="split must be an int"):
    rngs.fork(split="x")


def test_rngs_are_pytrees():
  rngs = nnx.Rngs(params=0)
  leaves = jax.tree.leaves(rngs)
  assert len(leaves) == 2
  _, state = nnx.split(rngs)
  assert isinstance(state.params.key, nnx.RngKey) and isinstance(state.params.count, nnx.RngCount)
  assert state.params.key.tag == "params"
  _, keys, counts = nnx.split(rngs, nnx.RngKey, nnx.RngCount)
  assert list(keys.params) == ["key"] and list(counts.params) == ["count"]


def test_split_rngs_as_call_context_and_restore():
  m = Holder(nnx.Rngs(params=0, dropout=1))
  with nnx.split_rngs(m, splits=5):
    assert m.rngs.params.key[...].shape == (5,)
    assert m.rngs.dropout.key[...].shape == (5,)
    assert m.rngs.params.count[...].shape == (5,)
  assert m.rngs.params.key[...].shape == ()
  assert m.rngs.params.count[...] == 1  # the split consumed one draw
  handle = nnx.split_rngs(m, splits=2, only="dropout")
  assert m.rngs.params.key[...].shape == () and m.rngs.dropout.key[...].shape == (2,)
  handle.restore()
  assert m.rngs.dropout.key[...].shape == ()


def test_split_rngs_squeeze_and_tuple():
  m = Holder(nnx.Rngs(0))
  with nnx.split_rngs(m, splits=1, squeeze=True):
    assert m.rngs.default.key[...].shape == ()
  with nnx.split_rngs(m, splits=(2, 3)):
    assert m.rngs.default.key[...].shape == (2, 3)


def test_split_rngs_decorator():
  m = Holder(nnx.Rngs(params=0))

  @nnx.split_rngs(splits=4)
  def shapes(model):
    return model.rngs.params.key[...].shape

  assert shapes(m) == (4,)
  assert m.rngs.params.key[...].shape == ()


def test_fork_rngs():
  m = Holder(nnx.Rngs(params=0))
  original = m.rngs.params.key[...]
  with nnx.fork_rngs(m):
    assert not same(m.rngs.params.key[...], original)
    assert m.rngs.params.count[...] == 0
  assert same(m.rngs.params.key[...], original)
  with nnx.fork_rngs(m, split={"params": 3}):
    assert m.rngs.params.key[...].shape == (3,)

  @nnx.fork_rngs(split=2)
  def shape(model):
    return model.rngs.params.key[...].shape

  assert shape(m) == (2,)


def test_with_rngs():
  m = Holder(nnx.Rngs(params=0, dropout=1))
  params_key = m.rngs.params.key[...]
  with nnx.with_rngs(m, split={"dropout": 4}, fork="params"):
    assert m.rngs.dropout.key[...].shape == (4,)
    assert m.rngs.params.key[...].shape == ()
    assert not same(m.rngs.params.key[...], params_key)
  assert same(m.rngs.params.key[...], params_key)
  with nnx.with_rngs(m, split={"dropout": 2}):
    assert same(m.rngs.params.key[...], params_key)  # neither split nor forked


def test_reseed():
  m = Holder(nnx.Rngs(params=0, dropout=1))
  m.rngs.params()
  m.rngs.dropout()
  nnx.reseed(m, params=7)
  assert m.rngs.params.count[...] == 0 and m.rngs.dropout.count[...] == 1
  assert same(m.rngs.params(), nnx.Rngs(params=7).params())
  with nnx.split_rngs(m, splits=3):
    nnx.reseed(m, dropout=2)
    assert m.rngs.dropout.key[...].shape == (3,)  # split keys stay split


def test_rng_draws_inside_jit_with_module_returned():
  m = Holder(nnx.Rngs(0))

  @jax.jit
  def step(model):
    return model, model.rngs()

  m2, key = step(m)
  assert m2.rngs.default.count[...] == 1
  assert same(key, nnx.Rngs(0)())
