"""Differential tests, part 3: user programs around graph mode, control flow, checkpointing,
metrics and recurrent layers (see ``test_user_snippets.py`` for the helpers and conventions)."""

import contextlib
import warnings

import jax
import jax.numpy as jnp
import optax
import pytest
from test_user_snippets import paths, pure, run_both, same, x_

import pynnx

SNIPPETS = {}


def snippet(fn):
  SNIPPETS[fn.__name__] = fn
  return fn


@snippet
def graph_mode_tied_weights(nnx):
  class Tied(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(6, 4, rngs=rngs)
      self.proj = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, t):
      return self.embed.attend(self.proj(self.embed(t)))

  m = Tied(nnx.Rngs(0))
  opt = nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param)

  @nnx.jit
  def step(m, opt, t):
    loss, g = nnx.value_and_grad(lambda m: m(t).mean())(m)
    opt.update(m, g)
    return loss

  return [step(m, opt, jnp.array([1, 2])) for _ in range(3)] + [m.embed.embedding.value]


@snippet
def set_graph_mode_shared(nnx):
  # Flax's default is graph mode; pynnx code opts in once
  with nnx.set_graph_mode(True) if nnx is pynnx else contextlib.nullcontext():

    class Tied(nnx.Module):
      def __init__(self, rngs):
        self.a = nnx.Linear(2, 2, rngs=rngs)
        self.b = self.a

      def __call__(self, x):
        return self.b(self.a(x))

    m = Tied(nnx.Rngs(0))
    g = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(m)
    return [pure(nnx, nnx.state(g, nnx.Param)), paths(nnx, nnx.state(m))]


@snippet
def cond_and_fori(nnx):
  m = nnx.Linear(3, 3, rngs=nnx.Rngs(0))

  @nnx.jit
  def f(m, x, flag):
    y = nnx.cond(flag, lambda m, x: m(x), lambda m, x: x, m, x)

    def body(i, carry):
      m, x = carry
      return m, m(x)

    m, z = nnx.fori_loop(0, 3, body, (m, y))
    return z

  return [f(m, jnp.ones((1, 3)), True), f(m, jnp.ones((1, 3)), False)]


@snippet
def stateful_counter_in_jit(nnx):
  class Count(nnx.Variable):
    pass

  class M(nnx.Module):
    def __init__(self):
      self.n = Count(jnp.array(0))
      self.total = nnx.BatchStat(jnp.zeros(2))

    def __call__(self, x):
      self.n[...] += 1
      self.total.value = self.total.value + x
      return self.total.value

  m = M()
  f = nnx.jit(lambda m, x: m(x))
  for i in range(3):
    f(m, jnp.ones(2) * i)
  return [m.n.value, m.total.value]


@snippet
def einsum_linear_general(nnx):
  rngs = nnx.Rngs(0)
  lg = nnx.LinearGeneral((4,), (2, 3), rngs=rngs)
  lg2 = nnx.LinearGeneral((2, 3), 5, axis=(-2, -1), rngs=rngs)
  es = nnx.Einsum("bi,io->bo", (4, 5), (5,), rngs=rngs)
  x = x_((2, 4))
  return [lg(x), lg2(lg(x)), es(x), lg.kernel.value.shape]


@snippet
def instance_norm_and_dropout_broadcast(nnx):
  rngs = nnx.Rngs(0, dropout=1)
  inn = nnx.InstanceNorm(3, rngs=rngs)
  d = nnx.Dropout(0.3, broadcast_dims=(1,), rngs=rngs)
  x = x_((2, 4, 3))
  return [inn(x), d(x)]


@snippet
def module_iteration(nnx):
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.enc = nnx.Sequential(nnx.Linear(2, 3, rngs=rngs), nnx.Linear(3, 3, rngs=rngs))
      self.dec = nnx.Linear(3, 2, rngs=rngs)

  m = Net(nnx.Rngs(0))
  mods = [(tuple(str(p) for p in path), type(x).__name__) for path, x in nnx.iter_modules(m)]
  kids = [(str(name), type(x).__name__) for name, x in nnx.iter_children(m)]
  # nnx.List is a Pytree in pynnx, not a Module (docs/migrating.md): it is not yielded
  mods = [m for m in mods if m[1] != "List"]
  return [sorted(mods), sorted(kids)]


