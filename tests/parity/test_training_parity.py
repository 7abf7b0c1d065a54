"""Differential tests of the training helpers against flax.nnx 0.12.8.

Each test runs one snippet on ``flax.nnx`` and on ``pynnx`` (built with the same seed, so the
initial weights agree) and compares values, structures, dtypes and error classes.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pynnx

fnnx = pytest.importorskip("flax.nnx")

LIBS = {"flax": fnnx, "pynnx": pynnx}


def _both(fn):
  """``fn(lib)`` for flax.nnx and pynnx.

  Both run under standard promotion: optax's Adam mixes a Python float with an int32 count,
  which the suite's strict mode rejects whichever library holds the state.
  """
  with jax.numpy_dtype_promotion("standard"):
    return fn(fnnx), fn(pynnx)


def _close(a, b, **kw):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert jnp.shape(x) == jnp.shape(y) and jnp.result_type(x) == jnp.result_type(y)
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **{"rtol": 1e-5, "atol": 1e-6, **kw})


def _model(nnx):
  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(2, 3, rngs=rngs)
      self.b = nnx.Linear(3, 1, rngs=rngs)

    def __call__(self, x):
      return self.b(nnx.relu(self.a(x)))

  return MLP(nnx.Rngs(0))


X = jnp.asarray(np.linspace(-1, 1, 8, dtype=np.float32).reshape(4, 2))


def _loss(m):
  return jnp.mean((m(X) - 1.0) ** 2)


def _labels(params):
  def label(path, _):
    return "sgd" if "bias" in jax.tree_util.keystr(path) else "adam"

  return jax.tree_util.tree_map_with_path(label, params)


@pytest.mark.parametrize("combine", [optax.multi_transform, optax.partition])
def test_optimizer_with_label_function(combine):
  def run(nnx):
    model = _model(nnx)
    tx = combine({"sgd": optax.sgd(0.1), "adam": optax.adam(0.05)}, _labels)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for _ in range(3):
      opt.update(model, nnx.grad(_loss)(model))
    return nnx.state(model, nnx.Param).to_pure_dict(), int(opt.step[...])

  (f_params, f_step), (p_params, p_step) = _both(run)
  assert f_step == p_step == 3
  _close(f_params, p_params)


def test_optimizer_with_label_state_and_frozen_part():
  def run(nnx):
    model = _model(nnx)
    labels = nnx.map_state(lambda p, v: "train" if p[0] == "a" else "frozen", nnx.state(model))
    tx = optax.multi_transform({"train": optax.adam(0.1), "frozen": optax.set_to_zero()}, labels)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    before = model.b.kernel[...]
    opt.update(model, nnx.grad(_loss)(model))
    assert (model.b.kernel[...] == before).all()
    kinds = [type(v).__name__ for v in jax.tree.leaves(opt.opt_state, is_leaf=_is_var(nnx))]
    return nnx.state(model).to_pure_dict(), kinds

  (f_params, f_kinds), (p_params, p_kinds) = _both(run)
  _close(f_params, p_params)
  assert f_kinds == p_kinds


def _is_var(nnx):
  return lambda x: isinstance(x, nnx.Variable)


@pytest.mark.parametrize("returns", [True, False])
def test_optimizer_through_plain_jax_jit(returns):
  def run(nnx):
    model = _model(nnx)
    opt = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)

    @jax.jit
    def step(model, opt):
      opt.update(model, nnx.grad(_loss)(model))
      return (model, opt) if returns else None

    out = step(model, opt)
    # plain jax.jit works on copies: the caller's objects keep their values, as in flax
    result = [float(_loss(model)), int(opt.step[...])]
    if returns:
      new_model, new_opt = out
      result += [float(_loss(new_model)), int(new_opt.step[...])]
    return result

  f_out, p_out = _both(run)
  np.testing.assert_allclose(f_out, p_out, rtol=1e-6)
  if returns:
    assert p_out[3] == 1 and p_out[2] < p_out[0]


def test_optimizer_signatures_match_flax():
  for name in ("__init__", "update"):
    f_sig = inspect.signature(getattr(fnnx.Optimizer, name))
    p_sig = inspect.signature(getattr(pynnx.Optimizer, name))
    assert [(p.name, p.kind) for p in f_sig.parameters.values()] == [
      (p.name, p.kind) for p in p_sig.parameters.values()
    ]


def test_ema_parity():
  def run(nnx):
    model = _model(nnx)
    opt = nnx.Optimizer(model, optax.sgd(0.3), wrt=nnx.Param)
    ema = nnx.EMA(model, decay=0.8)
    ema_model = ema.apply_to(model)

    @nnx.jit
    def step(model, opt, ema):
      opt.update(model, nnx.grad(_loss)(model))
      ema.update(model)

    for _ in range(3):
      step(model, opt, ema)
    assert ema_model.a.kernel is ema.params["a"]["kernel"]
    assert ema.params["a"]["kernel"] is not model.a.kernel
    return (
      ema.params.to_pure_dict(),
      float(nnx.jit(_loss)(ema_model)),
      [type(v).__name__ for v in jax.tree.leaves(ema.params, is_leaf=_is_var(nnx))],
      len(jax.tree.leaves(ema)),
    )

  f_out, p_out = _both(run)
  _close(f_out[:2], p_out[:2])
  assert f_out[2:] == p_out[2:]


def test_ema_only_filter_keeps_other_variables():
  def run(nnx):
    bn = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    ema = nnx.EMA(bn, 0.5, only=nnx.BatchStat)
    bn(jnp.arange(8.0).reshape(4, 2))
    ema.update(bn)
    averaged = ema.apply_to(bn)
    assert averaged.scale is bn.scale and averaged.mean is ema.params["mean"]
    return sorted(ema.params.keys()), ema.params.to_pure_dict()

  f_out, p_out = _both(run)
  assert f_out[0] == p_out[0] == ["mean", "var"]
  _close(f_out[1], p_out[1])


def test_ema_errors():
  for nnx in LIBS.values():
    with pytest.raises(TypeError, match="Variable"):
      nnx.EMA({"a": jnp.ones(2)}, 0.9)
  with pytest.raises(pynnx.NotAVariableError, match=r"params.a is a ArrayImpl.*only=nnx.Param"):
    pynnx.EMA({"a": jnp.ones(2)}, 0.9)
  ema = {name: nnx.EMA(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), 0.9) for name, nnx in LIBS.items()}
  for name, nnx in LIBS.items():
    with pytest.raises(ValueError):
      ema[name].update(nnx.Linear(2, 2, use_bias=False, rngs=nnx.Rngs(0)))
  with pytest.raises(pynnx.StateMismatchError, match=r"missing: model.bias.*build a new EMA"):
    ema["pynnx"].update(pynnx.Linear(2, 2, use_bias=False, rngs=pynnx.Rngs(0)))


def test_train_state_parity():
  def run(nnx):
    graphdef, params, stats = nnx.split(_bn_model(nnx), nnx.Param, nnx.BatchStat)
    # sgd with momentum: Adam would amplify float rounding in BatchNorm's tiny gradients
    state = nnx.TrainState.create(graphdef, params=params, tx=optax.sgd(0.1, momentum=0.9))
    assert state.step.dtype == jnp.int32 and int(state.step) == 0

    def loss_fn(params, stats):
      y, (_, new_state) = state.apply(params, stats)(X)
      return jnp.mean((y - 1.0) ** 2), new_state

    @jax.jit
    def train_step(state, stats):
      # stats are differentiated too (and the gradient dropped): flax forbids mutating a
      # Variable that entered the grad trace from outside it
      grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
      (loss, new_state), (grads, _) = grad_fn(state.params, stats)
      return state.apply_gradients(grads=grads), new_state, loss

    state, model_state, loss = train_step(state, stats)
    state, model_state, loss = train_step(state, stats)
    return (
      int(state.step),
      float(loss),
      state.params.to_pure_dict(),
      model_state.to_pure_dict(),
      str(jax.tree.structure(state.opt_state)).count("TraceState"),
      len(jax.tree.leaves(state)),
    )

  f_out, p_out = _both(run)
  assert f_out[0] == p_out[0] == 2
  _close(f_out[1:4], p_out[1:4])
  assert f_out[4:] == p_out[4:]


def _bn_model(nnx):
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.lin = nnx.Linear(2, 3, use_bias=False, rngs=rngs)  # BN would zero its gradient
      self.bn = nnx.BatchNorm(3, rngs=rngs)

    def __call__(self, x):
      return self.bn(self.lin(x)).sum(-1)

    def embed(self, x):
      return self.lin(x)

  return Net(nnx.Rngs(0))


def test_train_state_subclass_fields_method_calls_and_errors():
  def run(nnx):
    class WithStats(nnx.TrainState):
      batch_stats: object

    graphdef, params, stats = nnx.split(_bn_model(nnx), nnx.Param, nnx.BatchStat)
    state = WithStats.create(graphdef, params=params, tx=optax.sgd(0.1), batch_stats=stats)
    embedded, _ = state.apply("params", "batch_stats").embed(X)
    grads = jax.tree.map(jnp.ones_like, state.params)
    nxt = state.apply_gradients(grads, batch_stats=jax.tree.map(jnp.zeros_like, stats))
    with pytest.raises(AttributeError):
      state.apply("nope")
    return (
      embedded,
      nxt.params.to_pure_dict(),
      nxt.batch_stats.to_pure_dict(),
      state.replace(step=5).step,
    )

  f_out, p_out = _both(run)
  _close(f_out, p_out)


def test_train_state_signatures_match_flax():
  for name in ("create", "apply_gradients", "apply"):
    f_sig = inspect.signature(getattr(fnnx.TrainState, name))
    p_sig = inspect.signature(getattr(pynnx.TrainState, name))
    assert [(p.name, p.kind) for p in f_sig.parameters.values()] == [
      (p.name, p.kind) for p in p_sig.parameters.values()
    ]
  f_init = inspect.signature(fnnx.EMA.__init__).parameters
  p_init = inspect.signature(pynnx.EMA.__init__).parameters
  assert list(f_init) == list(p_init)


# --- tabulate ---------------------------------------------------------------------------------

CONSOLE = {"force_terminal": False, "width": 160}


def _tab_model(nnx):
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(2, 3, rngs=rngs)
      self.bn = nnx.BatchNorm(3, rngs=rngs)
      self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return nnx.relu(self.dropout(self.bn(self.linear(x))))

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.blocks = nnx.List([Block(rngs), Block(rngs)])

    def __call__(self, x, ids=None, *, scale=1.0):
      h = self.blocks[1](self.blocks[0](x)[:, :2]) * scale
      return h, {"ids": ids, "n": 3}

    def first(self, x):
      return self.blocks[0](x)

  return Net(nnx.Rngs(0))


# Observed with flax 0.12.8: after flax's own nnx.tabulate has run, flax.nnx.capture fails in
# the same process (SystemError from nanobind). The capture parity tests therefore live in
# test_lifted_transforms_parity.py, which pytest runs before this file.


@pytest.mark.parametrize(
  "kwargs",
  [
    {},
    {"depth": 1},
    {"method": "first"},
    {"row_filter": lambda row: True},
  ],
  ids=["all", "depth", "method", "rng-rows"],
)
def test_tabulate_matches_flax(kwargs):
  x, ids = jnp.ones((4, 2)), jnp.arange(5)

  def run(nnx):
    model = _tab_model(nnx)
    args = (x,) if kwargs.get("method") else (x, ids)
    extra = {} if kwargs.get("method") else {"scale": 2.0}
    table = nnx.tabulate(model, *args, console_kwargs=CONSOLE, **kwargs, **extra)
    untouched = (model.blocks[0].bn.mean[...], model.blocks[0].dropout.rngs.count[...])
    return table, untouched

  (f_table, f_state), (p_table, p_state) = _both(run)
  assert p_table == f_table
  assert "Total Parameters: 46 (192 B)" in p_table
  _close(f_state, p_state)


def test_tabulate_flops_and_call_info_match_flax():
  def run(nnx):
    rows = []
    table = nnx.tabulate(
      nnx.Linear(2, 3, rngs=nnx.Rngs(0)),
      jnp.ones((4, 2)),
      compute_flops=True,
      compute_vjp_flops=True,
      row_filter=lambda row: rows.append(row) or True,
      console_kwargs=CONSOLE,
    )
    info = [
      (r.call_order, r.path, r.type.__name__, r.inputs_repr, r.flops, r.vjp_flops) for r in rows
    ]
    return table, info

  (f_table, f_info), (p_table, p_info) = _both(run)
  assert p_table == f_table and p_info == f_info
  assert p_info[0][4] > 0 and p_info[0][5] > p_info[0][4]


def test_tabulate_signature_matches_flax():
  f_sig = inspect.signature(fnnx.tabulate).parameters
  p_sig = inspect.signature(pynnx.tabulate).parameters
  assert [(p.name, p.kind) for p in f_sig.values()] == [(p.name, p.kind) for p in p_sig.values()]
  assert pynnx.summary.tabulate is pynnx.tabulate


def test_ema_and_optimizer_graph_mode_with_tied_weights():
  def run(nnx):
    class Tied(nnx.Module):
      def __init__(self):
        self.a = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
        self.b = self.a  # the same layer twice: one set of averages

      def __call__(self, x):
        return self.b(nnx.relu(self.a(x)))

    model = Tied()
    tx = optax.multi_transform({"sgd": optax.sgd(0.1), "adam": optax.adam(0.05)}, _labels)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param, graph=True)
    ema = nnx.EMA(model, 0.5, graph=True)
    for _ in range(2):
      opt.update(model, nnx.grad(_loss, graph=True)(model))
      ema.update(model)
    averaged = ema.apply_to(model)
    assert averaged.a is averaged.b
    return sorted(str(p) for p, _ in _flat(nnx, ema.params)), ema.params.to_pure_dict()

  (f_paths, f_vals), (p_paths, p_vals) = _both(run)
  assert f_paths == p_paths
  _close(f_vals, p_vals)


def _flat(nnx, state):
  return fnnx.to_flat_state(state) if nnx is fnnx else list(state.flat_state())
