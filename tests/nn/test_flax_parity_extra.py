"""Differential tests against flax.nnx for attention, recurrent and LoRA layers.

Each layer is built in both libraries with the same arguments and ``Rngs(0)``. The Param paths,
types, shapes, dtypes and initial values must agree; then flax's weights are perturbed, copied
into the pynnx layer, and outputs are compared.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx

flax = pytest.importorskip("flax")
fnnx = pytest.importorskip("flax.nnx")


def _key_name(k):
  for attr in ("name", "idx", "key"):
    if hasattr(k, attr):
      return getattr(k, attr)
  raise AssertionError(k)


def _params_pynnx(layer):
  leaves = jax.tree_util.tree_flatten_with_path(
    layer, is_leaf=lambda x: isinstance(x, nnx.Variable)
  )
  return {
    tuple(str(_key_name(k)) for k in kp): v for kp, v in leaves[0] if isinstance(v, nnx.Param)
  }


def _params_flax(layer):
  return {tuple(str(p) for p in path): v for path, v in fnnx.state(layer, fnnx.Param).flat_state()}


def _sync(f_layer, p_layer, seed=7):
  """Checks the Param structure and initial values, then copies perturbed flax weights over."""
  f_params, p_params = _params_flax(f_layer), _params_pynnx(p_layer)
  assert sorted(f_params) == sorted(p_params)
  for i, (path, fv) in enumerate(sorted(f_params.items())):
    pv = p_params[path]
    assert type(fv).__name__ == type(pv).__name__, path
    assert fv[...].shape == pv[...].shape and fv[...].dtype == pv[...].dtype, path
    np.testing.assert_allclose(fv[...], pv[...], rtol=1e-6, atol=1e-6, err_msg=str(path))
    noise = 0.3 * np.random.default_rng(seed + i).standard_normal(fv[...].shape)
    fv[...] = jnp.asarray(np.asarray(fv[...]) + noise, fv[...].dtype)
    pv[...] = fv[...]


def _bern(seed, p, shape):
  mask = np.random.default_rng(seed).random(shape) < p
  mask[..., 0] = True  # every query sees at least one key
  return jnp.asarray(mask)


def _x(shape, seed=1):
  # numpy draws: no XLA compilation per shape, which keeps the tests fast
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


MHA_CASES = {
  "cross_gqa": (
    dict(
      num_heads=4, in_features=6, qkv_features=8, out_features=5, num_kv_heads=2, in_kv_features=3
    ),
    {},
  ),
  "qk_norm_masked": (
    dict(num_heads=3, in_features=6, qkv_features=9, normalize_qk=True, use_bias=False),
    {"mask": True},
  ),
  "causal": (dict(num_heads=2, in_features=6), {"is_causal": True}),
}


@pytest.mark.parametrize("case", sorted(MHA_CASES))
def test_multi_head_attention(case):
  kwargs, call = MHA_CASES[case]
  f = fnnx.MultiHeadAttention(**kwargs, decode=False, rngs=fnnx.Rngs(0))
  p = nnx.MultiHeadAttention(**kwargs, decode=False, rngs=nnx.Rngs(0))
  _sync(f, p)
  q = _x((2, 5, kwargs["in_features"]))
  kv = _x((2, 7, kwargs.get("in_kv_features", kwargs["in_features"])), seed=2)
  args = (q,) if case != "cross_gqa" else (q, kv)
  extra = {}
  if call.get("mask"):
    extra["mask"] = _bern(3, 0.7, (2, 1, 5, 5))
  if call.get("is_causal"):
    extra["is_causal"] = True
  # Jitted (flax's layer as a closed-over constant) so each side compiles once.
  want = jax.jit(lambda *a: f(*a, **extra))(*args)
  got = jax.jit(lambda m, *a: m(*a, **extra))(p, *args)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_multi_head_attention_dropout_structure_and_eval_output():
  kwargs = dict(num_heads=2, in_features=4, dropout_rate=0.5)
  f = fnnx.MultiHeadAttention(**kwargs, decode=False, rngs=fnnx.Rngs(0))
  p = nnx.MultiHeadAttention(**kwargs, decode=False, rngs=nnx.Rngs(0))
  _sync(f, p)
  x = _x((2, 3, 4))
  np.testing.assert_allclose(
    f(x, deterministic=True), p(x, deterministic=True), rtol=1e-5, atol=1e-5
  )
  # Both keep a forked dropout stream with the same key.
  np.testing.assert_array_equal(
    jax.random.key_data(f.rngs.key[...]), jax.random.key_data(p.rngs.key[...])
  )


def test_multi_head_attention_decode_matches_flax():
  kwargs = dict(num_heads=2, in_features=4, qkv_features=6, decode=True)
  f = fnnx.MultiHeadAttention(**kwargs, rngs=fnnx.Rngs(0))
  p = nnx.MultiHeadAttention(**kwargs, rngs=nnx.Rngs(0))
  _sync(f, p)
  f.init_cache((2, 3, 4))
  p.init_cache((2, 3, 4))
  x = _x((2, 3, 4))
  for t in range(3):
    np.testing.assert_allclose(f(x[:, t : t + 1]), p(x[:, t : t + 1]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(f.cached_key[...], p.cached_key[...], rtol=1e-6)
  assert int(f.cache_index[...]) == int(p.cache_index[...]) == 3


def _attention_functions(lib, q, k, v, bias, mask, ids):
  with jax.numpy_dtype_promotion("standard"):  # flax mixes bool and float masks here
    weights_fn = getattr(lib, "dot_product_attention_weights", None) or (
      lib.nn.attention.dot_product_attention_weights
    )
    causal = lib.make_causal_mask(ids, extra_batch_dims=1)
    return (
      lib.dot_product_attention(q, k, v, bias=bias, mask=mask),
      weights_fn(q, k, mask=mask, is_causal=True),
      lib.make_attention_mask(ids > 0, ids > 0),
      causal,
      lib.combine_masks(causal, None, causal[..., ::-1]),
    )


def test_attention_functions_match_flax():
  q, k, v = _x((2, 5, 4, 8)), _x((2, 6, 2, 8), 2), _x((2, 6, 2, 8), 3)
  mask = _bern(4, 0.8, (2, 1, 5, 6))
  bias = _x((1, 4, 5, 6), 5)
  ids = jnp.array([[1, 2, 0], [3, 0, 0]])
  args = (q, k, v, bias, mask, ids)
  want = jax.jit(lambda *a: _attention_functions(fnnx, *a))(*args)
  got = jax.jit(lambda *a: _attention_functions(nnx, *a))(*args)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


CELLS = ["LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell"]


@pytest.mark.parametrize("name", CELLS)
def test_cells(name):
  f = getattr(fnnx, name)(3, 4, rngs=fnnx.Rngs(0))
  p = getattr(nnx, name)(3, 4, rngs=nnx.Rngs(0))
  _sync(f, p)
  x = _x((2, 3))
  carry_f = f.initialize_carry(x.shape, fnnx.Rngs(0))
  carry_p = p.initialize_carry(x.shape)
  jax.tree.map(np.testing.assert_array_equal, carry_f, carry_p)
  carry = jax.tree.map(lambda c: c + 0.5, carry_p)
  (cf, yf), (cp, yp) = f(carry, x), p(carry, x)
  np.testing.assert_allclose(yf, yp, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), cf, cp)


@pytest.mark.parametrize(
  "opts",
  [
    dict(),
    dict(reverse=True, keep_order=True),
    dict(time_major=True),
    dict(return_carry=True, seq_lengths=True),
    dict(return_carry=True, reverse=True, seq_lengths=True),
  ],
  ids=["plain", "reverse_keep_order", "time_major", "seq_lengths", "reverse_seq_lengths"],
)
def test_rnn(opts):
  f = fnnx.RNN(fnnx.GRUCell(3, 4, rngs=fnnx.Rngs(0)))
  p = nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(0)))
  _sync(f, p)
  opts = dict(opts)
  x = _x((6, 2, 3)) if opts.get("time_major") else _x((2, 6, 3))
  if opts.pop("seq_lengths", False):
    opts["seq_lengths"] = jnp.array([6, 3])
  out_f, out_p = f(x, **opts), p(x, **opts)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), out_f, out_p)


def test_bidirectional():
  mk = lambda lib, s: lib.RNN(lib.LSTMCell(3, 4, rngs=lib.Rngs(s)))  # noqa: E731
  f = fnnx.Bidirectional(mk(fnnx, 0), mk(fnnx, 1))
  p = nnx.Bidirectional(mk(nnx, 0), mk(nnx, 1))
  _sync(f, p)
  x, lengths = _x((2, 5, 3)), jnp.array([5, 2])
  (cf, yf) = f(x, seq_lengths=lengths, return_carry=True)
  (cp, yp) = p(x, seq_lengths=lengths, return_carry=True)
  np.testing.assert_allclose(yf, yp, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), cf, cp)


def test_lora_layers():
  f = fnnx.LoRA(3, 2, 4, base_module=fnnx.Linear(3, 4, rngs=fnnx.Rngs(1)), rngs=fnnx.Rngs(0))
  p = nnx.LoRA(3, 2, 4, base_module=nnx.Linear(3, 4, rngs=nnx.Rngs(1)), rngs=nnx.Rngs(0))
  _sync(f, p)
  x = _x((5, 3))
  np.testing.assert_allclose(f(x), p(x), rtol=1e-5, atol=1e-6)
  assert isinstance(p.lora_a, nnx.LoRAParam) and isinstance(p.base_module.kernel, nnx.Param)

  f = fnnx.LoRALinear(3, 4, lora_rank=2, use_bias=False, rngs=fnnx.Rngs(0))
  p = nnx.LoRALinear(3, 4, lora_rank=2, use_bias=False, rngs=nnx.Rngs(0))
  _sync(f, p)
  np.testing.assert_allclose(f(x), p(x), rtol=1e-5, atol=1e-6)
