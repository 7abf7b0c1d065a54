"""Differential tests, part 2: user programs around randomness, training loops, metrics, layers
and transforms (see ``test_user_snippets.py`` for the helpers and the conventions)."""

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


def _keys(*keys):
  return [jax.random.key_data(k) for k in keys]


# --- randomness ------------------------------------------------------------------------------


@snippet
def rngs_streams(nnx):
  rngs = nnx.Rngs(0, params=1, dropout=2)
  out = _keys(rngs.params(), rngs.params(), rngs.dropout(), rngs["dropout"](), rngs())
  out += _keys(rngs.default(), rngs.noise())  # an unknown name falls back to default
  out.append(rngs.params.count.value)
  out.append(rngs.normal((2,)))
  out.append(rngs.params.uniform((3,)))
  return out


@snippet
def rngs_from_key_and_int(nnx):
  a = nnx.Rngs(jax.random.key(5))
  b = nnx.Rngs(5)
  c = nnx.Rngs(params=jax.random.PRNGKey(5))
  return _keys(a(), b(), c.params())


@snippet
def dropout_key_stream_and_reseed(nnx):
  model = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=7))
  x = jnp.ones((2, 6))
  a, b = model(x), model(x)
  nnx.reseed(model, dropout=7)
  c = model(x)
  d = model(x, rngs=nnx.Rngs(dropout=3))
  e = model(x, deterministic=True)
  return [a, b, c, d, e]


@snippet
def split_rngs_ensemble(nnx):
  class Member(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
      return self.linear(x)

  @nnx.split_rngs(splits=4)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def create(rngs):
    return Member(rngs)

  ensemble = create(nnx.Rngs(0))

  @nnx.vmap(in_axes=(0, None), out_axes=0)
  def forward(model, x):
    return model(x)

  y = forward(ensemble, x_((5, 3)))
  return [ensemble.linear.kernel.value, y]


@snippet
def fork_rngs_context(nnx):
  rngs = nnx.Rngs(params=0, dropout=1)
  split = rngs.split({"params": 3})
  plain = rngs.fork()
  # keys of a split stream are only drawn inside vmap in flax; compare the stream keys
  return _keys(split.params.key.value, split.dropout(), plain.params(), rngs.params())


# --- training loops --------------------------------------------------------------------------


class _Data:
  x = x_((16, 3), 1)
  y = jnp.sum(x_((16, 3), 1), axis=1, keepdims=True) * 0.5 + 0.1


def _regressor(nnx):
  class Regressor(nnx.Module):
    def __init__(self, rngs):
      self.hidden = nnx.Linear(3, 8, rngs=rngs)
      self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
      return self.out(nnx.relu(self.hidden(x)))

  return Regressor(nnx.Rngs(0))


@snippet
def optimizer_training_loop(nnx):
  model = _regressor(nnx)
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    def loss_fn(model):
      return jnp.mean((model(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [train_step(model, optimizer, _Data.x, _Data.y) for _ in range(5)]
  return [losses, pure(nnx, nnx.state(model, nnx.Param)), optimizer.step.value]


@snippet
def optimizer_eager_with_metrics(nnx):
  model = _regressor(nnx)
  optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)
  metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"))
  history = []
  for step in range(3):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(_Data.x) - _Data.y) ** 2))(model)
    optimizer.update(model, grads)
    metrics.update(loss=loss)
    history.append(metrics.compute())
    if step == 1:
      metrics.reset()
  return [history, model.out.kernel.value]


@snippet
def classifier_accuracy_metrics(nnx):
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(3, 4, rngs=rngs)

    def __call__(self, x):
      return self.linear(x)

  model = Net(nnx.Rngs(2))
  labels = jnp.array([0, 1, 2, 3] * 4)
  optimizer = nnx.Optimizer(model, optax.adamw(0.05), wrt=nnx.Param)
  metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))

  def loss_fn(model, x, y):
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, logits

  @nnx.jit
  def train_step(model, optimizer, metrics, x, y):
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(model, x, y)
    metrics.update(loss=loss, logits=logits, labels=y)
    optimizer.update(model, grads)

  @nnx.jit
  def eval_step(model, metrics, x, y):
    loss, logits = loss_fn(model, x, y)
    metrics.update(loss=loss, logits=logits, labels=y)

  results = []
  for _ in range(4):
    train_step(model, optimizer, metrics, _Data.x, labels)
    results.append(metrics.compute())
  metrics.reset()
  eval_step(model, metrics, _Data.x, labels)
  results.append(metrics.compute())
  return results