@snippet
def variable_metadata(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.w = nnx.Param(jnp.ones((2, 3)), description="weights")
      self.l = nnx.Linear(
        2,
        3,
        kernel_init=nnx.with_metadata(nnx.initializers.ones_init(), role="projection"),
        rngs=rngs,
      )

  m = M(nnx.Rngs(0))
  md = m.w.get_metadata()
  return [
    md.get("description"),
    m.w.description,
    m.l.kernel.get_metadata().get("role"),
    m.l.kernel.value,
  ]


@snippet
def capture_intermediates(nnx):
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
      h = self.a(x)
      self.sow(nnx.Intermediate, "h", h)
      return h * 2

  m = Block(nnx.Rngs(0))
  y, inter = nnx.capture(m, nnx.Intermediate)(x_((2, 3)))
  return [y, pure(nnx, inter)]


@snippet
def rnn_state(nnx):
  rnn = nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(0)))
  y = rnn(x_((2, 5, 3)))
  state = paths(nnx, nnx.state(rnn))
  # Documented (docs/migrating.md): flax's RNN always holds a `carry` RngStream; pynnx's only
  # when the cell has a random carry_init, since zero carries need no key.
  if nnx is not pynnx:
    assert (("rngs", "count"), "RngCount") in state
    state = [p for p in state if p[0][0] != "rngs"]
  return [y, state]


@snippet
def bidirectional(nnx):
  rngs = nnx.Rngs(0)
  f = nnx.RNN(nnx.LSTMCell(3, 4, rngs=rngs))
  b = nnx.RNN(nnx.LSTMCell(3, 4, rngs=rngs))
  bi = nnx.Bidirectional(f, b)
  return [bi(x_((2, 5, 3)))]


@snippet
def checkpoint_orbax(nnx):
  ocp = pytest.importorskip("orbax.checkpoint")
  m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  _, state = nnx.split(m)
  d = str(_TMP[0] / nnx.__name__)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(d + "/s", state)
  ckpt.wait_until_finished()
  abstract = nnx.eval_shape(lambda: nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
  gdef, abs_state = nnx.split(abstract)
  restored = ckpt.restore(d + "/s", abs_state)
  m2 = nnx.merge(gdef, restored)
  return [m2.kernel.value, m2(jnp.ones((1, 3)))]


@snippet
def welford_and_metric_types(nnx):
  avg = nnx.metrics.Average()
  avg.update(values=jnp.array([1.0, 2.0, 3.0]))
  avg.update(values=jnp.array(5.0))
  w = nnx.metrics.Welford()
  w.update(values=jnp.array([1.0, 2.0, 4.0]))
  acc = nnx.metrics.Accuracy()
  acc.update(logits=jnp.array([[0.1, 0.9], [0.8, 0.2]]), labels=jnp.array([1, 1]))
  stats = w.compute()
  return [
    avg.compute(),
    stats.mean,
    stats.standard_deviation,
    stats.standard_error_of_mean,
    acc.compute(),
  ]


@snippet
def optimizer_update_outside_jit_with_grads_state(nnx):
  m = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(m, optax.adam(1e-1), wrt=nnx.Param)
  x = x_((4, 2))
  y = x_((4, 1), 1)
  losses = []
  for _ in range(5):

    def loss_fn(m):
      return ((m(x) - y) ** 2).mean()

    loss, g = nnx.value_and_grad(loss_fn)(m)
    opt.update(m, g)
    losses.append(loss)
  return [losses, opt.step.value, len(jax.tree.leaves(nnx.state(opt)))]


# --- more everyday code ---


def _dropout_mlp(nnx):
  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(3, 8, rngs=rngs)
      self.bn = nnx.BatchNorm(8, rngs=rngs)
      self.drop = nnx.Dropout(0.2, rngs=rngs)
      self.l2 = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
      return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))

  return MLP(nnx.Rngs(0))


