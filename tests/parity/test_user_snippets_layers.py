"""Differential tests, part 5: layer options and state updated through transforms (BatchNorm
statistics, Dropout keys). See ``test_user_snippets.py`` for the helpers and conventions."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_user_snippets import paths, pure, run_both, same, x_

import pynnx

fnnx = pytest.importorskip("flax.nnx")

SNIPPETS = {}


def snippet(fn):
  SNIPPETS[fn.__name__] = fn
  return fn


# --- layer options ---


@snippet
def conv_transpose_options(nnx):
  rngs = nnx.Rngs(0)
  x = x_((1, 5, 5, 2))
  a = nnx.ConvTranspose(2, 3, (3, 3), strides=2, padding="SAME", transpose_kernel=True, rngs=rngs)
  b = nnx.ConvTranspose(2, 3, (3, 3), padding="CIRCULAR", rngs=rngs)
  c = nnx.ConvTranspose(
    2, 3, (2, 2), strides=(2, 1), padding="VALID", kernel_dilation=(1, 2), rngs=rngs
  )
  d = nnx.Conv(2, 3, (3, 3), mask=jnp.ones((3, 3, 2, 3)).at[1, 1].set(0), rngs=rngs)
  return [a(x), b(x), c(x), d(x)]


@snippet
def rnn_options(nnx):
  rngs = nnx.Rngs(0)
  x = x_((2, 5, 3))
  lens = jnp.array([5, 3])
  rnn = nnx.RNN(nnx.SimpleCell(3, 4, rngs=rngs), return_carry=True)
  c, y = rnn(x, seq_lengths=lens)
  rev = nnx.RNN(nnx.OptimizedLSTMCell(3, 4, rngs=rngs), reverse=True, keep_order=True)
  tm = nnx.RNN(nnx.GRUCell(3, 4, rngs=rngs), time_major=True)
  bi = nnx.Bidirectional(
    nnx.RNN(nnx.GRUCell(3, 2, rngs=rngs)), nnx.RNN(nnx.GRUCell(3, 2, rngs=rngs)), return_carry=True
  )
  bc, by = bi(x, seq_lengths=lens)
  return [c, y, rev(x, seq_lengths=lens), tm(jnp.swapaxes(x, 0, 1)), bc, by]


@snippet
def pooling_options(nnx):
  x = x_((1, 5, 5, 2))
  return [
    nnx.avg_pool(x, (3, 3), padding="SAME", count_include_pad=False),
    nnx.min_pool(x, (2, 2), strides=(2, 2)),
    nnx.pool(x, 0.0, jax.lax.add, (2, 2), (1, 1), "VALID"),
    nnx.max_pool(x_((2, 7, 3)), (3,), strides=(2,)),
  ]


@snippet
def masks(nnx):
  q = jnp.array([[1, 1, 0]])
  k = jnp.array([[1, 0, 1, 1]])
  m1 = nnx.make_attention_mask(q, k)
  m2 = nnx.make_causal_mask(jnp.ones((1, 3)))
  m3 = nnx.combine_masks(m1[..., :3], m2)
  m4 = nnx.make_attention_mask(q, k, pairwise_fn=jnp.greater_equal, extra_batch_dims=1)
  return [m1, m2, m3, m4]


@snippet
def linear_general_batch_and_einsum_bias(nnx):
  rngs = nnx.Rngs(0)
  lg = nnx.LinearGeneral((2, 3), (4,), axis=(-2, -1), rngs=rngs)
  es = nnx.Einsum("...ij,jk->...ik", (3, 5), (5,), rngs=rngs)
  x = x_((2, 2, 3))
  return [lg(x), es(x), es.bias.value.shape]


@snippet
def mha_view_decode(nnx):
  mha = nnx.MultiHeadAttention(2, 4, qkv_features=4, decode=False, rngs=nnx.Rngs(0))
  x = x_((1, 3, 4))
  mha.init_cache((1, 3, 4))
  ys = [mha(x[:, i : i + 1], decode=True) for i in range(3)]
  return [
    jnp.concatenate(ys, 1),
    mha(x, mask=nnx.make_causal_mask(jnp.ones((1, 3)))),
    paths(nnx, nnx.state(mha, nnx.Cache)),
  ]


@snippet
def metrics_argname(nnx):
  a = nnx.metrics.Average(argname="err")
  a.update(err=jnp.array([1.0, 3.0]))
  a.update(err=jnp.array([5.0]), other=1)
  mm = nnx.MultiMetric(e=nnx.metrics.Average("err"), f=nnx.metrics.Average("f"))
  mm.update(err=jnp.float32(2.0), f=jnp.float32(4.0))
  return [a.compute(), mm.compute()]


# --- state updates through transforms (BatchNorm statistics, Dropout keys) ---


def _block(nnx):
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(3, 3, rngs=rngs)
      self.bn = nnx.BatchNorm(3, rngs=rngs)
      self.d = nnx.Dropout(0.3, rngs=rngs)

    def __call__(self, x):
      return self.d(nnx.relu(self.bn(self.l(x))))

  return Block


@snippet
def scan_layers_with_batchnorm_and_dropout(nnx):
  Block = _block(nnx)

  @nnx.split_rngs(splits=3)
  @nnx.vmap
  def make(rngs):
    return Block(rngs)

  stack = make(nnx.Rngs(0, dropout=1))

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
  def fwd(x, b):
    return b(x)

  y = fwd(x_((4, 3)), stack)
  return [
    y,
    stack.bn.mean.value,
    stack.d.rngs.count.value,
    jax.random.key_data(stack.d.rngs.key.value),
  ]


@snippet
def remat_batchnorm(nnx):
  Block = _block(nnx)
  b = Block(nnx.Rngs(0, dropout=1))
  f = nnx.remat(lambda b, x: b(x))
  y = f(b, x_((4, 3)))
  g = nnx.grad(lambda b: f(b, x_((4, 3))).sum())(b)
  return [y, b.bn.mean.value, b.d.rngs.count.value, pure(nnx, nnx.state(g, nnx.Param))]


@snippet
def cond_mutates(nnx):
  Block = _block(nnx)
  b = Block(nnx.Rngs(0, dropout=1))

  @nnx.jit
  def f(b, x, flag):
    return nnx.cond(flag, lambda b, x: b(x), lambda b, x: x, b, x)

  y1 = f(b, x_((4, 3)), True)
  y2 = f(b, x_((4, 3)), False)
  return [y1, y2, b.bn.mean.value, b.d.rngs.count.value]


@snippet
def vmap_batchnorm_stats_per_member(nnx):
  Block = _block(nnx)

  @nnx.split_rngs(splits=2)
  @nnx.vmap
  def make(rngs):
    return Block(rngs)

  ens = make(nnx.Rngs(0, dropout=1))

  @nnx.vmap(in_axes=(0, None))
  def fwd(b, x):
    return b(x)

  y = fwd(ens, x_((4, 3)))
  return [y, ens.bn.mean.value, ens.d.rngs.count.value]


# --- Rngs held by a Module; a jitted sampling loop over an attention cache ---


@snippet
def rngs_stored_on_module(nnx):
  class Noisy(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(2, 2, rngs=rngs)
      self.rngs = rngs

    def __call__(self, x):
      noise = jax.random.normal(self.rngs.noise(), x.shape)
      return self.l(x + noise)

  m = Noisy(nnx.Rngs(0, noise=5))
  f = nnx.jit(lambda m, x: m(x))
  a = f(m, jnp.ones((1, 2)))
  b = f(m, jnp.ones((1, 2)))
  return [a, b, m.rngs.noise.count.value, paths(nnx, nnx.state(m, nnx.RngState))]


@snippet
def sampling_loop_with_cache(nnx):
  class LM(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(10, 8, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(2, 8, decode=True, rngs=rngs)
      self.out = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, t):
      return self.out(self.attn(self.embed(t)))

  m = LM(nnx.Rngs(0))
  m.attn.init_cache((1, 5, 8))

  @nnx.jit
  def step(m, t):
    return jnp.argmax(m(t), axis=-1)

  tok = jnp.array([[1]])
  toks = []
  for _ in range(4):
    tok = step(m, tok)
    toks.append(tok)
  return [jnp.concatenate(toks, 1), m.attn.cache_index.value]


# --- optax extras through nnx.Optimizer ---


@snippet
def optimizer_value_kwarg_and_hyperparams(nnx):
  m = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  tx = optax.chain(
    optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
    optax.contrib.reduce_on_plateau(patience=1, factor=0.5),  # needs `value=` in update
  )
  opt = nnx.Optimizer(m, tx, wrt=nnx.Param)
  x = x_((4, 2))
  losses = []
  for _ in range(4):
    loss, g = nnx.value_and_grad(lambda m: (m(x) ** 2).mean())(m)
    opt.update(m, g, value=loss)
    losses.append(loss)
  lr = opt.opt_state[0].hyperparams["learning_rate"]
  return [losses, lr.value if hasattr(lr, "value") else lr, m.kernel.value]


@snippet
def schedule_and_step(nnx):
  m = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  sched = optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, 10)
  opt = nnx.Optimizer(m, optax.adamw(sched), wrt=nnx.Param)
  x = x_((4, 2))
  for _ in range(3):
    opt.update(m, nnx.grad(lambda m: (m(x) ** 2).mean())(m))
  return [opt.step.value, sched(opt.step.value), m.kernel.value]


# --- Variable helper methods (model surgery) ---


@snippet
def variable_copy_from_and_metadata_checks(nnx):
  pretrained = nnx.Linear(2, 3, rngs=nnx.Rngs(1))
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  model.kernel.copy_from(pretrained.kernel)
  model.bias.set_raw_value(model.bias.get_raw_value() + 1)
  tagged = nnx.Param(jnp.ones(2), tag="x")
  return [
    model.kernel.value,
    model.bias.value,
    model(jnp.ones((1, 2))),
    tagged.has_metadata("tag"),
    tagged.has_metadata("missing"),
    tagged.var_type.__name__,
  ]


@snippet
def python_scalar_variable(nnx):
  class Count(nnx.Variable):
    pass

  class Counter(nnx.Module):
    def __init__(self):
      self.count = Count(0)
      self.lr = nnx.Variable(0.5)

    def __call__(self):
      self.count.value += 1
      return self.lr.value * 2

  c = Counter()
  c()
  c()
  eager = c.count.value
  y = nnx.jit(lambda c: c())(c)
  return [eager, type(eager).__name__, c.count.value, y, str(jnp.asarray(c.count.value).dtype)]


@snippet
def stateful_module_why_nnx(nnx):
  class Count(nnx.Variable):
    pass

  class Linear(nnx.Module):
    def __init__(self, din, dout, *, rngs):
      self.w = nnx.Param(jax.random.uniform(rngs.params(), (din, dout)))
      self.b = nnx.Param(jnp.zeros((dout,)))
      self.count = Count(jnp.array(0))

    def __call__(self, x):
      self.count.value += 1
      return x @ self.w + self.b

  model = Linear(2, 5, rngs=nnx.Rngs(params=0))
  y = model(x=jnp.ones((1, 2)))
  graphdef, params, counts = nnx.split(model, nnx.Param, Count)

  @jax.jit
  def fwd(graphdef, params, counts, x):
    m = nnx.merge(graphdef, params, counts)
    y = m(x)
    _, _, counts = nnx.split(m, nnx.Param, Count)
    return y, counts

  y2, counts = fwd(graphdef, params, counts, jnp.ones((1, 2)))
  nnx.update(model, counts)
  return [y, y2, model.count.value]


# --- unbound methods, vjp, DiffState(Param) ---


@snippet
def unbound_methods_transformed(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
      return self.l(x)

    def energy(self, x):
      return (self(x) ** 2).sum()

  m = M(nnx.Rngs(0))
  x = x_((4, 3))
  y = nnx.jit(M.__call__)(m, x)
  yv = nnx.vmap(M.__call__, in_axes=(None, 0))(m, x)
  g, aux = nnx.grad(lambda m, x: (M.energy(m, x), x.sum()), has_aux=True)(m, x)
  return [y, yv, pure(nnx, nnx.state(g, nnx.Param)), aux]


@snippet
def vjp_jvp(nnx):
  m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  x = jnp.ones((1, 2))
  out, vjp_fn = nnx.vjp(lambda m, x: m(x), m, x, graph=False)  # flax: graph mode unsupported
  gm, gx = vjp_fn(jnp.ones((1, 2)))
  return [out, pure(nnx, nnx.state(gm, nnx.Param)), gx]


@snippet
def value_and_grad_diffstate_param(nnx):
  m = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
  loss, g = nnx.value_and_grad(lambda m: m(x_((4, 2))).sum(), argnums=nnx.DiffState(0, nnx.Param))(
    m
  )
  return [loss, pure(nnx, nnx.state(g, nnx.Param)), m.layers[1].mean.value]


# --- subclassing built-in layers, properties and extra methods ---


@snippet
def subclass_builtin_layer(nnx):
  class ScaledLinear(nnx.Linear):
    def __init__(self, din, dout, *, rngs):
      super().__init__(din, dout, rngs=rngs)
      self.scale = nnx.Param(jnp.full((dout,), 2.0))

    def __call__(self, x):
      return super().__call__(x) * self.scale

  class Wide(nnx.Sequential):
    pass

  m = ScaledLinear(3, 2, rngs=nnx.Rngs(0))
  w = Wide(m, nnx.relu)
  return [m(x_((2, 3))), w(x_((2, 3))), paths(nnx, nnx.state(w))]


@snippet
def module_with_methods_and_properties(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.enc = nnx.Linear(3, 2, rngs=rngs)
      self.dec = nnx.Linear(2, 3, rngs=rngs)

    @property
    def latent_dim(self):
      return self.enc.out_features

    def encode(self, x):
      return self.enc(x)

    def __call__(self, x):
      return self.dec(self.encode(x))

  m = M(nnx.Rngs(0))
  z = nnx.jit(M.encode)(m, x_((1, 3)))
  return [m.latent_dim, z, m(x_((1, 3))), m.enc.in_features, m.enc.use_bias]


# --- copies: deepcopy target networks, pickle ---


@snippet
def target_network_deepcopy(nnx):
  q = nnx.Sequential(
    nnx.Linear(2, 4, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(4, 1, rngs=nnx.Rngs(1))
  )
  target = copy.deepcopy(q)
  opt = nnx.Optimizer(q, optax.sgd(0.1), wrt=nnx.Param)
  opt.update(q, nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(q))
  # soft (Polyak) update of the target network
  tau = 0.5
  new = jax.tree.map(
    lambda t, s: t * (1 - tau) + s * tau, nnx.state(target, nnx.Param), nnx.state(q, nnx.Param)
  )
  nnx.update(target, new)
  shallow = copy.copy(q)
  return [
    target.layers[0].kernel.value,
    q.layers[0].kernel.value,
    shallow.layers[0].kernel is q.layers[0].kernel,
  ]


@snippet
def pickle_roundtrip(nnx):
  m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  m2 = pickle.loads(pickle.dumps(m))
  return [m2(jnp.ones((1, 2))), m2.kernel.value]


# --- NumPy (float64 / int64) inputs, a wrong rngs argument ---


@snippet
def numpy_inputs(nnx):
  rngs = nnx.Rngs(0)
  lin = nnx.Linear(3, 2, rngs=rngs)
  emb = nnx.Embed(5, 3, rngs=rngs)
  conv = nnx.Conv(1, 2, (2, 2), rngs=rngs)
  ln = nnx.LayerNorm(3, rngs=rngs)
  x64 = np.random.default_rng(0).normal(size=(2, 3))
  idx = np.array([0, 4], dtype=np.int64)
  img = np.ones((1, 4, 4, 1), dtype=np.float64)
  bn = nnx.BatchNorm(3, rngs=rngs)
  rms = nnx.RMSNorm(3, rngs=rngs)
  return [lin(x64), emb(idx), conv(img), ln(x64), bn(x64), rms(x64)]


@snippet
def int_rngs_argument_error(nnx):
  try:
    nnx.Linear(2, 3, rngs=0)
    return ["ok"]
  except Exception as e:
    return [[c.__name__ for c in type(e).__mro__ if c.__module__ == "builtins"][0]]


# --- metrics: binary accuracy, metric state, updates under jit ---


@snippet
def binary_accuracy_and_metric_state(nnx):
  acc = nnx.metrics.Accuracy(threshold=0.5)
  acc.update(logits=jnp.array([0.2, 0.7, 0.9]), labels=jnp.array([0, 1, 0]))
  avg = nnx.metrics.Average()
  avg.update(values=jnp.ones((2, 3)))
  mm = nnx.MultiMetric(a=nnx.metrics.Average("x"))
  mm.update(x=jnp.float32(1.0))
  st = nnx.state(mm)
  return [acc.compute(), avg.compute(), paths(nnx, st)]


@snippet
def metrics_in_jit_with_state_split(nnx):
  mm = nnx.MultiMetric(loss=nnx.metrics.Average("loss"), acc=nnx.metrics.Accuracy())

  @nnx.jit
  def upd(mm, logits, labels):
    mm.update(loss=jnp.mean(logits), logits=logits, labels=labels)

  for i in range(3):
    upd(mm, x_((4, 3), i), jnp.array([0, 1, 2, 0]))
  return [mm.compute(), type(mm.acc).__name__]


# --- custom rng collections, more initializers ---


@snippet
def custom_rng_collection(nnx):
  d = nnx.Dropout(0.5, rng_collection="noise", rngs=nnx.Rngs(noise=4))
  mha = nnx.MultiHeadAttention(2, 4, dropout_rate=0.5, decode=False, rngs=nnx.Rngs(0, dropout=2))
  x = jnp.ones((1, 3, 4))
  return [
    d(jnp.ones(8)),
    d(jnp.ones(8)),
    paths(nnx, nnx.state(d)),
    mha(x, deterministic=False),
    mha(x, deterministic=False, rngs=nnx.Rngs(dropout=9)),
  ]


@snippet
def initializers_more(nnx):
  k = jax.random.key(3)
  init = nnx.initializers
  return [
    init.glorot_uniform()(k, (3, 4)),
    init.kaiming_uniform()(k, (3, 4)),
    init.lecun_uniform()(k, (3, 4)),
    init.he_normal()(k, (3, 4)),
    init.uniform(0.5)(k, (3,)),
    init.zeros_init()(k, (2,)),
    init.constant(3)(k, (2,), jnp.int32),
    init.normal(1.0)(k, (2,), jnp.bfloat16),
  ]


@snippet
def jit_keyword_module_and_donate_argnames(nnx):
  m = nnx.BatchNorm(3, rngs=nnx.Rngs(0))

  @nnx.jit(donate_argnames=("model",))
  def f(x, *, model):
    return model(x)

  y = f(x_((4, 3)), model=m)
  y2 = f(x=x_((4, 3), 1), model=m)
  return [y, y2, m.mean.value]


def test_copy_from_another_variable_type_raises_like_flax():
  f_raised = pytest.raises(ValueError)
  with f_raised:
    fnnx.Param(jnp.ones(2)).copy_from(fnnx.BatchStat(jnp.ones(2)))
  with pytest.raises(pynnx.StateMismatchError, match=r"a Param can only copy another Param"):
    pynnx.Param(jnp.ones(2)).copy_from(pynnx.BatchStat(jnp.ones(2)))


# int rngs / NumPy inputs work at run time (as in Flax) but are outside the annotations.
MISTYPED = {"int_rngs_argument_error", "numpy_inputs"}


@pytest.mark.parametrize(
  "name",
  [
    pytest.param(n, marks=pytest.mark.no_typecheck("passes arguments outside the annotations"))
    if n in MISTYPED
    else n
    for n in sorted(SNIPPETS)
  ],
)
def test_snippet(name):
  f_out, p_out = run_both(SNIPPETS[name])
  same(f_out, p_out)
