"""Differential tests: short programs written the way Flax NNX users write them.

Each snippet takes the library module (``flax.nnx`` or ``pynnx``) and returns plain,
comparable results (arrays, shapes, dtypes, path lists, error class names). The same snippet
runs on both libraries; the results must agree. Where pynnx differs on purpose (see
``docs/migrating.md``), the snippet reads the result in a form both libraries share (for
example ``nnx.state(grads, nnx.Param)`` instead of the raw ``nnx.grad`` result).
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pynnx

fnnx = pytest.importorskip("flax.nnx")

SNIPPETS = {}


def snippet(fn):
  SNIPPETS[fn.__name__] = fn
  return fn


def run_both(fn):
  """``fn(flax.nnx)`` and ``fn(pynnx)``, both under standard promotion (user code mixes
  Python floats with int32 counters, as optax does)."""
  with jax.numpy_dtype_promotion("standard"):
    with warnings.catch_warnings():  # flax 0.12.8 deprecates `.value` and bare `sow`
      warnings.simplefilter("ignore", DeprecationWarning)
      f_out = fn(fnnx)
    return f_out, fn(pynnx)


def same(a, b, path="", rtol=1e-5, atol=1e-6):
  """Recursive equality: arrays by shape, dtype and value; containers item by item."""
  if isinstance(a, (jax.Array, np.ndarray)) or isinstance(b, (jax.Array, np.ndarray)):
    assert jnp.shape(a) == jnp.shape(b), (path, jnp.shape(a), jnp.shape(b))
    assert jnp.result_type(a) == jnp.result_type(b), (path, jnp.result_type(a), jnp.result_type(b))
    if jnp.issubdtype(jnp.result_type(a), jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol, atol, err_msg=path)
  elif isinstance(a, dict):
    assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), (path, a, b)
    for k in a:
      same(a[k], b[k], f"{path}.{k}", rtol, atol)
  elif isinstance(a, (list, tuple)):
    assert isinstance(b, (list, tuple)) and len(a) == len(b), (path, a, b)
    for i, (x, y) in enumerate(zip(a, b)):
      same(x, y, f"{path}[{i}]", rtol, atol)
  elif isinstance(a, float):
    np.testing.assert_allclose(a, b, rtol, atol, err_msg=path)
  else:
    assert a == b, (path, a, b)


def pure(nnx, tree):
  """A nested dict of arrays from a Module or a State (identical layout in both libraries)."""
  state = tree if isinstance(tree, nnx.State) else nnx.state(tree)
  return nnx.to_pure_dict(state)


def paths(nnx, state):
  """Sorted ``(path, Variable type name)`` of a State's leaves."""
  return sorted(
    (tuple(str(p) for p in path), type(v).__name__) for path, v in nnx.to_flat_state(state)
  )


