"""Modules, Variables and States as plain pytrees for JAX, Equinox, optax and Flax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx


class MLP(nnx.Module):
  def __init__(self, sizes, rngs):
    self.layers = [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=False)]
    self.sizes = tuple(sizes)

  def __call__(self, x):
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    return self.layers[-1](x)


@pytest.fixture
def mlp():
  return MLP([2, 8, 1], nnx.Rngs(0))


def test_vmap_over_stacked_modules(mlp):
  stacked = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), mlp)
  x = jnp.ones((3, 2))
  out = jax.vmap(lambda m: m(x))(stacked)
  assert out.shape == (2, 3, 1)
  np.testing.assert_allclose(out[0], mlp(x), rtol=1e-6)


def test_scan_with_module_carry():
  class Acc(nnx.Module):
    def __init__(self):
      self.total = nnx.BatchStat(jnp.zeros(()))

  def body(acc, x):
    return jax.tree.map(lambda t: t + x, acc), None

  out, _ = jax.lax.scan(body, Acc(), jnp.arange(4.0))
  assert isinstance(out.total, nnx.BatchStat) and out.total[...] == 6.0


def test_eval_shape_builds_abstract_module():
  abstract = jax.eval_shape(lambda: MLP([2, 4, 1], nnx.Rngs(0)))
  assert isinstance(abstract, MLP) and abstract.sizes == (2, 4, 1)
  assert isinstance(abstract.layers[0].kernel[...], jax.ShapeDtypeStruct)
  assert abstract.layers[0].kernel[...].shape == (2, 4)


def test_jit_returns_updated_module(mlp):
  @jax.jit
  def sgd(model, x, y):
    def loss(model):
      return jnp.mean((model(x) - y) ** 2)

    value, grads = jax.value_and_grad(loss)(model)
    return jax.tree.map(lambda p, g: p - 0.1 * g, model, grads), value

  x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
  model, first = sgd(mlp, x, y)
  for _ in range(3):
    model, last = sgd(model, x, y)
  assert type(model) is MLP and last < first
  assert isinstance(model.layers[0].kernel, nnx.Param)


def test_equinox_utilities(mlp):
  eqx = pytest.importorskip("equinox")
  zeros = jnp.zeros((2, 8))
  replaced = eqx.tree_at(lambda m: m.layers[0].kernel, mlp, nnx.Param(zeros))
  assert isinstance(replaced.layers[0].kernel, nnx.Param)
  np.testing.assert_array_equal(replaced.layers[0].kernel[...], zeros)
  assert float(jnp.abs(mlp.layers[0].kernel[...]).sum()) > 0  # the original is untouched
  with pytest.raises(nnx.FrozenModuleError):
    replaced.sizes = ()
  params, static = eqx.partition(mlp, eqx.is_inexact_array)
  back = eqx.combine(params, static)
  assert type(back) is MLP
  np.testing.assert_allclose(back(jnp.ones((1, 2))), mlp(jnp.ones((1, 2))))
  grads = eqx.filter_grad(lambda m, x: jnp.sum(m(x)))(mlp, jnp.ones((1, 2)))
  assert grads.layers[1].bias[...].shape == (1,)


def test_optax_on_state(mlp):
  optax = pytest.importorskip("optax")
  graphdef, params = nnx.split(mlp, nnx.Param)
  tx = optax.sgd(0.05, momentum=0.9)  # (adam trips strict dtype promotion inside optax)
  opt_state = tx.init(params)
  x, y = jnp.ones((4, 2)), jnp.ones((4, 1))

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2))(
      params
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params, opt_state, first = step(params, opt_state)
  for _ in range(10):
    params, opt_state, loss = step(params, opt_state)
  assert loss < first
  nnx.update(mlp, params)
  np.testing.assert_allclose(mlp(x), nnx.merge(graphdef, params)(x))
  assert jnp.mean((mlp(x) - y) ** 2) < first


def test_state_structure_matches_flax():
  flax_nnx = pytest.importorskip("flax.nnx")

  class Ours(nnx.Module):
    def __init__(self):
      self.dense = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      self.stats = nnx.BatchStat(jnp.zeros((3,)))

  class Theirs(flax_nnx.Module):
    def __init__(self):
      self.dense = flax_nnx.Linear(2, 3, rngs=flax_nnx.Rngs(0))
      self.stats = flax_nnx.BatchStat(jnp.zeros((3,)))

  ours = nnx.state(Ours()).flat_state()
  theirs = flax_nnx.state(Theirs()).flat_state()
  assert [tuple(p) for p, _ in ours] == [tuple(p) for p, _ in theirs]
  assert [type(v).__name__ for _, v in ours] == [type(v).__name__ for _, v in theirs]
  assert [v[...].shape for _, v in ours] == [v[...].shape for _, v in theirs]