@snippet
def grad_with_diff_state(nnx):
  model = _regressor(nnx)

  def loss_fn(model):
    return jnp.mean((model(_Data.x) - _Data.y) ** 2)

  only_hidden = nnx.All(nnx.Param, nnx.PathContains("hidden"))
  grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, only_hidden))(model)
  full = nnx.grad(loss_fn)(model)
  return [
    paths(nnx, nnx.state(grads, nnx.Param)),
    pure(nnx, nnx.state(grads, nnx.Param)),
    pure(nnx, nnx.state(full, nnx.Param)),
  ]


@snippet
def frozen_part_optimizer(nnx):
  model = _regressor(nnx)
  trainable = nnx.All(nnx.Param, nnx.PathContains("out"))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=trainable)

  @nnx.jit
  def step(model, optimizer):
    loss_fn = lambda m: jnp.mean((m(_Data.x) - _Data.y) ** 2)  # noqa: E731
    grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, trainable))(model)
    optimizer.update(model, grads)

  before = model.hidden.kernel.value
  step(model, optimizer)
  step(model, optimizer)
  return [before, model.hidden.kernel.value, model.out.kernel.value]


@snippet
def jit_donate_and_static(nnx):
  model = _regressor(nnx)

  @nnx.jit(donate_argnums=0)
  def scale(model, factor):
    model.out.kernel.value = model.out.kernel.value * factor
    return model(_Data.x)

  y = scale(model, 2.0)

  @nnx.jit(static_argnums=1)
  def apply(model, relu):
    h = model.hidden(_Data.x)
    return nnx.relu(h) if relu else h

  return [y, model.out.kernel.value, apply(model, True), apply(model, False)]


@snippet
def remat_block(nnx):
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
      return nnx.tanh(self.linear(x))

  model = Block(nnx.Rngs(0))

  @nnx.remat
  def apply(m, x):
    return m(x)

  def loss(m):
    return apply(m, _Data.x).sum()

  grads = nnx.grad(loss)(model)
  return [apply(model, _Data.x), pure(nnx, nnx.state(grads, nnx.Param))]


@snippet
def scan_over_layers(nnx):
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(4, 4, rngs=rngs)
      self.norm = nnx.LayerNorm(4, rngs=rngs)

    def __call__(self, x):
      return nnx.relu(self.norm(self.linear(x)))

  @nnx.split_rngs(splits=3)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(rngs):
    return Block(rngs)

  stack = make(nnx.Rngs(0))

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
  def forward(x, block):
    return block(x)

  y = forward(x_((2, 4)), stack)

  def loss(stack):
    return forward(x_((2, 4)), stack).sum()

  grads = nnx.grad(loss)(stack)
  return [y, stack.linear.kernel.value.shape, pure(nnx, nnx.state(grads, nnx.Param))]


@snippet
def vmap_over_batch(nnx):
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))

  @nnx.vmap(in_axes=(None, 0))
  def per_example(m, x):
    return m(x[None])[0]

  return [per_example(model, _Data.x), model(_Data.x)]


# --- layers ----------------------------------------------------------------------------------


@snippet
def conv_layers(nnx):
  rngs = nnx.Rngs(0)
  conv = nnx.Conv(3, 8, kernel_size=(3, 3), rngs=rngs)
  strided = nnx.Conv(8, 4, kernel_size=(3, 3), strides=2, padding="VALID", rngs=rngs)
  transposed = nnx.ConvTranspose(4, 2, kernel_size=(2, 2), strides=(2, 2), rngs=rngs)
  conv1d = nnx.Conv(2, 3, kernel_size=3, feature_group_count=1, use_bias=False, rngs=rngs)
  x = x_((2, 9, 9, 3))
  h = conv(x)
  s = strided(h)
  t = transposed(s)
  return [h, s, t, conv1d(x_((2, 7, 2))), conv.kernel.value.shape, transposed.kernel.value]


