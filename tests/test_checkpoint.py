"""pynnx.checkpoint: orbax round trips, sharded restore, and the mismatch/corruption errors."""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import pynnx as nnx

checkpoint = pytest.importorskip("pynnx.checkpoint")
pytest.importorskip("orbax.checkpoint")


def make(width=3, rngs_seed=0):
  rngs = nnx.Rngs(rngs_seed)
  return nnx.Sequential(nnx.Linear(2, width, rngs=rngs), nnx.BatchNorm(width, rngs=rngs))


def test_module_round_trip_into_abstract_model(tmp_path):
  model = make()
  model(jnp.ones((4, 2)))  # non-trivial BatchNorm statistics
  path = checkpoint.save(tmp_path / "ckpt", model)
  abstract = nnx.eval_shape(lambda: make(rngs_seed=1))
  restored = checkpoint.restore(path, abstract)
  assert type(restored) is nnx.Sequential
  for (p1, a), (p2, b) in zip(
    jax.tree_util.tree_flatten_with_path(model)[0],
    jax.tree_util.tree_flatten_with_path(restored)[0],
  ):
    assert p1 == p2 and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  assert restored.layers[1].mean[...].any()


def test_state_pure_dict_and_optimizer_round_trip(tmp_path):
  model = make()
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  with jax.numpy_dtype_promotion("standard"):
    optimizer.update(model, nnx.grad(lambda m: jnp.sum(m(jnp.ones((4, 2)))))(model))
  checkpoint.save(tmp_path / "params", nnx.state(model, nnx.Param))
  checkpoint.save(tmp_path / "opt", nnx.state(optimizer))
  checkpoint.save(tmp_path / "pure", nnx.state(model).to_pure_dict())

  params = checkpoint.restore(tmp_path / "params", nnx.state(make(rngs_seed=5), nnx.Param))
  np.testing.assert_array_equal(params["layers"][0]["kernel"][...], model.layers[0].kernel[...])
  fresh = nnx.Optimizer(make(rngs_seed=5), optax.adam(1e-2), wrt=nnx.Param)
  nnx.update(fresh, checkpoint.restore(tmp_path / "opt", nnx.state(fresh)))
  assert int(fresh.step[...]) == 1
  mu = fresh.opt_state[0].mu.layers[0].kernel[...]
  np.testing.assert_array_equal(mu, optimizer.opt_state[0].mu.layers[0].kernel[...])
  pure = checkpoint.restore(tmp_path / "pure", nnx.state(make()).to_pure_dict())
  np.testing.assert_array_equal(pure["layers"][1]["var"], model.layers[1].var[...])


def test_restore_places_arrays_with_the_abstract_shardings(tmp_path):
  mesh = jax.sharding.Mesh(jax.devices(), ("model",))
  model = nnx.Linear(2, 8, rngs=nnx.Rngs(0))
  path = checkpoint.save(tmp_path / "ckpt", model)
  abstract = nnx.eval_shape(lambda: nnx.Linear(2, 8, rngs=nnx.Rngs(0)))
  abstract_state = nnx.state(abstract)
  sharded = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=NamedSharding(mesh, P(*[None] * (x.ndim - 1), "model"))
    ),
    abstract_state,
  )
  restored = checkpoint.restore(path, sharded)
  kernel = restored["kernel"][...]
  assert kernel.sharding.spec == P(None, "model") and len(kernel.sharding.device_set) == 8
  np.testing.assert_array_equal(kernel, model.kernel[...])


def test_shape_mismatch_names_the_first_path(tmp_path):
  path = checkpoint.save(tmp_path / "ckpt", make(width=3))
  with pytest.raises(
    nnx.StateMismatchError,
    match=r"model\.layers\[0\]\.bias is \(3,\) float32 in the checkpoint but \(4,\)",
  ):
    checkpoint.restore(path, nnx.eval_shape(lambda: make(width=4)))