def x_(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def error_name(fn):
  try:
    fn()
  except Exception as err:  # noqa: BLE001 - the class is the result
    return [c.__name__ for c in type(err).__mro__ if c.__module__ == "builtins"][0]
  return None


# --- hand-written Modules ------------------------------------------------------------------


def _custom_linear(nnx):
  class MyLinear(nnx.Module):
    def __init__(self, din, dout, *, rngs):
      key = rngs.params()
      self.w = nnx.Param(jax.random.uniform(key, (din, dout)))
      self.b = nnx.Param(jnp.zeros((dout,)))
      self.din, self.dout = din, dout

    def __call__(self, x):
      return x @ self.w + self.b

  return MyLinear


@snippet
def variable_arithmetic(nnx):
  model = _custom_linear(nnx)(3, 4, rngs=nnx.Rngs(params=0))
  x = x_((2, 3))
  y = model(x)
  w = model.w
  return [
    y,
    w + 1.0,
    2.0 * w,
    -w,
    w**2,
    jnp.sum(w),
    w.T @ x.T,
    w[0],
    w[:, 1:],
    w.shape,
    str(w.dtype),
    len(w),
    jnp.asarray(w),
    np.asarray(w),
  ]


@snippet
def value_reads_and_writes(nnx):
  model = _custom_linear(nnx)(3, 4, rngs=nnx.Rngs(0))
  before = model.w.value
  model.w.value = model.w.value * 2
  model.b.value = jnp.ones(4)
  model.b[...] = model.b[...] + 1
  model.w[0, 0] = 5.0
  model.b[1:3] = jnp.zeros(2)
  return [before, model.w.value, model.b.value, model.b.get_value(), model.w[...]]


@snippet
def counter_variable_subclass(nnx):
  class Count(nnx.Variable):
    pass

  class Counted(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(2, 3, rngs=rngs)
      self.calls = Count(jnp.array(0))

    def __call__(self, x):
      self.calls.value += 1
      return self.linear(x)

  model = Counted(nnx.Rngs(1))

  @nnx.jit
  def step(m, x):
    return m(x)

  y = step(model, jnp.ones((1, 2)))
  step(model, jnp.ones((1, 2)))
  model(jnp.ones((1, 2)))
  counts = nnx.state(model, Count)
  params = nnx.state(model, nnx.Param)
  return [y, model.calls.value, paths(nnx, counts), paths(nnx, params), Count.__name__]


@snippet
def linear_init_and_call(nnx):
  rngs = nnx.Rngs(42)
  layer = nnx.Linear(4, 5, rngs=rngs)
  other = nnx.Linear(5, 2, use_bias=False, rngs=rngs)
  x = x_((3, 4))
  return [layer.kernel.value, layer.bias.value, other.kernel.value, other(layer(x))]


@snippet
def mlp_with_dropout_and_batchnorm(nnx):
  class MLP(nnx.Module):
    def __init__(self, din, dmid, dout, *, rngs):
      self.linear1 = nnx.Linear(din, dmid, rngs=rngs)
      self.dropout = nnx.Dropout(rate=0.1, rngs=rngs)
      self.bn = nnx.BatchNorm(dmid, rngs=rngs)
      self.linear2 = nnx.Linear(dmid, dout, rngs=rngs)

    def __call__(self, x):
      x = nnx.gelu(self.dropout(self.bn(self.linear1(x))))
      return self.linear2(x)

  model = MLP(2, 16, 5, rngs=nnx.Rngs(0))
  x = x_((8, 2))
  train_y = model(x)
  stats = pure(nnx, nnx.state(model, nnx.BatchStat))
  model.eval()
  eval_y1 = model(x)
  eval_y2 = model(x)
  flags = [model.dropout.deterministic, model.bn.use_running_average]
  model.train()
  flags += [model.dropout.deterministic, model.bn.use_running_average]
  return [train_y, stats, eval_y1, eval_y2, flags, model(x)]


@snippet
def view_for_eval(nnx):
  model = nnx.Sequential(
    nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
    nnx.BatchNorm(4, rngs=nnx.Rngs(1)),
    nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=2)),
  )
  x = x_((5, 3))
  eval_model = nnx.view(model, deterministic=True, use_running_average=True)
  y_eval = eval_model(x)
  y_train = model(x)
  return [
    y_eval,
    y_train,
    model.layers[2].deterministic,
    eval_model.layers[2].deterministic,
    eval_model.layers[1].use_running_average,
  ]


@snippet
def sequential_and_lambda(nnx):
  model = nnx.Sequential(
    nnx.Linear(3, 8, rngs=nnx.Rngs(0)),
    nnx.relu,
    nnx.Linear(8, 8, rngs=nnx.Rngs(1)),
    jax.nn.tanh,
    nnx.Linear(8, 2, rngs=nnx.Rngs(2)),
  )
  x = x_((4, 3))
  return [model(x), len(model.layers), paths(nnx, nnx.state(model))]


