"""convert_weights: every eqx.nn layer with a pynnx.nn counterpart, both ways, equal outputs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx

KEY = jax.random.key(0)


def x_of(*shape, seed=1):
  return jax.random.normal(jax.random.key(seed), shape)


def close(a, b, tol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def roundtrip(layer, cls):
  ours = nnx.bridge.convert_weights(layer)
  assert type(ours) is cls
  back = nnx.bridge.convert_weights(ours)
  assert type(back) is type(layer)
  assert eqx.tree_equal(back, layer, rtol=1e-6, atol=1e-6)
  return ours


@pytest.mark.parametrize("use_bias", [True, False])
def test_linear(use_bias):
  lin = eqx.nn.Linear(3, 5, use_bias=use_bias, key=KEY)
  ours = roundtrip(lin, nnx.Linear)
  assert ours.kernel.shape == (3, 5) and (ours.bias is not None) == use_bias
  x = x_of(4, 3)
  close(ours(x), jax.vmap(lin)(x))


@pytest.mark.parametrize(
  "dims,kwargs",
  [
    (1, dict(stride=2, padding=1)),
    (2, dict(padding="SAME", dilation=2)),
    (2, dict(groups=2, padding=((1, 0), (0, 2)))),
    (3, dict(use_bias=False)),
  ],
)
def test_conv(dims, kwargs):
  conv_cls = {1: eqx.nn.Conv1d, 2: eqx.nn.Conv2d, 3: eqx.nn.Conv3d}[dims]
  conv = conv_cls(4, 6, 3, key=KEY, **kwargs)
  ours = roundtrip(conv, nnx.Conv)
  x = x_of(2, 4, *([7] * dims))  # eqx: (C, *spatial); pynnx: (N, *spatial, C)
  expected = jnp.moveaxis(jax.vmap(conv)(x), 1, -1)
  close(ours(jnp.moveaxis(x, 1, -1)), expected, 1e-4)


def test_layernorm_weight_is_scale_and_eps_is_epsilon():
  ln = eqx.nn.LayerNorm(6, eps=1e-3)
  ln = eqx.tree_at(lambda m: (m.weight, m.bias), ln, (x_of(6, seed=2), x_of(6, seed=3)))
  ours = roundtrip(ln, nnx.LayerNorm)
  assert ours.epsilon == 1e-3
  close(ours.scale[...], ln.weight)
  x = x_of(5, 6)
  close(ours(x), jax.vmap(ln)(x))


def test_rmsnorm():
  rms = eqx.nn.RMSNorm(6, eps=1e-4, use_bias=False)
  rms = eqx.tree_at(lambda m: m.weight, rms, x_of(6, seed=2))
  ours = roundtrip(rms, nnx.RMSNorm)
  x = x_of(5, 6)
  close(ours(x), jax.vmap(rms)(x))


def test_groupnorm():
  gn = eqx.nn.GroupNorm(2, 6)
  gn = eqx.tree_at(lambda m: (m.weight, m.bias), gn, (x_of(6, seed=2), x_of(6, seed=3)))
  ours = roundtrip(gn, nnx.GroupNorm)
  x = x_of(3, 6, 4, 4)
  close(ours(jnp.moveaxis(x, 1, -1)), jnp.moveaxis(jax.vmap(gn)(x), 1, -1), 1e-4)


def test_embedding():
  emb = eqx.nn.Embedding(10, 4, key=KEY)
  ours = roundtrip(emb, nnx.Embed)
  idx = jnp.array([0, 3, 9])
  close(ours(idx), jax.vmap(emb)(idx))


def test_lstm_gate_blocks():
  cell = eqx.nn.LSTMCell(3, 4, key=KEY)
  ours = roundtrip(cell, nnx.LSTMCell)
  x, h, c = x_of(3), x_of(4, seed=2), x_of(4, seed=3)
  h_eqx, c_eqx = cell(x, (h, c))
  (c_ours, h_ours), _ = ours((c, h), x)  # pynnx carries (c, h)
  close(h_ours, h_eqx)
  close(c_ours, c_eqx)


def test_gru_gate_blocks():
  cell = eqx.nn.GRUCell(3, 4, key=KEY)
  cell = eqx.tree_at(lambda c: c.bias_n, cell, jnp.zeros(4))
  ours = roundtrip(cell, nnx.GRUCell)
  x, h = x_of(3), x_of(4, seed=2)
  new_h, _ = ours(h, x)
  close(new_h, cell(x, h))


def test_gru_hidden_bias_is_refused():
  cell = eqx.nn.GRUCell(3, 4, key=KEY)
  with pytest.raises(nnx.LayerArgumentError, match=r"GRUCell.*bias_n.*tree_at"):
    nnx.bridge.convert_weights(cell)


@pytest.mark.parametrize("use_bias", [False, True])
def test_multihead_attention(use_bias):
  flags = dict.fromkeys(
    ["use_query_bias", "use_key_bias", "use_value_bias", "use_output_bias"], use_bias
  )
  mha = eqx.nn.MultiheadAttention(2, 6, key_size=5, value_size=5, output_size=3, key=KEY, **flags)
  ours = roundtrip(mha, nnx.MultiHeadAttention)
  q, kv = x_of(4, 6), x_of(7, 5, seed=2)
  close(ours(q[None], kv[None], kv[None])[0], mha(q, kv, kv), 1e-4)


def test_unsupported_layer_is_named():
  with pytest.raises(nnx.BridgeError, match=r"no converter for .*Dropout.*Supported layers"):
    nnx.bridge.convert_weights(eqx.nn.Dropout(0.1))


@pytest.mark.parametrize(
  "dims,kwargs",
  [
    (1, dict(stride=2, padding=1, output_padding=1)),
    (2, dict(stride=2, padding=((0, 1), (1, 0)), dilation=2)),
    (3, dict(use_bias=False)),
  ],
)
def test_conv_transpose(dims, kwargs):
  conv_cls = {1: eqx.nn.ConvTranspose1d, 2: eqx.nn.ConvTranspose2d, 3: eqx.nn.ConvTranspose3d}
  conv = conv_cls[dims](3, 2, 3, key=KEY, **kwargs)
  ours = nnx.bridge.convert_weights(conv)
  assert type(ours) is nnx.ConvTranspose
  x = x_of(2, 3, *([5] * dims))
  expected = jnp.moveaxis(jax.vmap(conv)(x), 1, -1)
  close(ours(jnp.moveaxis(x, 1, -1)), expected, 1e-4)
  back = nnx.bridge.convert_weights(ours)  # the same function, output_padding folded in
  close(jax.vmap(back)(x), jax.vmap(conv)(x), 1e-4)


def test_conv_transpose_string_padding_is_refused():
  conv = eqx.nn.ConvTranspose1d(2, 2, 3, padding="SAME", key=KEY)
  with pytest.raises(nnx.LayerArgumentError, match=r"padding='SAME'.*explicit"):
    nnx.bridge.convert_weights(conv)


def test_generic_conv_converts_to_the_dimensioned_class():
  conv = eqx.nn.Conv(2, 2, 3, 3, key=KEY)
  back = nnx.bridge.convert_weights(nnx.bridge.convert_weights(conv))
  assert type(back) is eqx.nn.Conv2d
  close(back.weight, conv.weight, 0.0)


def test_four_dimensional_conv_is_refused():
  conv = nnx.Conv(2, 2, (2, 2, 2, 2), rngs=nnx.Rngs(0))
  with pytest.raises(nnx.LayerArgumentError, match=r"a 4-d kernel"):
    nnx.bridge.convert_weights(conv)


def test_conv_padding_mode_is_refused():
  conv = eqx.nn.Conv1d(2, 2, 3, padding=1, padding_mode="REFLECT", key=KEY)
  with pytest.raises(nnx.LayerArgumentError, match=r"padding_mode='REFLECT'"):
    nnx.bridge.convert_weights(conv)


def test_rmsnorm_bias_is_refused():
  with pytest.raises(nnx.LayerArgumentError, match=r"RMSNorm.*use_bias=True"):
    nnx.bridge.convert_weights(eqx.nn.RMSNorm(4))


def test_multi_axis_layernorm_is_refused():
  with pytest.raises(nnx.LayerArgumentError, match=r"shape=\(2, 3\)"):
    nnx.bridge.convert_weights(eqx.nn.LayerNorm((2, 3)))


@pytest.mark.parametrize("mode", ["batch", "ema"])
def test_batchnorm_with_state(mode):
  bn, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(4, "batch", mode=mode, momentum=0.9)
  bn = eqx.tree_at(lambda m: (m.weight, m.bias), bn, (x_of(4, seed=2), x_of(4, seed=3)))
  x = x_of(6, 4, 3) + 1.0  # (N, C, L): eqx sees (C, L) per example
  train = jax.vmap(bn, (0, None), (0, None), axis_name="batch")
  for _ in range(2):  # move the running statistics away from their initial values
    expected_train, state = train(x, state)
  ours = nnx.bridge.convert_weights(bn, state)
  assert type(ours) is nnx.BatchNorm and not ours.use_running_average
  channels_last = jnp.moveaxis(x, 1, -1)
  close(ours(channels_last), jnp.moveaxis(expected_train, 1, -1), 1e-4)  # batch statistics
  ours = nnx.bridge.convert_weights(bn, state)
  ours.eval()
  inference = jax.vmap(eqx.nn.inference_mode(bn), (0, None), (0, None), axis_name="batch")
  close(ours(channels_last), jnp.moveaxis(inference(x, state)[0], 1, -1), 1e-4)
  # Back to Equinox: an "ema" BatchNorm with the same statistics and the same outputs.
  back, back_state = nnx.bridge.convert_weights(ours)
  assert type(back) is eqx.nn.BatchNorm and back.inference
  again = jax.vmap(back, (0, None), (0, None), axis_name="batch")(x, back_state)[0]
  close(jnp.moveaxis(again, 1, -1), ours(channels_last), 1e-4)


def test_batchnorm_running_averages_update_alike():
  ours = nnx.BatchNorm(3, momentum=0.8, rngs=nnx.Rngs(0))
  back, state = nnx.bridge.convert_weights(ours)
  x = x_of(5, 3)
  ours(x)
  _, state = jax.vmap(back, (0, None), (0, None), axis_name="batch")(x, state)
  mean, var = state.get(back.ema_state_index)
  close(mean, ours.mean[...], 1e-5)
  close(var, ours.var[...], 1e-4)


def test_batchnorm_needs_its_state():
  bn, _ = eqx.nn.make_with_state(eqx.nn.BatchNorm)(4, "batch", mode="batch")
  with pytest.raises(
    nnx.BridgeError, match=r"pass it: `nnx.bridge.convert_weights\(layer, state\)`"
  ):
    nnx.bridge.convert_weights(bn)


def test_state_for_a_stateless_layer_is_refused():
  _, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(4, "batch", mode="batch")
  with pytest.raises(nnx.BridgeError, match=r"`state` is only for an Equinox BatchNorm; Linear"):
    nnx.bridge.convert_weights(eqx.nn.Linear(2, 2, key=KEY), state)