def test_dtype_mismatch_missing_and_extra_paths(tmp_path):
  path = checkpoint.save(tmp_path / "ckpt", nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
  half = nnx.eval_shape(lambda: nnx.Linear(2, 3, param_dtype=jnp.float16, rngs=nnx.Rngs(0)))
  with pytest.raises(
    nnx.StateMismatchError, match=r"model\.bias is \(3,\) float32 .* \(3,\) float16"
  ):
    checkpoint.restore(path, half)
  bigger = nnx.eval_shape(lambda: make())
  with pytest.raises(
    nnx.StateMismatchError, match=r"model\.layers\[0\]\.bias .* is missing from the checkpoint"
  ):
    checkpoint.restore(path, bigger)
  no_bias = nnx.eval_shape(lambda: nnx.Linear(2, 3, use_bias=False, rngs=nnx.Rngs(0)))
  with pytest.raises(
    nnx.StateMismatchError,
    match=r"the checkpoint holds model\.bias, which the target does not have",
  ):
    checkpoint.restore(path, no_bias)
  with pytest.raises(nnx.StateMismatchError, match=r"state\['kernel'\]|state\.kernel"):
    checkpoint.restore(path, {"kernel": jnp.zeros((2, 2))})


# Reading damaged files makes orbax's async reader leave tensorstore callbacks pending on a
# closed event loop; they fire whenever the reader threads get to them and Python reports
# "Event loop is closed" as an unraisable exception in whatever runs next. That is orbax's
# clean-up, not ours, so the damaged-file read runs in its own interpreter.
_DAMAGED = """
import pathlib, sys
import pynnx as nnx
from pynnx import checkpoint
def make():
  rngs = nnx.Rngs(0)
  return nnx.Sequential(nnx.Linear(2, 3, rngs=rngs), nnx.BatchNorm(3, rngs=rngs))
path = checkpoint.save(pathlib.Path(sys.argv[1]) / "ckpt", make())
for data in path.rglob("*"):
  if data.is_file() and data.parent.name == "d":
    data.write_bytes(b"garbage")
try:
  checkpoint.restore(path, make())
except nnx.StateMismatchError as err:
  print("RAISED", err)
"""


def test_corrupted_or_missing_checkpoint(tmp_path):
  with pytest.raises(nnx.StateMismatchError, match="could not be read.*not a checkpoint folder"):
    checkpoint.restore(tmp_path / "nowhere", make())
  run = subprocess.run(
    [sys.executable, "-c", _DAMAGED, str(tmp_path)], capture_output=True, text=True, timeout=300
  )
  assert run.returncode == 0, run.stderr
  assert re.search(
    "RAISED .*(could not be read .*files are damaged|could not read the checkpoint's arrays)",
    run.stdout,
  ), run.stdout + run.stderr


def test_save_refuses_to_overwrite_without_force(tmp_path):
  model = make()
  path = checkpoint.save(tmp_path / "ckpt", model)
  with pytest.raises(nnx.ConfigError, match="already exists. Pass force=True"):
    checkpoint.save(path, model)
  model.layers[0].bias[...] = jnp.full((3,), 7.0)
  checkpoint.save(path, model, force=True)
  assert checkpoint.restore(path, make()).layers[0].bias[...].tolist() == [7.0] * 3


def test_target_shardings_that_do_not_fit_are_reported(tmp_path):
  mesh = jax.sharding.Mesh(jax.devices(), ("model",))
  path = checkpoint.save(tmp_path / "ckpt", nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
  state = nnx.state(nnx.eval_shape(lambda: nnx.Linear(2, 3, rngs=nnx.Rngs(0))))
  bad = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, P("model"))),
    state,
  )
  with pytest.raises(
    nnx.StateMismatchError,
    match=r"sharding for state\.bias does not fit its shape \(3,\).*PartitionSpec",
  ):
    checkpoint.restore(path, bad)


def test_rng_keys_round_trip_as_keys(tmp_path):
  def build():
    stack = nnx.split_rngs(splits=3)(nnx.vmap(lambda r: nnx.Dropout(0.5, rngs=r)))
    return nnx.Dict(single=nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1)), stack=stack(nnx.Rngs(2)))

  model = build()
  model["single"](jnp.ones(4))  # count = 1
  path = checkpoint.save(tmp_path / "ckpt", model)
  restored = checkpoint.restore(path, nnx.eval_shape(build))
  for name in ("single", "stack"):
    key, want = restored[name].rngs.key[...], model[name].rngs.key[...]
    assert key.dtype == want.dtype and key.shape == want.shape
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(want))
  assert int(restored["single"].rngs.count[...]) == 1
  np.testing.assert_array_equal(restored["single"](jnp.ones(4)), model["single"](jnp.ones(4)))