@snippet
def sow_and_pop_intermediates(nnx):
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(3, 3, rngs=rngs)
      self.b = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
      h = nnx.relu(self.a(x))
      self.sow(nnx.Intermediate, "hidden", h)
      self.sow(nnx.Intermediate, "hidden", h * 2)
      self.sow(
        nnx.Intermediate, "mean", jnp.mean(h), reduce_fn=lambda a, b: a + b, init_fn=lambda: 0.0
      )
      return self.b(h)

  model = Block(nnx.Rngs(0))
  y = model(x_((2, 3)))
  model(x_((2, 3), 1))
  inter = nnx.pop(model, nnx.Intermediate)
  left = nnx.state(model, nnx.Intermediate)
  return [y, paths(nnx, inter), pure(nnx, inter), len(jax.tree.leaves(left))]


@snippet
def list_and_dict_containers(nnx):
  class Tower(nnx.Module):
    def __init__(self, rngs):
      self.blocks = nnx.List([nnx.Linear(2, 2, rngs=rngs) for _ in range(3)])
      self.heads = nnx.Dict(
        {"cls": nnx.Linear(2, 3, rngs=rngs), "reg": nnx.Linear(2, 1, rngs=rngs)}
      )

    def __call__(self, x):
      for block in self.blocks:
        x = nnx.relu(block(x))
      return {k: head(x) for k, head in self.heads.items()}

  model = Tower(nnx.Rngs(3))
  out = model(x_((2, 2)))
  return [out, paths(nnx, nnx.state(model)), len(model.blocks), sorted(model.heads.keys())]


@snippet
def plain_python_list_of_layers(nnx):
  class Stack(nnx.Module):
    def __init__(self, rngs):
      self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs), nnx.Linear(4, 4, rngs=rngs)])

    def __call__(self, x):
      for layer in self.layers:
        x = layer(x)
      return x

  model = Stack(nnx.Rngs(0))
  return [model(x_((1, 4))), model.layers[-1].kernel.value]


# --- split / merge / state / update ----------------------------------------------------------


def _mlp(nnx, seed=0):
  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(2, 4, rngs=rngs)
      self.bn = nnx.BatchNorm(4, rngs=rngs)
      self.l2 = nnx.Linear(4, 1, rngs=rngs)

    def __call__(self, x):
      return self.l2(nnx.relu(self.bn(self.l1(x))))

  return MLP(nnx.Rngs(seed))


@snippet
def split_merge_roundtrip(nnx):
  model = _mlp(nnx)
  graphdef, state = nnx.split(model)
  graphdef2, params, rest = nnx.split(model, nnx.Param, ...)
  again = nnx.merge(graphdef2, params, rest)
  x = x_((3, 2))
  with_state = nnx.merge(graphdef, state)
  return [
    again(x),
    with_state(x),
    paths(nnx, params),
    paths(nnx, rest),
    sorted(state.keys()),
    jax.tree.map(jnp.shape, pure(nnx, state)),
  ]


@snippet
def functional_step_with_split(nnx):
  model = _mlp(nnx)
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

  @jax.jit
  def forward(params, stats, x):
    m = nnx.merge(graphdef, params, stats)
    y = m(x)
    _, _, new_stats = nnx.split(m, nnx.Param, nnx.BatchStat)
    return y, new_stats

  y, stats = forward(params, stats, x_((4, 2)))
  nnx.update(model, stats)
  return [y, pure(nnx, stats), model.bn.mean.value]


@snippet
def state_filters(nnx):
  model = _mlp(nnx)
  out = {}
  filters = {
    "param": nnx.Param,
    "batchstat": nnx.BatchStat,
    "string": "kernel",
    "tuple": (nnx.BatchStat, "bias"),
    "all": nnx.All(nnx.Param, nnx.PathContains("l1")),
    "not": nnx.Not(nnx.Param),
    "everything": nnx.Everything(),
    "ofType": nnx.OfType(nnx.BatchStat),
    "any": nnx.Any(nnx.PathContains("l2"), nnx.BatchStat),
    "ellipsis": ...,
    "callable": lambda path, value: path[-1] == "scale",
  }
  for name, f in filters.items():
    out[name] = paths(nnx, nnx.state(model, f))
  out["nothing"] = len(jax.tree.leaves(nnx.state(model, nnx.Nothing)))
  return out


