"""Differential tests following Flax NNX's checkpointing, sharding and performance guides.

Each program is written for this suite and demonstrates what the guide teaches; it runs on
``flax.nnx`` and on ``pynnx`` and the results are compared (shardings as partition specs and
mesh axis names).
"""

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tests.parity.test_user_snippets import paths, pure, run_both, same, x_

GUIDES = {}


def guide(fn):
  GUIDES[fn.__name__] = fn
  return fn


def _mesh():
  # A plain Mesh (automatic axes), as the guide builds it.
  return jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))


def _spec(a):
  """A leaf's sharding as comparable data (``None`` for single-device arrays)."""
  s = getattr(a, "sharding", None)
  if isinstance(s, NamedSharding):
    return (tuple(s.mesh.axis_names), tuple(s.spec))
  return None


def _dot_relu_dot(nnx):
  class DotReluDot(nnx.Module):
    def __init__(self, depth, rngs):
      init = nnx.initializers.lecun_normal()
      self.dot1 = nnx.Linear(
        depth,
        depth,
        kernel_init=nnx.with_partitioning(init, (None, "model")),
        use_bias=False,
        rngs=rngs,
      )
      self.w2 = nnx.Param(init(rngs.params(), (depth, depth)), sharding_names=("model", None))

    def __call__(self, x):
      y = nnx.relu(self.dot1(x))
      y = jax.lax.with_sharding_constraint(y, P("data", "model"))
      return y @ self.w2[...]

  return DotReluDot


# --- sharding guide ----------------------------------------------------------------------------


@guide
def sharded_init_with_jit(nnx):
  DotReluDot = _dot_relu_dot(nnx)
  mesh = _mesh()

  @nnx.jit
  def create_sharded_model():
    model = DotReluDot(8, rngs=nnx.Rngs(0))
    state = nnx.state(model)
    pspecs = nnx.get_partition_spec(state)
    nnx.update(model, jax.lax.with_sharding_constraint(state, pspecs))
    return model

  with jax.set_mesh(mesh):
    model = create_sharded_model()
    x = jax.device_put(x_((4, 8)), NamedSharding(mesh, P("data", None)))
    y = nnx.jit(lambda m, x: m(x))(model, x)
  state = nnx.state(model)
  return [
    y,
    _spec(y),
    pure(nnx, state),
    jax.tree.map(_spec, nnx.to_pure_dict(state)),
    jax.tree.map(lambda p: tuple(p), nnx.to_pure_dict(nnx.get_partition_spec(state))),
    model.dot1.kernel.get_metadata().get("sharding_names"),
  ]


@guide
def named_sharding_and_device_put(nnx):
  DotReluDot = _dot_relu_dot(nnx)
  mesh = _mesh()
  with jax.set_mesh(mesh):
    abstract = nnx.eval_shape(lambda: DotReluDot(8, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    shardings = nnx.get_named_sharding(abs_state, mesh)
    model = DotReluDot(8, rngs=nnx.Rngs(0))
  state = jax.device_put(nnx.state(model), shardings)
  return [
    jax.tree.map(lambda s: (tuple(s.mesh.axis_names), tuple(s.spec)), nnx.to_pure_dict(shardings)),
    jax.tree.map(_spec, nnx.to_pure_dict(state)),
    jax.tree.map(_spec, nnx.to_pure_dict(nnx.state(model))),
    pure(nnx, state),
  ]


@guide
def sharded_optimizer_state(nnx):
  DotReluDot = _dot_relu_dot(nnx)
  with jax.set_mesh(_mesh()):
    model = DotReluDot(8, rngs=nnx.Rngs(1))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x):
      grads = nnx.grad(lambda m: (m(x) ** 2).mean())(model)
      optimizer.update(model, grads)

    step(model, optimizer, x_((4, 8)))
  opt = nnx.to_pure_dict(nnx.state(optimizer, nnx.OptState))
  return [
    paths(nnx, nnx.state(optimizer)),
    jax.tree.map(_spec, opt),
    pure(nnx, nnx.state(model)),
    jax.tree.map(_spec, nnx.to_pure_dict(nnx.state(model))),
  ]


@guide
def logical_axis_rules(nnx):
  mesh = _mesh()
  rules = (("batch", "data"), ("hidden", "model"))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    layer = nnx.Linear(
      4,
      8,
      kernel_init=nnx.with_partitioning(nnx.initializers.ones, (None, "hidden")),
      rngs=nnx.Rngs(0),
    )
  return [_spec(layer.kernel[...]), layer.kernel.get_metadata().get("sharding_names")]


# --- checkpointing guide -----------------------------------------------------------------------


def _two_layers(nnx):
  class TwoLayers(nnx.Module):
    def __init__(self, dim, rngs):
      self.linear1 = nnx.Linear(dim, dim, rngs=rngs)
      self.bn = nnx.BatchNorm(dim, rngs=rngs)
      self.linear2 = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x):
      return self.linear2(self.bn(self.linear1(x)))

  return TwoLayers


