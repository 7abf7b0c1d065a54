"""Differential tests following Flax NNX's transforms guide and randomness guide.

Each program is written for this suite and demonstrates what the guide teaches; it runs on
``flax.nnx`` and on ``pynnx`` and the results are compared.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

from tests.parity.test_user_snippets import error_name, paths, pure, run_both, same, x_

GUIDES = {}


def guide(fn):
  GUIDES[fn.__name__] = fn
  return fn


def _weights(nnx):
  class Weights(nnx.Module):
    def __init__(self, kernel, bias):
      self.kernel, self.bias = nnx.Param(kernel), nnx.Param(bias)

  return Weights


# --- transforms guide --------------------------------------------------------------------------


@guide
def vmap_in_axes_out_axes(nnx):
  Weights = _weights(nnx)
  weights = Weights(jax.random.uniform(jax.random.key(0), (5, 2, 3)), jnp.zeros((5, 3)))
  x = x_((5, 2))

  @nnx.vmap(in_axes=(0, 0), out_axes=1)
  def vector_dot(weights, x):
    return x @ weights.kernel + weights.bias

  y = vector_dot(weights, x)
  # Only the input is mapped: the same weights for every row.
  single = Weights(jnp.ones((2, 3)), jnp.ones(3))
  z = nnx.vmap(lambda w, x: x @ w.kernel + w.bias, in_axes=(None, 0))(single, x)
  return [y, z]


@guide
def vmap_state_axes_mutable_broadcast(nnx):
  class Count(nnx.Variable):
    pass

  class Weights(nnx.Module):
    def __init__(self, kernel, count):
      self.kernel = nnx.Param(kernel)
      self.count = Count(count)

  weights = Weights(jax.random.uniform(jax.random.key(1), (4, 2, 3)), jnp.array(0))
  state_axes = nnx.StateAxes({nnx.Param: 0, Count: None})

  @nnx.vmap(in_axes=(state_axes, 0))
  def apply(weights, x):
    weights.count[...] += 1
    return x @ weights.kernel

  y = apply(weights, x_((4, 2)))
  y2 = apply(weights, x_((4, 2), 1))
  return [y, y2, weights.count[...], weights.kernel.shape]


@guide
def vmap_random_state_per_member(nnx):
  class Noisy(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(2, 3, rngs=rngs)
      self.rngs = rngs

    def __call__(self, x):
      return self.linear(x) + jax.random.normal(self.rngs.noise(), (3,))

  model = Noisy(nnx.Rngs(params=0, noise=1))
  state_axes = nnx.StateAxes({"noise": 0, ...: None})

  @nnx.split_rngs(splits=4, only="noise")
  @nnx.vmap(in_axes=(state_axes, None))
  def forward(model, x):
    return model(x)

  y = forward(model, jnp.ones(2))
  return [y, model.rngs.noise.count[...], model.rngs.noise.key.shape, y[0] != y[1]]


@guide
def scan_over_stacked_layers_with_remat(nnx):
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(3, 3, rngs=rngs)
      self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return self.dropout(nnx.tanh(self.linear(x)))

  @nnx.split_rngs(splits=4)
  @nnx.vmap(in_axes=0, out_axes=0)
  def make_stack(rngs):
    return Block(rngs)

  stack = make_stack(nnx.Rngs(params=0, dropout=1))

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
  @nnx.remat
  def forward(x, block):
    return block(x)

  y = forward(x_((2, 3)), stack)
  stack.eval()
  y_eval = forward(x_((2, 3)), stack)
  return [y, y_eval, stack.linear.kernel.shape, stack.dropout.rngs.count[...]]


@guide
def scan_loop_with_carry_and_outputs(nnx):
  cell = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

  @nnx.scan(in_axes=(None, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
  def step(cell, h, x):
    h = nnx.tanh(cell(h) + x)
    return h, h.sum()

  h, ys = step(cell, jnp.zeros(2), x_((6, 2)))
  return [h, ys]


@guide
def cond_on_a_flag(nnx):
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

  def double(m, x):
    m.kernel[...] = m.kernel[...] * 2
    return m(x)

  def halve(m, x):
    m.kernel[...] = m.kernel[...] / 2
    return m(x)

  a = nnx.cond(jnp.array(True), double, halve, model, jnp.ones(2))
  b = nnx.cond(jnp.array(False), double, halve, model, jnp.ones(2))
  c = nnx.switch(jnp.array(1), [double, halve], model, jnp.ones(2))
  return [a, b, c, model.kernel[...]]


@guide
def jit_donate_train_step(nnx):
  model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit(donate_argnums=(0, 1))
  def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: ((m(x) - y) ** 2).mean())(model)
    optimizer.update(model, grads)
    return loss

  losses = [train_step(model, optimizer, x_((8, 3)), x_((8, 1), 1)) for _ in range(3)]
  return [losses, model.kernel[...], optimizer.step[...]]


@guide
def grad_argnums_two_models(nnx):
  a = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  b = nnx.Linear(2, 1, rngs=nnx.Rngs(1))

  def loss(a, b, x):
    return b(a(x)).sum()

  ga, gb = nnx.grad(loss, argnums=(0, 1))(a, b, x_((3, 2)))
  gx = nnx.grad(loss, argnums=2)(a, b, x_((3, 2)))
  return [pure(nnx, nnx.state(ga, nnx.Param)), pure(nnx, nnx.state(gb, nnx.Param)), gx]


@guide
def grad_diff_state_frozen_part(nnx):
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.backbone = nnx.Linear(2, 3, rngs=rngs)
      self.head = nnx.Linear(3, 1, rngs=rngs)

    def __call__(self, x):
      return self.head(self.backbone(x))

  model = Model(nnx.Rngs(0))
  only_head = nnx.All(nnx.Param, nnx.PathContains("head"))
  diff = nnx.DiffState(0, only_head)
  loss = lambda m, x: (m(x) ** 2).mean()  # noqa: E731
  grads = nnx.grad(loss, argnums=diff)(model, x_((4, 2)))
  (value, aux), grads2 = nnx.value_and_grad(
    lambda m, x: (loss(m, x), m(x)), argnums=diff, has_aux=True
  )(model, x_((4, 2)))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=only_head)
  optimizer.update(model, grads)
  return [
    paths(nnx, nnx.state(grads)),
    pure(nnx, grads),
    value,
    aux,
    pure(nnx, grads2),
    pure(nnx, nnx.state(model)),
  ]


@guide
def transforming_methods(nnx):
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(2, 2, rngs=rngs)

    @nnx.jit
    def __call__(self, x):
      return self.linear(x)

    @nnx.vmap(in_axes=(None, 0))
    def batched(self, x):
      return self.linear(x)

  model = Model(nnx.Rngs(0))
  return [model(x_((2,))), model.batched(x_((3, 2)))]


@guide
def eval_shape_of_a_transformed_init(nnx):
  def make(rngs):
    return nnx.Linear(3, 4, rngs=rngs)

  abstract = nnx.eval_shape(make, nnx.Rngs(0))
  st = nnx.state(abstract)
  return [jax.tree.map(lambda a: (a.shape, str(a.dtype)), nnx.to_pure_dict(st))]


# --- randomness guide --------------------------------------------------------------------------


@guide
def rngs_streams_and_default(nnx):
  rngs = nnx.Rngs(params=0, dropout=jax.random.key(1))
  k1, k2 = rngs.params(), rngs.params()
  d1 = rngs["dropout"]()
  counts = [rngs.params.count[...], rngs.dropout.count[...]]
  default = nnx.Rngs(3)
  ka, kb = default(), default.anything()
  return [
    jax.random.key_data(k1),
    jax.random.key_data(k2),
    jax.random.key_data(d1),
    counts,
    jax.random.key_data(ka),
    jax.random.key_data(kb),
    paths(nnx, nnx.state(rngs)),
    error_name(lambda: nnx.Rngs(params=0).dropout()),
  ]


@guide
def filtering_random_state(nnx):
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(2, 3, rngs=rngs)
      self.drop = nnx.Dropout(0.5, rngs=rngs)

  model = Model(nnx.Rngs(params=0, dropout=1))
  return [
    paths(nnx, nnx.state(model, nnx.RngState)),
    paths(nnx, nnx.state(model, nnx.RngKey)),
    paths(nnx, nnx.state(model, nnx.RngCount)),
    paths(nnx, nnx.state(model, "dropout")),
    paths(nnx, nnx.state(model, nnx.All(nnx.RngState, nnx.PathContains("drop")))),
  ]


@guide
def dropout_stream_reseed_and_fork(nnx):
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(4, 4, rngs=rngs)
      self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return self.drop(self.linear(x))

  model = Model(nnx.Rngs(params=0, dropout=1))
  x = jnp.ones((2, 4))
  y1, y2 = model(x), model(x)
  nnx.reseed(model, dropout=1)
  y3 = model(x)
  with nnx.fork_rngs(model):
    y4 = model(x)
  after_fork = model(x)
  return [y1, y2, y3, y4, after_fork, model.drop.rngs.count[...]]


@guide
def split_rngs_context_and_decorator(nnx):
  rngs = nnx.Rngs(params=0, dropout=1)
  with nnx.split_rngs(rngs, splits=3, only="dropout"):
    inside = [rngs.dropout.key.shape, rngs.params.key.shape]
  with nnx.split_rngs(rngs, splits=3):
    keys = nnx.vmap(lambda r: jax.random.key_data(r.dropout()), in_axes=0)(rngs)
  outside = [rngs.dropout.key.shape, rngs.dropout.count[...]]

  @nnx.split_rngs(splits=2)
  @nnx.vmap(in_axes=0)
  def make(rngs):
    return nnx.Linear(2, 2, rngs=rngs)

  stack = make(nnx.Rngs(5))
  return [inside, keys, outside, stack.kernel.shape, stack.kernel[...]]


@guide
def with_rngs_for_vmap(nnx):
  rngs = nnx.Rngs(params=0, dropout=1)
  split = nnx.with_rngs(rngs, split={"dropout": 3}, fork="params", graph=False)

  @nnx.vmap(in_axes=0)
  def sample(stream):
    return jax.random.normal(stream(), (2,))

  forked = [jax.random.key_data(split.params()), jax.random.key_data(split.params())]
  return [sample(split.dropout), forked, split.params.key.shape, split.dropout.key.shape]


@guide
def rngs_passed_through_jit(nnx):
  rngs = nnx.Rngs(0)

  @nnx.jit
  def draw(rngs):
    return jax.random.uniform(rngs.params(), (3,))

  a, b = draw(rngs), draw(rngs)
  return [a, b, rngs.params.count[...] if hasattr(rngs, "params") else rngs.default.count[...]]


def _custom_vjp_guide(nnx, graph):
  class Foo(nnx.Module):
    def __init__(self, x, y):
      self.x, self.y = nnx.Param(x), nnx.Param(y)

  def f(m):
    return jnp.sin(m.x[...]) * m.y[...]

  f = nnx.custom_vjp(f, graph=graph)

  def f_fwd(m):
    return f(m), (jnp.cos(m.x[...]), jnp.sin(m.x[...]), m)

  def f_bwd(res, g):
    cos_x, sin_x, m = res
    if graph:  # graph mode also passes the cotangent of the input updates
      _, g = g
      return (nnx.State({"x": cos_x * g * m.y[...], "y": sin_x * g}),)
    return (Foo(cos_x * g * m.y[...], sin_x * g),)

  f.defvjp(f_fwd, f_bwd)
  m = Foo(jnp.array(1.0), jnp.array(2.0))
  grads = nnx.grad(f, graph=graph)(m)
  return [f(m), pure(nnx, nnx.state(grads, nnx.Param))]


def test_custom_vjp_guide(graph):
  f_out, p_out = run_both(lambda nnx: _custom_vjp_guide(nnx, graph))
  same(f_out, p_out)


# --- the test --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_guide(name):
  f_out, p_out = run_both(GUIDES[name])
  same(f_out, p_out)


# --- scan threads a broadcast Variable's updates, as Flax's tree mode ---------------------------


def _scan_dropout_broadcast(nnx):
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(3, 3, rngs=rngs)
      self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return self.dropout(self.linear(x))

  model = Model(nnx.Rngs(0, dropout=1))

  # The model is broadcast (in_axes=None) while its dropout stream advances every step.
  @nnx.scan(in_axes=(None, nnx.Carry, 0), out_axes=(nnx.Carry, 0), graph=False)
  def run(model, total, x):
    y = model(x)
    return total + y.sum(), y

  total, ys = run(model, jnp.zeros(()), x_((3, 2, 3)))
  return [total, ys, model.dropout.rngs.count[...]]


def test_scan_tree_mode_threads_broadcast_variable_updates():
  f_out, p_out = run_both(_scan_dropout_broadcast)
  same(f_out, p_out)