@snippet
def state_arithmetic_and_update(nnx):
  model = _mlp(nnx)
  params = nnx.state(model, nnx.Param)
  halved = jax.tree.map(lambda p: p / 2, params)
  nnx.update(model, halved)
  flat = nnx.to_flat_state(params)
  count = sum(p.size for p in jax.tree.leaves(params))
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  return [model.l1.kernel.value, count, len(flat), leaves]


@snippet
def pure_dict_checkpoint_roundtrip(nnx):
  model = _mlp(nnx, 0)
  target = _mlp(nnx, 7)
  pure_dict = nnx.to_pure_dict(nnx.state(model))
  state = nnx.state(target)
  nnx.replace_by_pure_dict(state, pure_dict)
  nnx.update(target, state)
  restored = nnx.state(target).to_pure_dict()
  return [pure_dict, restored, target.l2.bias.value, sorted(pure_dict.keys())]


@snippet
def graph_and_state_shortcuts(nnx):
  model = _mlp(nnx)
  gdef = nnx.graphdef(model)
  params, rest = nnx.state(model, nnx.Param, ...)
  rebuilt = nnx.merge(gdef, params, rest)
  return [
    isinstance(gdef, nnx.GraphDef),
    rebuilt(x_((2, 2))),
    model(x_((2, 2))),
  ]


@snippet
def clone_is_independent(nnx):
  model = _mlp(nnx)
  copy = nnx.clone(model)
  copy.l1.kernel.value = jnp.zeros_like(copy.l1.kernel.value)
  return [model.l1.kernel.value, copy.l1.kernel.value, copy.l1.kernel is model.l1.kernel]


@snippet
def iter_graph_paths(nnx):
  model = _mlp(nnx)
  out = []
  for path, node in nnx.iter_graph(model):
    if isinstance(node, (nnx.Module, nnx.Variable)):
      out.append((tuple(str(p) for p in path), type(node).__name__))
  mods = [
    (tuple(str(p) for p in path), type(m).__name__)
    for path, m in nnx.iter_graph(model)
    if isinstance(m, nnx.Module)
  ]
  return [out, mods]


