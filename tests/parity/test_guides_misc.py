"""Differential tests following Flax NNX's smaller guides: LoRA, intermediates (sow / pop),
the 0.12 Pytree guide (``nnx.Pytree``, ``nnx.data``, ``nnx.static``), Variable metadata,
model surgery on a frozen Module, and the Haiku / Linen migration
guides' NNX side.

Each program is written for this suite and demonstrates what the guide teaches; it runs on
``flax.nnx`` and on ``pynnx`` and the results are compared.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import pynnx
from tests.parity.test_user_snippets import paths, pure, run_both, same, x_

GUIDES = {}


def guide(fn):
  GUIDES[fn.__name__] = fn
  return fn


def _is_value_error(fn):
  try:
    fn()
  except ValueError:
    return True
  return False


# --- LoRA ------------------------------------------------------------------------------------


@guide
def lora_train_only_adapters(nnx):
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.base = nnx.LoRALinear(3, 4, lora_rank=2, rngs=rngs)
      self.head = nnx.Linear(4, 1, rngs=rngs)

    def __call__(self, x):
      return self.head(nnx.relu(self.base(x)))

  model = Model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.LoRAParam)

  @nnx.jit
  def step(model, optimizer, x, y):
    diff = nnx.DiffState(0, nnx.LoRAParam)
    loss, grads = nnx.value_and_grad(lambda m: ((m(x) - y) ** 2).mean(), argnums=diff)(model)
    optimizer.update(model, grads)
    return loss

  before = pure(nnx, nnx.state(model, nnx.Not(nnx.LoRAParam)))
  losses = [step(model, optimizer, x_((5, 3)), x_((5, 1), 1)) for _ in range(3)]
  after = pure(nnx, nnx.state(model, nnx.Not(nnx.LoRAParam)))
  return [
    losses,
    before,
    after,
    pure(nnx, nnx.state(model, nnx.LoRAParam)),
    paths(nnx, nnx.state(optimizer, nnx.OptState)),
  ]


@guide
def lora_wrapping_an_existing_layer(nnx):
  base = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
  lora = nnx.LoRA(3, 2, 4, base_module=base, rngs=nnx.Rngs(1))
  x = x_((2, 3))
  lora.lora_b[...] = jnp.ones((2, 4))
  custom = nnx.LoRA(3, 2, 4, lora_param_type=nnx.Param, rngs=nnx.Rngs(2))
  return [
    lora(x),
    base(x),
    paths(nnx, nnx.state(lora)),
    paths(nnx, nnx.state(custom, nnx.LoRAParam)),
    paths(nnx, nnx.state(custom, nnx.Param)),
  ]


# --- intermediates -----------------------------------------------------------------------------


@guide
def sow_reduce_and_pop(nnx):
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(2, 2, rngs=rngs)

    def __call__(self, x):
      y = self.linear(x)
      self.sow(nnx.Intermediate, "act", y)
      self.sow(
        nnx.Intermediate, "total", y.sum(), reduce_fn=lambda a, b: a + b, init_fn=lambda: 0.0
      )
      return y

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.a = Block(rngs)
      self.b = Block(rngs)

    def __call__(self, x):
      return self.b(self.a(x))

  model = Model(nnx.Rngs(0))
  model(jnp.ones(2))
  model(jnp.ones(2) * 2)
  inter = nnx.pop(model, nnx.Intermediate)
  left = nnx.state(model, nnx.Intermediate)
  return [paths(nnx, inter), pure(nnx, inter), paths(nnx, left)]


@guide
def custom_intermediate_type(nnx):
  class Activation(nnx.Intermediate):
    pass

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(2, 3, rngs=rngs)

    def __call__(self, x):
      y = self.linear(x)
      self.sow(Activation, "pre", y)
      self.sow(nnx.Intermediate, "post", nnx.relu(y))
      return y

  model = Model(nnx.Rngs(0))
  model(x_((2,)))
  acts = nnx.pop(model, Activation)
  rest = nnx.pop(model, nnx.Intermediate)
  return [paths(nnx, acts), paths(nnx, rest), pure(nnx, acts)]


# --- Pytree guide ------------------------------------------------------------------------------


@guide
def pytree_data_and_static(nnx):
  class Params(nnx.Pytree):
    def __init__(self, din, dout):
      self.din, self.dout = din, dout
      self.w = jnp.ones((din, dout))
      self.extra = nnx.data([jnp.zeros(dout), jnp.ones(dout)])
      self.scale = nnx.data(2.0)
      self.tag = nnx.static("dense")

  p = Params(2, 3)
  doubled = jax.tree.map(lambda a: a * 2, p)
  flat = jax.tree_util.tree_flatten_with_path(p)[0]
  return [
    [jax.tree_util.keystr(k) for k, _ in flat],
    [v for _, v in flat],
    [doubled.din, doubled.tag, doubled.scale, doubled.w, list(doubled.extra)],
    nnx.is_data(jnp.ones(1)),
    nnx.is_data(1.0),
  ]


@guide
def pytree_with_jit_and_grad(nnx):
  class Linear(nnx.Pytree):
    def __init__(self, din, dout, key):
      self.w = nnx.Param(jax.random.normal(key, (din, dout)))
      self.b = nnx.Param(jnp.zeros(dout))
      self.din = din

    def __call__(self, x):
      return x @ self.w + self.b

  lin = Linear(2, 3, jax.random.key(0))

  @jax.jit
  def loss(lin, x):
    return (lin(x) ** 2).sum()

  grads = jax.grad(loss)(lin, x_((4, 2)))
  nnx_grads = nnx.grad(loss)(lin, x_((4, 2)))
  return [loss(lin, x_((4, 2))), grads.w[...], pure(nnx, nnx.state(nnx_grads, nnx.Param))]


@guide
def pytree_annotations_mark_data_and_static(nnx):
  class Base(nnx.Pytree):
    count: nnx.Data[int]

    def __init__(self):
      self.count = 0
      self.name = "base"

  class Child(Base):
    rate: nnx.Data[float]
    width: nnx.Static[int]

    def __init__(self):
      super().__init__()
      self.rate, self.width, self.w = 0.5, 3, jnp.ones(2)

  class Scaled(nnx.Module):
    scale: nnx.Data[float]

    def __init__(self, rngs):
      self.linear = nnx.Linear(2, 2, rngs=rngs)
      self.scale = 2.0

    def __call__(self, x):
      return self.linear(x) * self.scale

  child = Child()
  model = Scaled(nnx.Rngs(0))
  # `scale` is traced: its gradient exists, and a new value does not recompile.
  g = jax.grad(lambda m: m(jnp.ones(2)).sum())(model)
  return [
    [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(child)[0]],
    jax.tree.leaves(child),
    g.scale,
    [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(model)[0]],
  ]


@guide
def static_array_is_an_error(nnx):
  class S(nnx.Pytree):
    def __init__(self):
      self.x = nnx.static(jnp.ones(1))

  return [_is_value_error(S)]


# --- Variables -------------------------------------------------------------------------------


@guide
def variable_metadata_and_replace(nnx):
  v = nnx.Param(jnp.ones(2), foo="bar", description="weights")
  moved = v.replace(jnp.zeros(3))
  renamed = v.replace(foo="baz")
  layer = nnx.Linear(
    2, 2, kernel_init=nnx.with_metadata(nnx.initializers.ones, foo="q"), rngs=nnx.Rngs(0)
  )
  v.set_metadata(foo="updated")
  return [
    v.foo,
    sorted(v.get_metadata()),
    [moved.foo, moved.shape, type(moved).__name__],
    renamed.foo,
    layer.kernel.get_metadata()["foo"],
    layer.kernel[...],
    v.get_metadata()["description"],
  ]


@guide
def custom_variable_types_in_state(nnx):
  class Stat(nnx.Variable):
    pass

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(2, 2, rngs=rngs)
      self.running = Stat(jnp.zeros(2))

    def __call__(self, x):
      y = self.linear(x)
      self.running[...] = 0.9 * self.running[...] + 0.1 * y.mean(0)
      return y

  model = Model(nnx.Rngs(0))
  nnx.jit(lambda m, x: m(x))(model, x_((3, 2)))
  graphdef, params, stats = nnx.split(model, nnx.Param, Stat)
  return [paths(nnx, params), paths(nnx, stats), pure(nnx, stats)]


# --- optimizer and metrics (MNIST / training guides) -----------------------------------------


@guide
def optimizer_with_filter_combinations(nnx):
  model = nnx.Sequential(
    nnx.Linear(2, 3, rngs=nnx.Rngs(0)),
    nnx.BatchNorm(3, rngs=nnx.Rngs(0)),
    nnx.LoRALinear(3, 1, lora_rank=1, rngs=nnx.Rngs(1)),
  )
  trainable = nnx.Any(nnx.LoRAParam, nnx.PathContains(0))
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2))
  optimizer = nnx.Optimizer(model, tx, wrt=trainable)
  loss = lambda m: m(x_((4, 2))).sum()  # noqa: E731
  grads = nnx.grad(loss, argnums=nnx.DiffState(0, trainable))(model)
  optimizer.update(model, grads)
  return [paths(nnx, nnx.state(optimizer)), pure(nnx, nnx.state(model, nnx.Param))]


@guide
def multimetric_with_welford(nnx):
  metrics = nnx.MultiMetric(
    accuracy=nnx.metrics.Accuracy(),
    loss=nnx.metrics.Average("loss"),
    spread=nnx.metrics.Welford("loss"),
  )
  metrics.update(logits=x_((4, 3)), labels=jnp.array([0, 1, 2, 0]), loss=jnp.array(0.5))
  metrics.update(logits=x_((4, 3), 1), labels=jnp.array([1, 1, 2, 0]), loss=jnp.array(1.5))
  out = metrics.compute()
  metrics.reset()
  return [
    out["accuracy"],
    out["loss"],
    out["spread"].mean,
    out["spread"].standard_deviation,
    sorted(out),
    metrics.compute()["loss"],
  ]


# --- model surgery on a frozen Module ------------------------------------------------------


def _classifier(nnx):
  class Classifier(nnx.Module):
    def __init__(self, rngs, head=None):
      self.body = nnx.Linear(3, 4, rngs=rngs)
      self.head = head if head is not None else nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
      return self.head(nnx.relu(self.body(x)))

  return Classifier


@guide
def surgery_swap_head_by_rebuilding(nnx):
  # The path that works on both libraries: build a new model around the new part and copy
  # the trained weights of the parts that stay.
  Classifier = _classifier(nnx)
  old = Classifier(nnx.Rngs(0))
  new = Classifier(nnx.Rngs(1), head=nnx.LoRALinear(4, 2, lora_rank=1, rngs=nnx.Rngs(2)))
  nnx.update(new.body, nnx.state(old.body))
  kernel = nnx.state(old.head, nnx.Param)
  nnx.update(new.head, nnx.filter_state(kernel, nnx.Param))
  return [new(x_((2, 3))), old(x_((2, 3))), paths(nnx, nnx.state(new))]


def test_surgery_assignment_error_names_the_alternatives():
  # Flax lets `model.head = ...` through; pynnx's frozen Modules reject it (DESIGN decision 2,
  # docs/migrating.md "Frozen Modules") and name the constructor / nnx.List route that
  # `surgery_swap_head_by_rebuilding` shows working on both libraries.
  model = _classifier(pynnx)(pynnx.Rngs(0))
  with pytest.raises(pynnx.FrozenModuleError, match=r"(?s)'head'.*constructor.*nnx\.List"):
    model.head = pynnx.Linear(4, 3, rngs=pynnx.Rngs(1))
  with pytest.raises(AttributeError, match="frozen"):
    model.head = pynnx.Linear(4, 3, rngs=pynnx.Rngs(1))


@guide
def surgery_layers_in_a_list(nnx):
  class Stack(nnx.Module):
    def __init__(self, rngs):
      self.layers = nnx.List([nnx.Linear(2, 2, rngs=rngs) for _ in range(3)])

    def __call__(self, x):
      for layer in self.layers:
        x = layer(x)
      return x

  model = Stack(nnx.Rngs(0))
  before = model(jnp.ones(2))
  model.layers[1] = nnx.Linear(2, 2, use_bias=False, rngs=nnx.Rngs(5))
  after = model(jnp.ones(2))
  return [before, after, paths(nnx, nnx.state(model))]


# --- Haiku / Linen migration guides: the NNX side ----------------------------------------------


@guide
def migration_stateful_batchnorm_and_dropout(nnx):
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(3, 4, rngs=rngs)
      self.bn = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
      self.dropout = nnx.Dropout(0.3, rngs=rngs)

    def __call__(self, x):
      return self.dropout(nnx.relu(self.bn(self.linear(x))))

  model = Block(nnx.Rngs(params=0, dropout=1))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, x):
    loss, grads = nnx.value_and_grad(lambda m: (m(x) ** 2).mean())(model)
    optimizer.update(model, grads)
    return loss

  losses = [train_step(model, optimizer, x_((6, 3), i)) for i in range(2)]
  model.eval()
  y = nnx.jit(lambda m, x: m(x))(model, x_((2, 3)))
  return [losses, y, pure(nnx, nnx.state(model, nnx.BatchStat)), model.dropout.rngs.count[...]]


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_guide(name):
  f_out, p_out = run_both(GUIDES[name])
  same(f_out, p_out)


def test_bridge_has_equinox_and_linen():
  # nnx.bridge holds both interops (docs/linen.md, docs/equinox.md); tests/bridge checks them.
  assert hasattr(pynnx.bridge, "from_equinox")
  assert pynnx.bridge.ToNNX.__module__ == "pynnx.bridge.linen"
