"""Differential tests: complete user programs around small jitted steps, control flow,
checkpointing and sharding (an RL-style agent, resumable training with orbax, a
data-parallel ``shard_map`` step, sharded initialization under logical axis rules), on
``flax.nnx`` and ``pynnx`` (helpers in
``test_user_snippets.py``)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from test_user_snippets import paths, pure, run_both, same, x_

PROGRAMS = {}


def program(fn):
  PROGRAMS[fn.__name__] = fn
  return fn


# --- an RL-style agent: many tiny jitted calls --------------------------------------------


def _qnet(nnx):
  class QNet(nnx.Module):
    def __init__(self, obs, actions, *, rngs):
      self.l1 = nnx.Linear(obs, 8, rngs=rngs)
      self.l2 = nnx.Linear(8, actions, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.relu(self.l1(x)))

  return QNet


def _env_step(state, action):
  # a toy deterministic environment: the state drifts by the action, reward for staying small
  new = state * 0.9 + (action.astype(jnp.float32)[:, None] - 0.5)
  return new, -jnp.abs(new).sum(-1)


@program
def dqn_agent_small_jitted_steps(nnx):
  QNet = _qnet(nnx)
  rngs = nnx.Rngs(0, explore=1)
  q = QNet(2, 2, rngs=rngs)
  # arrays=True: `step` donates q's buffers, which a plain clone would share (docs/migrating.md)
  target = nnx.clone(q, arrays=True)
  optimizer = nnx.Optimizer(q, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def act(q, rngs, obs, eps):
    greedy = q(obs).argmax(-1)
    random = rngs.explore.randint(greedy.shape, 0, 2)
    explore = rngs.explore.uniform(greedy.shape) < eps
    return jnp.where(explore, random, greedy)

  def train_step(q, target, optimizer, obs, action, reward, next_obs):
    def loss_fn(q):
      q_sa = jnp.take_along_axis(q(obs), action[:, None], axis=-1)[:, 0]
      y = reward + 0.9 * target(next_obs).max(-1)
      return jnp.mean((q_sa - jax.lax.stop_gradient(y)) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(q)
    optimizer.update(q, grads)
    return loss

  step = nnx.jit(train_step, donate_argnums=(0, 2))

  @nnx.jit
  def soft_update(q, target, tau):
    new = jax.tree.map(lambda t, s: (1 - tau) * t + tau * s, nnx.state(target), nnx.state(q))
    nnx.update(target, new)

  obs = x_((4, 2), seed=11)
  losses, actions = [], []
  for t in range(4):
    action = act(q, rngs, obs, 0.5)
    next_obs, reward = _env_step(obs, action)
    losses.append(step(q, target, optimizer, obs, action, reward, next_obs))
    if t % 2 == 1:
      soft_update(q, target, 0.5)
    actions.append(action)
    obs = next_obs
  return [
    losses,
    actions,
    rngs.explore.count[...],
    optimizer.step[...],
    pure(nnx, target),
    pure(nnx, q),
  ]


@program
def cached_partial_and_fori_loop_rollout(nnx):
  QNet = _qnet(nnx)
  q = QNet(2, 2, rngs=nnx.Rngs(3))
  optimizer = nnx.Optimizer(q, optax.sgd(0.05), wrt=nnx.Param)

  def train_step(q, optimizer, obs, ret):
    def loss_fn(q):
      return jnp.mean((q(obs).max(-1) - ret) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(q)
    optimizer.update(q, grads)
    return loss

  cached_step = nnx.cached_partial(nnx.jit(train_step), q, optimizer)

  @nnx.jit
  def rollout(q, obs):
    def body(i, carry):
      q, obs, total = carry
      action = q(obs).argmax(-1)
      obs, reward = _env_step(obs, action)
      return q, obs, total + reward

    _, obs, total = nnx.fori_loop(0, 5, body, (q, obs, jnp.zeros(obs.shape[0])))
    return obs, total

  @nnx.jit
  def run_until(q, obs, limit):
    def cond(carry):
      _, obs, n = carry
      return (jnp.abs(obs).max() > limit) & (n < 10)

    def body(carry):
      q, obs, n = carry
      obs, _ = _env_step(obs, q(obs).argmax(-1))
      return q, obs, n + 1

    return nnx.while_loop(cond, body, (q, obs, jnp.array(0)))[2]

  obs = x_((3, 2), seed=12)
  out = []
  for _ in range(3):
    final_obs, ret = rollout(q, obs)
    out.append(cached_step(obs, ret))
  out.append(run_until(q, obs, 0.5))
  return [out, pure(nnx, q), optimizer.step[...]]


@program
def stateful_counter_module_through_loops(nnx):
  class Tracker(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(2, 2, rngs=rngs)
      self.steps = nnx.Variable(jnp.array(0))
      self.total = nnx.BatchStat(jnp.zeros(2))

    def __call__(self, x):
      self.steps[...] += 1
      y = self.linear(x)
      self.total[...] += y.sum(0)
      return y

  model = Tracker(nnx.Rngs(4))

  @nnx.jit
  def loop(model, x):
    def body(i, carry):
      model, x = carry
      return model, model(x)

    return nnx.fori_loop(0, 3, body, (model, x))[1]

  y = loop(model, x_((2, 2), seed=13))

  def cond_fn(model, x):
    return nnx.cond(x.sum() > 0, lambda m, x: m(x), lambda m, x: -x, model, x)

  z = nnx.jit(cond_fn)(model, y)
  return [y, z, model.steps[...], model.total[...]]


# --- resumable training with orbax --------------------------------------------------------


def _mlp_bn(nnx):
  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(3, 8, rngs=rngs)
      self.bn = nnx.BatchNorm(8, rngs=rngs)
      self.drop = nnx.Dropout(0.25, rngs=rngs)
      self.l2 = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
      return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))

  return MLP


def checkpoint_resume(nnx, ckpt_dir):
  MLP = _mlp_bn(nnx)
  x, y = x_((8, 3), seed=14), x_((8, 1), seed=15)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  model = MLP(nnx.Rngs(0, dropout=1))
  optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
  first = [train_step(model, optimizer, x, y) for _ in range(2)]

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(ckpt_dir / "model", nnx.state(model))
  checkpointer.save(ckpt_dir / "opt", nnx.state(optimizer, nnx.OptState))
  checkpointer.wait_until_finished()
  uninterrupted = [train_step(model, optimizer, x, y) for _ in range(2)]

  # a fresh process: build abstract objects, restore into them, continue
  abstract_model = nnx.eval_shape(lambda: MLP(nnx.Rngs(0, dropout=1)))
  graphdef, abstract_state = nnx.split(abstract_model)
  restored = checkpointer.restore(ckpt_dir / "model", abstract_state)
  model2 = nnx.merge(graphdef, restored)
  optimizer2 = nnx.Optimizer(model2, optax.adamw(1e-2), wrt=nnx.Param)
  abstract_opt = nnx.state(optimizer2, nnx.OptState)
  abstract_opt = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_opt)
  nnx.update(optimizer2, checkpointer.restore(ckpt_dir / "opt", abstract_opt))
  resumed = [train_step(model2, optimizer2, x, y) for _ in range(2)]
  checkpointer.close()
  return [
    first,
    uninterrupted,
    resumed,
    optimizer2.step[...],
    paths(nnx, abstract_state),
    pure(nnx, model2),
    jax.tree.map(lambda a: (a.shape, str(a.dtype)), nnx.to_pure_dict(abstract_state)),
  ]


def _sharded_bn_model(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(
        4,
        8,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model")),
        rngs=rngs,
      )
      self.bn = nnx.BatchNorm(8, rngs=rngs)

    def __call__(self, x):
      return self.bn(self.l(x))

  return M


def checkpoint_manager_sharded_restore(nnx, ckpt_dir):
  M = _sharded_bn_model(nnx)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
  with jax.set_mesh(mesh):
    model = M(nnx.Rngs(0))
  model(x_((2, 4)))
  d = ckpt_dir / "ckpt"
  mngr = ocp.CheckpointManager(d, options=ocp.CheckpointManagerOptions(max_to_keep=2))
  for step in range(3):
    mngr.save(step, args=ocp.args.StandardSave(nnx.state(model)))
  mngr.wait_until_finished()
  gd, abs_state = nnx.get_abstract_model(lambda: M(nnx.Rngs(1)), mesh)
  restored = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore(abs_state))
  m2 = nnx.merge(gd, restored)
  mngr.close()
  return [
    sorted(mngr.all_steps()),
    pure(nnx, m2),
    tuple(m2.l.kernel[...].sharding.spec),
    jax.tree.map(lambda a: tuple(a.sharding.spec), nnx.to_pure_dict(abs_state)),
  ]


def pure_dict_checkpoint_with_optimizer(nnx, ckpt_dir):
  M = _sharded_bn_model(nnx)
  with nnx.use_eager_sharding(False):
    model = M(nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  x = x_((4, 4))

  @nnx.jit
  def step(model, opt):
    loss, g = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
    opt.update(model, g)
    return loss

  step(model, opt)
  d = ckpt_dir
  ckptr = ocp.PyTreeCheckpointer()
  ckptr.save(
    d / "all",
    {"model": nnx.to_pure_dict(nnx.state(model)), "opt": nnx.to_pure_dict(nnx.state(opt))},
  )
  with warnings.catch_warnings():  # orbax: "Sharding info not provided when restoring"
    warnings.simplefilter("ignore", UserWarning)
    raw = ckptr.restore(d / "all")
  with nnx.use_eager_sharding(False):
    model2 = M(nnx.Rngs(5))
  opt2 = nnx.Optimizer(model2, optax.adam(1e-2), wrt=nnx.Param)
  st = nnx.state(model2)
  nnx.replace_by_pure_dict(st, raw["model"])
  nnx.update(model2, st)
  ost = nnx.state(opt2)
  nnx.replace_by_pure_dict(ost, raw["opt"])
  nnx.update(opt2, ost)
  return [step(model, opt), step(model2, opt2), pure(nnx, model2), opt2.step[...]]


# --- data-parallel training with shard_map and a sharded model ----------------------------


@program
def data_parallel_shard_map(nnx):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))

  class Model(nnx.Module):
    def __init__(self, rngs):
      init = nnx.initializers.lecun_normal()
      self.l1 = nnx.Linear(
        4, 4, kernel_init=nnx.with_partitioning(init, (None, "model")), rngs=rngs
      )
      self.l2 = nnx.Linear(4, 1, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.tanh(self.l1(x)))

  with jax.set_mesh(mesh):
    model = Model(nnx.Rngs(0))
  x = jax.device_put(x_((8, 4), seed=16), NamedSharding(mesh, P("data")))
  y = jax.device_put(x_((8, 1), seed=17), NamedSharding(mesh, P("data")))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    state = nnx.state(model)

    @nnx.shard_map(mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=(P(), P()))
    def grads_per_shard(state, x, y):
      def loss_fn(state):
        model = nnx.merge(graphdef, state)
        return jnp.mean((model(x) - y) ** 2)

      loss, grads = jax.value_and_grad(loss_fn)(state)
      return jax.lax.pmean(loss, "data"), jax.lax.pmean(grads, "data")

    graphdef = nnx.graphdef(model)
    loss, grads = grads_per_shard(state, x, y)
    optimizer.update(model, grads)
    return loss

  losses = [step(model, optimizer, x, y) for _ in range(3)]
  spec = nnx.get_partition_spec(nnx.state(model))
  shardings = nnx.get_named_sharding(nnx.state(model), mesh)
  return [
    losses,
    pure(nnx, model),
    tuple(spec["l1"]["kernel"].value),
    tuple(shardings["l1"]["kernel"].value.spec),
    tuple(model.l1.kernel[...].sharding.spec),
  ]


# --- sharded initialization with logical axis rules -------------------------------------


def _mesh_2x4():
  return jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))


def _feed_forward(nnx):
  class FF(nnx.Module):
    def __init__(self, rngs):
      init = nnx.initializers.lecun_normal()
      self.up = nnx.Linear(
        8, 16, kernel_init=nnx.with_partitioning(init, ("embed", "mlp")), use_bias=False, rngs=rngs
      )
      self.down = nnx.Linear(
        16, 8, kernel_init=nnx.with_partitioning(init, ("mlp", "embed")), use_bias=False, rngs=rngs
      )
      self.scale = nnx.Param(jnp.ones((8,)), sharding_names=("embed",))

    def __call__(self, x):
      return self.down(nnx.relu(self.up(x))) * self.scale[...]

  return FF


def _spec_of(a):
  return tuple(a.sharding.spec) if isinstance(a.sharding, NamedSharding) else None


@program
def abstract_init_with_out_shardings(nnx):
  FF = _feed_forward(nnx)
  mesh = _mesh_2x4()
  rules = (("embed", None), ("mlp", "model"))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    abstract = nnx.eval_shape(lambda: FF(nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    specs = nnx.get_partition_spec(abs_state)
    shardings = nnx.get_named_sharding(abs_state, mesh)

    @jax.jit
    def init():
      return nnx.state(FF(nnx.Rngs(0)))

    state = jax.jit(init, out_shardings=shardings)()
    model = nnx.merge(graphdef, state)
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x = jax.device_put(x_((4, 8)), NamedSharding(mesh, P("data")))

    @nnx.jit
    def step(model, opt, x):
      loss, g = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
      opt.update(model, g)
      return loss

    losses = [step(model, opt, x) for _ in range(2)]
  return [
    losses,
    jax.tree.map(lambda p: tuple(p), nnx.to_pure_dict(specs)),
    _spec_of(model.up.kernel[...]),
    _spec_of(model.down.kernel[...]),
    _spec_of(opt.opt_state[0].mu.up.kernel[...]),
    pure(nnx, model),
  ]


@program
def sharded_init_inside_nnx_jit_under_mesh(nnx):
  FF = _feed_forward(nnx)
  mesh = _mesh_2x4()
  rules = (("embed", "data"), ("mlp", "model"))

  @nnx.jit
  def create():
    model = FF(nnx.Rngs(1))
    state = nnx.state(model)
    nnx.update(model, jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state)))
    return model

  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    model = create()
    y = nnx.jit(lambda m, x: m(x))(model, x_((4, 8)))
  return [y, _spec_of(model.up.kernel[...]), _spec_of(model.scale[...]), pure(nnx, model)]


@program
def transform_metadata_function(nnx):
  class Stack(nnx.Module):
    def __init__(self, rngs):
      @nnx.split_rngs(splits=3)
      @nnx.vmap(in_axes=0, out_axes=0)
      @nnx.transform_metadata(in_axes=0, out_axes=0, partition="layers")
      def make(rngs):
        return nnx.Linear(
          2,
          2,
          kernel_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("a", "b")),
          rngs=rngs,
        )

      self.layers = make(rngs)

  with nnx.use_eager_sharding(False):
    s = Stack(nnx.Rngs(0))
  return [s.layers.kernel.shape, tuple(s.layers.kernel.sharding_names)]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program(name):
  f_out, p_out = run_both(PROGRAMS[name])
  same(f_out, p_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
  "fn",
  [checkpoint_manager_sharded_restore, pure_dict_checkpoint_with_optimizer],
  ids=lambda f: f.__name__,
)
def test_checkpoint_program(fn, tmp_path):
  f_out, p_out = run_both(lambda nnx: fn(nnx, tmp_path / nnx.__name__))
  same(f_out, p_out, rtol=1e-4, atol=1e-5)


def test_checkpoint_resume(tmp_path):
  f_out, p_out = run_both(lambda nnx: checkpoint_resume(nnx, tmp_path / nnx.__name__))
  same(f_out, p_out, rtol=1e-4, atol=1e-5)
  first, uninterrupted, resumed = p_out[:3]
  same(uninterrupted, resumed)  # resuming from the checkpoint reproduces the run


def test_donating_a_model_whose_plain_clone_is_alive_fails_and_arrays_true_fixes_it():
  import pynnx as nnx

  q = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  x = jnp.ones((1, 2))
  nnx.jit(lambda m, x: m(x))(q, x)  # unchanged Variables keep their arrays (Flax: new buffers)
  target = nnx.clone(q)
  assert target.kernel[...] is q.kernel[...]
  step = nnx.jit(lambda q, t, x: (q(x) + t(x)).sum(), donate_argnums=0)
  with pytest.raises(jax.errors.JaxRuntimeError, match="donated"):
    step(q, target, x)
  q = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  target = nnx.clone(q, arrays=True)  # the documented fix
  same(step(q, target, x), 2 * (x @ target.kernel[...] + target.bias[...]).sum())
