"""nnx.Optimizer / nnx.ModelAndOptimizer: optax numerics, wrt filters, jit, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pynnx as nnx


class MLP(nnx.Module):
  def __init__(self, rngs):
    self.l1 = nnx.Linear(3, 8, rngs=rngs)
    self.l2 = nnx.Linear(8, 2, rngs=rngs)
    self.calls = nnx.BatchStat(jnp.array(0))

  def __call__(self, x):
    self.calls[...] += 1
    return self.l2(jax.nn.relu(self.l1(x)))


@pytest.fixture
def standard_promotion():
  """optax's Adam mixes its int32 step count with Python floats, which the suite's strict
  dtype promotion rejects (an optax matter, not a pynnx one)."""
  with jax.numpy_dtype_promotion("standard"):
    yield


optax_promotion = pytest.mark.usefixtures("standard_promotion")


X = jnp.linspace(-1.0, 1.0, 15, dtype=jnp.float32).reshape(5, 3)
Y = jnp.ones((5, 2), jnp.float32)


def nnx_is_variable(x):
  return isinstance(x, nnx.Variable)


def loss_fn(model, x=X, y=Y):
  return jnp.mean((model(x) - y) ** 2)


def param_values(model):
  return {p: v[...] for p, v in nnx.state(model).flat_state() if isinstance(v, nnx.Param)}


def assert_trees_close(a, b, **kw):
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], **kw)


@optax_promotion
@pytest.mark.parametrize(
  "make_tx",
  [
    lambda: optax.sgd(0.1),
    lambda: optax.adam(1e-2),
    lambda: optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(1e-2, weight_decay=0.1)),
  ],
)
def test_matches_plain_optax(make_tx):
  model = MLP(nnx.Rngs(0))
  tx = make_tx()
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  # Reference: optax on the raw parameter arrays of a pure function.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  raw = params.to_pure_dict()

  def pure_loss(raw_params):
    p = jax.tree.map(lambda x: x, params)
    p.replace_by_pure_dict(raw_params)
    return loss_fn(nnx.merge(graphdef, p, nnx.clone(rest)))

  ref_state = tx.init(raw)
  for _ in range(4):
    g = jax.grad(pure_loss)(raw)
    upd, ref_state = tx.update(g, ref_state, raw)
    raw = optax.apply_updates(raw, upd)

    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)

  got = nnx.state(model, nnx.Param, ...)[0].to_pure_dict()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, raw)
  assert int(optimizer.step[...]) == 4


@optax_promotion
def test_matches_flax_optimizer():
  flax_nnx = pytest.importorskip("flax.nnx")
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  fmodel = flax_nnx.Linear(3, 2, rngs=flax_nnx.Rngs(1))
  fmodel.kernel[...] = model.kernel[...]
  fmodel.bias[...] = model.bias[...]
  opt = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)
  fopt = flax_nnx.Optimizer(fmodel, optax.adam(0.05), wrt=flax_nnx.Param)

  def loss(m):
    return jnp.mean((m(X) - Y[:, :2]) ** 2)

  for _ in range(3):
    ours = opt.update(model, nnx.grad(loss)(model))
    theirs = fopt.update(fmodel, flax_nnx.grad(loss)(fmodel))
  np.testing.assert_allclose(model.kernel[...], fmodel.kernel[...], rtol=1e-6)
  np.testing.assert_allclose(model.bias[...], fmodel.bias[...], rtol=1e-6)
  np.testing.assert_allclose(ours["kernel"], theirs["kernel"], rtol=1e-6)
  assert int(opt.step[...]) == int(fopt.step[...]) == 3


def test_update_returns_updates_keyed_like_params():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.sgd(1.0), wrt=nnx.Param)
  before = model.kernel[...]
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(model)
  updates = opt.update(model, grads)
  assert isinstance(updates, nnx.State)
  np.testing.assert_allclose(updates["kernel"], -grads.kernel[...])
  np.testing.assert_allclose(model.kernel[...], before + updates["kernel"])


@optax_promotion
def test_step_counter_and_state_variables():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  model.kernel.set_metadata(sharding_names=("in", "out"))
  opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  assert isinstance(opt.step, nnx.OptState)
  assert opt.step[...].dtype == jnp.uint32 and int(opt.step[...]) == 0
  adam = opt.opt_state[0]
  assert isinstance(adam.count, nnx.OptArray)
  assert isinstance(adam.mu["kernel"], nnx.OptVariable)
  # Per-parameter state keeps the parameter's metadata (e.g. for sharding).
  assert adam.mu["kernel"].get_metadata("sharding_names") == ("in", "out")
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(model)
  for i in range(3):
    opt.update(model, grads)
    assert int(opt.step[...]) == i + 1
  assert int(adam.count[...]) == 3
  assert not np.allclose(adam.mu["kernel"][...], 0.0)


@optax_promotion
def test_state_round_trip_restores_training():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)

  def grads_of(m):
    return nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2))) ** 2))(m)

  opt.update(model, grads_of(model))
  saved_model, saved_opt = nnx.state(model).to_pure_dict(), nnx.state(opt).to_pure_dict()
  # A fresh model/optimizer restored from the pure dicts continues exactly like the original.
  model2 = nnx.Linear(2, 3, rngs=nnx.Rngs(5))
  opt2 = nnx.Optimizer(model2, optax.adam(0.1), wrt=nnx.Param)
  for target, saved in ((model2, saved_model), (opt2, saved_opt)):
    st = nnx.state(target)
    st.replace_by_pure_dict(saved)
    nnx.update(target, st)
  assert int(opt2.step[...]) == 1
  opt.update(model, grads_of(model))
  opt2.update(model2, grads_of(model2))
  np.testing.assert_allclose(model2.kernel[...], model.kernel[...], rtol=1e-6)
  g, st = nnx.split(opt)
  assert nnx.merge(g, st).opt_state[0].mu["kernel"] is opt.opt_state[0].mu["kernel"]


@optax_promotion
def test_optimizer_does_not_hold_the_model():
  model = MLP(nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  model_ids = {id(v) for v in jax.tree.leaves(model, is_leaf=nnx_is_variable)}
  opt_vars = jax.tree.leaves(opt, is_leaf=nnx_is_variable)
  assert not model_ids & {id(v) for v in opt_vars}
  assert all(isinstance(v, nnx.OptState) for v in opt_vars)


def test_ignores_non_param_variables_and_their_none_grads():
  model = MLP(nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  grads = nnx.grad(loss_fn)(model)
  assert grads.calls[...] is None
  opt.update(model, grads)
  assert int(model.calls[...]) == 1  # only the forward pass counted; the optimizer left it


def test_wrt_custom_param_subclass():
  class Adapter(nnx.Param):
    pass

  class Model(nnx.Module):
    def __init__(self):
      self.base = nnx.Param(jnp.ones((3,)))
      self.adapter = Adapter(jnp.zeros((3,)))

    def __call__(self, x):
      return jnp.sum((self.base[...] + self.adapter[...]) * x)

  model = Model()
  opt = nnx.Optimizer(model, optax.sgd(0.5), wrt=Adapter)
  grads = nnx.grad(lambda m: m(jnp.arange(3.0)))(model)  # differentiates both Params
  opt.update(model, grads)
  np.testing.assert_allclose(model.base[...], 1.0)
  np.testing.assert_allclose(model.adapter[...], -0.5 * jnp.arange(3.0))


def test_wrt_lora_param():
  model = nnx.LoRALinear(3, 4, lora_rank=2, rngs=nnx.Rngs(0))
  kernel = model.kernel[...]
  lora_a = model.lora.lora_a[...]
  opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.LoRAParam)
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((2, 3))) ** 2))(model)
  opt.update(model, grads)
  np.testing.assert_array_equal(model.kernel[...], kernel)
  assert not np.allclose(model.lora.lora_b[...], 0.0)
  np.testing.assert_allclose(model.lora.lora_a[...], lora_a)  # zero grad: lora_b was zero


@pytest.mark.parametrize(
  "wrt, changed",
  [
    (nnx.PathContains("l2"), {"l2"}),
    (nnx.All(nnx.Param, nnx.Not(nnx.PathContains("l2"))), {"l1"}),
    ([nnx.PathContains("l1"), nnx.PathContains("l2")], {"l1", "l2"}),
    (lambda path, v: path[-1] == "bias", {"l1.bias", "l2.bias"}),
  ],
)
def test_wrt_filters(wrt, changed):
  model = MLP(nnx.Rngs(0))
  before = param_values(model)
  opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=wrt)
  opt.update(model, nnx.grad(loss_fn)(model))
  after = param_values(model)
  for path in before:
    name = ".".join(map(str, path))
    moved = not np.array_equal(before[path], after[path])
    assert moved == any(name.startswith(c) for c in changed), name


@optax_promotion
def test_grads_as_state():
  model = MLP(nnx.Rngs(0))
  twin = nnx.clone(model)
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  opt_twin = nnx.Optimizer(twin, optax.adam(1e-2), wrt=nnx.Param)
  grads = nnx.grad(loss_fn)(model)
  opt.update(model, grads)
  opt_twin.update(twin, nnx.state(grads, nnx.Param, ...)[0])
  assert_trees_close(param_values(model), param_values(twin))


def test_extra_kwargs_reach_tx_update():
  def init(params):
    return optax.EmptyState()

  def update(updates, state, params=None, *, scale):
    return jax.tree.map(lambda g: -scale * g, updates), state

  tx = optax.GradientTransformationExtraArgs(init, update)
  model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  before = model.bias[...]
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(model)
  opt.update(model, grads, scale=3.0)
  np.testing.assert_allclose(model.bias[...], before - 3.0)


@optax_promotion
def test_inject_hyperparams_state_is_editable():
  model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), wrt=nnx.Param)
  opt.opt_state.hyperparams["learning_rate"][...] = jnp.array(0.0)
  before = model.kernel[...]
  opt.update(model, nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(model))
  np.testing.assert_array_equal(model.kernel[...], before)


# --- inside transforms --------------------------------------------------------------------


def eager_reference(steps):
  model = MLP(nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  for _ in range(steps):
    opt.update(model, nnx.grad(loss_fn)(model))
  return model, opt


@optax_promotion
def test_inside_jit_with_donation_matches_eager():
  model = MLP(nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit(donate_argnames=("model", "optimizer"))
  def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, opt, X, Y)) for _ in range(5)]
  assert losses[-1] < losses[0]
  ref_model, ref_opt = eager_reference(5)
  assert_trees_close(param_values(model), param_values(ref_model), rtol=1e-5, atol=1e-6)
  assert int(opt.step[...]) == 5 and int(model.calls[...]) == 5
  np.testing.assert_allclose(
    opt.opt_state[0].nu["l1"]["kernel"][...],
    ref_opt.opt_state[0].nu["l1"]["kernel"][...],
    rtol=1e-5,
  )


@optax_promotion
def test_jit_compiles_once():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  traces = []

  @nnx.jit
  def train_step(model, optimizer):
    traces.append(1)
    optimizer.update(model, nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2))) ** 2))(model))

  for _ in range(3):
    train_step(model, opt)
  assert len(traces) == 1 and int(opt.step[...]) == 3


@optax_promotion
def test_model_and_optimizer():
  state = nnx.ModelAndOptimizer(MLP(nnx.Rngs(0)), optax.adam(1e-2))
  assert state.wrt is nnx.Param

  @nnx.jit
  def train_step(state):
    grads = nnx.grad(loss_fn)(state.model)
    state.update(grads)

  for _ in range(5):
    train_step(state)
  ref_model, _ = eager_reference(5)
  assert_trees_close(param_values(state.model), param_values(ref_model), rtol=1e-5, atol=1e-6)
  assert int(state.step[...]) == 5


def test_wrt_is_keyword_only_and_required():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="wrt"):
    nnx.Optimizer(model, optax.sgd(0.1))  # type: ignore[call-arg]


# --- errors -------------------------------------------------------------------------------


def test_error_grads_missing_a_path():
  model = MLP(nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  other = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  grads = nnx.grad(lambda m: jnp.sum(m(X)))(other)
  with pytest.raises(nnx.StateMismatchError, match=r"grads has no entry at grads\.l1\.bias"):
    opt.update(model, grads)


def test_error_none_gradient_for_selected_variable():
  model = MLP(nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=(nnx.Param, nnx.BatchStat))
  with pytest.raises(nnx.PynnxError, match=r"no gradient \(None\) at grads\.calls"):
    opt.update(model, nnx.grad(loss_fn)(model))


def test_error_gradient_shape():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  grads = nnx.State({"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros((3,))})
  with pytest.raises(ValueError, match=r"grads\.kernel has shape \(3, 2\) but model\.kernel"):
    opt.update(model, grads)


def test_error_model_structure_changed():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  other = nnx.Linear(2, 3, use_bias=False, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.StateMismatchError, match=r"no longer in the model: model\.bias"):
    opt.update(other, nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(other))


def test_error_tx_changes_state_structure():
  tx = optax.GradientTransformation(
    lambda params: (jnp.zeros(()),),
    lambda updates, state, params=None: (updates, (jnp.zeros(()), jnp.zeros(()))),
  )
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(model)
  with pytest.raises(nnx.StateMismatchError, match="must keep its state's structure"):
    opt.update(model, grads)


def test_error_shared_param_in_tree_mode():
  class Tied(nnx.Module):
    def __init__(self):
      self.a = nnx.Param(jnp.ones((2,)))
      self.b = self.a

  with pytest.raises(nnx.SharedReferenceError, match=r"model\.a\n\s+model\.b"):
    nnx.Optimizer(Tied(), optax.sgd(0.1), wrt=nnx.Param, graph=False)


def test_error_bad_filter():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.FilterError, match="is not a filter"):
    nnx.Optimizer(model, optax.sgd(0.1), wrt=3)


def test_error_assigning_attribute_after_build():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  with pytest.raises(nnx.FrozenModuleError, match="'step'"):
    opt.step = nnx.OptState(jnp.array(5))


# --- graph mode ---------------------------------------------------------------------------


class Tied(nnx.Module):
  def __init__(self):
    self.a = nnx.Param(jnp.ones((2,)))
    self.b = self.a  # the same Param twice: graph mode only

  def __call__(self):
    return jnp.sum(self.a[...] * 2.0 + self.b[...])


def test_graph_mode_optimizes_a_shared_param_once():
  model = Tied()
  opt = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param, graph=True)
  grads = nnx.State({"a": nnx.Param(jnp.full((2,), 3.0))})  # as graph-mode grad returns it
  opt.update(model, grads)
  np.testing.assert_allclose(model.b[...], 1.0 - 0.5 * 3.0)
  assert model.a is model.b


def test_graph_mode_with_graph_grad():
  model = Tied()
  opt = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param, graph=True)
  grads = nnx.grad(lambda m: m(), graph=True)(model)
  opt.update(model, grads)
  np.testing.assert_allclose(model.a[...], 1.0 - 0.5 * 3.0)


def test_graph_mode_inside_graph_jit():
  model = Tied()
  opt = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param, graph=True)

  @nnx.jit(graph=True)
  def train_step(model, optimizer):
    optimizer.update(model, nnx.grad(lambda m: m(), graph=True)(model))

  train_step(model, opt)
  train_step(model, opt)
  np.testing.assert_allclose(model.a[...], 1.0 - 2 * 0.5 * 3.0)
  assert model.a is model.b and int(opt.step[...]) == 2
