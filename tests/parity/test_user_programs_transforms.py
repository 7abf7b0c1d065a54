"""Differential tests: complete user programs built on lifted transforms and the functional API
(stacked layers made with ``vmap`` and run with ``scan``, ``remat``, LoRA fine-tuning with
filtered optimizers, ``split``/``merge`` under plain ``jax.jit``), on ``flax.nnx`` and
``pynnx`` (helpers in ``test_user_snippets.py``)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_user_snippets import paths, pure, run_both, same, x_

PROGRAMS = {}


def program(fn):
  PROGRAMS[fn.__name__] = fn
  return fn


# --- stacked layers: vmap init, scan forward ----------------------------------------------


def _stack(nnx, depth, graph=None, sharded=False):
  class Block(nnx.Module):
    def __init__(self, dim, *, rngs: nnx.Rngs):
      init = nnx.initializers.lecun_normal()
      if sharded:
        init = nnx.with_partitioning(init, ("embed", "mlp"))
      self.linear = nnx.Linear(dim, dim, kernel_init=init, rngs=rngs)
      self.bn = nnx.BatchNorm(dim, rngs=rngs)
      self.drop = nnx.Dropout(0.2, rngs=rngs)

    def __call__(self, x):
      return nnx.gelu(self.drop(self.bn(self.linear(x))))

  class Stack(nnx.Module):
    def __init__(self, dim, *, rngs: nnx.Rngs):
      @nnx.split_rngs(splits=depth)
      @nnx.vmap(
        in_axes=(0,),
        out_axes=0,
        transform_metadata={nnx.PARTITION_NAME: "layers"},
        graph=graph,
      )
      def create(rngs):
        return Block(dim, rngs=rngs)

      self.blocks = create(rngs)
      self.head = nnx.Linear(dim, 1, rngs=rngs)

    def __call__(self, x):
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, graph=graph)
      @nnx.remat(graph=graph)
      def forward(x, block):
        return block(x)

      return self.head(forward(x, self.blocks))[..., 0]

  return Stack


@program
def scan_stack_training(nnx):
  depth = 3
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(1, 2, 4), ("layers", "embed", "mlp"))
  with jax.set_mesh(mesh):
    model = _stack(nnx, depth, sharded=True)(4, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  xs, ys = x_((3, 5, 4), seed=1), x_((3, 5), seed=2)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    def loss_fn(model):
      return jnp.mean((model(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [train_step(model, optimizer, x, y) for x, y in zip(xs, ys)]
  kernel = model.blocks.linear.kernel
  return [
    losses,
    kernel.shape,
    tuple(kernel.get_metadata().get("sharding_names", ())),
    nnx.get_partition_spec(nnx.state(model.blocks, nnx.Param)).linear.kernel.value,
    tuple(kernel[...].sharding.spec),
    tuple(optimizer.opt_state[0].mu.blocks.linear.kernel[...].sharding.spec),
    pure(nnx, nnx.state(model, nnx.BatchStat)),
    model.blocks.drop.rngs.count[...],
    jax.random.key_data(model.blocks.drop.rngs.key[...]),
  ]


@program
def scan_stack_graph_mode_state_axes(nnx):
  depth = 2
  model = _stack(nnx, depth, graph=True)(3, rngs=nnx.Rngs(1))
  x = x_((4, 3), seed=3)

  # the same stack run with an explicit StateAxes: BatchStats and rng state per layer
  axes = nnx.StateAxes({(nnx.Param, nnx.BatchStat, nnx.RngState): 0, ...: None})

  @nnx.scan(in_axes=(nnx.Carry, axes), out_axes=(nnx.Carry, 0))
  def forward(x, block):
    y = block(x)
    return y, y.sum()

  y, sums = forward(x, model.blocks)
  model.eval()
  y_eval, _ = forward(x, model.blocks)
  return [y, sums, y_eval, pure(nnx, model.blocks)]


@program
def vmap_ensemble_with_state_axes_and_split_rngs(nnx):
  class Member(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(3, 2, rngs=rngs)
      self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return self.drop(self.linear(x))

  n = 3
  rngs = nnx.Rngs(0, dropout=1)

  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=0, out_axes=0)
  def create(rngs):
    return Member(rngs)

  ensemble = create(rngs)
  optimizer = nnx.Optimizer(ensemble, optax.sgd(0.1), wrt=nnx.Param)
  x, y = x_((4, 3), seed=4), x_((4, 2), seed=5)

  @nnx.jit
  def step(ensemble, optimizer, x, y):
    @nnx.vmap(in_axes=(0, None), out_axes=0)
    def forward(member, x):
      return member(x)

    def loss_fn(ensemble):
      return jnp.mean((forward(ensemble, x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(ensemble)
    optimizer.update(ensemble, grads)
    return loss

  losses = [step(ensemble, optimizer, x, y) for _ in range(3)]
  return [
    losses,
    pure(nnx, ensemble),
    ensemble.linear.kernel.shape,
  ]


# --- LoRA fine-tuning and custom Variable types -------------------------------------------


def _lora_program(nnx):
  class Buffer(nnx.Variable):
    pass

  class Backbone(nnx.Module):
    def __init__(self, rngs):
      self.base = nnx.Linear(4, 8, rngs=rngs)
      self.lora = nnx.LoRA(8, 2, 8, rngs=rngs)
      self.adapted = nnx.LoRALinear(8, 8, lora_rank=2, rngs=rngs)
      self.head = nnx.Linear(8, 2, rngs=rngs)
      self.scale = Buffer(jnp.ones((8,)))

    def __call__(self, x):
      h = nnx.relu(self.base(x))
      h = h + self.lora(h)
      h = nnx.relu(self.adapted(h)) * self.scale[...]
      return self.head(h)

  return Backbone


@program
def lora_and_head_with_filters(nnx):
  model = _lora_program(nnx)(nnx.Rngs(0))
  trainable = nnx.Any(nnx.LoRAParam, nnx.PathContains("head"))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=trainable)
  x, y = x_((6, 4), seed=6), x_((6, 2), seed=7)
  before = pure(nnx, nnx.state(model, nnx.Not(trainable)))

  @nnx.jit
  def step(model, optimizer, x, y):
    def loss_fn(model):
      return jnp.mean((model(x) - y) ** 2)

    diff = nnx.DiffState(0, trainable)
    loss, grads = nnx.value_and_grad(loss_fn, argnums=diff)(model)
    optimizer.update(model, grads)
    return loss

  losses = [step(model, optimizer, x, y) for _ in range(3)]
  after = pure(nnx, nnx.state(model, nnx.Not(trainable)))
  lora_state = nnx.state(model, nnx.LoRAParam)
  counts = {
    name: sum(v.size for v in jax.tree.leaves(nnx.state(model, f)))
    for name, f in [("lora", nnx.LoRAParam), ("param", nnx.Param), ("all", ...)]
  }
  return [
    losses,
    before,
    after,
    paths(nnx, lora_state),
    paths(nnx, nnx.state(optimizer, nnx.OptState)),
    counts,
    pure(nnx, model),
  ]


@program
def custom_variable_and_state_filters(nnx):
  class Counter(nnx.Variable):
    pass

  class Scale(nnx.Param):
    pass

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(3, 3, rngs=rngs)
      self.gain = Scale(jnp.full((3,), 2.0))
      self.calls = Counter(jnp.array(0))

    def __call__(self, x):
      self.calls[...] += 1
      return self.linear(x) * self.gain[...]

  model = Model(nnx.Rngs(2))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.All(nnx.Param, nnx.Not(Scale)))
  x = x_((2, 3), seed=8)

  @nnx.jit
  def step(model, optimizer, x):
    loss, grads = nnx.value_and_grad(lambda m: jnp.sum(m(x) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  losses = [step(model, optimizer, x) for _ in range(3)]
  params, counters, rest = nnx.split(model, nnx.Param, Counter, ...)[1:]
  return [
    losses,
    model.calls[...],
    paths(nnx, params),
    paths(nnx, counters),
    paths(nnx, rest),
    pure(nnx, nnx.state(model, Scale)),
    pure(nnx, nnx.state(model, nnx.OfType(Counter))),
    paths(nnx, nnx.state(optimizer, nnx.OptState)),
  ]


# --- the functional API under plain jax.jit -----------------------------------------------


@program
def split_merge_under_jax_jit(nnx):
  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(3, 6, rngs=rngs)
      self.bn = nnx.BatchNorm(6, rngs=rngs)
      self.l2 = nnx.Linear(6, 1, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.relu(self.bn(self.l1(x))))

  model = MLP(nnx.Rngs(0))
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)
  x, y = x_((8, 3), seed=9), x_((8, 1), seed=10)

  @jax.jit
  def train_step(params, batch_stats, opt_state, x, y):
    def loss_fn(params, batch_stats):
      # copy: batch_stats's Variables belong to jit's trace, the model's to grad's
      model = nnx.merge(graphdef, params, batch_stats, copy=True)
      loss = jnp.mean((model(x) - y) ** 2)
      return loss, nnx.state(model, nnx.BatchStat)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, batch_stats), grads = grad_fn(params, batch_stats)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, batch_stats, opt_state, loss

  losses = []
  for _ in range(3):
    params, batch_stats, opt_state, loss = train_step(params, batch_stats, opt_state, x, y)
    losses.append(loss)
  nnx.update(model, params, batch_stats)
  model.eval()
  pred = model(x)

  # inference through jax.jit, the graphdef closed over
  @jax.jit
  def infer(state, x):
    return nnx.merge(graphdef, state)(x)

  state = nnx.state(model)
  infer_out = infer(state, x)
  return [losses, pred, infer_out, pure(nnx, model), type(params).__name__]


def _residual_block(nnx):
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(3, 3, rngs=rngs)
      self.n = nnx.LayerNorm(3, rngs=rngs)

    def __call__(self, x):
      return x + nnx.gelu(self.l(self.n(x)))

  return Block


@program
def functional_lax_scan_over_split_states(nnx):
  Block = _residual_block(nnx)
  keys = jax.random.split(jax.random.key(0), 4)

  @jax.vmap
  def create(key):
    return nnx.state(Block(nnx.Rngs(key)))

  states = create(keys)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Block(nnx.Rngs(0))))

  def forward(states, x):
    def body(x, s):
      return nnx.merge(graphdef, s)(x), None

    return jax.lax.scan(jax.checkpoint(body), x, states)[0]

  x = x_((2, 3))
  y = jax.jit(forward)(states, x)
  g = jax.grad(lambda s: forward(s, x).sum())(states)
  tx = optax.sgd(0.1)
  opt_state = tx.init(states)
  upd, _ = tx.update(g, opt_state, states)
  new = optax.apply_updates(states, upd)
  return [y, pure(nnx, g), pure(nnx, new), paths(nnx, states)]


@program
def jax_vmap_ensemble_via_merge(nnx):
  Block = _residual_block(nnx)
  graphdef, state = nnx.split(Block(nnx.Rngs(0)))
  states = jax.tree.map(lambda a: jnp.stack([a, a * 2]), state)
  ys = jax.vmap(lambda s, x: nnx.merge(graphdef, s)(x), in_axes=(0, None))(states, x_((2, 3)))
  return [ys]


@program
def graph_mode_program_with_set_graph_mode(nnx):
  class Tied(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(6, 4, rngs=rngs)
      self.proj = nnx.Linear(4, 4, rngs=rngs)
      self.out = self.embed  # shared: graph mode only

    def __call__(self, tokens):
      return self.out.attend(nnx.tanh(self.proj(self.embed(tokens))))

  tokens = jnp.array([[1, 2, 3], [4, 5, 0]])
  with nnx.set_graph_mode(True):
    model = Tied(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, tokens):
      def loss_fn(model):
        logits = model(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

      loss, grads = nnx.value_and_grad(loss_fn)(model)
      optimizer.update(model, grads)
      return loss

    losses = [step(model, optimizer, tokens) for _ in range(3)]
    state = nnx.state(model)
  return [losses, paths(nnx, state), model.out is model.embed, pure(nnx, state)]


def _siamese(nnx):
  class Encoder(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(3, 4, rngs=rngs)
      self.bn = nnx.BatchNorm(4, rngs=rngs)

    def __call__(self, x):
      return nnx.relu(self.bn(self.l(x)))

  class Siamese(nnx.Module):
    def __init__(self, rngs):
      enc = Encoder(rngs)
      self.left = enc
      self.right = enc  # the same encoder on both sides
      self.head = nnx.Linear(4, 1, rngs=rngs)

    def __call__(self, a, b):
      return self.head(jnp.abs(self.left(a) - self.right(b)))[..., 0]

  return Siamese


@program
def siamese_shared_encoder_graph_mode(nnx):
  with nnx.set_graph_mode(True):
    model = _siamese(nnx)(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    a, b, y = x_((6, 3)), x_((6, 3), 1), (x_((6,), 2) > 0).astype(jnp.float32)

    @nnx.jit
    def step(model, opt):
      def lf(model):
        return optax.sigmoid_binary_cross_entropy(model(a, b), y).mean()

      loss, g = nnx.value_and_grad(lf)(model)
      opt.update(model, g)
      return loss

    losses = [step(model, opt) for _ in range(3)]
    st = nnx.state(model)
  return [
    losses,
    model.left is model.right,
    paths(nnx, st),
    pure(nnx, st),
    paths(nnx, nnx.state(opt, nnx.OptState)),
  ]


@program
def siamese_graph_true_per_call(nnx):
  model = _siamese(nnx)(nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param, graph=True)
  a, b = x_((6, 3)), x_((6, 3), 1)

  @nnx.jit(graph=True)
  def step(model, opt):
    loss, g = nnx.value_and_grad(lambda m: jnp.mean(m(a, b) ** 2), graph=True)(model)
    opt.update(model, g)
    return loss

  losses = [step(model, opt) for _ in range(3)]
  return [losses, pure(nnx, nnx.state(model, graph=True))]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program(name):
  f_out, p_out = run_both(PROGRAMS[name])
  same(f_out, p_out, rtol=1e-4, atol=1e-5)


def test_siamese_shared_encoder_in_tree_mode_is_the_documented_error():
  # docs/migrating.md, "Default mode: tree": a Module reachable twice needs graph mode
  import pynnx as nnx

  model = _siamese(nnx)(nnx.Rngs(0))
  with pytest.raises(nnx.SharedReferenceError, match="graph=True"):
    nnx.jit(lambda m, a: m(a, a))(model, jnp.ones((2, 3)))