@snippet
def embed_and_attend(nnx):
  embed = nnx.Embed(num_embeddings=10, features=4, rngs=nnx.Rngs(0))
  tokens = jnp.array([[1, 2, 3], [4, 5, 9]])
  h = embed(tokens)
  return [h, embed.attend(h), embed.embedding.value]


@snippet
def normalizations(nnx):
  rngs = nnx.Rngs(0)
  x = x_((2, 5, 6))
  ln = nnx.LayerNorm(6, rngs=rngs)
  rms = nnx.RMSNorm(6, rngs=rngs)
  gn = nnx.GroupNorm(6, num_groups=3, rngs=rngs)
  bn = nnx.BatchNorm(6, momentum=0.9, rngs=rngs)
  y_bn = bn(x)
  bn_eval = bn(x, use_running_average=True)
  return [ln(x), rms(x), gn(x), y_bn, bn_eval, bn.mean.value, bn.var.value]


@snippet
def attention_self_and_decode(nnx):
  mha = nnx.MultiHeadAttention(
    num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=nnx.Rngs(0)
  )
  x = x_((1, 4, 8))
  mask = nnx.make_causal_mask(jnp.ones((1, 4)))
  full = mha(x, mask=mask)
  mha.init_cache((1, 4, 8))
  steps = [mha(x[:, i : i + 1], decode=True) for i in range(4)]
  return [full, jnp.concatenate(steps, axis=1), mha.cache_index.value]


@snippet
def attention_with_dropout(nnx):
  mha = nnx.MultiHeadAttention(
    num_heads=2, in_features=4, dropout_rate=0.5, decode=False, rngs=nnx.Rngs(0, dropout=1)
  )
  x = x_((2, 3, 4))
  train = mha(x, x, deterministic=False)
  mha.eval()
  return [train, mha(x)]


@snippet
def recurrent_cells(nnx):
  rngs = nnx.Rngs(0)
  lstm = nnx.LSTMCell(3, 5, rngs=rngs)
  gru = nnx.GRUCell(3, 5, rngs=rngs)
  x = x_((2, 3))
  carry = lstm.initialize_carry((2, 3), rngs)
  carry, y = lstm(carry, x)
  h = gru.initialize_carry((2, 3), rngs)
  h, z = gru(h, x)
  rnn = nnx.RNN(nnx.LSTMCell(3, 4, rngs=rngs))
  seq = rnn(x_((2, 6, 3)))
  return [carry, y, h, z, seq]


@snippet
def lora_adapters(nnx):
  rngs = nnx.Rngs(0)
  lora = nnx.LoRA(4, 2, 3, rngs=rngs)
  wrapped = nnx.LoRALinear(4, 3, lora_rank=2, rngs=rngs)
  x = x_((2, 4))
  return [
    lora(x),
    wrapped(x),
    paths(nnx, nnx.state(wrapped)),
    paths(nnx, nnx.state(wrapped, nnx.LoRAParam)),
  ]


@snippet
def activations_and_pooling(nnx):
  x = x_((1, 6, 6, 2))
  return [
    nnx.relu(x),
    nnx.gelu(x),
    nnx.gelu(x, approximate=False),
    nnx.silu(x),
    nnx.softmax(x, axis=-1),
    nnx.log_softmax(x),
    nnx.sigmoid(x),
    nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2)),
    nnx.max_pool(x, window_shape=(3, 3), strides=(1, 1), padding="SAME"),
    nnx.one_hot(jnp.array([0, 2]), 3),
  ]


@snippet
def initializers(nnx):
  key = jax.random.key(0)
  init = nnx.initializers
  layer = nnx.Linear(
    3,
    4,
    kernel_init=init.xavier_uniform(),
    bias_init=init.constant(0.1),
    rngs=nnx.Rngs(0),
  )
  return [
    layer.kernel.value,
    layer.bias.value,
    init.lecun_normal()(key, (3, 4)),
    init.he_uniform()(key, (2, 5)),
    init.normal(0.02)(key, (4,)),
    init.truncated_normal(stddev=0.5)(key, (3,)),
    init.orthogonal()(key, (3, 3)),
    init.zeros(key, (2,)),
    init.ones_init()(key, (2,)),
    init.variance_scaling(2.0, "fan_in", "normal")(key, (3, 2)),
  ]


