"""from_equinox / to_equinox: Equinox models as pynnx Modules, trained by pynnx, given back."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pynnx as nnx

KEY = jax.random.key(0)


def close(a, b, tol=1e-6):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.fixture
def mlp():
  return eqx.nn.MLP(3, 2, 8, 2, key=KEY)


class Encoder(eqx.Module):
  proj: eqx.nn.Linear
  table: jax.Array  # an integer array: not trainable
  scale: float = eqx.field(static=True)

  def __init__(self, key):
    self.proj = eqx.nn.Linear(3, 4, key=key)
    self.table = jnp.arange(4)
    self.scale = 2.0

  def __call__(self, x):
    return self.scale * self.proj(x)

  def encode(self, x, *, shift=0.0):
    return self.proj(x)[self.table] + shift


def test_outputs_and_paths_match_equinox(mlp):
  bridged = nnx.bridge.from_equinox(mlp)
  assert isinstance(bridged, nnx.Module)
  x = jnp.arange(3.0)
  close(bridged(x), mlp(x))
  paths = {path for path, _ in nnx.state(bridged, nnx.Param).flat_state()}
  assert ("layers", 0, "weight") in paths and ("layers", 2, "bias") in paths
  assert len(paths) == 6
  assert isinstance(bridged.layers[1].weight, nnx.Param)
  assert bridged.in_size == 3  # static fields read through
  assert eqx.tree_equal(mlp, nnx.bridge.to_equinox(bridged))


def test_integer_arrays_are_buffers_and_methods_are_forwarded():
  enc = Encoder(KEY)
  bridged = nnx.bridge.from_equinox(enc)
  assert isinstance(bridged.table, nnx.bridge.Buffer)
  assert not isinstance(bridged.table, nnx.Param)
  x = jnp.ones(3)
  close(bridged(x), enc(x))
  close(bridged.encode(x, shift=1.0), enc.encode(x, shift=1.0))
  grads = nnx.grad(lambda m: jnp.sum(m(x)))(bridged)
  assert grads.proj.weight[...].shape == (4, 3)
  assert grads.table is None or not isinstance(grads.table, nnx.Param)


class Net(nnx.Module):
  def __init__(self, encoder, rngs):
    self.encoder = encoder
    self.head = nnx.Linear(2, 1, rngs=rngs)

  def __call__(self, x):
    return self.head(jax.nn.relu(jax.vmap(self.encoder)(x)))


@pytest.mark.parametrize("graph", [False, True], ids=["tree", "graph"])
def test_trains_inside_a_pynnx_module_and_exports(mlp, graph):
  net = Net(nnx.bridge.from_equinox(mlp), nnx.Rngs(0))
  opt = nnx.Optimizer(net, optax.sgd(0.1), wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(1), (16, 3))
  y = jnp.sum(x, axis=-1, keepdims=True)

  @nnx.jit(graph=graph)
  def step(net, opt):
    loss, grads = nnx.value_and_grad(lambda n: jnp.mean((n(x) - y) ** 2), graph=graph)(net)
    opt.update(net, grads)
    return loss

  losses = [float(step(net, opt)) for _ in range(5)]
  assert losses[-1] < losses[0]
  trained = nnx.bridge.to_equinox(net.encoder)
  assert type(trained) is eqx.nn.MLP
  assert not eqx.tree_equal(trained, mlp)
  close(jax.vmap(trained)(x), jax.vmap(net.encoder)(x))


def test_vmap_and_scan(mlp):
  bridged = nnx.bridge.from_equinox(mlp)
  xs = jax.random.normal(jax.random.key(1), (5, 3))
  out = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(bridged, xs)
  close(out, jax.vmap(mlp)(xs))

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
  def run(m, x):
    return m, m(x)

  _, ys = run(bridged, xs)
  close(ys, jax.vmap(mlp)(xs))


def test_vmap_over_stacked_bridged_models():
  @nnx.vmap(in_axes=0)
  def make(key):
    return nnx.bridge.from_equinox(eqx.nn.Linear(3, 2, key=key))

  ensemble = make(jax.random.split(KEY, 4))
  assert ensemble.weight.shape == (4, 2, 3)
  out = nnx.vmap(lambda m, x: m(x), in_axes=(0, None))(ensemble, jnp.ones(3))
  assert out.shape == (4, 2)


class CNN(eqx.Module):
  conv: eqx.nn.Conv2d
  norm: eqx.nn.BatchNorm
  drop: eqx.nn.Dropout

  def __init__(self, key):
    self.conv = eqx.nn.Conv2d(1, 3, 3, key=key)
    self.norm = eqx.nn.BatchNorm(3, axis_name="batch", mode="batch")
    self.drop = eqx.nn.Dropout(0.5)

  def __call__(self, x, state, *, key=None):
    x, state = self.norm(self.conv(x), state)
    return self.drop(x, key=key), state


def batched(bridged, x):
  return nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), axis_name="batch")(bridged, x)


def test_stateful_batchnorm_under_jit():
  model, state = eqx.nn.make_with_state(CNN)(KEY)
  bridged = nnx.bridge.from_equinox(model, state, rngs=nnx.Rngs(dropout=1))
  stats = nnx.state(bridged, nnx.BatchStat).flat_state()
  assert {p for p, _ in stats} >= {("norm", "batch_state_index", 0), ("norm", "batch_counter")}
  x = jax.random.normal(jax.random.key(2), (6, 1, 5, 5))

  bridged.eval()  # inference mode first: compare against Equinox with the initial state
  ref_model = eqx.nn.inference_mode(model)
  expected, _ = jax.vmap(ref_model, (0, None), (0, None), axis_name="batch")(x, state)
  close(nnx.jit(batched)(bridged, x), expected, 1e-5)

  bridged.train()
  before = bridged.norm.batch_state_index[1][...]
  nnx.jit(batched)(bridged, x)
  after = bridged.norm.batch_state_index[1][...]
  assert not np.allclose(before, after)  # running statistics updated in place
  assert int(bridged.norm.batch_counter[...]) == 1
  back, new_state = nnx.bridge.to_equinox(bridged)
  assert isinstance(new_state, eqx.nn.State)
  close(new_state.get(back.norm.batch_state_index)[1], after)
  # The train-mode step through Equinox itself gives the same statistics.
  train_ref = eqx.nn.inference_mode(model, False)
  drop_off = eqx.tree_at(lambda m: m.drop.p, train_ref, 0.0)
  _, ref_state = jax.vmap(drop_off, (0, None), (0, None), axis_name="batch")(x, state)
  close(ref_state.get(model.norm.batch_state_index)[1], after, 1e-5)


def test_dropout_keys_come_from_rngs():
  model, state = eqx.nn.make_with_state(CNN)(KEY)
  bridged = nnx.bridge.from_equinox(model, state, rngs=nnx.Rngs(dropout=3))
  x = jax.random.normal(jax.random.key(2), (2, 1, 5, 5))
  first, second = batched(bridged, x), batched(bridged, x)
  assert not np.allclose(first, second)  # a fresh key per call
  assert bool(jnp.any(first == 0.0))
  bridged.eval()
  assert bool(jnp.all(batched(bridged, x) != 0.0))


def test_spectral_norm_state():
  model, state = eqx.nn.make_with_state(eqx.nn.SpectralNorm)(
    eqx.nn.Linear(4, 4, key=KEY), "weight", key=jax.random.key(1)
  )
  bridged = nnx.bridge.from_equinox(model, state)
  x = jnp.ones(4)
  expected, new_state = model(x, state)
  close(nnx.jit(lambda m, x: m(x))(bridged, x), expected, 1e-5)
  _, got_state = nnx.bridge.to_equinox(bridged)
  assert eqx.tree_equal(got_state, new_state, rtol=1e-5, atol=1e-5)


def test_errors():
  with pytest.raises(nnx.BridgeError, match=r"expects an eqx.Module, got list"):
    nnx.bridge.from_equinox([eqx.nn.Linear(2, 2, key=KEY)])
  model, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="batch")
  with pytest.raises(nnx.BridgeError, match=r"model.ema_first_time_index|model.batch_counter"):
    nnx.bridge.from_equinox(model)
  with pytest.raises(nnx.BridgeError, match=r"state must be the eqx.nn.State.*got dict"):
    nnx.bridge.from_equinox(model, {})
  other, other_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(4, "batch", mode="batch")
  del other
  wrong = eqx.nn.make_with_state(CNN)(KEY)[1]
  with pytest.raises(nnx.BridgeError, match=r"no StateIndex of the model owns"):
    nnx.bridge.from_equinox(model, wrong)
  with pytest.raises(nnx.BridgeError, match=r"to_equinox expects a Module made by"):
    nnx.bridge.to_equinox(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


class HasRngsField(eqx.Module):
  rngs: jax.Array

  def __call__(self, x):
    return x


def test_reserved_field_name():
  with pytest.raises(nnx.BridgeError, match=r"field 'rngs'.*Rename"):
    nnx.bridge.from_equinox(HasRngsField(jnp.zeros(2)))


class ForgetsState(eqx.Module):
  index: eqx.nn.StateIndex

  def __init__(self):
    self.index = eqx.nn.StateIndex(jnp.zeros(()))

  def __call__(self, x, state):
    return x + state.get(self.index)


def test_stateful_method_must_return_state():
  model, state = eqx.nn.make_with_state(ForgetsState)()
  bridged = nnx.bridge.from_equinox(model, state)
  with pytest.raises(nnx.BridgeError, match=r"ForgetsState.__call__ takes `state` but returned"):
    bridged(jnp.ones(()))


# --- the other way round: pynnx Modules through Equinox's filtered transforms -------------


class Small(nnx.Module):
  def __init__(self, rngs):
    self.lin = nnx.Linear(3, 2, rngs=rngs)
    self.steps = nnx.BatchStat(jnp.zeros((), jnp.int32))

  def __call__(self, x):
    return self.lin(x)


def test_pynnx_module_through_equinox_transforms():
  model = Small(nnx.Rngs(0))
  x = jnp.ones((4, 3))
  close(eqx.filter_jit(lambda m, x: m(x))(model, x), model(x))
  grads = eqx.filter_grad(lambda m, x: jnp.sum(m(x)))(model, x)
  assert isinstance(grads.lin.kernel, nnx.Param)
  close(grads.lin.kernel[...], jnp.ones((3, 2)) * 4.0)
  out = eqx.filter_vmap(lambda m, x: m(x), in_axes=(None, 0))(model, x)
  close(out, model(x))
  params, static = eqx.partition(model, eqx.is_inexact_array)
  assert type(eqx.combine(params, static)) is Small
  zeroed = eqx.tree_at(lambda m: m.lin.kernel, model, nnx.Param(jnp.zeros((3, 2))))
  close(zeroed(x), jnp.broadcast_to(model.lin.bias[...], (4, 2)))


def test_bridge_namespace_holds_equinox_and_flax_linen_names():
  """docs/migrating.md ("The Linen bridge"): Flax's Linen names plus the Equinox interop."""
  flax_nnx = pytest.importorskip("flax.nnx")
  assert not hasattr(flax_nnx.bridge, "from_equinox")
  assert hasattr(nnx.bridge, "from_equinox")
  # Flax-internal helpers and submodules pynnx does not provide (listed in migrating.md).
  absent = {"AttrPriority", "Functional", "Scope", "functional", "interop", "module", "wrappers"}
  flax_names = {n for n in dir(flax_nnx.bridge) if not n.startswith("_")}
  assert {n for n in flax_names - absent if not hasattr(nnx.bridge, n)} == set()
  assert {n for n in absent if hasattr(nnx.bridge, n)} == set()  # the list stays true