def _checkpoint_roundtrip(nnx, tmp_path):
  TwoLayers = _two_layers(nnx)
  model = TwoLayers(4, rngs=nnx.Rngs(0))
  model(x_((3, 4)))  # move the batch statistics
  _, state = nnx.split(model)
  ckpt = ocp.StandardCheckpointer()
  path = tmp_path / nnx.__name__.replace(".", "_")
  ckpt.save(path / "state", state)
  ckpt.wait_until_finished()
  abstract = nnx.eval_shape(lambda: TwoLayers(4, rngs=nnx.Rngs(1)))
  graphdef, abs_state = nnx.split(abstract)
  restored = ckpt.restore(path / "state", abs_state)
  back = nnx.merge(graphdef, restored)
  # The pure-dict variant: no Variable types in the checkpoint.
  ckpt.save(path / "pure", nnx.to_pure_dict(state))
  ckpt.wait_until_finished()
  pure_back = ckpt.restore(path / "pure")
  graphdef2, abs_state2 = nnx.split(nnx.eval_shape(lambda: TwoLayers(4, rngs=nnx.Rngs(2))))
  nnx.replace_by_pure_dict(abs_state2, pure_back)
  back2 = nnx.merge(graphdef2, abs_state2)
  # Sharded restore: abstract leaves carry the target sharding.
  mesh = _mesh()
  target = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P())),
    abs_state,
  )
  sharded = ckpt.restore(path / "state", target)
  ckpt.close()
  x = x_((2, 4), 1)
  back.eval()
  back2.eval()
  model.eval()
  return [
    paths(nnx, restored),
    pure(nnx, restored),
    back(x),
    back2(x),
    model(x),
    jax.tree.map(_spec, nnx.to_pure_dict(sharded)),
  ]


def test_checkpointing_guide(tmp_path):
  f_out, p_out = run_both(lambda nnx: _checkpoint_roundtrip(nnx, tmp_path))
  same(f_out, p_out)


# --- performance guide -------------------------------------------------------------------------


def _perf_setup(nnx):
  model = nnx.Sequential(
    nnx.Linear(3, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 1, rngs=nnx.Rngs(1))
  )
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  metrics = nnx.metrics.Average()
  return model, optimizer, metrics


def _loss(model, x, y):
  return ((model(x) - y) ** 2).mean()


@guide
def functional_training_loop(nnx):
  model, optimizer, metrics = _perf_setup(nnx)
  graphdef, state = nnx.split((model, optimizer, metrics))

  @jax.jit
  def jax_train_step(graphdef, state, x, y):
    model, optimizer, metrics = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(_loss)(model, x, y)
    optimizer.update(model, grads)
    metrics.update(values=loss)
    return loss, nnx.state((model, optimizer, metrics))

  losses = []
  for i in range(3):
    loss, state = jax_train_step(graphdef, state, x_((8, 3), i), x_((8, 1), 10 + i))
    losses.append(loss)
  nnx.update((model, optimizer, metrics), state)
  return [losses, metrics.compute(), pure(nnx, nnx.state(model)), optimizer.step[...]]


@guide
def cached_partial_training_loop(nnx):
  model, optimizer, metrics = _perf_setup(nnx)

  @nnx.jit
  def train_step(model, optimizer, metrics, x, y):
    loss, grads = nnx.value_and_grad(_loss)(model, x, y)
    optimizer.update(model, grads)
    metrics.update(values=loss)
    return loss

  cached = nnx.cached_partial(train_step, model, optimizer, metrics)
  losses = [cached(x_((8, 3), i), x_((8, 1), 10 + i)) for i in range(3)]
  return [losses, metrics.compute(), pure(nnx, nnx.state(model)), optimizer.step[...]]


@guide
def tree_mode_jit_and_grad(nnx):
  model, optimizer, _ = _perf_setup(nnx)

  @nnx.jit(graph=False)
  def train_step(model, optimizer, x, y):
    grads = nnx.grad(_loss, graph=False)(model, x, y)
    optimizer.update(model, nnx.state(grads, nnx.Param))
    return _loss(model, x, y)

  losses = [train_step(model, optimizer, x_((8, 3), i), x_((8, 1), 10 + i)) for i in range(3)]
  return [losses, pure(nnx, nnx.state(model)), optimizer.step[...]]


# --- the test --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_guide(name):
  f_out, p_out = run_both(GUIDES[name])
  same(f_out, p_out)


def test_mesh_is_eight_devices():
  assert len(np.asarray(_mesh().devices).ravel()) == 8
