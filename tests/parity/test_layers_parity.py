"""Differential tests of layers against flax.nnx 0.12.8 (and flax.linen where Flax checks its
NNX layers against Linen).

Each test builds the same layer with the same seed on both sides (so initial values agree,
which the tests check), runs the same calls and compares values, shapes, dtypes, Variable
structures and error classes.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx

fnnx = pytest.importorskip("flax.nnx")
linen = pytest.importorskip("flax.linen")

LIBS = {"flax": fnnx, "pynnx": pynnx}


def _both(fn):
  """``fn(lib)`` on flax.nnx (under standard promotion: it promotes implicitly) and pynnx."""
  with jax.numpy_dtype_promotion("standard"):
    f_out = fn(fnnx)
  return f_out, fn(pynnx)


def _close(a, b, rtol=1e-5, atol=1e-6):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    assert jnp.shape(x) == jnp.shape(y), (jnp.shape(x), jnp.shape(y))
    assert jnp.result_type(x) == jnp.result_type(y), (jnp.result_type(x), jnp.result_type(y))
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol, atol)


def _state(nnx, module):
  """``{path: (Variable type, value)}`` of every leaf of ``nnx.state(module)``."""
  flat = (
    fnnx.to_flat_state(fnnx.state(module))
    if nnx is fnnx
    else list(pynnx.state(module).flat_state())
  )
  out = {}
  for path, leaf in flat:
    if isinstance(leaf, nnx.Variable):
      out[tuple(path)] = (type(leaf).__name__, leaf.get_value())
    else:
      out[tuple(path)] = ("array", leaf)
  return out


def _same_state(f_state, p_state):
  assert sorted(f_state, key=str) == sorted(p_state, key=str)
  for path, (kind, value) in f_state.items():
    assert p_state[path][0] == kind, path
    _close(value, p_state[path][1])


def _x(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


# --- SpectralNorm / WeightNorm ----------------------------------------------------------------


@pytest.mark.parametrize(
  "layer,kwargs,shape",
  [
    ("Linear", {"n_steps": 3}, (2, 3)),
    ("Conv", {"n_steps": 2}, (2, 5, 5, 3)),
    ("Conv", {"n_steps": 0}, (2, 5, 5, 3)),
    ("Linear", {"update_stats": False, "epsilon": 1e-3}, (2, 3)),
  ],
)
def test_spectral_norm(layer, kwargs, shape):
  x = _x(shape)

  def run(nnx):
    rngs = nnx.Rngs(0)
    inner = getattr(nnx, layer)(3, 4, *(((3, 3),) if layer == "Conv" else ()), rngs=rngs)
    sn = nnx.SpectralNorm(inner, rngs=rngs, **kwargs)
    init = _state(nnx, sn)

    @nnx.jit  # one compile per library instead of one per eager op
    def steps(m, x):
      ys = [m(x), m(x, update_stats=False), m(x, update_stats=True)]
      return ys, nnx.grad(lambda m: m(x).sum())(m).layer_instance.kernel[...]

    ys, grad = steps(sn, x)
    sn.eval()
    ys.append(nnx.jit(lambda m, x: m(x))(sn, x))
    return init, ys, _state(nnx, sn), grad

  (f_init, f_ys, f_after, f_grad), (p_init, p_ys, p_after, p_grad) = _both(run)
  _same_state(f_init, p_init)
  _close(f_ys, p_ys, rtol=2e-5, atol=2e-5)
  _same_state(f_after, p_after)
  _close(f_grad, p_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  "kwargs",
  [
    {},
    {"feature_axes": None},
    {"use_scale": False, "dtype": jnp.bfloat16},
    {"variable_filter": pynnx.PathContains("bias"), "epsilon": 1e-3},
  ],
)
def test_weight_norm(kwargs):
  x = _x((2, 5, 5, 3))

  def run(nnx):
    kw = dict(kwargs)
    if "variable_filter" in kw:
      kw["variable_filter"] = nnx.PathContains("bias")
    wn = nnx.WeightNorm(nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1), **kw)
    init = _state(nnx, wn)

    @nnx.jit
    def steps(m, x):
      ys = [m(x), m(x)]
      return ys, nnx.grad(lambda m: m(x).sum())(m).layer_instance.kernel[...]

    ys, grad = steps(wn, x)
    return init, ys, _state(nnx, wn), grad

  (f_init, f_ys, f_after, f_grad), (p_init, p_ys, p_after, p_grad) = _both(run)
  _same_state(f_init, p_init)
  _close(f_ys, p_ys, rtol=2e-5, atol=2e-5)
  _same_state(f_after, p_after)
  _close(f_grad, p_grad, rtol=1e-4, atol=1e-4)


def test_weight_norm_keeps_later_keys_and_honours_random_scale_init():
  def run(nnx):
    rngs = nnx.Rngs(0)
    nnx.WeightNorm(nnx.Linear(3, 4, rngs=rngs), rngs=rngs)
    return nnx.Linear(2, 2, rngs=rngs).kernel[...]

  _close(*_both(run))  # the default scale_init draws no key, as in flax
  layer = pynnx.WeightNorm(
    pynnx.Linear(3, 4, rngs=pynnx.Rngs(0)),
    scale_init=pynnx.initializers.normal(),
    param_dtype=jnp.bfloat16,
    rngs=pynnx.Rngs(1),
  )
  scale = layer.scales[("kernel",)]
  assert scale.dtype == jnp.bfloat16 and float(jnp.abs(scale - 1).sum()) > 0


def test_weight_norm_promote_dtype_is_used():
  calls = []

  def promote(args, /, *, dtype=None, inexact=True):
    calls.append(dtype)
    return pynnx.nn.dtypes.promote_dtype(args, dtype=jnp.float16, inexact=inexact)

  layer = pynnx.WeightNorm(
    pynnx.Linear(3, 4, rngs=pynnx.Rngs(0)), promote_dtype=promote, rngs=pynnx.Rngs(1)
  )
  layer(jnp.ones((1, 3), jnp.float16))
  assert calls == [None] and layer.layer_instance.kernel.dtype == jnp.float16


def test_spectral_and_weight_norm_errors():
  for nnx in LIBS.values():
    with pytest.raises(ValueError, match="error_on_non_matrix"):
      nnx.SpectralNorm(
        nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0)), error_on_non_matrix=True, rngs=nnx.Rngs(0)
      )
  with pytest.raises(pynnx.LayerArgumentError, match=r"layer.layer_instance.kernel has 4 dim"):
    pynnx.SpectralNorm(
      pynnx.Conv(3, 4, (3, 3), rngs=pynnx.Rngs(0)), error_on_non_matrix=True, rngs=pynnx.Rngs(0)
    )
  sn = pynnx.SpectralNorm(pynnx.Linear(3, 4, rngs=pynnx.Rngs(0)), rngs=pynnx.Rngs(0))
  swapped = pynnx.with_attributes(sn, layer_instance=pynnx.Embed(3, 4, rngs=pynnx.Rngs(0)))
  with pytest.raises(pynnx.StructureChangeError, match=r"layer_instance.embedding.*new Spec"):
    swapped(jnp.ones((1, 3), jnp.int32))
  wn = pynnx.WeightNorm(pynnx.Linear(3, 4, rngs=pynnx.Rngs(0)), rngs=pynnx.Rngs(0))
  swapped = pynnx.with_attributes(wn, variable_filter=pynnx.PathContains("bias"))
  with pytest.raises(pynnx.StructureChangeError, match=r"no scale for the Param at layer.layer_"):
    swapped(jnp.ones((1, 3)))
  with pytest.raises(pynnx.ShapeError, match=r"WeightNorm: feature_axes for layer.layer_inst"):
    pynnx.WeightNorm(pynnx.Linear(3, 4, rngs=pynnx.Rngs(0)), feature_axes=3, rngs=pynnx.Rngs(0))


# --- signatures -------------------------------------------------------------------------------


def _params(fn):
  return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]


def test_layer_signatures_match_flax():
  mismatched = {}
  for name in dir(fnnx):
    obj = getattr(fnnx, name)
    if not (isinstance(obj, type) and issubclass(obj, fnnx.Module)) or not hasattr(pynnx, name):
      continue
    if obj.__module__.split(".")[2] not in ("nn", "training"):
      continue
    for method in ("__init__", "__call__"):
      if method in vars(obj) and _params(vars(obj)[method]) != _params(
        getattr(getattr(pynnx, name), method)
      ):
        mismatched[f"{name}.{method}"] = (
          _params(vars(obj)[method]),
          _params(getattr(getattr(pynnx, name), method)),
        )
  assert mismatched == {}


# --- error classes ----------------------------------------------------------------------------

ERROR_CASES = {
  "embed_float_ids": lambda n: n.Embed(5, 3, rngs=n.Rngs(0))(jnp.ones((2,), jnp.float32)),
  "linear_features": lambda n: n.Linear(3, 2, rngs=n.Rngs(0))(jnp.ones((2, 4))),
  "linear_general_features": lambda n: n.LinearGeneral(3, 2, rngs=n.Rngs(0))(jnp.ones((2, 4))),
  "lora_features": lambda n: n.LoRA(3, 1, 2, rngs=n.Rngs(0))(jnp.ones((2, 4))),
  "attend_features": lambda n: n.Embed(5, 3, rngs=n.Rngs(0)).attend(jnp.ones((2, 4))),
  "batch_norm_features": lambda n: n.BatchNorm(3, rngs=n.Rngs(0))(jnp.ones((2, 4))),
  "layer_norm_features": lambda n: n.LayerNorm(3, rngs=n.Rngs(0))(jnp.ones((2, 4))),
  "rms_norm_features": lambda n: n.RMSNorm(3, rngs=n.Rngs(0))(jnp.ones((2, 4))),
  "group_norm_features": lambda n: n.GroupNorm(6, num_groups=2, rngs=n.Rngs(0))(jnp.ones((2, 4))),
  "instance_norm_features": lambda n: n.InstanceNorm(3, rngs=n.Rngs(0))(jnp.ones((2, 5, 4))),
  "group_norm_groups": lambda n: n.GroupNorm(6, num_groups=4, rngs=n.Rngs(0)),
  "group_norm_neither": lambda n: n.GroupNorm(6, num_groups=None, group_size=None, rngs=n.Rngs(0)),
  "group_norm_both": lambda n: n.GroupNorm(6, num_groups=2, group_size=3, rngs=n.Rngs(0)),
  "mha_heads": lambda n: n.MultiHeadAttention(3, 8, rngs=n.Rngs(0)),
  "mha_no_cache": lambda n: n.MultiHeadAttention(2, 4, decode=True, rngs=n.Rngs(0))(
    jnp.ones((1, 1, 4))
  ),
  "mha_features": lambda n: n.MultiHeadAttention(2, 4, decode=False, rngs=n.Rngs(0))(
    jnp.ones((1, 3, 5))
  ),
  "mha_mask": lambda n: n.MultiHeadAttention(2, 4, decode=False, rngs=n.Rngs(0))(
    jnp.ones((1, 3, 4)), mask=jnp.ones((1, 2, 5, 5), bool)
  ),
  "attention_ranks": lambda n: n.dot_product_attention(
    jnp.ones((1, 3, 2, 4)), jnp.ones((3, 2, 4)), jnp.ones((1, 3, 2, 4))
  ),
  "attention_heads": lambda n: n.dot_product_attention(
    jnp.ones((1, 3, 2, 4)), jnp.ones((1, 3, 3, 4)), jnp.ones((1, 3, 3, 4))
  ),
  "dropout_without_rngs": lambda n: n.Dropout(0.5)(jnp.ones(3)),
  "conv_features": lambda n: n.Conv(3, 4, (3,), rngs=n.Rngs(0))(jnp.ones((1, 5, 2))),
  "spectral_non_matrix": lambda n: n.SpectralNorm(
    n.Conv(3, 4, (3, 3), rngs=n.Rngs(0)), error_on_non_matrix=True, rngs=n.Rngs(0)
  ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_error_classes_match_flax(case):
  """pynnx raises a PynnxError that is also the builtin class flax raises for the same input."""
  with pytest.raises(Exception) as flax_error, jax.numpy_dtype_promotion("standard"):
    ERROR_CASES[case](fnnx)
  with pytest.raises(pynnx.PynnxError) as pynnx_error:
    ERROR_CASES[case](pynnx)
  builtin = next(c for c in type(flax_error.value).__mro__ if c.__module__ == "builtins")
  assert isinstance(pynnx_error.value, builtin), (builtin, type(pynnx_error.value))


def test_input_shape_error_is_value_and_type_error():
  with pytest.raises(pynnx.ShapeError, match=r"Linear was built for 3 input features"):
    pynnx.Linear(3, 2, rngs=pynnx.Rngs(0))(jnp.ones((2, 4)))
  with pytest.raises(TypeError, match=r"LayerNorm was built for num_features=3"):
    pynnx.LayerNorm(3, rngs=pynnx.Rngs(0))(jnp.ones((2, 4)))


# --- normalization against flax.linen ---------------------------------------------------------

LINEN_NORMS = [
  # (pynnx layer, its args/kwargs, linen kwargs, input shape, call kwargs)
  ("BatchNorm", (4,), {"momentum": 0.8}, (6, 3, 4), {"use_running_average": False}),
  ("BatchNorm", (4,), {}, (6, 4), {"use_running_average": True}),
  ("LayerNorm", (4,), {"epsilon": 1e-3}, (2, 3, 4), {}),
  ("RMSNorm", (4,), {"use_scale": True}, (2, 3, 4), {}),
  ("GroupNorm", (6,), {"num_groups": 3}, (2, 5, 6), {}),
  ("InstanceNorm", (4,), {}, (2, 5, 5, 4), {}),
]


@pytest.mark.parametrize("name,args,kwargs,shape,call", LINEN_NORMS, ids=lambda c: str(c))
def test_norms_match_linen(name, args, kwargs, shape, call):
  x = _x(shape, seed=3)
  layer = getattr(pynnx, name)(*args, **kwargs, rngs=pynnx.Rngs(0))
  rng = np.random.default_rng(5)
  variables = {}
  for path, var in pynnx.state(layer).flat_state():
    value = jnp.asarray(rng.normal(size=var.shape).astype(np.float32))
    if path[-1] == "var":
      value = jnp.abs(value) + 0.5
    var[...] = value
    collection = "params" if isinstance(var, pynnx.Param) else "batch_stats"
    variables.setdefault(collection, {})[path[-1]] = value
  linen_kwargs = dict(kwargs)
  linen_kwargs.update(call)
  module = getattr(linen, name)(**linen_kwargs)
  with jax.numpy_dtype_promotion("standard"):
    y_linen, updates = module.apply(variables, x, mutable=["batch_stats"])
  y = layer(x, **call)
  _close(y_linen, y, rtol=1e-5, atol=1e-5)
  for stat, value in updates.get("batch_stats", {}).items():
    _close(value, getattr(layer, stat)[...])


def test_nn_function_and_initializer_signatures_match_flax():
  mismatched = {}
  for name in dir(fnnx):
    obj = getattr(fnnx, name)
    module = getattr(obj, "__module__", "") or ""
    if isinstance(obj, type) or not callable(obj) or not module.startswith("flax.nnx.nn"):
      continue
    if _params(obj) != _params(getattr(pynnx, name)):
      mismatched[name] = (_params(obj), _params(getattr(pynnx, name)))
  for name in dir(fnnx.initializers):
    obj = getattr(fnnx.initializers, name)
    if callable(obj) and not name.startswith("_") and not isinstance(obj, type):
      if _params(obj) != _params(getattr(pynnx.initializers, name)):
        mismatched[f"initializers.{name}"] = name
  assert mismatched == {}
  assert pynnx.pool is pynnx.nn.pooling.pool and pynnx.Initializer is not None
