"""Differential tests: more user programs in styles the other files do not cover (methods
decorated with transforms, plain ``jax`` transforms over Modules, gradient accumulation,
distillation, ``shard_map`` / ``cond`` / ``switch`` with Module arguments, per-example
dropout through ``StateAxes``, dataclass Modules), on ``flax.nnx`` and ``pynnx``. The
transform-heavy ones run a second time inside ``nnx.set_graph_mode(True)`` (helpers in
``test_user_snippets.py``)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from test_user_snippets import error_name, paths, pure, run_both, same, x_

PROGRAMS = {}


def program(fn):
  PROGRAMS[fn.__name__] = fn
  return fn


@program
def jit_method_and_view(nnx):
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(3, 3, rngs=rngs)
      self.drop = nnx.Dropout(0.5, rngs=rngs)
      self.bn = nnx.BatchNorm(3, rngs=rngs)

    @nnx.jit
    def __call__(self, x):
      return self.drop(self.bn(self.l(x)))

  m = Model(nnx.Rngs(0))
  x = x_((4, 3))
  a = m(x)
  ev = nnx.view(m, deterministic=True, use_running_average=True)
  b = ev(x)
  c = m(x)
  return [a, b, c, pure(nnx, m)]


@program
def optimizer_value_reduce_on_plateau(nnx):
  m = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  tx = optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau(patience=1, factor=0.5))
  opt = nnx.Optimizer(m, tx, wrt=nnx.Param)
  x, y = x_((4, 2)), x_((4, 1), 1)

  @nnx.jit
  def step(m, opt):
    loss, g = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(m)
    opt.update(m, g, value=loss)
    return loss

  return [[step(m, opt) for _ in range(4)], pure(nnx, m)]


@program
def rnn_lstm_gru_classifier(nnx):
  class Clf(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(10, 4, rngs=rngs)
      self.lstm = nnx.RNN(nnx.LSTMCell(4, 5, rngs=rngs))
      self.gru = nnx.RNN(nnx.GRUCell(5, 5, rngs=rngs), return_carry=True)
      self.head = nnx.Linear(5, 2, rngs=rngs)

    def __call__(self, tokens):
      h = self.lstm(self.embed(tokens))
      carry, h = self.gru(h)
      return self.head(carry)

  m = Clf(nnx.Rngs(0))
  opt = nnx.Optimizer(m, optax.adam(1e-2), wrt=nnx.Param)
  t = jax.random.randint(jax.random.key(0), (3, 5), 0, 10)
  y = jnp.array([0, 1, 1])

  @nnx.jit
  def step(m, opt, t, y):
    def lf(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(t), y).mean()

    loss, g = nnx.value_and_grad(lf)(m)
    opt.update(m, g)
    return loss

  return [[step(m, opt, t, y) for _ in range(3)], pure(nnx, nnx.state(m, nnx.Param))]


@program
def grad_argnums_tuple_and_jax_tree_on_module(nnx):
  a = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  b = nnx.Linear(2, 2, rngs=nnx.Rngs(1))
  x = x_((3, 2))
  ga, gb = nnx.grad(lambda a, b: (b(a(x)) ** 2).sum(), argnums=(0, 1))(a, b)
  doubled = jax.tree.map(lambda v: v * 2, a)
  n = sum(p.size for p in jax.tree.leaves(nnx.state(a, nnx.Param)))
  return [
    pure(nnx, nnx.state(ga, nnx.Param)),
    pure(nnx, nnx.state(gb, nnx.Param)),
    pure(nnx, doubled),
    n,
    type(doubled).__name__,
  ]


@program
def pytree_dataclass_and_static(nnx):
  class Config(nnx.Pytree):
    def __init__(self, scale):
      self.scale = nnx.data(jnp.asarray(scale))
      self.name = nnx.static("cfg")

  class M(nnx.Module):
    def __init__(self, cfg, rngs):
      self.cfg = cfg
      self.l = nnx.Linear(2, 2, rngs=rngs)

    def __call__(self, x):
      return self.l(x) * self.cfg.scale

  m = M(Config(2.0), nnx.Rngs(0))
  y = nnx.jit(lambda m, x: m(x))(m, jnp.ones((1, 2)))
  return [y, paths(nnx, nnx.state(m)), m.cfg.name]


@program
def iter_modules_and_set_attributes(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Dropout(0.5, rngs=rngs)
      self.b = nnx.Sequential(nnx.Linear(2, 2, rngs=rngs), nnx.BatchNorm(2, rngs=rngs))

  m = M(nnx.Rngs(0))
  names = [(tuple(map(str, p)), type(x).__name__) for p, x in nnx.iter_modules(m)]
  m.set_attributes(deterministic=True, use_running_average=True)
  flags = [m.a.deterministic, m.b.layers[1].use_running_average]
  m.train()
  flags += [m.a.deterministic, m.b.layers[1].use_running_average]
  children = [(str(k), type(v).__name__) for k, v in m.iter_children()]
  return [names, flags, children]


@program
def bf16_mixed_precision(nnx):
  m = nnx.Sequential(
    nnx.Linear(3, 4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)),
    nnx.LayerNorm(4, dtype=jnp.bfloat16, rngs=nnx.Rngs(1)),
    nnx.Conv(4, 2, (1,), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(2)),
  )
  y = m(x_((2, 5, 3)))
  g = nnx.grad(lambda m: m(x_((2, 5, 3))).astype(jnp.float32).sum())(m)
  return [y, pure(nnx, nnx.state(g, nnx.Param))]


def _mlp(nnx, rngs, din=3, dh=6, dout=2):
  return nnx.Sequential(
    nnx.Linear(din, dh, rngs=rngs),
    nnx.relu,
    nnx.Dropout(0.1, rngs=rngs),
    nnx.Linear(dh, dout, rngs=rngs),
  )


@program
def grad_accumulation(nnx):
  m = _mlp(nnx, nnx.Rngs(0))
  opt = nnx.Optimizer(m, optax.adam(1e-2), wrt=nnx.Param)
  xs, ys = x_((4, 2, 3), 1), x_((4, 2, 2), 2)

  @nnx.jit
  def grads_of(m, x, y):
    return nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(m)

  @nnx.jit
  def apply(m, opt, grads):
    opt.update(m, grads)

  acc = None
  losses = []
  for x, y in zip(xs, ys):
    loss, g = grads_of(m, x, y)
    g = nnx.state(g, nnx.Param)
    acc = g if acc is None else jax.tree.map(jnp.add, acc, g)
    losses.append(loss)
  acc = jax.tree.map(lambda a: a / 4, acc)
  apply(m, opt, acc)
  norm = optax.tree.norm(acc)
  return [losses, norm, pure(nnx, nnx.state(m, nnx.Param))]


@program
def distillation_teacher_student(nnx):
  teacher = _mlp(nnx, nnx.Rngs(0), dh=8)
  student = _mlp(nnx, nnx.Rngs(1), dh=4)
  teacher.eval()
  opt = nnx.Optimizer(student, optax.sgd(0.1), wrt=nnx.Param)
  x = x_((5, 3), 3)

  @nnx.jit
  def step(teacher, student, opt, x):
    target = jax.nn.softmax(teacher(x) / 2.0)

    def lf(student):
      return optax.softmax_cross_entropy(student(x) / 2.0, target).mean()

    loss, g = nnx.value_and_grad(lf)(student)
    opt.update(student, g)
    return loss

  student.train()
  losses = [step(teacher, student, opt, x) for _ in range(3)]
  return [losses, pure(nnx, student), student.layers[2].rngs.count[...]]


@program
def graphdef_apply_and_pure_dict_load(nnx):
  m = _mlp(nnx, nnx.Rngs(0))
  m.eval()
  graphdef, state = nnx.split(m)
  y, (g2, s2) = graphdef.apply(state)(x_((2, 3)))
  pure_dict = nnx.to_pure_dict(nnx.state(m))
  m2 = _mlp(nnx, nnx.Rngs(5))
  m2.eval()
  st = nnx.state(m2)
  nnx.replace_by_pure_dict(st, pure_dict)
  nnx.update(m2, st)
  return [y, m2(x_((2, 3))), g2 == graphdef]


@program
def dataclass_module(nnx):
  @dataclasses.dataclass
  class Head(nnx.Module):
    din: int
    dout: int
    rngs: dataclasses.InitVar[nnx.Rngs]

    def __post_init__(self, rngs):
      self.linear = nnx.Linear(self.din, self.dout, rngs=rngs)

    def __call__(self, x):
      return self.linear(x)

  h = Head(3, 2, nnx.Rngs(0))
  y = nnx.jit(lambda h, x: h(x))(h, x_((1, 3)))
  return [y, h.din, paths(nnx, nnx.state(h))]


@program
def state_attribute_access_and_flat(nnx):
  m = _mlp(nnx, nnx.Rngs(0))
  st = nnx.state(m)
  k = st["layers"][0]["kernel"][...]
  flat = [(tuple(map(str, p)), v.shape) for p, v in st.flat_state()]
  params = st.filter(nnx.Param)
  rest = st.filter(nnx.Not(nnx.Param))
  merged = nnx.State.merge(params, rest)
  return [k, flat, paths(nnx, merged), paths(nnx, params)]


def _two_linear(nnx, rngs):
  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(3, 4, rngs=rngs)
      self.l2 = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.relu(self.l1(x)))

  return MLP(rngs)


@program
def module_through_plain_jax_transforms(nnx):
  m = _two_linear(nnx, nnx.Rngs(0))
  x = x_((5, 3))
  y = jax.jit(lambda m, x: m(x))(m, x)
  g = jax.grad(lambda m: m(x).sum())(m)
  vm = jax.vmap(lambda x: m(x))(x)
  tx = optax.adam(1e-2)
  params = nnx.state(m, nnx.Param)
  st = tx.init(params)

  @jax.jit
  def step(m, st):
    params = nnx.state(m, nnx.Param)
    grads = jax.grad(lambda p: nnx.merge(nnx.graphdef(m), p)(x).sum())(params)
    upd, st = tx.update(grads, st, params)
    nnx.update(m, optax.apply_updates(params, upd))
    return m, st

  m2, st = step(m, st)
  return [y, pure(nnx, nnx.state(g, nnx.Param)), vm, pure(nnx, m2), type(g).__name__]


@program
def variable_value_api_and_at_set(nnx):
  m = _two_linear(nnx, nnx.Rngs(0))
  m.l1.kernel.value = jnp.zeros((3, 4))
  m.l1.bias[...] = jnp.ones((4,))
  m.l2.bias[...] = m.l2.bias[...].at[0].set(5.0)
  m.l2.kernel[0, :] = 1.0
  v = m.l1.kernel
  return [
    m(x_((2, 3))),
    v.shape,
    str(v.dtype),
    type(v).__name__,
    v.get_value().sum(),
    m.l2.bias.value,
    isinstance(v, nnx.Variable),
    isinstance(v[...], jax.Array),
  ]


@program
def jit_static_config_and_graphdef_cache(nnx):
  m = _two_linear(nnx, nnx.Rngs(0))
  traces = []

  @nnx.jit(static_argnames=("train",))
  def f(m, x, train):
    traces.append(train)
    return m(x) * (2.0 if train else 1.0)

  x = x_((2, 3))
  outs = [f(m, x, train=True), f(m, x, train=False), f(m, x, train=True)]
  m.l1.kernel[...] = m.l1.kernel[...] * 0.5
  outs.append(f(m, x, train=True))
  return [outs, traces]


@program
def conv_autoencoder_with_transpose(nnx):
  class AE(nnx.Module):
    def __init__(self, rngs):
      self.enc = nnx.Conv(1, 4, (3, 3), strides=2, rngs=rngs)
      self.dec = nnx.ConvTranspose(4, 1, (3, 3), strides=2, rngs=rngs)
      self.gn = nnx.GroupNorm(4, num_groups=2, rngs=rngs)

    def __call__(self, x):
      return self.dec(nnx.silu(self.gn(self.enc(x))))

  m = AE(nnx.Rngs(0))
  opt = nnx.Optimizer(m, optax.adam(1e-2), wrt=nnx.Param)
  x = x_((2, 8, 8, 1))

  @nnx.jit
  def step(m, opt, x):
    loss, g = nnx.value_and_grad(lambda m: jnp.mean((m(x) - x) ** 2))(m)
    opt.update(m, g)
    return loss

  return [[step(m, opt, x) for _ in range(2)], m(x).shape, pure(nnx, m)]


def _mesh():
  return jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(8), ("data",))


@program
def shard_map_model_argument(nnx):
  mesh = _mesh()
  m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param)
  x = x_((16, 3))
  y = x_((16, 2), 1)

  @nnx.jit
  def step(m, opt, x, y):
    @nnx.shard_map(mesh=mesh, in_specs=(P(), P(), P("data"), P("data")), out_specs=P())
    def inner(m, opt, x, y):
      loss, g = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(m)
      g = jax.lax.pmean(g, "data")
      opt.update(m, g)
      return jax.lax.pmean(loss, "data")

    return inner(m, opt, x, y)

  return [[step(m, opt, x, y) for _ in range(3)], pure(nnx, m)]


@program
def remat_method_and_vmap_method(nnx):
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(3, 3, rngs=rngs)

    @nnx.remat
    def __call__(self, x):
      return jnp.tanh(self.l(x))

    @nnx.vmap(in_axes=(None, 0))
    def batched(self, x):
      return self(x)

  b = Block(nnx.Rngs(0))
  x = x_((4, 3))
  g = nnx.grad(lambda b: b(x).sum())(b)
  return [b.batched(x), pure(nnx, nnx.state(g, nnx.Param))]


@program
def jit_in_shardings_state_sharding(nnx):
  mesh = _mesh()
  m = nnx.Linear(4, 4, rngs=nnx.Rngs(0))
  x = jax.device_put(x_((8, 4)), NamedSharding(mesh, P("data")))
  rep = NamedSharding(mesh, P())
  f = nnx.jit(
    lambda m, x: m(x),
    in_shardings=(rep, NamedSharding(mesh, P("data"))),
    out_shardings=NamedSharding(mesh, P("data")),
  )
  y = f(m, x)
  return [y, tuple(y.sharding.spec)]


@program
def cond_and_switch_with_modules(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(2, 2, rngs=rngs)
      self.b = nnx.Linear(2, 2, rngs=rngs)
      self.n = nnx.BatchStat(jnp.array(0))

  m = M(nnx.Rngs(0))

  def fa(m, x):
    m.n[...] += 1
    return m.a(x)

  def fb(m, x):
    m.n[...] += 10
    return m.b(x)

  @nnx.jit
  def f(m, x, i):
    y = nnx.cond(i > 0, fa, fb, m, x)
    z = nnx.switch(i, [fa, fb, lambda m, x: x], m, x)
    return y + z

  x = x_((1, 2))
  return [f(m, x, 0), f(m, x, 1), f(m, x, 2), m.n[...]]


@program
def vmap_split_rngs_dropout_per_example(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(3, 3, rngs=rngs)
      self.d = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return self.d(self.l(x))

  m = M(nnx.Rngs(0, dropout=1))
  x = x_((4, 3))

  @nnx.split_rngs(splits=4)
  @nnx.vmap(in_axes=(nnx.StateAxes({nnx.RngState: 0, ...: None}), 0))
  def per_example(m, x):
    return m(x)

  y = per_example(m, x)
  return [y, m.d.rngs.count[...], jax.random.key_data(m.d.rngs.key[...])]


@program
def scan_with_module_carry_and_broadcast(nnx):
  cell = nnx.SimpleCell(2, 3, rngs=nnx.Rngs(0))
  xs = x_((4, 1, 2))

  def body(carry, x):
    h, cell = carry
    h, y = cell(h, x)
    return (h, cell), y

  h0 = jnp.zeros((1, 3))
  (h, _), ys = nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))((h0, cell), xs)
  return [h, ys]


@program
def grad_argnums_one_and_aux_state(nnx):
  m = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.BatchNorm(3, rngs=nnx.Rngs(1)))
  x = x_((4, 2))

  def loss(x, model):
    y = model(x)
    return y.sum(), nnx.state(model, nnx.BatchStat)

  (value, stats), g = nnx.value_and_grad(loss, argnums=1, has_aux=True)(x, m)
  return [value, pure(nnx, stats), pure(nnx, nnx.state(g, nnx.Param))]


@program
def jit_returns_input_module(nnx):
  m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

  @nnx.jit
  def f(m, x):
    m.kernel[...] = m.kernel[...] + 1
    return m, m(x)

  m2, y = f(m, jnp.ones((1, 2)))
  return [y, m2.kernel[...], m.kernel[...], pure(nnx, m2)]


@program
def scan_length_only_and_carry_out(nnx):
  rngs = nnx.Rngs(0)
  m = nnx.Linear(2, 2, rngs=rngs)

  @nnx.scan(length=4, in_axes=nnx.Carry, out_axes=nnx.Carry)
  def roll(carry):
    m, x = carry
    return m, jnp.tanh(m(x))

  _, x = roll((m, jnp.ones((1, 2))))
  return [x]


@program
def fori_loop_rngs_in_carry(nnx):
  rngs = nnx.Rngs(noise=0)

  @nnx.jit
  def walk(rngs, x):
    def body(i, carry):
      rngs, x = carry
      return rngs, x + rngs.noise.normal(x.shape)

    return nnx.fori_loop(0, 5, body, (rngs, x))[1]

  a = walk(rngs, jnp.zeros(3))
  b = walk(rngs, jnp.zeros(3))
  return [a, b, rngs.noise.count[...]]


@program
def vmap_out_axes_none_and_axis_size(nnx):
  m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

  @nnx.vmap(in_axes=(None, 0), out_axes=(0, None))
  def f(m, x):
    return m(x), jnp.sum(m.kernel[...])

  ys, s = f(m, x_((3, 2)))
  return [ys, s]


@program
def eval_mode_training_flag_in_jit_static(nnx):
  m = nnx.Sequential(
    nnx.Linear(2, 4, rngs=nnx.Rngs(0)),
    nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1)),
    nnx.BatchNorm(4, rngs=nnx.Rngs(2)),
  )

  @nnx.jit(static_argnames="train")
  def f(m, x, train):
    if train:
      m.train()
    else:
      m.eval()
    return m(x)

  x = x_((3, 2))
  a = f(m, x, train=True)
  b = f(m, x, train=False)
  return [a, b, pure(nnx, nnx.state(m, nnx.BatchStat))]


@program
def data_annotations_and_list_of_arrays(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.ws = nnx.data([nnx.Param(jnp.ones((2,)) * i) for i in range(3)])
      self.consts = nnx.data([jnp.arange(2.0), jnp.ones(2)])
      self.name = "m"

    def __call__(self, x):
      for w in self.ws:
        x = x * w[...]
      return x + sum(self.consts)

  m = M(nnx.Rngs(0))
  y = nnx.jit(lambda m, x: m(x))(m, jnp.ones(2))
  g = nnx.grad(lambda m: m(jnp.ones(2)).sum())(m)
  return [y, paths(nnx, nnx.state(m)), pure(nnx, nnx.state(g, nnx.Param))]


@program
def sow_with_reduce_and_init(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(2, 2, rngs=rngs)

    def __call__(self, x):
      y = self.l(x)
      self.sow(
        nnx.Intermediate, "total", y.sum(), reduce_fn=lambda a, b: a + b, init_fn=lambda: 0.0
      )
      return y

  m = M(nnx.Rngs(0))
  m(jnp.ones((1, 2)))
  m(jnp.ones((1, 2)))
  return [pure(nnx, nnx.state(m, nnx.Intermediate))]


@program
def module_hooks_perturb(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(2, 3, rngs=rngs)
      self.l2 = nnx.Linear(3, 1, rngs=rngs)

    def __call__(self, x):
      h = self.l1(x)
      h = self.perturb("h", h)
      return self.l2(h)

  m = M(nnx.Rngs(0))
  x = jnp.ones((2, 2))
  m(x)

  def loss(m):
    return m(x).sum()

  g = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Any(nnx.Param, nnx.Perturbation)))(m)
  return [pure(nnx, nnx.state(g, nnx.Perturbation))]


@program
def jit_kwargs_kinds(nnx):
  m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

  def apply(m, x, scale=1.0, flag=None):
    y = m(x) * scale
    return y if flag is None else -y

  f = nnx.jit(apply)

  x = jnp.ones((1, 2))
  out = [f(m, x), f(m, x, scale=2.0), f(m, x=x, scale=jnp.float32(3.0))]
  out.append(error_name(lambda: f(m, x, flag="neg")))
  g = nnx.jit(apply, static_argnames="flag")
  out.append(g(m, x, flag="neg"))
  return out


@program
def load_flat_numpy_weights(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.layers = nnx.List([nnx.Linear(2, 3, rngs=rngs), nnx.Linear(3, 1, rngs=rngs)])

  src = M(nnx.Rngs(0))
  flat = {
    ".".join(map(str, k)): np.asarray(v)
    for k, v in nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(src))).items()
  }
  dst = M(nnx.Rngs(1))
  nested = nnx.traversals.unflatten_mapping(
    {
      tuple(int(p) if p.isdigit() else p for p in k.split(".")): jnp.asarray(v)
      for k, v in flat.items()
    }
  )
  st = nnx.state(dst)
  nnx.replace_by_pure_dict(st, nested)
  nnx.update(dst, st)
  flat_paths = sorted(flat)
  fs = [(tuple(map(str, p)), v.shape) for p, v in nnx.to_flat_state(nnx.state(dst))]
  return [flat_paths, pure(nnx, dst), fs]


GRAPH_MODE_TOO = [
  "cond_and_switch_with_modules",
  "fori_loop_rngs_in_carry",
  "jit_returns_input_module",
  "remat_method_and_vmap_method",
  "scan_with_module_carry_and_broadcast",
  "shard_map_model_argument",
  "vmap_split_rngs_dropout_per_example",
]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program(name):
  f_out, p_out = run_both(PROGRAMS[name])
  same(f_out, p_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", GRAPH_MODE_TOO)
def test_program_in_graph_mode(name):
  def in_graph_mode(nnx):
    with nnx.set_graph_mode(True):
      return PROGRAMS[name](nnx)

  f_out, p_out = run_both(in_graph_mode)
  same(f_out, p_out, rtol=1e-4, atol=1e-5)


def _config_module_program(nnx):
  @dataclasses.dataclass
  class Config:  # a plain (unfrozen, so unhashable) dataclass, as most configs are written
    dims: list = dataclasses.field(default_factory=lambda: [3, 4, 2])
    act: str = "relu"

  class MLP(nnx.Module):
    def __init__(self, config, rngs):
      self.config = config
      self.sizes = list(config.dims)
      self.layers = nnx.List(
        [nnx.Linear(a, b, rngs=rngs) for a, b in zip(config.dims[:-1], config.dims[1:])]
      )

    def __call__(self, x):
      for layer in self.layers[:-1]:
        x = getattr(nnx, self.config.act)(layer(x))
      return self.layers[-1](x)

  model = MLP(Config(), nnx.Rngs(0))
  return [nnx.jit(lambda m, x: m(x))(model, x_((2, 3))), model.sizes]


def test_unhashable_config_attributes_like_flax():
  f_out, p_out = run_both(_config_module_program)
  same(f_out, p_out)