@snippet
def state_methods(nnx):
  m = _dropout_mlp(nnx)
  st = nnx.state(m)
  params = st.filter(nnx.Param)
  p2, rest = st.split(nnx.Param, ...)
  merged = nnx.State.merge(p2, rest)
  flat = st.flat_state()
  return [
    paths(nnx, params),
    paths(nnx, merged),
    len(flat),
    st["l1"]["kernel"].value,
    st.l1.kernel.value,
    sorted(str(k) for k in st.keys()),
    jax.tree.map(jnp.shape, st.to_pure_dict()),
  ]


@snippet
def variables_helper(nnx):
  m = _dropout_mlp(nnx)
  v = nnx.variables(m, nnx.BatchStat)
  return [paths(nnx, v)]


@snippet
def module_is_pytree(nnx):
  m = _dropout_mlp(nnx)
  leaves = jax.tree.leaves(m)
  m2 = jax.tree.map(lambda a: a * 0 if jnp.issubdtype(a.dtype, jnp.floating) else a, m)
  return [len(leaves), m2.l1.kernel.value, [leaf.shape for leaf in leaves]]


@snippet
def dropout_training_loop_jit(nnx):
  m = _dropout_mlp(nnx)
  opt = nnx.Optimizer(
    m,
    optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.add_decayed_weights(1e-4),
      optax.sgd(0.05, momentum=0.9),  # adam would amplify float noise in l1.bias (BN follows)
    ),
    wrt=nnx.Param,
  )
  x = x_((16, 3))
  y = jnp.array([0, 1] * 8)

  @nnx.jit
  def train_step(m, opt, x, y):
    def loss_fn(m):
      logits = m(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    (loss, logits), g = nnx.value_and_grad(loss_fn, has_aux=True)(m)
    opt.update(m, g)
    return loss

  @nnx.jit
  def eval_step(m, x):
    return m(x)

  losses = []
  for _ in range(5):
    m.train()
    losses.append(train_step(m, opt, x, y))
  m.eval()
  return [losses, eval_step(m, x), m.bn.mean.value, m.drop.rngs.count.value]


@snippet
def set_attributes(nnx):
  m = _dropout_mlp(nnx)
  m.set_attributes(deterministic=True, use_running_average=True)
  y1 = m(x_((4, 3)))
  m.set_attributes(deterministic=False, use_running_average=False)
  y2 = m(x_((4, 3)))
  return [y1, y2, m.drop.deterministic]


@snippet
def scan_rnn_loop(nnx):
  cell = nnx.GRUCell(3, 4, rngs=nnx.Rngs(0))
  xs = x_((6, 2, 3))
  h0 = cell.initialize_carry((2, 3), nnx.Rngs(1))

  @nnx.scan(in_axes=(None, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
  def run(cell, h, x):
    h, y = cell(h, x)
    return h, y

  h, ys = run(cell, h0, xs)
  return [h, ys]


@snippet
def scan_with_length(nnx):
  @nnx.scan(in_axes=nnx.Carry, out_axes=(nnx.Carry, 0), length=4)
  def count(c):
    return c + 1, c * 2

  return list(count(jnp.array(1.0)))


@snippet
def jit_static_argnames(nnx):
  m = nnx.Linear(3, 3, rngs=nnx.Rngs(0))

  @nnx.jit(static_argnames=("n",))
  def rep(m, x, n):
    for _ in range(n):
      x = m(x)
    return x

  return [rep(m, jnp.ones((1, 3)), n=2), rep(m, jnp.ones((1, 3)), n=3)]


@snippet
def conv_variants(nnx):
  rngs = nnx.Rngs(0)
  x = x_((1, 8, 8, 2))
  c1 = nnx.Conv(2, 3, (3, 3), padding="CIRCULAR", rngs=rngs)
  c2 = nnx.Conv(2, 3, (3, 3), kernel_dilation=2, rngs=rngs)
  c3 = nnx.Conv(2, 4, (3, 3), feature_group_count=2, rngs=rngs)
  c4 = nnx.Conv(2, 3, (2, 2), padding=((1, 0), (0, 1)), input_dilation=1, rngs=rngs)
  c5 = nnx.Conv(2, 3, (3,), padding="CAUSAL", rngs=rngs)
  return [c1(x), c2(x), c3(x), c4(x), c5(x_((1, 8, 2)))]


@snippet
def mha_variants(nnx):
  rngs = nnx.Rngs(0)
  mha = nnx.MultiHeadAttention(
    num_heads=4, in_features=8, qkv_features=16, out_features=6, decode=False, rngs=rngs
  )
  q = x_((2, 3, 8))
  kv = x_((2, 5, 8), 1)
  mask = nnx.make_attention_mask(jnp.ones((2, 3)), jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
  return [
    mha(q, kv, mask=mask),
    mha(q, kv, kv),
    nnx.dot_product_attention(x_((2, 3, 2, 4)), x_((2, 3, 2, 4), 1), x_((2, 3, 2, 4), 2)),
    paths(nnx, nnx.state(mha)),
  ]


@snippet
def grad_of_plain_params_dict(nnx):
  m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  gdef, params = nnx.split(m, nnx.Param)

  def loss(params, x):
    return nnx.merge(gdef, params)(x).sum()

  g = jax.grad(loss)(params, jnp.ones((1, 2)))
  return [pure(nnx, g), type(g).__name__]


@snippet
def reseed_and_rngs_in_jit(nnx):
  m = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=3))
  f = nnx.jit(lambda m, x: m(x))
  a = f(m, jnp.ones(8))
  b = f(m, jnp.ones(8))
  nnx.reseed(m, dropout=3)
  c = f(m, jnp.ones(8))
  return [a, b, c, m.rngs.count.value]


@snippet
def rngs_in_function_args(nnx):
  rngs = nnx.Rngs(0)

  @nnx.jit
  def sample(rngs):
    return jax.random.normal(rngs.params(), (3,)), rngs.dropout.bernoulli(0.5, (4,))

  a = sample(rngs)
  b = sample(rngs)
  return [a, b, rngs.default.count.value]


@snippet
def einops_style_embedding_model(nnx):
  class Transformer(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(20, 8, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(2, 8, decode=False, rngs=rngs)
      self.ln = nnx.LayerNorm(8, rngs=rngs)
      self.ff = nnx.Linear(8, 20, rngs=rngs)

    def __call__(self, t):
      h = self.embed(t)
      h = h + self.attn(self.ln(h), mask=nnx.make_causal_mask(t))
      return self.ff(h)

  m = Transformer(nnx.Rngs(0))
  t = jnp.array([[1, 5, 7, 2]])
  opt = nnx.Optimizer(m, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(m, opt, t):
    def loss_fn(m):
      logits = m(t[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, t[:, 1:]).mean()

    loss, g = nnx.value_and_grad(loss_fn)(m)
    opt.update(m, g)
    return loss

  return [step(m, opt, t) for _ in range(4)]


@snippet
def custom_init_param_dtype(nnx):
  lin = nnx.Linear(3, 4, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  l16 = nnx.Linear(3, 4, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  x = x_((2, 3))
  return [lin(x), l16(x.astype(jnp.bfloat16)), l16.kernel.value]


@snippet
def super_init_and_annotations(nnx):
  class M(nnx.Module):
    kernel: nnx.Param[jax.Array]

    def __init__(self, rngs: nnx.Rngs):
      super().__init__()
      self.kernel = nnx.Param(rngs.params.normal((2, 2)))
      self.training = True

    def __call__(self, x):
      return x @ self.kernel if self.training else x

  m = M(nnx.Rngs(0))
  y = m(jnp.ones((1, 2)))
  m.set_attributes(training=False)
  return [y, m(jnp.ones((1, 2))), m.kernel.value]


@snippet
def split_filters_not_exhaustive(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(2, 2, rngs=rngs)
      self.d = nnx.Dropout(0.1, rngs=rngs)
      self.bn = nnx.BatchNorm(2, rngs=rngs)

  m = M(nnx.Rngs(0))
  try:
    nnx.split(m, nnx.Param, nnx.BatchStat)
    r = "ok"
  except ValueError:
    r = "ValueError"
  gdef, p, b, rest = nnx.split(m, nnx.Param, nnx.BatchStat, ...)
  two = nnx.state(m, nnx.Param, nnx.BatchStat)
  m2 = nnx.merge(gdef, p, b, rest, copy=True)
  nnx.update(m2, p, b)
  return [r, paths(nnx, rest), len(two), paths(nnx, two[1]), m2.l.kernel.value]


@snippet
def orbax_with_list_int_keys(nnx):
  ocp = pytest.importorskip("orbax.checkpoint")
  m = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 1, rngs=nnx.Rngs(1)))
  pd = nnx.to_pure_dict(nnx.state(m))
  d = str(_TMP[0] / (nnx.__name__ + "_pure"))
  ck = ocp.PyTreeCheckpointer()
  ck.save(d, pd)
  with warnings.catch_warnings():  # orbax: no sharding info given at restore
    warnings.simplefilter("ignore", UserWarning)
    raw = ck.restore(d)
  target = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(5)), nnx.Linear(3, 1, rngs=nnx.Rngs(6)))
  st = nnx.state(target)
  nnx.replace_by_pure_dict(st, nnx.restore_int_paths(raw))
  nnx.update(target, st)
  return [
    sorted(str(k) for k in pd["layers"].keys()),
    sorted(raw["layers"].keys()),
    target.layers[1].kernel.value,
  ]


@snippet
def optimizer_with_jax_grad_state(nnx):
  m = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param)
  gdef, params, rest = nnx.split(m, nnx.Param, ...)

  def loss(params):
    return (nnx.merge(gdef, params, rest)(jnp.ones((2, 3))) ** 2).mean()

  g = jax.grad(loss)(params)
  opt.update(m, g)
  return [m.kernel.value, opt.step.value]


@snippet
def grads_tree_ops(nnx):
  m = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.BatchNorm(4, rngs=nnx.Rngs(1)))
  g = nnx.grad(lambda m: (m(x_((5, 3))) ** 2).mean())(m)
  gp = nnx.state(g, nnx.Param)
  norm = optax.tree.norm(gp)
  clipped = jax.tree.map(lambda x: jnp.clip(x, -0.1, 0.1), gp)
  return [norm, pure(nnx, clipped), g.layers[0].kernel.value]


@snippet
def metrics_average_in_loop(nnx):
  metrics = nnx.MultiMetric(acc=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))
  hist = {"acc": [], "loss": []}
  for i in range(3):
    logits = x_((8, 4), i)
    labels = jnp.arange(8) % 4
    metrics.update(logits=logits, labels=labels, loss=jnp.float32(i))
    for k, v in metrics.compute().items():
      hist[k].append(v)
  metrics.reset()
  return [hist, metrics.compute()]


@snippet
def abstract_init_partition(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(
        4, 8, kernel_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("a", "b")), rngs=rngs
      )

  with jax.set_mesh(jax.make_mesh((2, 4), ("a", "b"))):
    abstract = nnx.eval_shape(lambda: M(nnx.Rngs(0)))
  st = nnx.state(abstract)
  return [
    jax.tree.leaves(nnx.to_pure_dict(nnx.get_partition_spec(st))),
    jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(st)),
  ]


@snippet
def vmap_ensemble_train(nnx):
  class Member(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(2, 1, rngs=rngs)

    def __call__(self, x):
      return self.l(x)

  @nnx.split_rngs(splits=3)
  @nnx.vmap
  def make(rngs):
    return Member(rngs)

  ens = make(nnx.Rngs(0))
  opt = nnx.Optimizer(ens, optax.sgd(0.1), wrt=nnx.Param)
  x = x_((4, 2))
  y = x_((4, 1), 1)

  @nnx.jit
  def step(ens, opt):
    def loss(ens):
      preds = nnx.vmap(lambda m: m(x))(ens)
      return ((preds - y) ** 2).mean()

    loss_value, g = nnx.value_and_grad(loss)(ens)
    opt.update(ens, g)
    return loss_value

  return [[step(ens, opt) for _ in range(3)], ens.l.kernel.value]


@snippet
def embed_dtype_and_attend(nnx):
  e = nnx.Embed(5, 4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  return [e(jnp.array([0, 4])), e.attend(jnp.ones((1, 4), jnp.bfloat16))]


_TMP = []


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_snippet(name, tmp_path):
  _TMP[:] = [tmp_path]
  f_out, p_out = run_both(SNIPPETS[name])
  same(f_out, p_out)
