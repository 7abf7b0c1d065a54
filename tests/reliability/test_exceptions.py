"""Exceptions in the middle of an operation leave nothing half-done.

A constructor that raises, a user function that raises inside a transform, an Optimizer
update that fails, a BaseException such as KeyboardInterrupt, and an error inside
``with nnx.set_graph_mode(...)``: afterwards the next operation works and values are unchanged.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pynnx as nnx


class Half(nnx.Module):
  def __init__(self, fail, rngs, exc=RuntimeError):
    self.layer = nnx.Linear(2, 2, rngs=rngs)
    if fail:
      raise exc("constructor failed")
    self.tag = 1


class Outer(nnx.Module):
  def __init__(self, fail, rngs):
    self.ok = Half(False, rngs)
    self.bad = Half(fail, rngs)


def assert_frozen(module):
  with pytest.raises(nnx.FrozenModuleError, match="frozen"):
    module.tag = 2


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_constructor_raising_leaves_the_next_construction_normal(exc):
  with pytest.raises(exc, match="constructor failed"):
    Half(True, nnx.Rngs(0), exc)
  with pytest.raises(RuntimeError, match="constructor failed"):
    Outer(True, nnx.Rngs(0))
  # Later Modules are built (attributes can be set in __init__) and frozen when built.
  built = Outer(False, nnx.Rngs(0))
  assert built.bad.tag == 1
  assert_frozen(built.ok)
  assert_frozen(built.bad)
  assert_frozen(Half(False, nnx.Rngs(0)))


def test_constructor_raising_inside_a_parent_constructor_that_catches_it():
  class Tolerant(nnx.Module):
    def __init__(self, rngs):
      try:
        self.child = Half(True, rngs)
      except RuntimeError:
        self.child = Half(False, rngs)
      self.tag = 0

  m = Tolerant(nnx.Rngs(0))
  assert m.child.tag == 1
  assert_frozen(m)
  assert_frozen(m.child)


def test_module_whose_constructor_raised_is_frozen_if_it_escaped():
  escaped = []

  class Leaky(nnx.Module):
    def __init__(self):
      self.tag = 0
      escaped.append(self)
      raise RuntimeError("constructor failed")

  with pytest.raises(RuntimeError, match="constructor failed"):
    Leaky()
  assert_frozen(escaped[0])


def _write_then_raise(m):
  m.kernel[...] = m.kernel[...] + 1.0
  raise ValueError("user error")


TRANSFORMS = {
  "jit": lambda f, g: nnx.jit(f, graph=g),
  "grad": lambda f, g: nnx.grad(f, graph=g),
  "value_and_grad": lambda f, g: nnx.value_and_grad(f, graph=g),
  "vmap": lambda f, g: nnx.vmap(f, in_axes=None, axis_size=2, graph=g),
  "remat": lambda f, g: nnx.remat(f, graph=g),
  "eval_shape": lambda f, g: lambda m: nnx.eval_shape(f, m, graph=g),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_user_function_raising_inside_a_transform(name, graph):
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  before = np.asarray(model.kernel[...])
  with pytest.raises(ValueError, match="user error"):
    TRANSFORMS[name](_write_then_raise, graph)(model)
  np.testing.assert_array_equal(model.kernel[...], before)
  # No trace frame is left behind: eager writes and later transforms work.
  model.kernel[...] = jnp.zeros((2, 2))
  out = nnx.jit(lambda m: m(jnp.ones(2)), graph=graph)(model)
  np.testing.assert_array_equal(out, model.bias[...])
  nnx.jit(lambda m: m.bias.set_value(m.bias[...] + 1.0), graph=graph)(model)
  np.testing.assert_array_equal(model.bias[...], jnp.ones(2))


def test_scan_body_raising(graph):
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  before = np.asarray(model.kernel[...])

  def body(m, x):
    m.kernel[...] = m.kernel[...] * 2.0
    raise ValueError("body failed")

  with pytest.raises(ValueError, match="body failed"):
    nnx.scan(body, graph=graph)(model, jnp.ones((3, 2)))
  np.testing.assert_array_equal(model.kernel[...], before)
  model.kernel[...] = jnp.ones((2, 2))
  assert float(model.kernel[...].sum()) == 4.0


def test_keyboard_interrupt_inside_jit_propagates_and_leaves_state_usable(graph):
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

  def interrupted(m):
    m.bias[...] = m.bias[...] + 1.0
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    nnx.jit(interrupted, graph=graph)(model)
  np.testing.assert_array_equal(model.bias[...], jnp.zeros(2))
  model.bias[...] = jnp.ones(2)
  np.testing.assert_array_equal(model.bias[...], jnp.ones(2))


def _snapshot(model, opt):
  return [np.asarray(x) for x in jax.tree.leaves((nnx.state(model), nnx.state(opt)))]


def test_optimizer_update_with_bad_grads_changes_nothing():
  model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
  opt = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
  opt.update(model, jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param)))
  before = _snapshot(model, opt)
  grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
  grads["layers"][1]["bias"] = jnp.ones(7)  # the last leaf is wrong: nothing may be written
  with pytest.raises(nnx.StateMismatchError, match=r"grads\.layers\[1\]\.bias"):
    opt.update(model, grads)
  after = _snapshot(model, opt)
  assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
  assert int(opt.step[...]) == 1


def test_optimizer_whose_transformation_raises_changes_nothing():
  def failing_update(updates, state, params=None):
    raise RuntimeError("tx failed")

  tx = optax.GradientTransformation(optax.sgd(0.1).init, failing_update)
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  before = _snapshot(model, opt)
  with pytest.raises(RuntimeError, match="tx failed"):
    opt.update(model, nnx.state(model, nnx.Param))
  assert int(opt.step[...]) == 0
  after = _snapshot(model, opt)
  assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_error_inside_set_graph_mode_restores_the_mode():
  with pytest.raises(ValueError, match="inside"):
    with nnx.set_graph_mode(True):
      assert not isinstance(nnx.graphdef(nnx.Linear(1, 1, rngs=nnx.Rngs(0))), nnx.TreeGraphDef)
      raise ValueError("inside")
  assert isinstance(nnx.graphdef(nnx.Linear(1, 1, rngs=nnx.Rngs(0))), nnx.TreeGraphDef)


def test_metric_update_with_bad_values_keeps_totals():
  avg = nnx.metrics.Average()
  avg.update(values=jnp.array([1.0, 3.0]))
  with pytest.raises(nnx.ArgumentTypeError, match=r"values=\.\.\.\) needs numbers"):
    avg.update(values=None)
  assert int(avg.count[...]) == 2
  assert float(avg.compute()) == 2.0


def test_failed_update_writes_nothing(graph):
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  kernel = np.asarray(model.kernel[...])
  with pytest.raises(nnx.StateMismatchError, match=r"model\.ghost is not"):
    nnx.update(model, {"bias": jnp.ones(2), "kernel": jnp.ones((2, 2)), "ghost": 1.0}, graph=graph)
  np.testing.assert_array_equal(model.bias[...], jnp.zeros(2))
  np.testing.assert_array_equal(model.kernel[...], kernel)


def test_multimetric_update_is_all_or_nothing():
  metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())
  good = dict(loss=jnp.ones(3), logits=jnp.ones((3, 2)), labels=jnp.ones(3, jnp.int32))
  metrics.update(**good)
  with pytest.raises(nnx.ShapeError, match=r"do not fit labels of shape \(4,\)"):
    metrics.update(loss=jnp.ones(3), logits=jnp.ones((3, 2)), labels=jnp.ones(4, jnp.int32))
  assert int(metrics.loss.count[...]) == 3
  assert int(metrics.accuracy.count[...]) == 3
  nnx.jit(lambda m: m.update(**good))(metrics)
  assert int(metrics.loss.count[...]) == 6