def _builtin_classes(fn):
  try:
    fn()
  except Exception as err:  # noqa: BLE001 - the classes are the result
    return [c.__name__ for c in type(err).__mro__ if c.__module__ == "builtins"]
  return []


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_error_classes_are_the_ones_flax_raises():
  """pynnx raises its own subclasses; each must also be the builtin class flax raises, so a
  user's ``except`` clause keeps working."""

  def run(nnx):
    layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))

    def iadd():
      kernel = layer.kernel
      kernel += 1  # would silently rebind `kernel` to an array

    return [
      _builtin_classes(lambda: nnx.Rngs(params=0).dropout()),
      _builtin_classes(lambda: layer(jnp.ones((1, 5)))),
      _builtin_classes(lambda: nnx.Dropout(0.5)(jnp.ones(2))),
      _builtin_classes(lambda: layer.missing),
      _builtin_classes(lambda: nnx.merge(nnx.graphdef(layer))),
      _builtin_classes(iadd),
      _builtin_classes(lambda: nnx.Rngs("abc")),
      _builtin_classes(lambda: nnx.Rngs(params=None)),
      _builtin_classes(lambda: nnx.Conv(2, 3, kernel_size=(3.0, 3), rngs=nnx.Rngs(0))),
      _builtin_classes(
        lambda: nnx.Conv(3, 4, kernel_size=(3, 3), rngs=nnx.Rngs(0))(jnp.ones((1, 5, 5, 2)))
      ),
    ]

  f_out, p_out = run_both(run)
  for i, (f, p) in enumerate(zip(f_out, p_out, strict=True)):
    assert f, i  # flax raises
    assert f[0] in p, (i, f, p)
  layer = pynnx.Linear(2, 3, rngs=pynnx.Rngs(0))
  with pytest.raises(pynnx.MissingStateError, match=r"nnx.merge\(graphdef, state\)"):
    pynnx.merge(pynnx.graphdef(layer))
  with pytest.raises(pynnx.RngError, match=r"needs an int seed or a PRNG key, got NoneType None"):
    pynnx.Rngs(params=None)
  with pytest.raises(pynnx.ConfigError, match=r"Conv: kernel_size must be an int or a sequence"):
    pynnx.Conv(2, 3, kernel_size="x", rngs=pynnx.Rngs(0))
  kernel = layer.kernel
  with pytest.raises(pynnx.VariableInPlaceError, match=r"variable\[\.\.\.\] \+= x"):
    kernel *= 2
  assert kernel is layer.kernel


# --- sharding annotations --------------------------------------------------------------------


@snippet
def partitioning_annotations(nnx):
  mesh = jax.make_mesh((2, 4), ("data", "model"))

  class Sharded(nnx.Module):
    def __init__(self, rngs):
      self.dense = nnx.Linear(
        4,
        8,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("model",)),
        rngs=rngs,
      )

    def __call__(self, x):
      return self.dense(x)

  with jax.set_mesh(mesh):  # flax 0.12.8 shards at creation and needs the mesh there
    model = Sharded(nnx.Rngs(0))
  state = nnx.state(model)
  specs = nnx.get_partition_spec(state)
  named = nnx.get_named_sharding(state, mesh)

  @nnx.jit
  def create():
    m = Sharded(nnx.Rngs(0))
    st = nnx.state(m)
    sharded = jax.lax.with_sharding_constraint(st, nnx.get_partition_spec(st))
    nnx.update(m, sharded)
    return m

  with jax.set_mesh(mesh):
    sharded_model = create()
    y = nnx.jit(lambda m, x: m(x))(sharded_model, jnp.ones((2, 4)))
  return [
    jax.tree.leaves(nnx.to_pure_dict(specs)),
    [s.spec for s in jax.tree.leaves(nnx.to_pure_dict(named))],
    model.dense.kernel.value.sharding.spec,
    model.dense.kernel.out_sharding,
    sharded_model.dense.kernel.value.sharding.spec,
    sharded_model.dense.kernel.value,
    y,
  ]


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_snippet(name):
  f_out, p_out = run_both(SNIPPETS[name])
  same(f_out, p_out)
