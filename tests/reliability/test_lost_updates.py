"""No update is lost: writes through aliases, partial ``nnx.update``, the Optimizer's step,
BatchNorm statistics (train / eval, with and without jit), Dropout's rng counter and ``sow``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pynnx as nnx


def test_write_through_an_alias_reaches_the_model(graph):
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  alias = model.kernel
  alias[...] = jnp.zeros((2, 2))
  np.testing.assert_array_equal(model.kernel[...], jnp.zeros((2, 2)))
  nnx.jit(lambda m: m.kernel.set_value(m.kernel[...] + 1.0), graph=graph)(model)
  np.testing.assert_array_equal(alias[...], jnp.ones((2, 2)))
  assert alias is model.kernel
  alias.value = jnp.full((2, 2), 3.0)
  np.testing.assert_array_equal(nnx.state(model, graph=graph)["kernel"][...], alias[...])


def test_partial_update_writes_only_the_given_paths(graph):
  model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Linear(2, 2, rngs=nnx.Rngs(1)))
  kernels = [np.asarray(layer.kernel[...]) for layer in model.layers]
  biases = nnx.state(model, nnx.PathContains("bias"), graph=graph)
  nnx.update(model, jax.tree.map(lambda x: x + 5.0, biases), graph=graph)
  for layer, kernel in zip(model.layers, kernels, strict=True):
    np.testing.assert_array_equal(layer.bias[...], jnp.full((2,), 5.0))
    np.testing.assert_array_equal(layer.kernel[...], kernel)
  # Several partial States in one call are all applied.
  nnx.update(
    model,
    {"layers": {0: {"bias": jnp.ones(2)}}},
    {"layers": {1: {"bias": jnp.full((2,), 2.0)}}},
    graph=graph,
  )
  np.testing.assert_array_equal(model.layers[0].bias[...], jnp.ones(2))
  np.testing.assert_array_equal(model.layers[1].bias[...], jnp.full((2,), 2.0))


def _loss(m):
  return jnp.sum(m(jnp.ones((1, 2))) ** 2)


def test_optimizer_step_counts_every_update(graph):
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param, graph=graph)

  @nnx.jit(graph=graph)
  def train_step(m, o):
    o.update(m, nnx.grad(_loss, graph=graph)(m))

  for _ in range(4):
    train_step(model, opt)
  for _ in range(3):
    opt.update(model, nnx.grad(_loss, graph=graph)(model))
  assert int(opt.step[...]) == 7


def _momentum(old, batch, rate=0.5):
  return rate * old + (1 - rate) * batch


def test_batchnorm_statistics_train_and_eval(graph):
  x = jnp.arange(12.0).reshape(4, 3)
  batch_mean = np.asarray(x.mean(0))
  bn = nnx.BatchNorm(3, momentum=0.5, rngs=nnx.Rngs(0))
  expected = np.zeros(3)
  bn(x)
  expected = _momentum(expected, batch_mean)
  np.testing.assert_allclose(bn.mean[...], expected, rtol=1e-6)
  forward = nnx.jit(lambda b, x: b(x), graph=graph)
  forward(bn, x)
  expected = _momentum(expected, batch_mean)
  np.testing.assert_allclose(bn.mean[...], expected, rtol=1e-6)
  bn.eval()
  bn(x)
  forward(bn, x)
  np.testing.assert_allclose(bn.mean[...], expected, rtol=1e-6)
  bn.train()
  forward(bn, x)
  expected = _momentum(expected, batch_mean)
  np.testing.assert_allclose(bn.mean[...], expected, rtol=1e-6)


def test_batchnorm_statistics_through_a_train_view(graph):
  bn = nnx.BatchNorm(3, momentum=0.5, use_running_average=True, rngs=nnx.Rngs(0))
  x = jnp.ones((2, 3))
  train = nnx.view(bn, use_running_average=False, graph=graph)
  nnx.jit(lambda b, x: b(x), graph=graph)(train, x)
  # The view shares the Variables: the statistics land in the original.
  np.testing.assert_allclose(bn.mean[...], jnp.full((3,), 0.5))


def test_dropout_counter_advances_eagerly_and_under_jit(graph):
  drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
  jitted = nnx.jit(lambda d, x: d(x), graph=graph)
  masks = []
  for i in range(4):
    out = drop(jnp.ones(64)) if i % 2 == 0 else jitted(drop, jnp.ones(64))
    masks.append(np.asarray(out))
  assert int(drop.rngs.count[...]) == 4
  assert len({m.tobytes() for m in masks}) == 4, "two calls reused a dropout key"


def test_sown_values_are_kept(graph):
  class Probe(nnx.Module):
    def __call__(self, x):
      self.sow(nnx.Intermediate, "h", x)
      return x * 2

  probe = Probe()
  probe(jnp.ones(2))
  probe(jnp.full((2,), 3.0))
  values = probe.h[...]
  assert len(values) == 2
  np.testing.assert_array_equal(values[1], jnp.full((2,), 3.0))
  popped = nnx.pop(probe, nnx.Intermediate, graph=graph)
  assert len(popped["h"][...]) == 2
  assert not hasattr(probe, "h")
  if graph:  # sowing a new Variable inside a transform is a graph-mode feature
    nnx.jit(lambda p, x: p(x), graph=True)(probe, jnp.ones(2))
    assert len(probe.h[...]) == 1
