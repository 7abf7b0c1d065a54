"""nnx.bridge.ToLinen / to_linen: pynnx Modules inside Linen, checked against flax.nnx.bridge.

The same snippet runs with ``lib`` = ``flax.nnx`` and ``lib`` = ``pynnx``; the Linen variable
dicts (structure, boxes, values) and outputs must agree.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pynnx

fnnx = pytest.importorskip("flax.nnx")
nn = pytest.importorskip("flax.linen")

X = jnp.arange(6.0).reshape(2, 3) / 6
# Flax 0.12.8 deprecates Module.sow outside nnx.capture (pynnx does not); not under test here.
pytestmark = pytest.mark.filterwarnings("ignore:Using 'Module.sow:DeprecationWarning")
RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(2)}


def block_class(lib):
  class Block(lib.Module):
    def __init__(self, din, dout, *, rngs):
      self.lin = lib.Linear(din, dout, rngs=rngs)
      self.bn = lib.BatchNorm(dout, rngs=rngs)
      self.drop = lib.Dropout(0.5, rngs=rngs)

    def __call__(self, x, train=False):
      x = self.bn(self.lin(x), use_running_average=not train)
      self.sow(lib.Intermediate, "h", x)
      return self.drop(x, deterministic=not train)

    def project(self, x):
      return self.lin(x)

  return Block


def top_class(lib):
  block = block_class(lib)

  class Top(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = lib.bridge.to_linen(block, 3, 4)(x, train)
      return nn.Dense(2)(x)

  return Top


def assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)


def test_nested_in_linen_matches_flax():
  def run(lib):
    top = top_class(lib)()
    variables = top.init(RNGS, X)
    y, updates = top.apply(
      variables,
      X,
      train=True,
      rngs={"dropout": jax.random.key(1)},
      mutable=["batch_stats", "intermediates"],
    )
    return variables, y, updates, top.apply(variables, X)

  f, p = run(fnnx), run(pynnx)
  for a, b in zip(f, p):
    assert_same_tree(a, b)
  variables = p[0]
  assert set(variables) == {"params", "batch_stats"}
  assert variables["params"]["ToLinen_0"]["lin"]["kernel"].shape == (3, 4)
  assert p[2]["intermediates"]["ToLinen_0"]["h"][0].shape == (2, 4)


def test_tolinen_class_and_to_linen_kwargs():
  def run(lib):
    a = lib.bridge.ToLinen(lib.Linear, args=(3, 4))
    b = lib.bridge.to_linen(lib.Linear, 3, 4, use_bias=False, name="lin")
    va, vb = a.init(jax.random.key(0), X), b.init(jax.random.key(1), X)
    return va, vb, a.apply(va, X), b.apply(vb, X)

  for a, b in zip(run(fnnx), run(pynnx)):
    assert_same_tree(a, b)


def test_partitioned_and_custom_metadata_boxes():
  def run(lib):
    init = lib.bridge.with_partitioning(lib.initializers.lecun_normal(), ("a", None))
    model = lib.bridge.to_linen(lib.Linear, 3, 4, kernel_init=init)
    with lib.use_eager_sharding(False):
      variables = model.init(jax.random.key(0), X)
      y = model.apply(variables, X)
    return variables, nn.get_partition_spec(variables), y

  (vf, sf, yf), (vp, sp, yp) = run(fnnx), run(pynnx)
  assert type(vp["params"]["kernel"]) is nn.Partitioned
  assert (
    sf == sp == {"params": {"bias": jax.sharding.PartitionSpec(), "kernel": sf["params"]["kernel"]}}
  )
  assert sp["params"]["kernel"] == jax.sharding.PartitionSpec("a", None)
  assert_same_tree(nn.unbox(vf), nn.unbox(vp))
  np.testing.assert_allclose(yf, yp)


def test_variable_metadata_travels_in_nnxmeta():
  class Noted(pynnx.Module):
    def __init__(self, rngs):
      self.w = pynnx.Param(jnp.ones(3), note="keep")

    def __call__(self, x):
      assert self.w.get_metadata()["note"] == "keep"
      return x * self.w[...]

  model = pynnx.bridge.ToLinen(Noted)
  variables = model.init(jax.random.key(0), X)
  box = variables["params"]["w"]
  assert isinstance(box, pynnx.bridge.NNXMeta) and box.metadata["note"] == "keep"
  np.testing.assert_allclose(model.apply(variables, X), X)
  bare = pynnx.bridge.ToLinen(Noted, metadata_fn=None).init(jax.random.key(0), X)
  assert isinstance(bare["params"]["w"], jax.Array)


def test_other_methods_and_skip_rng():
  class NoRng(pynnx.Module):
    def __init__(self, n):
      self.scale = pynnx.Param(jnp.full((n,), 2.0))

    def __call__(self, x):
      return x * self.scale[...]

  model = pynnx.bridge.ToLinen(NoRng, args=(3,), skip_rng=True)
  variables = model.init(jax.random.key(0), X)
  np.testing.assert_allclose(model.apply(variables, X), 2 * X)

  def run(lib):
    model = lib.bridge.to_linen(block_class(lib), 3, 4)
    variables = model.init(RNGS, X)
    return model.apply(variables, X, nnx_method="project")

  np.testing.assert_allclose(run(fnnx), run(pynnx), rtol=1e-6)


def test_linen_training_step_matches_flax():
  def run(lib):
    model = lib.bridge.to_linen(lib.Linear, 3, 1)
    params = model.init(jax.random.key(0), X)["params"]
    tx = optax.sgd(0.1)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
      loss, grads = jax.value_and_grad(lambda p: (model.apply({"params": p}, X) ** 2).mean())(
        params
      )
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(3):
      params, state, loss = step(params, state)
      losses.append(loss)
    return params, losses

  (pf, lf), (pp, lp) = run(fnnx), run(pynnx)
  assert_same_tree(pf, pp)
  np.testing.assert_allclose(lf, lp, rtol=1e-6)


# --- errors -----------------------------------------------------------------------------------


def test_unknown_method_name():
  model = pynnx.bridge.to_linen(pynnx.Linear, 3, 4)
  variables = model.init(jax.random.key(0), X)
  with pytest.raises(pynnx.LinenBridgeError, match=r"Linear has no callable of that name"):
    model.apply(variables, X, nnx_method="nope")


def test_unknown_paths_in_variables_warn():
  model = pynnx.bridge.to_linen(pynnx.Linear, 3, 4)
  variables = model.init(jax.random.key(0), X)
  extra = {"params": {**variables["params"], "stray": jnp.ones(1)}}
  with pytest.warns(
    UserWarning, match=r"paths the pynnx Module does not have \(ignored\): \['stray'\]"
  ):
    model.apply(extra, X)
