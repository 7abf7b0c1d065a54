"""Differential tests following Flax NNX's documented guides: basics, "Why NNX", the MNIST
tutorial, the filters guide and model surgery.

Each program is written for this suite (not copied from the guides) and demonstrates what the
guide teaches. It runs on ``flax.nnx`` and on ``pynnx`` and the results are compared with the
helpers of ``test_user_snippets``.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import pynnx
from tests.parity.test_user_snippets import error_name, paths, pure, run_both, same, x_

GUIDES = {}


def guide(fn):
  GUIDES[fn.__name__] = fn
  return fn


# --- NNX basics ------------------------------------------------------------------------------


def _two_layer(nnx):
  class Block(nnx.Module):
    def __init__(self, din, dout, *, rngs):
      self.linear = nnx.Linear(din, dout, rngs=rngs)
      self.bn = nnx.BatchNorm(dout, rngs=rngs)
      self.dropout = nnx.Dropout(0.2, rngs=rngs)

    def __call__(self, x):
      return nnx.relu(self.dropout(self.bn(self.linear(x))))

  class Net(nnx.Module):
    def __init__(self, din, dmid, dout, *, rngs):
      self.block = Block(din, dmid, rngs=rngs)
      self.head = nnx.Linear(dmid, dout, rngs=rngs)

    def __call__(self, x):
      return self.head(self.block(x))

  return Net


@guide
def basics_split_merge_update(nnx):
  model = _two_layer(nnx)(3, 6, 2, rngs=nnx.Rngs(0))
  graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  out = [paths(nnx, params), paths(nnx, stats), paths(nnx, rest)]
  # A pure forward pass with the split pieces.
  y, (_, new_state) = graphdef.apply(params, stats, rest)(x_((4, 3)))
  out += [y, pure(nnx, nnx.filter_state(new_state, nnx.BatchStat))]
  # Updating the original object with a modified state.
  doubled = jax.tree.map(lambda p: p * 2, params)
  nnx.update(model, doubled)
  out.append(model.head.kernel[...])
  rebuilt = nnx.merge(graphdef, params, stats, rest)
  out += [type(rebuilt).__name__, rebuilt.head.kernel[...], rebuilt(x_((4, 3), 1))]
  return out


@guide
def basics_state_and_graphdef(nnx):
  model = _two_layer(nnx)(2, 3, 1, rngs=nnx.Rngs(params=1, dropout=2))
  state = nnx.state(model)
  params = nnx.state(model, nnx.Param)
  graphdef = nnx.graphdef(model)
  out = [paths(nnx, state), pure(nnx, params)]
  out.append(isinstance(state, nnx.State) and isinstance(graphdef, nnx.GraphDef))
  out.append(params["head"]["kernel"][...])
  out.append(sorted(params["block"]["linear"]))
  out.append(type(state["block"]["bn"]["mean"]).__name__)
  leaves = jax.tree.leaves(params)
  out.append([leaf.shape for leaf in leaves])
  counts = sum(x.size for x in jax.tree.leaves(params))
  out.append(counts)
  return out


@guide
def basics_model_is_mutable_in_place(nnx):
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  model.kernel.value = jnp.ones((2, 3))
  model.bias[...] = jnp.full((3,), 0.5)
  before = model(jnp.ones((1, 2)))

  @nnx.jit
  def set_zero(m):
    m.kernel[...] = jnp.zeros_like(m.kernel[...])

  set_zero(model)
  return [before, model(jnp.ones((1, 2))), model.kernel[...]]


@guide
def why_nnx_stateful_training(nnx):
  class Count(nnx.Variable):
    pass

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(2, 2, rngs=rngs)
      self.count = Count(jnp.array(0, jnp.int32))

    def __call__(self, x):
      self.count[...] += 1
      return self.linear(x)

  model = Model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    def loss_fn(model):
      return jnp.mean((model(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [train_step(model, optimizer, x_((4, 2)), x_((4, 2), 1)) for _ in range(3)]
  return [losses, model.count[...], pure(nnx, nnx.state(model, nnx.Param)), optimizer.step[...]]


@guide
def why_nnx_functional_api_in_jax_jit(nnx):
  model = _two_layer(nnx)(2, 4, 1, rngs=nnx.Rngs(3))
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(graphdef, state, x):
    m = nnx.merge(graphdef, state)
    y = m(x)
    _, new_state = nnx.split(m)
    return y, new_state

  y, state = forward(graphdef, state, x_((5, 2)))
  nnx.update(model, state)
  return [y, model.block.bn.mean[...], model.block.dropout.rngs.count[...]]


@guide
def basics_iter_graph_and_modules(nnx):
  model = _two_layer(nnx)(2, 3, 1, rngs=nnx.Rngs(0))
  nodes = [
    ("/".join(map(str, p)), type(n).__name__)
    for p, n in nnx.iter_graph(model)
    if isinstance(n, (nnx.Module, nnx.Variable))
  ]
  modules = [("/".join(map(str, p)), type(m).__name__) for p, m in model.iter_modules()]
  children = [(name, type(m).__name__) for name, m in model.iter_children()]
  return [nodes, modules, children]


# --- MNIST tutorial ------------------------------------------------------------------------


def _cnn(nnx):
  class CNN(nnx.Module):
    def __init__(self, *, rngs):
      self.conv1 = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
      self.bn1 = nnx.BatchNorm(4, rngs=rngs)
      self.conv2 = nnx.Conv(4, 8, kernel_size=(3, 3), rngs=rngs)
      self.bn2 = nnx.BatchNorm(8, rngs=rngs)
      self.dropout1 = nnx.Dropout(0.1, rngs=rngs)
      self.linear1 = nnx.Linear(2 * 2 * 8, 16, rngs=rngs)
      self.dropout2 = nnx.Dropout(0.1, rngs=rngs)
      self.linear2 = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
      pool = lambda z: nnx.avg_pool(z, window_shape=(2, 2), strides=(2, 2))  # noqa: E731
      x = pool(nnx.relu(self.bn1(self.conv1(x))))
      x = self.dropout1(pool(nnx.relu(self.bn2(self.conv2(x)))))
      x = x.reshape(x.shape[0], -1)
      x = self.dropout2(nnx.relu(self.linear1(x)))
      return self.linear2(x)

  return CNN


@guide
def mnist_tutorial(nnx):
  model = _cnn(nnx)(rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adamw(0.005, 0.9), wrt=nnx.Param)
  metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))

  def loss_fn(model, batch):
    logits = model(batch["image"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, logits

  @nnx.jit
  def train_step(model, optimizer, metrics, batch):
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(model, batch)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])
    optimizer.update(model, grads)

  @nnx.jit
  def eval_step(model, metrics, batch):
    loss, logits = loss_fn(model, batch)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])

  batches = [
    {"image": x_((8, 8, 8, 1), i), "label": jnp.arange(8, dtype=jnp.int32) % 10} for i in range(3)
  ]
  history = []
  model.train()
  for batch in batches[:2]:
    train_step(model, optimizer, metrics, batch)
  history.append(metrics.compute())
  metrics.reset()
  model.eval()
  eval_step(model, metrics, batches[2])
  history.append(metrics.compute())
  pred = model(batches[2]["image"]).argmax(axis=1)
  flags = [model.dropout1.deterministic, model.bn1.use_running_average]
  return [history, pred, flags, pure(nnx, nnx.state(model, nnx.BatchStat)), optimizer.step[...]]


@guide
def mnist_optimizer_state_paths(nnx):
  model = _cnn(nnx)(rngs=nnx.Rngs(1))
  optimizer = nnx.Optimizer(model, optax.adamw(0.01), wrt=nnx.Param)
  st = nnx.state(optimizer)
  return [paths(nnx, st), paths(nnx, nnx.state(optimizer, nnx.OptState))]


# --- Filters guide ---------------------------------------------------------------------------


def _filter_model(nnx):
  class Foo(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Param(jnp.zeros(2))
      self.b = nnx.BatchStat(jnp.ones(2))
      self.c = nnx.Variable(jnp.full(2, 3.0))
      self.lin = nnx.Linear(2, 2, rngs=rngs)
      self.lora = nnx.LoRA(2, 1, 2, rngs=rngs)

  return Foo(nnx.Rngs(0))


@guide
def filters_guide(nnx):
  model = _filter_model(nnx)
  st = lambda *f: paths(nnx, nnx.state(model, *f))  # noqa: E731
  out = [
    st(nnx.Param),
    st(nnx.BatchStat),
    st(nnx.Everything),
    st(nnx.Nothing),
    st(nnx.Any(nnx.Param, nnx.BatchStat)),
    st(nnx.All(nnx.Param, nnx.PathContains("lin"))),
    st(nnx.Not(nnx.Param)),
    st(nnx.PathContains("kernel")),
    st(nnx.PathContains("lora", exact=False)),
    st(nnx.PathContains("lora")),
    st(nnx.OfType(nnx.LoRAParam)),
    st("a"),
    st(lambda path, v: isinstance(v, nnx.Param) and path[-1] == "bias"),
    st(True),
    st(False),
    st(...),
    st((nnx.Param, nnx.BatchStat)),
    st(nnx.LoRAParam),
  ]
  graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  out += [paths(nnx, params), paths(nnx, batch_stats), paths(nnx, rest)]
  # An earlier filter takes precedence over a later one.
  _, first, second, _ = nnx.split(model, nnx.PathContains("lora"), nnx.Param, ...)
  out += [paths(nnx, first), paths(nnx, second)]
  # Filters that leave something out are an error for split.
  out.append(error_name(lambda: nnx.split(model, nnx.Param)))
  out.append(str(nnx.filterlib.to_predicate(nnx.Param)) != "")
  return out


@guide
def filters_custom_predicate_and_of_type(nnx):
  model = _filter_model(nnx)
  pred = nnx.filterlib.to_predicate(nnx.OfType(nnx.Param))
  checks = [pred(("a",), model.a), pred(("b",), model.b), pred(("x",), model.lora.lora_a)]
  anyp = nnx.filterlib.to_predicate(nnx.Any("a", nnx.BatchStat))
  checks += [anyp(("a",), model.c), anyp(("z",), model.b), anyp(("z",), model.c)]
  allp = nnx.filterlib.to_predicate(nnx.All(nnx.Param, nnx.Not(nnx.PathContains("lora"))))
  checks += [allp(("a",), model.a), allp(("lora", "lora_a"), model.lora.lora_a)]
  return checks


# --- Model surgery -----------------------------------------------------------------------------


@guide
def surgery_abstract_init_and_partial_load(nnx):
  Net = _two_layer(nnx)
  abstract = nnx.eval_shape(lambda: Net(3, 4, 2, rngs=nnx.Rngs(0)))
  abs_state = nnx.state(abstract)
  out = [
    jax.tree.map(lambda a: (a.shape, str(a.dtype)), nnx.to_pure_dict(abs_state)),
    type(abstract.head.kernel.get_value()).__name__,
  ]
  # Load trained weights of the head only, from another model built the same way.
  trained = Net(3, 4, 2, rngs=nnx.Rngs(7))
  model = Net(3, 4, 2, rngs=nnx.Rngs(0))
  nnx.update(model.head, nnx.state(trained.head))
  out += [model.head.kernel[...], model.block.linear.kernel[...]]
  # Load from a pure dict (the way checkpoints usually come in).
  pure_params = nnx.to_pure_dict(nnx.state(trained, nnx.Param))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, pure_params)
  nnx.update(model, state)
  out.append(model.block.linear.kernel[...])
  return out


@guide
def surgery_partial_init_of_a_submodule(nnx):
  Net = _two_layer(nnx)
  abstract = nnx.eval_shape(lambda: Net(3, 4, 2, rngs=nnx.Rngs(0)))
  graphdef, abs_state = nnx.split(abstract)
  # Materialise real weights for one part only, then merge.
  real = Net(3, 4, 2, rngs=nnx.Rngs(0))
  pure_state = nnx.to_pure_dict(abs_state)
  pure_state["head"] = nnx.to_pure_dict(nnx.state(real.head))
  pure_state["block"] = nnx.to_pure_dict(nnx.state(real.block))
  nnx.replace_by_pure_dict(abs_state, pure_state)
  model = nnx.merge(graphdef, abs_state)
  model.eval()
  return [model(x_((2, 3))), real.eval() or real(x_((2, 3)))]


@guide
def surgery_pure_dict_key_check(nnx):
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  state = nnx.state(model)
  return [
    error_name(lambda: nnx.replace_by_pure_dict(state, {"kernel": jnp.ones((2, 2)), "x": 1.0})),
    sorted(nnx.to_pure_dict(state)),
  ]


@guide
def surgery_load_part_of_a_pure_dict(nnx):
  model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Linear(2, 2, rngs=nnx.Rngs(1)))
  loaded = {"layers": {0: {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}}
  state = nnx.state(model)
  # Replacing in the State (here one sub-State) leaves the model as it was ...
  nnx.replace_by_pure_dict(state["layers"][0], loaded["layers"][0])
  untouched = model.layers[0].kernel[...]
  in_state = state["layers"][0]["kernel"][...]
  # ... until the State is written back.
  nnx.update(model, state)
  written = model.layers[0].kernel[...]
  # A pure dict is also accepted by nnx.update directly; only its paths change.
  other = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Linear(2, 2, rngs=nnx.Rngs(1)))
  nnx.update(other, {"layers": {1: {"bias": jnp.full(2, 3.0)}}})
  return [
    untouched,
    in_state,
    written,
    pure(nnx, other),
    type(other.layers[1].bias).__name__,
  ]


def test_update_with_an_unknown_pure_dict_path_raises():
  # Flax adds the unknown key as a new attribute; a built pynnx Module is frozen.
  model = pynnx.Linear(2, 2, rngs=pynnx.Rngs(0))
  with pytest.raises(pynnx.StateMismatchError, match=r"model\.nope is not in the Linear"):
    pynnx.update(model, {"nope": jnp.ones(2)})


def test_replace_by_pure_dict_with_missing_leaves_raises():
  # Flax keeps the old values of leaves the pure dict lacks; pynnx names them.
  state = pynnx.state(pynnx.Linear(2, 2, rngs=pynnx.Rngs(0)))
  with pytest.raises(pynnx.StateMismatchError, match=r"missing: state\.bias"):
    pynnx.replace_by_pure_dict(state, {"kernel": jnp.ones((2, 2))})


# --- the test --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_guide(name):
  f_out, p_out = run_both(GUIDES[name])
  same(f_out, p_out)


def _norm_grads(nnx):
  x = x_((6, 4, 4))
  layers = [
    nnx.BatchNorm(4, rngs=nnx.Rngs(0)),
    nnx.LayerNorm(4, rngs=nnx.Rngs(0)),
    nnx.RMSNorm(4, rngs=nnx.Rngs(0)),
    nnx.GroupNorm(4, num_groups=2, rngs=nnx.Rngs(0)),
    nnx.InstanceNorm(4, rngs=nnx.Rngs(0)),
    nnx.LayerNorm(4, use_fast_variance=False, rngs=nnx.Rngs(0)),
  ]
  out = []
  for layer in layers:
    loss = lambda m, x: (m(x) ** 3).sum()  # noqa: E731
    gx = nnx.grad(loss, argnums=1)(layer, x)
    gp = nnx.state(nnx.grad(loss)(layer, x), nnx.Param)
    out += [gx, nnx.to_pure_dict(gp)]
  return out


def test_normalization_gradients_are_bit_identical():
  # Adam turns a zero-in-exact-arithmetic gradient (a conv bias before BatchNorm) into a full
  # step of +-lr, so rounding differences in the backward pass show up in training curves.
  f_out, p_out = run_both(_norm_grads)
  same(f_out, p_out, rtol=0, atol=0)
