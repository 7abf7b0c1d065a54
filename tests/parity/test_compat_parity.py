"""``nnx.compat``: the same graph-mode partials as ``flax.nnx.compat``."""

import functools

import jax
import numpy as np
import pytest

import pynnx

flax_compat = pytest.importorskip("flax.nnx.compat")

# In flax.nnx.compat but not (yet) in pynnx; docs/migrating.md lists them.
NOT_YET = {
  "cached_partial",
  "view",
  "view_info",
  "iter_modules",
  "iter_children",
  "pmap",
  "checkify",
  "get_abstract_model",
}


def partials(module):
  return {
    name: value
    for name, value in vars(module).items()
    if isinstance(value, functools.partial) and not name.startswith("_")
  }


def test_same_names_and_defaults():
  flax_side, ours = partials(flax_compat), partials(pynnx.compat)
  assert set(flax_side) - NOT_YET == set(ours)
  for name, p in ours.items():
    assert p.keywords == flax_side[name].keywords, name
    if name != "backup_keys":  # as in Flax, backup_keys is not a top-level name
      assert p.func is getattr(pynnx, name), name


def test_compat_split_rngs_is_in_place():
  rngs = pynnx.Rngs(0)
  with pynnx.compat.split_rngs(rngs, splits=2):
    assert rngs.default.key.shape == (2,)
  assert rngs.default.key.shape == ()


def test_compat_reseed_and_backup_keys_match_flax():
  def snippet(nnx, compat):
    rngs = nnx.Rngs(params=0, dropout=1)
    backups = compat.backup_keys(rngs)
    compat.reseed(rngs, dropout=3)
    reseeded = jax.random.key_data(rngs.dropout())
    nnx.restore_rngs(backups)
    return reseeded, jax.random.key_data(rngs.dropout.key[...]), rngs.dropout.count[...]

  import flax.nnx

  expected = snippet(flax.nnx, flax_compat)
  got = snippet(pynnx, pynnx.compat)
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a, b)
