"""Differential tests against flax.nnx: same constructor arguments → same parameters and outputs.

For every case the flax layer and the pynnx layer are built with identical arguments and
``Rngs(0)``; the test checks that the Variable paths, types, shapes and dtypes agree, that the
initial values agree (both derive keys the same way), then copies flax's (perturbed) weights
into the pynnx layer and compares outputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx

flax = pytest.importorskip("flax")
fnnx = pytest.importorskip("flax.nnx")

bf16 = jnp.bfloat16


def _flat_flax(layer):
  flat = fnnx.to_flat_state(fnnx.state(layer))
  return {tuple(str(p) for p in path): v for path, v in flat}


def _flat_pynnx(layer):
  return {tuple(str(p) for p in path): v for path, v in nnx.state(layer).flat_state()}


def _lookup(layer, path):
  node = layer
  for p in path:
    node = getattr(node, p)
  return node


def _input(shape, dtype, seed=1):
  # NumPy randomness: jax.random would compile a kernel per shape (slow on small CPUs).
  rng = np.random.default_rng(seed)
  if jnp.issubdtype(dtype, jnp.integer):
    return jnp.asarray(rng.integers(0, 10, shape), dtype)
  return jnp.asarray(rng.normal(size=shape).astype(np.float32), dtype)


def _np_init(key, shape, dtype=jnp.float32):
  """A deterministic, compile-free initializer (the key is ignored)."""
  return _input(shape, dtype, seed=int(np.prod(shape)) + len(shape)) * float(1 / np.sqrt(shape[0]))


_INIT_ARG = {
  "Embed": "embedding_init",
  "Linear": "kernel_init",
  "LinearGeneral": "kernel_init",
  "Einsum": "kernel_init",
  "Conv": "kernel_init",
  "ConvTranspose": "kernel_init",
}


def _build_pair(name, args, kwargs, rngs=True):
  extra_f = {"rngs": fnnx.Rngs(0)} if rngs else {}
  extra_p = {"rngs": nnx.Rngs(0)} if rngs else {}
  return getattr(fnnx, name)(*args, **kwargs, **extra_f), getattr(nnx, name)(
    *args, **kwargs, **extra_p
  )


def _flax(fn, *args, **kwargs):
  # flax's layers promote implicitly (e.g. bfloat16 inputs with float32 parameters), which the
  # strict promotion mode of this test suite forbids; pynnx's layers run under strict mode.
  with jax.numpy_dtype_promotion("standard"):
    return fn(*args, **kwargs)


def _call_flax(layer, x, **kwargs):
  """``layer(x)`` under one ``jax.jit`` (one compile instead of one per eager op)."""
  graphdef, state = fnnx.split(layer)

  def run(state, x):
    module = fnnx.merge(graphdef, state)
    return _flax(module, x, **kwargs), fnnx.state(module)

  y, new_state = jax.jit(run)(state, x)
  fnnx.update(layer, new_state)
  return y


def _call_pynnx(layer, x, **kwargs):
  """``layer(x)`` under plain ``jax.jit`` with the Module as a pytree argument."""
  y, new = jax.jit(lambda m, x: (m(x, **kwargs), m))(layer, x)
  return y, new


def _tol(dtype):
  return dict(rtol=2e-2, atol=2e-2) if dtype == bf16 else dict(rtol=1e-5, atol=1e-5)


def _check_structure_and_copy(f_layer, p_layer):
  f_flat, p_flat = _flat_flax(f_layer), _flat_pynnx(p_layer)
  assert sorted(f_flat) == sorted(p_flat)
  for path, fv in f_flat.items():
    pv = p_flat[path]
    assert type(fv).__name__ == type(pv).__name__, path
    if not hasattr(fv, "get_value"):  # a plain array attribute (Conv's mask)
      np.testing.assert_array_equal(fv, pv)
      continue
    fval, pval = fv.get_value(), pv.get_value()
    assert fval.shape == pval.shape, path
    assert fval.dtype == pval.dtype, path
    if jnp.issubdtype(fval.dtype, jax.dtypes.prng_key):
      np.testing.assert_array_equal(jax.random.key_data(fval), jax.random.key_data(pval))
      continue
    # Same seed, same key derivation, same default initializers: identical initial values.
    np.testing.assert_allclose(
      np.asarray(fval, np.float32),
      np.asarray(pval, np.float32),
      rtol=1e-6,
      atol=1e-6,
      err_msg=str(path),
    )
    if jnp.issubdtype(fval.dtype, jnp.floating):
      # Perturb so that zeros/ones initial values do not hide mistakes, then copy over.
      noise = np.random.default_rng(len(path[-1])).normal(size=fval.shape).astype(np.float32)
      new = (np.asarray(fval, np.float32) + 0.3 * noise).astype(fval.dtype)
      fv.set_value(jnp.asarray(new))
      _lookup(p_layer, path)[...] = jnp.asarray(new)


LAYER_CASES = [
  # (layer, args, kwargs, input shape, input dtype, call kwargs)
  ("Linear", (3, 4), {"default_init": True}, (2, 3), jnp.float32, {}),
  ("Linear", (3, 4), {"use_bias": False}, (5, 2, 3), jnp.float32, {}),
  ("Linear", (3, 4), {"dtype": bf16, "param_dtype": bf16}, (2, 3), bf16, {}),
  (
    "LinearGeneral",
    ((2, 3), (4, 5)),
    {"axis": (-2, -1), "default_init": True},
    (7, 2, 3),
    jnp.float32,
    {},
  ),
  ("LinearGeneral", (3, (2, 4)), {"batch_axis": {0: 5}}, (5, 6, 3), jnp.float32, {}),
  ("LinearGeneral", (6, 2), {"axis": 1, "use_bias": False}, (3, 6, 4), jnp.float32, {}),
  ("Einsum", ("nta,hab->nthb", (8, 2, 4), (8, 4)), {}, (2, 3, 2), jnp.float32, {}),
  ("Einsum", ("ab,bc->ac", (3, 5)), {}, (4, 3), jnp.float32, {}),
  ("Conv", (3, 4, 3), {"default_init": True}, (2, 9, 3), jnp.float32, {}),
  ("Conv", (3, 4, (3, 3)), {"strides": 2, "padding": "VALID"}, (2, 9, 9, 3), jnp.float32, {}),
  ("Conv", (3, 4, (3, 2)), {"padding": "CIRCULAR"}, (2, 6, 5, 3), jnp.float32, {}),
  ("Conv", (3, 4, (3,)), {"padding": "CAUSAL", "kernel_dilation": 2}, (2, 8, 3), jnp.float32, {}),
  ("Conv", (3, 4, (3, 3)), {"padding": ((1, 2), (0, 1))}, (2, 7, 7, 3), jnp.float32, {}),
  ("Conv", (3, 4, (3, 3)), {"padding": 1, "input_dilation": 2}, (2, 5, 5, 3), jnp.float32, {}),
  (
    "Conv",
    (4, 6, (3, 3)),
    {"feature_group_count": 2, "use_bias": False},
    (1, 5, 5, 4),
    jnp.float32,
    {},
  ),
  ("Conv", (2, 3, (2, 2, 2)), {"kernel_dilation": (1, 2, 1)}, (1, 4, 5, 4, 2), jnp.float32, {}),
  ("Conv", (3, 4, (3, 3)), {}, (6, 6, 3), jnp.float32, {}),  # no batch axis
  ("Conv", (3, 4, (3,)), {}, (2, 3, 7, 3), jnp.float32, {}),  # two batch axes
  ("Conv", (3, 4, (3,)), {"dtype": bf16, "param_dtype": bf16}, (2, 7, 3), bf16, {}),
  ("ConvTranspose", (3, 4, (3,)), {}, (2, 5, 3), jnp.float32, {}),
  ("ConvTranspose", (3, 4, (4, 4)), {"strides": 2}, (2, 5, 5, 3), jnp.float32, {}),
  (
    "ConvTranspose",
    (3, 4, (3, 3)),
    {"strides": 2, "padding": "VALID"},
    (2, 4, 4, 3),
    jnp.float32,
    {},
  ),
  ("ConvTranspose", (3, 4, (3, 2)), {"padding": "CIRCULAR"}, (2, 5, 6, 3), jnp.float32, {}),
  (
    "ConvTranspose",
    (3, 4, (3,)),
    {"strides": 2, "padding": "CIRCULAR"},
    (2, 5, 3),
    jnp.float32,
    {},
  ),
  (
    "ConvTranspose",
    (3, 4, (5,)),
    {"strides": 3, "padding": "CIRCULAR", "transpose_kernel": True},
    (2, 4, 3),
    jnp.float32,
    {},
  ),
  (
    "ConvTranspose",
    (3, 4, (3, 3)),
    {"transpose_kernel": True, "kernel_dilation": 2},
    (1, 5, 5, 3),
    jnp.float32,
    {},
  ),
  (
    "ConvTranspose",
    (3, 4, (3,)),
    {"padding": ((2, 1),), "use_bias": False},
    (2, 6, 3),
    jnp.float32,
    {},
  ),
  ("Embed", (10, 4), {"default_init": True}, (2, 5), jnp.int32, {}),
  ("Embed", (1, 4), {}, (2, 5), jnp.int32, {}),
  ("BatchNorm", (3,), {}, (8, 3), jnp.float32, {}),
  (
    "BatchNorm",
    (4,),
    {"axis": 1, "momentum": 0.9, "use_fast_variance": False},
    (5, 4, 3),
    jnp.float32,
    {},
  ),
  ("BatchNorm", (3,), {"use_bias": False, "use_scale": False}, (8, 2, 3), jnp.float32, {}),
  ("BatchNorm", (3,), {}, (8, 3), jnp.float32, {"use_running_average": True}),
  ("LayerNorm", (5,), {}, (2, 4, 5), jnp.float32, {}),
  (
    "LayerNorm",
    (5,),
    {"reduction_axes": (1, 2), "use_fast_variance": False, "epsilon": 1e-3},
    (2, 4, 5),
    jnp.float32,
    {},
  ),
  ("LayerNorm", (5,), {"use_bias": False}, (2, 5), bf16, {}),
  ("RMSNorm", (5,), {}, (2, 4, 5), jnp.float32, {}),
  ("RMSNorm", (5,), {"use_scale": False, "reduction_axes": (1, 2)}, (2, 4, 5), jnp.float32, {}),
  ("GroupNorm", (6,), {"num_groups": 3}, (2, 4, 6), jnp.float32, {}),
  ("GroupNorm", (6,), {"num_groups": None, "group_size": 3}, (2, 3, 3, 6), jnp.float32, {}),
  # Explicit reduction_axes equal to the default. (flax 0.12.8 mis-broadcasts the statistics
  # for reduction_axes that skip an inner axis, e.g. (-2, -1) on a 4D input; pynnx follows the
  # definition, checked against NumPy in test_normalization.py.)
  (
    "GroupNorm",
    (8,),
    {"num_groups": 2, "reduction_axes": (1, 2, 3)},
    (2, 3, 4, 8),
    jnp.float32,
    {},
  ),
  ("GroupNorm", (6,), {"num_groups": 2, "use_fast_variance": False}, (2, 4, 6), jnp.float32, {}),
  ("InstanceNorm", (3,), {}, (2, 5, 4, 3), jnp.float32, {}),
  (
    "InstanceNorm",
    (3,),
    {"use_bias": False, "use_fast_variance": False},
    (2, 5, 3),
    jnp.float32,
    {},
  ),
  ("InstanceNorm", (4,), {"feature_axes": 1}, (2, 4, 5), jnp.float32, {}),
]


@pytest.mark.parametrize(
  "name,args,kwargs,shape,dtype,call_kwargs",
  LAYER_CASES,
  ids=[f"{c[0]}-{i}" for i, c in enumerate(LAYER_CASES)],
)
def test_layer_parity(name, args, kwargs, shape, dtype, call_kwargs):
  kwargs = dict(kwargs)
  # Default initializers are compared in the cases marked "default_init"; elsewhere a cheap
  # NumPy initializer keeps this lane fast (each new shape would compile a sampler).
  if not kwargs.pop("default_init", False) and name in _INIT_ARG:
    kwargs[_INIT_ARG[name]] = _np_init
  f_layer, p_layer = _build_pair(name, args, kwargs)
  _check_structure_and_copy(f_layer, p_layer)
  x = _input(shape, dtype)
  y_f = _call_flax(f_layer, x, **call_kwargs)
  y_p, p_layer = _call_pynnx(p_layer, x, **call_kwargs)
  assert y_f.shape == y_p.shape and y_f.dtype == y_p.dtype
  np.testing.assert_allclose(
    np.asarray(y_f, np.float32), np.asarray(y_p, np.float32), **_tol(y_f.dtype)
  )
  # Running statistics (BatchNorm) must be updated identically too.
  f_after, p_after = _flat_flax(f_layer), _flat_pynnx(p_layer)
  for path, fv in f_after.items():
    if type(fv).__name__ == "BatchStat":
      np.testing.assert_allclose(fv.get_value(), p_after[path].get_value(), rtol=1e-5, atol=1e-6)


def test_embed_attend_parity():
  f_layer, p_layer = _build_pair("Embed", (10, 4), {})
  _check_structure_and_copy(f_layer, p_layer)
  q = _input((3, 4), jnp.float32)
  np.testing.assert_allclose(f_layer.attend(q), p_layer.attend(q), rtol=1e-5, atol=1e-5)


def test_einsum_call_time_string_parity():
  f_layer, p_layer = _build_pair("Einsum", ("ab,bc->ac", (3, 5), (5,)), {"kernel_init": _np_init})
  _check_structure_and_copy(f_layer, p_layer)
  x = _input((3, 3), jnp.float32)
  np.testing.assert_allclose(f_layer(x, "ba,bc->ac"), p_layer(x, "ba,bc->ac"), rtol=1e-5)


def test_conv_mask_parity():
  mask = jnp.tril(jnp.ones((3, 3)))[:, :, None, None] * jnp.ones((3, 3, 2, 4))
  f_layer, p_layer = _build_pair("Conv", (2, 4, (3, 3)), {"mask": mask, "kernel_init": _np_init})
  _check_structure_and_copy(f_layer, p_layer)
  x = _input((1, 5, 5, 2), jnp.float32)
  np.testing.assert_allclose(f_layer(x), p_layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [{}, {"broadcast_dims": (0,)}, {"rate": 0.0}, {"rate": 1.0}])
def test_dropout_parity(kwargs):
  kwargs = {"rate": 0.3, **kwargs}
  rate = kwargs.pop("rate")
  f_layer, p_layer = _build_pair("Dropout", (rate,), kwargs)
  _check_structure_and_copy(f_layer, p_layer)
  x = _input((4, 6), jnp.float32)
  key = jax.random.key(7)
  np.testing.assert_array_equal(f_layer(x, rngs=key), p_layer(x, rngs=key))
  # The stored streams started from the same fork, so they draw the same masks too.
  np.testing.assert_array_equal(f_layer(x), p_layer(x))
  np.testing.assert_array_equal(f_layer(x, deterministic=True), p_layer(x, deterministic=True))


def test_prelu_parity():
  f_layer, p_layer = fnnx.PReLU(0.2), nnx.PReLU(0.2)
  _check_structure_and_copy(f_layer, p_layer)
  x = _input((3, 4), jnp.float32)
  np.testing.assert_allclose(f_layer(x), p_layer(x), rtol=1e-6)


POOL_CASES = [
  ("avg_pool", (2, 2), {"strides": (2, 2)}),
  ("avg_pool", (3, 3), {"padding": "SAME", "count_include_pad": False}),
  ("avg_pool", (3, 3), {"padding": "SAME"}),
  ("avg_pool", (2, 3), {"padding": ((1, 0), (1, 1)), "count_include_pad": False}),
  ("max_pool", (2, 2), {"strides": (1, 2)}),
  ("max_pool", (3, 3), {"padding": "SAME"}),
  ("min_pool", (2, 2), {"padding": ((0, 1), (1, 0))}),
]


@pytest.mark.parametrize("fn,window,kwargs", POOL_CASES)
def test_pool_parity(fn, window, kwargs):
  x = _input((2, 6, 5, 3), jnp.float32)
  np.testing.assert_allclose(
    _flax(getattr(fnnx, fn), x, window, **kwargs),
    getattr(nnx, fn)(x, window, **kwargs),
    rtol=1e-6,
    atol=1e-6,
  )


ACTIVATIONS = [
  "celu",
  "elu",
  "gelu",
  "glu",
  "hard_sigmoid",
  "hard_silu",
  "hard_swish",
  "hard_tanh",
  "identity",
  "leaky_relu",
  "log_sigmoid",
  "log_softmax",
  "logsumexp",
  "relu",
  "relu6",
  "selu",
  "sigmoid",
  "silu",
  "soft_sign",
  "softmax",
  "softplus",
  "standardize",
  "swish",
  "tanh",
]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_parity(name):
  # flax re-exports these from jax.nn / jax.numpy; pynnx must expose the very same functions.
  assert getattr(nnx, name) is getattr(fnnx, name)


def test_activation_values_parity():
  x = _input((3, 4), jnp.float32)
  for name in ("gelu", "softmax", "standardize", "glu"):
    np.testing.assert_allclose(getattr(fnnx, name)(x), getattr(nnx, name)(x), rtol=1e-6)
  ids = jnp.array([0, 2, 1])
  np.testing.assert_array_equal(fnnx.one_hot(ids, 4), nnx.one_hot(ids, 4))


INITIALIZERS = [
  "constant",
  "delta_orthogonal",
  "glorot_normal",
  "glorot_uniform",
  "he_normal",
  "he_uniform",
  "kaiming_normal",
  "kaiming_uniform",
  "lecun_normal",
  "lecun_uniform",
  "normal",
  "orthogonal",
  "truncated_normal",
  "uniform",
  "variance_scaling",
  "xavier_normal",
  "xavier_uniform",
  "zeros",
  "ones",
]


_INIT_ARGS = {"constant": (0.3,), "variance_scaling": (2.0, "fan_avg", "uniform")}


@pytest.mark.parametrize("name", INITIALIZERS)
def test_initializer_parity(name):
  # Same values as flax's initializer for the same key, shape and dtype.
  factory = getattr(nnx.initializers, name)
  if name in ("zeros", "ones"):
    assert factory is getattr(fnnx.initializers, name)
    return
  args = _INIT_ARGS.get(name, ())
  shape = (3, 3, 4, 4) if name == "delta_orthogonal" else (4, 5)
  key = jax.random.key(7)
  np.testing.assert_array_equal(
    factory(*args)(key, shape, jnp.float32),
    getattr(fnnx.initializers, name)(*args)(key, shape, jnp.float32),
  )


def test_initializers_pickle_and_compare_by_arguments():
  import pickle

  init = nnx.initializers.variance_scaling(2.0, "fan_avg", "uniform")
  assert init == nnx.initializers.variance_scaling(2.0, "fan_avg", "uniform")
  assert hash(init) == hash(pickle.loads(pickle.dumps(init)))
  layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  back = pickle.loads(pickle.dumps(layer))
  np.testing.assert_array_equal(back(jnp.ones((1, 2))), layer(jnp.ones((1, 2))))


def test_initializer_factory_parity():
  key = jax.random.key(3)
  for name in ("zeros_init", "ones_init"):
    f_init, p_init = getattr(fnnx.initializers, name)(), getattr(nnx.initializers, name)()
    np.testing.assert_array_equal(
      f_init(key, (2, 3), jnp.float32), p_init(key, (2, 3), jnp.float32)
    )
  f_init = fnnx.initializers.variance_scaling(2.0, "fan_avg", "uniform")
  p_init = nnx.initializers.variance_scaling(2.0, "fan_avg", "uniform")
  np.testing.assert_array_equal(f_init(key, (4, 5)), p_init(key, (4, 5)))


def test_default_attributes_match():
  """The mode flags and constructor defaults that users read back agree with flax."""
  for name, args in [("Dropout", (0.1,)), ("BatchNorm", (3,))]:
    f_layer, p_layer = _build_pair(name, args, {})
    for attr in ("deterministic", "use_running_average", "rate", "momentum", "epsilon", "axis"):
      if hasattr(f_layer, attr):
        assert getattr(f_layer, attr) == getattr(p_layer, attr), (name, attr)
  for name, args in [
    ("LayerNorm", (3,)),
    ("RMSNorm", (3,)),
    ("GroupNorm", (32,)),
    ("InstanceNorm", (3,)),
  ]:
    f_layer, p_layer = _build_pair(name, args, {})
    assert f_layer.epsilon == p_layer.epsilon
    if name == "GroupNorm":
      assert (f_layer.num_groups, f_layer.group_size) == (p_layer.num_groups, p_layer.group_size)