@snippet
def count_params(nnx):
  model = nnx.Sequential(nnx.Linear(10, 20, rngs=nnx.Rngs(0)), nnx.Linear(20, 3, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  total = sum(np.prod(x.shape) for x in jax.tree.leaves(params))
  by_layer = jax.tree.map(lambda x: x.size, nnx.to_pure_dict(params))
  return [int(total), by_layer]


@snippet
def abstract_init_with_eval_shape(nnx):
  abstract = nnx.eval_shape(lambda: _mlp(nnx, 3))
  gdef, state = nnx.split(abstract)
  shapes = jax.tree.map(lambda x: (x.shape, str(x.dtype)), nnx.to_pure_dict(state))
  real = _mlp(nnx, 3)
  nnx.update(abstract, nnx.state(real))
  return [shapes, abstract(x_((2, 2))), type(abstract.l1.kernel.value).__name__]


@snippet
def display_and_repr(nnx):
  model = _mlp(nnx)
  text = repr(model)
  state_text = repr(nnx.state(model))
  return ["MLP" in text, "l1" in text, "kernel" in state_text, isinstance(str(model), str)]


# --- methods, operators, activations, helpers ---


@snippet
def jit_decorated_method(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(2, 2, rngs=rngs)

    @nnx.jit
    def __call__(self, x):
      return self.l(x)

  m = M(nnx.Rngs(0))
  return [m(jnp.ones((1, 2)))]


@snippet
def variable_inplace_ops(nnx):
  class M(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones(3))
      self.c = nnx.BatchStat(jnp.zeros(3))

  m = M()
  m.w.value += 1
  m.c[...] += 2
  m.w[...] *= 3
  return [m.w.value, m.c.value]


@snippet
def perturb_intermediate_grads(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(2, 3, rngs=rngs)
      self.b = nnx.Linear(3, 1, rngs=rngs)

    def __call__(self, x):
      h = self.a(x)
      h = self.perturb("h", h)
      return self.b(h)

  m = M(nnx.Rngs(0))
  x = x_((4, 2))
  m(x)

  def loss(m, x):
    return m(x).sum()

  g = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Perturbation))(m, x)
  return [pure(nnx, nnx.state(g, nnx.Perturbation)), paths(nnx, nnx.state(m, nnx.Perturbation))]


@snippet
def remat_policy(nnx):
  m = nnx.Linear(3, 3, rngs=nnx.Rngs(0))
  f = nnx.remat(lambda m, x: nnx.relu(m(x)).sum(), policy=jax.checkpoint_policies.nothing_saveable)
  return [pure(nnx, nnx.state(nnx.grad(f)(m, jnp.ones((2, 3))), nnx.Param))]


@snippet
def model_and_optimizer(nnx):
  m = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  opt = nnx.ModelAndOptimizer(m, optax.sgd(0.1))

  @nnx.jit
  def step(opt, x):
    g = nnx.grad(lambda m: (m(x) ** 2).mean())(opt.model)
    opt.update(g)

  step(opt, jnp.ones((3, 2)))
  return [opt.model.kernel.value, opt.step.value]


@snippet
def more_activations(nnx):
  x = x_((3, 4))
  return [
    nnx.swish(x),
    nnx.leaky_relu(x, 0.1),
    nnx.elu(x),
    nnx.softplus(x),
    nnx.glu(x),
    nnx.standardize(x),
    nnx.celu(x),
    nnx.hard_tanh(x),
    nnx.logsumexp(x, axis=-1),
    nnx.tanh(x),
    nnx.relu6(x),
    nnx.log_sigmoid(x),
    nnx.hard_sigmoid(x),
    nnx.hard_swish(x),
    nnx.selu(x),
    nnx.soft_sign(x),
  ]


@snippet
def nn_submodules(nnx):
  k = jax.random.key(0)
  return [
    nnx.nn.initializers.glorot_normal()(k, (3, 3)),
    nnx.initializers.kaiming_normal()(k, (3, 3)),
    nnx.initializers.delta_orthogonal()(k, (3, 3, 4, 4)),
    nnx.nn.activations.relu(jnp.ones(2)),
  ]


@snippet
def array_attributes(nnx):
  class M(nnx.Module):
    def __init__(self):
      self.mask = jnp.ones(3)
      self.scale = 2.0
      self.name_ = "m"

  m = M()
  return [paths(nnx, nnx.state(m)), [type(x).__name__ for x in jax.tree.leaves(m)]]


@snippet
def dropout_call_rngs(nnx):
  d = nnx.Dropout(0.5)
  rngs = nnx.Rngs(dropout=1)
  return [d(jnp.ones(6), rngs=rngs), d(jnp.ones(6), rngs=rngs), d(jnp.ones(6), deterministic=True)]


@snippet
def state_axes_tree_mode(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(2, 2, rngs=rngs)
      self.d = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return self.d(self.l(x))

  m = M(nnx.Rngs(0, dropout=1))
  state_axes = nnx.StateAxes({nnx.RngState: 0, ...: None})

  @nnx.split_rngs(splits=3, only="dropout")
  @nnx.vmap(in_axes=(state_axes, None))
  def fwd(m, x):
    return m(x)

  return [fwd(m, jnp.ones((1, 2))), m.d.rngs.count.value.shape]


@snippet
def state_constructor(nnx):
  st = nnx.State({"a": nnx.Param(jnp.ones(2)), "b": {"c": nnx.BatchStat(jnp.zeros(1))}})
  return [paths(nnx, st), pure(nnx, st)]


@snippet
def bn_axis_name_vmap(nnx):
  bn = nnx.BatchNorm(3, axis_name="batch", rngs=nnx.Rngs(0))
  y = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), axis_name="batch")(bn, x_((4, 2, 3)))
  return [y, bn.mean.value]


# --- the test --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_snippet(name):
  f_out, p_out = run_both(SNIPPETS[name])
  same(f_out, p_out)
