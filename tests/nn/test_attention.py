"""Attention functions, masks and MultiHeadAttention against direct JAX formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx

B, T, H, D = 2, 5, 2, 3  # batch, length, heads, head_dim
F = H * D


def _bern(seed, p, shape):
  mask = np.random.default_rng(seed).random(shape) < p
  mask[..., 0] = True  # every query sees at least one key
  return jnp.asarray(mask)


def _x(shape, seed=0):
  # numpy draws: no XLA compilation per shape, which keeps the tests fast
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _reference_attention(q, k, v, mask=None, bias=None):
  """softmax(q k^T / sqrt(d) + bias, masked) @ v with GQA by repeating k/v heads."""
  rep = q.shape[-2] // k.shape[-2]
  k, v = jnp.repeat(k, rep, axis=-2), jnp.repeat(v, rep, axis=-2)
  logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / np.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask, logits, -1e30)
  return jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(logits), v)


# --- functions -----------------------------------------------------------------------------


def test_dot_product_attention_matches_formula_with_mask_bias_and_extra_batch_dims():
  q, k, v = _x((2, 3, T, 4, D)), _x((2, 3, 6, 2, D), 1), _x((2, 3, 6, 2, D), 2)
  mask = _bern(3, 0.7, (3, 1, T, 6))
  bias = _x((4, T, 6), 4)

  @jax.jit  # one compilation instead of many eager ops keeps the test fast
  def run(q, k, v, mask, bias):
    holder = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    fast = nnx.dot_product_attention(q, k, v, bias=bias, mask=mask)
    # The einsum path (taken when sowing) must agree with the fused path.
    slow = nnx.dot_product_attention(q, k, v, bias=bias, mask=mask, module=holder)
    return _reference_attention(q, k, v, mask, bias), fast, slow, holder.attention_weights[...]

  want, fast, slow, (sown,) = run(q, k, v, mask, bias)
  np.testing.assert_allclose(fast, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(slow, want, rtol=1e-5, atol=1e-5)
  assert sown.shape == (2, 3, 4, T, 6)


def test_attention_weights_causal_normalised_and_dropout():
  q, k = _x((B, T, H, D)), _x((B, T, H, D), 1)

  @jax.jit
  def run(q, k, key):
    w = nnx.dot_product_attention_weights(q, k, is_causal=True)
    wd = nnx.dot_product_attention_weights(q, k, dropout_rate=0.5, dropout_rng=key, is_causal=True)
    wd2 = nnx.dot_product_attention_weights(
      q, k, dropout_rate=0.5, dropout_rng=key, broadcast_dropout=False
    )
    return w, wd, wd2

  w, wd, wd2 = run(q, k, jax.random.key(0))
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
  assert float(jnp.abs(jnp.triu(w, 1)).max()) == 0.0
  # Dropout scales survivors by 1/keep and, broadcast, uses one mask for batch and heads.
  dropped = wd == 0
  assert bool((dropped == dropped[:1, :1]).all())
  np.testing.assert_allclose(jnp.where(dropped, 0, wd), jnp.where(dropped, 0, 2 * w), rtol=1e-6)
  assert not bool(((wd2 == 0) == (wd2 == 0)[:1, :1]).all())


def test_attention_dtype_follows_inputs_and_override():
  q = _x((B, T, H, D)).astype(jnp.bfloat16)
  shapes = jax.eval_shape(
    lambda q: (
      nnx.dot_product_attention(q, q, q),
      nnx.dot_product_attention(q, q, q, dtype=jnp.float32),
    ),
    q,
  )
  assert [s.dtype for s in shapes] == [jnp.bfloat16, jnp.float32]


def test_masks():
  valid = jnp.array([[True, True, False]])
  m = nnx.make_attention_mask(valid, valid)
  assert m.shape == (1, 1, 3, 3) and m.dtype == jnp.float32
  np.testing.assert_array_equal(m[0, 0], jnp.outer(valid[0], valid[0]))
  c = nnx.make_causal_mask(jnp.zeros((2, 4)), extra_batch_dims=1, dtype=jnp.bool_)
  assert c.shape == (1, 2, 1, 4, 4)
  np.testing.assert_array_equal(c[0, 1, 0], jnp.tril(jnp.ones((4, 4), bool)))
  np.testing.assert_array_equal(nnx.combine_masks(m, None, m[..., ::-1]), m * m[..., ::-1])
  assert nnx.combine_masks(None, None) is None


@pytest.mark.parametrize(
  "shapes, match",
  [
    (((B, T, H, D), (T, H, D)), "same rank"),
    (((B, T, H, D), (3, T, H, D)), "batch dimensions must match"),
    (((B, T, H, D), (B, T, H, D + 1)), "same depth"),
    (((B, T, 3, D), (B, T, 2, D)), "multiple of the number of key/value heads"),
  ],
)
def test_attention_shape_errors(shapes, match):
  q, k = (jnp.zeros(s) for s in shapes)
  with pytest.raises(nnx.ShapeError, match=match):
    nnx.dot_product_attention_weights(q, k)


def test_attention_value_and_mask_errors():
  q = jnp.zeros((B, T, H, D))
  with pytest.raises(nnx.ShapeError, match="key and value need the same length"):
    nnx.dot_product_attention(q, q, jnp.zeros((B, T + 1, H, D)))
  with pytest.raises(nnx.ShapeError, match=r"mask of shape \(1, 2, 2, 5, 5\) does not broadcast"):
    nnx.dot_product_attention(q, q, q, mask=jnp.ones((1, B, H, T, T), bool))
  # also a TypeError, which is what flax raises (from jax broadcasting) for this mistake
  with pytest.raises(TypeError, match=r"bias of shape \(2, 1, 3, 5\) does not broadcast"):
    nnx.dot_product_attention_weights(q, q, bias=jnp.ones((B, 1, 3, T)))
  with pytest.raises(nnx.ShapeError, match="mask of shape .*make_attention_mask"):
    _mha()(jnp.ones((B, T, F)), mask=jnp.ones((B, 1, T + 1, T + 1), bool))
  with pytest.raises(nnx.RngError, match="need a dropout_rng"):
    nnx.dot_product_attention_weights(q, q, dropout_rate=0.1)
  with pytest.raises(nnx.ShapeError, match="same rank"):
    nnx.combine_masks(jnp.ones((2, 2)), jnp.ones((2,)))


# --- MultiHeadAttention -----------------------------------------------------------------------


def _mha(**kw):
  kw = {"num_heads": H, "in_features": F, **kw}
  return nnx.MultiHeadAttention(**kw, rngs=nnx.Rngs(0))


def _manual_mha(layer, q_in, kv_in, mask=None):
  def proj(lin, x):
    return jnp.einsum("...f,fhd->...hd", x, lin.kernel[...]) + lin.bias[...]

  q, k, v = proj(layer.query, q_in), proj(layer.key, kv_in), proj(layer.value, kv_in)
  ctx = _reference_attention(q, k, v, mask)
  return jnp.einsum("...hd,hdo->...o", ctx, layer.out.kernel[...]) + layer.out.bias[...]


def test_mha_params_and_defaults():
  layer = _mha(qkv_features=8, out_features=5, num_kv_heads=1, in_kv_features=4)
  assert layer.head_dim == 4
  shapes = {name: getattr(layer, name).kernel.shape for name in ("query", "key", "value", "out")}
  assert shapes == {"query": (F, 2, 4), "key": (4, 1, 4), "value": (4, 1, 4), "out": (2, 4, 5)}
  assert layer.query.bias.shape == (2, 4) and layer.out.bias.shape == (5,)
  assert layer.query_ln is None and layer.rngs is None and layer.cached_key is None
  assert layer.query.kernel.dtype == jnp.float32
  ln = _mha(normalize_qk=True, use_bias=False, param_dtype=jnp.bfloat16)
  assert ln.query_ln.scale.shape == (D,) and ln.query.bias is None
  assert ln.query.kernel.dtype == jnp.bfloat16
  x = _x((B, T, F))
  # Self-attention defaults: inputs_k = inputs_q, inputs_v = inputs_k.
  a, b = jax.jit(lambda m, x: (m(x), m(x, x, x)))(ln, x)
  np.testing.assert_array_equal(a, b)


def test_mha_matches_formula_cross_attention_and_mask():
  layer = _mha(in_kv_features=4, num_kv_heads=1)
  q_in, kv_in = _x((B, T, F)), _x((B, 7, 4), 1)
  mask = _bern(2, 0.6, (B, 1, T, 7))

  @jax.jit
  def run(m, q_in, kv_in, mask):
    causal_mask = nnx.make_causal_mask(q_in[..., 0])
    return (
      m(q_in, kv_in, mask=mask),
      _manual_mha(m, q_in, kv_in, mask),
      m(q_in, q_in[..., :4], is_causal=True),
      _manual_mha(m, q_in, q_in[..., :4], causal_mask),
    )

  got, want, got_causal, want_causal = run(layer, q_in, kv_in, mask)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_causal, want_causal, rtol=1e-5, atol=1e-5)


def test_mha_under_jax_jit_and_grad():
  layer = _mha()
  x = _x((B, T, F))
  out = jax.jit(lambda m, x: m(x, is_causal=True))(layer, x)
  np.testing.assert_allclose(out, layer(x, is_causal=True), rtol=1e-5, atol=1e-6)
  grads = jax.jit(jax.grad(lambda m: jnp.sum(m(x) ** 2)))(layer)
  assert isinstance(grads, nnx.MultiHeadAttention)
  assert grads.query.kernel[...].shape == layer.query.kernel.shape
  assert float(jnp.abs(grads.key.kernel[...]).sum()) > 0


def test_mha_dropout_train_eval_and_sow():
  layer = _mha(dropout_rate=0.5)
  assert isinstance(layer.rngs, nnx.RngStream)
  x = _x((B, T, F))
  # Flax's MHA.set_view takes deterministic/decode only; a dropout_rate view raises there too.
  with pytest.raises(ValueError):
    nnx.view(layer, dropout_rate=0.0)
  ref = nnx.view(layer, deterministic=True)(x)
  np.testing.assert_allclose(layer(x, deterministic=True), ref, atol=1e-6)
  a, b = layer(x, deterministic=False), layer(x, deterministic=False)
  assert not np.allclose(a, b)  # the stored stream advances between calls
  layer.eval()
  np.testing.assert_allclose(layer(x), ref, atol=1e-6)
  layer.train()
  assert not np.allclose(layer(x, rngs=nnx.Rngs(dropout=3)), ref)
  layer.eval()
  layer(x, sow_weights=True)
  (weights,) = layer.attention_weights[...]
  assert weights.shape == (B, H, T, T)


def test_mha_decode_matches_causal_attention_step_by_step():
  layer = _mha(num_kv_heads=1, decode=True)
  x = _x((B, T, F))
  full = nnx.view(layer, decode=False)(x, is_causal=True)
  layer.init_cache(x.shape)
  assert layer.cached_key.shape == (B, T, 1, D) and isinstance(layer.cache_index, nnx.Cache)
  steps = [layer(x[:, t : t + 1]) for t in range(T)]
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)
  assert int(layer.cache_index[...]) == T
  with pytest.raises(nnx.ShapeError, match="cache is full"):
    layer(x[:, :1])


def test_mha_decode_under_jit_returning_the_module():
  layer = _mha(decode=True)
  x = _x((B, T, F))
  full = layer(x, decode=False, is_causal=True)
  layer.init_cache(x.shape)

  @jax.jit
  def step(m, token):
    return m, m(token)

  outs = []
  for t in range(T):
    layer, y = step(layer, x[:, t : t + 1])
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)


def test_mha_constructor_errors():
  with pytest.raises(nnx.LayerArgumentError, match=r"qkv_features \(7\) must be divisible"):
    _mha(qkv_features=7)
  with pytest.raises(nnx.LayerArgumentError, match=r"num_heads \(2\) must be divisible by"):
    _mha(num_kv_heads=3, qkv_features=6)
  with pytest.raises(nnx.LayerArgumentError, match="dropout_rate must be in"):
    _mha(dropout_rate=1.5)
  with pytest.raises(nnx.LayerArgumentError, match="num_heads must be an integer"):
    _mha(num_heads=0)
  with pytest.raises(nnx.LayerArgumentError, match="qkv_features must be an integer"):
    _mha(qkv_features=0)
  with pytest.raises(nnx.ShapeError, match="init_cache: input_shape"):
    _mha().init_cache((4,))


def test_mha_call_errors():
  layer = _mha()
  x = _x((B, T, F))
  with pytest.raises(nnx.ShapeError, match=rf"inputs_q must have {F} features.*\(2, 5, 4\)"):
    layer(x[..., :4])
  with pytest.raises(nnx.ShapeError, match=rf"inputs_k must have {F} features"):
    layer(x, x[..., :4])
  with pytest.raises(nnx.LayerArgumentError, match="inputs_v was given without inputs_k"):
    layer(x, None, x)
  with pytest.raises(nnx.LayerArgumentError, match="call `layer.init_cache"):
    layer(x[:, :1], decode=True)
  layer.init_cache(x.shape)
  with pytest.raises(nnx.ShapeError, match=r"one token.*\(2, 1, 2, 3\), got \(2, 2, 2, 3\)"):
    layer(x[:, :2], decode=True)
  with pytest.raises(nnx.LayerArgumentError, match="no `deterministic` setting"):
    _mha(dropout_rate=0.1)(x)
  with pytest.raises(nnx.RngError, match="keep_rngs=False"):
    _mha(dropout_rate=0.1, keep_rngs=False)(x, deterministic=False)


def test_mha_decode_and_dropout_under_nnx_jit(graph):
  layer = _mha(decode=True, dropout_rate=0.5, deterministic=True)
  x = _x((B, T, F))
  full = layer(x, decode=False, is_causal=True)
  layer.init_cache(x.shape)
  step = nnx.jit(lambda m, token: m(token), graph=graph)
  outs = [step(layer, x[:, t : t + 1]) for t in range(T)]
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)
  assert int(layer.cache_index[...]) == T  # cache updates were written back
  train = nnx.jit(lambda m, x: m(x, decode=False, deterministic=False), graph=graph)
  a, b = train(layer, x), train(layer, x)
  assert not np.allclose(a, b) and int(layer.rngs.count[...]) == 2
