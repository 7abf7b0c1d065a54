"""Layer-by-layer weight conversion between ``equinox.nn`` and ``pynnx.nn``.

``convert_weights(layer)`` takes an Equinox layer and returns the equivalent ``pynnx.nn`` layer
with the same weights, or takes a ``pynnx.nn`` layer and returns the Equinox one. The layouts
differ: Equinox stores a Linear ``weight`` as ``(out, in)`` and works on unbatched,
channel-first inputs; pynnx (like Flax) stores ``kernel`` as ``(in, out)`` and works on batched,
channel-last inputs. The converted layer computes the same function once those input layouts
are accounted for (for a Conv, move the channel axis).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import pynnx as nnx
from pynnx._core.errors import BridgeError, LayerArgumentError

from .equinox import _eqx

_KEY = 0  # Equinox layers are built with this key and then overwritten: no randomness left.


def _rngs() -> nnx.Rngs:
  return nnx.Rngs(_KEY)


def _ekey() -> jax.Array:
  return jax.random.key(_KEY)


def _set(eqx: Any, module: Any, **values: Any) -> Any:
  names = list(values)
  return eqx.tree_at(
    lambda m: [getattr(m, n) for n in names],
    module,
    [values[n] for n in names],
    is_leaf=lambda x: x is None,
  )


def _put(var: nnx.Variable | None, value: Any) -> None:
  """``var[...] = value`` for an optional Variable (bias, scale) the layer was built with."""
  assert var is not None
  var[...] = value


def _get(var: nnx.Variable | None) -> Any:
  """The value of an optional Variable (bias, scale) the layer has."""
  assert var is not None
  return var[...]


def _refuse(layer: Any, what: str, fix: str) -> LayerArgumentError:
  return LayerArgumentError(
    f"nnx.bridge.convert_weights({type(layer).__name__}): {what} has no counterpart in the "
    f"other library. {fix}"
  )


# --- Equinox -> pynnx ---------------------------------------------------------------------------


def _linear_to_nnx(eqx: Any, m: Any) -> nnx.Linear:
  if m.in_features == "scalar" or m.out_features == "scalar":
    raise _refuse(m, "in_features/out_features='scalar'", "Use integer feature sizes.")
  out = nnx.Linear(
    m.in_features, m.out_features, use_bias=m.use_bias, param_dtype=m.weight.dtype, rngs=_rngs()
  )
  out.kernel[...] = m.weight.T
  if m.use_bias:
    _put(out.bias, m.bias)
  return out


def _conv_to_nnx(eqx: Any, m: Any) -> nnx.Conv:
  if m.padding_mode != "ZEROS":
    raise _refuse(m, f"padding_mode={m.padding_mode!r}", "Use padding_mode='ZEROS'.")
  padding = m.padding if isinstance(m.padding, str) else tuple(tuple(p) for p in m.padding)
  out = nnx.Conv(
    m.in_channels,
    m.out_channels,
    m.kernel_size,
    strides=m.stride,
    padding=padding,
    kernel_dilation=m.dilation,
    feature_group_count=m.groups,
    use_bias=m.use_bias,
    param_dtype=m.weight.dtype,
    rngs=_rngs(),
  )
  n = m.num_spatial_dims
  out.kernel[...] = jnp.transpose(m.weight, (*range(2, n + 2), 1, 0))
  if m.use_bias:
    _put(out.bias, m.bias.reshape(-1))
  return out


def _explicit_padding(m: Any) -> tuple:
  if isinstance(m.padding, str):
    raise _refuse(m, f"padding={m.padding!r}", "Give explicit (low, high) padding pairs.")
  return tuple(tuple(int(p) for p in pair) for pair in m.padding)


def _conv_transpose_to_nnx(eqx: Any, m: Any) -> nnx.ConvTranspose:
  if m.padding_mode != "ZEROS" or m.groups != 1:
    raise _refuse(
      m, "groups != 1 or a non-zero padding_mode", "Use groups=1, padding_mode='ZEROS'."
    )
  # Equinox pads as the forward convolution it transposes would; pynnx pads the dilated input.
  span = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
  padding = tuple(
    (s - lo, s - hi + op) for s, (lo, hi), op in zip(span, _explicit_padding(m), m.output_padding)
  )
  out = nnx.ConvTranspose(
    m.in_channels,
    m.out_channels,
    m.kernel_size,
    strides=m.stride,
    padding=padding,
    kernel_dilation=m.dilation,
    use_bias=m.use_bias,
    param_dtype=m.weight.dtype,
    rngs=_rngs(),
  )
  n = m.num_spatial_dims
  out.kernel[...] = jnp.transpose(m.weight, (*range(2, n + 2), 1, 0))
  if m.use_bias:
    _put(out.bias, m.bias.reshape(-1))
  return out


def _one_axis(m: Any) -> int:
  if len(m.shape) != 1:
    raise _refuse(
      m, f"normalizing over shape={m.shape} (more than one axis)", "Normalize over one axis."
    )
  return m.shape[0]


def _layernorm_to_nnx(eqx: Any, m: Any) -> nnx.LayerNorm:
  dtype = (m.weight if m.use_weight else m.bias if m.use_bias else jnp.zeros(())).dtype
  out = nnx.LayerNorm(
    _one_axis(m),
    epsilon=m.eps,
    use_scale=m.use_weight,
    use_bias=m.use_bias,
    use_fast_variance=False,
    param_dtype=dtype,
    rngs=_rngs(),
  )
  if m.use_weight:
    _put(out.scale, m.weight)
  if m.use_bias:
    _put(out.bias, m.bias)
  return out


def _rmsnorm_to_nnx(eqx: Any, m: Any) -> nnx.RMSNorm:
  if m.use_bias:
    raise _refuse(m, "use_bias=True (a bias after RMS normalisation)", "Use use_bias=False.")
  dtype = m.weight.dtype if m.use_weight else jnp.float32
  out = nnx.RMSNorm(
    _one_axis(m), epsilon=m.eps, use_scale=m.use_weight, param_dtype=dtype, rngs=_rngs()
  )
  if m.use_weight:
    _put(out.scale, m.weight)
  return out


def _groupnorm_to_nnx(eqx: Any, m: Any) -> nnx.GroupNorm:
  affine = m.channelwise_affine
  out = nnx.GroupNorm(
    m.channels,
    num_groups=m.groups,
    epsilon=m.eps,
    use_scale=affine,
    use_bias=affine,
    use_fast_variance=False,
    param_dtype=m.weight.dtype if affine else jnp.float32,
    rngs=_rngs(),
  )
  if affine:
    _put(out.scale, m.weight)
    _put(out.bias, m.bias)
  return out


def _embedding_to_nnx(eqx: Any, m: Any) -> nnx.Embed:
  out = nnx.Embed(m.num_embeddings, m.embedding_size, param_dtype=m.weight.dtype, rngs=_rngs())
  out.embedding[...] = m.weight
  return out


def _lstm_to_nnx(eqx: Any, m: Any) -> nnx.LSTMCell:
  h = m.hidden_size
  out = nnx.LSTMCell(m.input_size, h, param_dtype=m.weight_ih.dtype, rngs=_rngs())
  bias = m.bias if m.use_bias else jnp.zeros((4 * h,), m.weight_ih.dtype)
  for g, (i_name, h_name) in enumerate(zip(("ii", "if_", "ig", "io"), ("hi", "hf", "hg", "ho"))):
    rows = slice(g * h, (g + 1) * h)
    getattr(out, i_name).kernel[...] = m.weight_ih[rows].T
    getattr(out, h_name).kernel[...] = m.weight_hh[rows].T
    _put(getattr(out, h_name).bias, bias[rows])
  return out


def _gru_to_nnx(eqx: Any, m: Any) -> nnx.GRUCell:
  if m.use_bias and bool(jnp.any(m.bias_n != 0)):
    raise _refuse(
      m,
      "a nonzero bias_n (a bias on the hidden candidate inside the reset gate)",
      "pynnx.nn.GRUCell has no hidden bias; set it to zero first: "
      "`eqx.tree_at(lambda c: c.bias_n, cell, jnp.zeros_like(cell.bias_n))`.",
    )
  h = m.hidden_size
  out = nnx.GRUCell(m.input_size, h, param_dtype=m.weight_ih.dtype, rngs=_rngs())
  out.dense_i.kernel[...] = m.weight_ih.T
  _put(out.dense_i.bias, m.bias if m.use_bias else jnp.zeros((3 * h,), m.weight_ih.dtype))
  out.dense_h.kernel[...] = m.weight_hh.T
  return out


def _mha_to_nnx(eqx: Any, m: Any) -> nnx.MultiHeadAttention:
  biases = {m.use_query_bias, m.use_key_bias, m.use_value_bias, m.use_output_bias}
  if len(biases) != 1:
    raise _refuse(m, "different use_*_bias flags per projection", "Use one flag for all four.")
  if m.qk_size != m.vo_size or m.key_size != m.value_size:
    raise _refuse(
      m,
      f"qk_size={m.qk_size} != vo_size={m.vo_size} or key_size != value_size",
      "Use equal sizes.",
    )
  heads, d = m.num_heads, m.qk_size
  use_bias = biases.pop()
  out = nnx.MultiHeadAttention(
    heads,
    m.query_size,
    qkv_features=heads * d,
    out_features=m.output_size,
    in_kv_features=m.key_size,
    use_bias=use_bias,
    param_dtype=m.query_proj.weight.dtype,
    decode=False,
    rngs=_rngs(),
  )
  for name, proj in (("query", m.query_proj), ("key", m.key_proj), ("value", m.value_proj)):
    layer = getattr(out, name)
    layer.kernel[...] = proj.weight.T.reshape(proj.weight.shape[1], heads, d)
    if use_bias:
      _put(layer.bias, proj.bias.reshape(heads, d))
  out.out.kernel[...] = m.output_proj.weight.T.reshape(heads, d, m.output_size)
  if use_bias:
    _put(out.out.bias, m.output_proj.bias)
  return out


def _batchnorm_to_nnx(eqx: Any, m: Any, state: Any) -> nnx.BatchNorm:
  if state is None:
    raise BridgeError(
      "nnx.bridge.convert_weights(BatchNorm): an Equinox BatchNorm keeps its running statistics "
      "in an eqx.nn.State; pass it: `nnx.bridge.convert_weights(layer, state)`."
    )
  if m.mode == "ema":
    mean, var = state.get(m.ema_state_index)
  else:  # "batch": Equinox debiases the hidden averages at inference; pynnx stores them plain
    counter = state.get(m.batch_counter)
    hidden_mean, hidden_var = state.get(m.batch_state_index)
    scale = jnp.where(counter == 0, 1, 1 - m.momentum**counter)
    mean, var = hidden_mean / scale, hidden_var / scale
  affine = m.channelwise_affine
  out = nnx.BatchNorm(
    m.input_size,
    momentum=m.momentum,
    epsilon=m.eps,
    use_running_average=bool(m.inference),
    use_scale=affine,
    use_bias=affine,
    use_fast_variance=False,
    param_dtype=m.weight.dtype if affine else jnp.float32,
    rngs=_rngs(),
  )
  if affine:
    _put(out.scale, m.weight)
    _put(out.bias, m.bias)
  out.mean[...] = mean.astype(out.mean.dtype)
  out.var[...] = var.astype(out.var.dtype)
  return out


# --- pynnx -> Equinox ---------------------------------------------------------------------------


def _linear_to_eqx(eqx: Any, m: nnx.Linear) -> Any:
  out = eqx.nn.Linear(
    m.in_features, m.out_features, use_bias=m.use_bias, dtype=m.kernel.dtype, key=_ekey()
  )
  return _set(eqx, out, weight=m.kernel[...].T, **({"bias": _get(m.bias)} if m.use_bias else {}))


def _conv_to_eqx(eqx: Any, m: nnx.Conv) -> Any:
  if any(d != 1 for d in m.input_dilation) or m.mask is not None:
    raise _refuse(m, "input_dilation or mask", "Use input_dilation=1 and mask=None.")
  padding = m.padding
  if isinstance(padding, str) and padding not in ("SAME", "VALID"):
    raise _refuse(m, f"padding={padding!r}", "Use 'SAME', 'VALID' or explicit pairs.")
  n = len(m.kernel_size)
  conv_cls = {1: eqx.nn.Conv1d, 2: eqx.nn.Conv2d, 3: eqx.nn.Conv3d}.get(n)
  if conv_cls is None:
    raise _refuse(m, f"a {n}-d kernel", "Equinox's ConvNd classes cover 1 to 3 dimensions.")
  out = conv_cls(
    m.in_features,
    m.out_features,
    m.kernel_size,
    stride=m.strides,
    padding=padding,
    dilation=m.kernel_dilation,
    groups=m.feature_group_count,
    use_bias=m.use_bias,
    dtype=m.kernel.dtype,
    key=_ekey(),
  )
  weight = jnp.transpose(m.kernel[...], (n + 1, n, *range(n)))
  values = {"weight": weight}
  if m.use_bias:
    values["bias"] = _get(m.bias).reshape(-1, *([1] * n))
  return _set(eqx, out, **values)


def _conv_transpose_to_eqx(eqx: Any, m: nnx.ConvTranspose) -> Any:
  if m.transpose_kernel or m.mask is not None:
    raise _refuse(m, "transpose_kernel=True or a mask", "Use transpose_kernel=False, mask=None.")
  n = len(m.kernel_size)
  conv_cls = {1: eqx.nn.ConvTranspose1d, 2: eqx.nn.ConvTranspose2d, 3: eqx.nn.ConvTranspose3d}
  if n not in conv_cls:
    raise _refuse(m, f"a {n}-d kernel", "Equinox's ConvTransposeNd cover 1 to 3 dimensions.")
  span = [d * (k - 1) for d, k in zip(m.kernel_dilation, m.kernel_size)]
  padding = tuple((s - lo, s - hi) for s, (lo, hi) in zip(span, _explicit_padding(m)))
  if any(p < 0 for pair in padding for p in pair):
    raise _refuse(m, f"padding={m.padding} (wider than the dilated kernel)", "Use smaller padding.")
  out = conv_cls[n](
    m.in_features,
    m.out_features,
    m.kernel_size,
    stride=m.strides,
    padding=padding,
    dilation=m.kernel_dilation,
    use_bias=m.use_bias,
    dtype=m.kernel.dtype,
    key=_ekey(),
  )
  values = {"weight": jnp.transpose(m.kernel[...], (n + 1, n, *range(n)))}
  if m.use_bias:
    values["bias"] = _get(m.bias).reshape(-1, *([1] * n))
  return _set(eqx, out, **values)


def _norm_params(m: Any) -> dict:
  values = {}
  if m.use_scale:
    values["weight"] = _get(m.scale)
  if getattr(m, "use_bias", False):
    values["bias"] = _get(m.bias)
  return values


def _layernorm_to_eqx(eqx: Any, m: nnx.LayerNorm) -> Any:
  out = eqx.nn.LayerNorm(m.num_features, eps=m.epsilon, use_weight=m.use_scale, use_bias=m.use_bias)
  return _set(eqx, out, **_norm_params(m))


def _rmsnorm_to_eqx(eqx: Any, m: nnx.RMSNorm) -> Any:
  out = eqx.nn.RMSNorm(m.num_features, eps=m.epsilon, use_weight=m.use_scale, use_bias=False)
  return _set(eqx, out, **_norm_params(m))


def _groupnorm_to_eqx(eqx: Any, m: nnx.GroupNorm) -> Any:
  if m.use_scale != m.use_bias:
    raise _refuse(m, "use_scale != use_bias", "Equinox has one channelwise_affine flag.")
  out = eqx.nn.GroupNorm(
    m.num_groups, m.num_features, eps=m.epsilon, channelwise_affine=m.use_scale
  )
  return _set(eqx, out, **_norm_params(m))


def _embed_to_eqx(eqx: Any, m: nnx.Embed) -> Any:
  table = m.embedding[...]
  return eqx.nn.Embedding(weight=table)


def _lstm_to_eqx(eqx: Any, m: nnx.LSTMCell) -> Any:
  ins, hids = ("ii", "if_", "ig", "io"), ("hi", "hf", "hg", "ho")
  w_ih = jnp.concatenate([getattr(m, n).kernel[...].T for n in ins])
  w_hh = jnp.concatenate([getattr(m, n).kernel[...].T for n in hids])
  bias = jnp.concatenate([getattr(m, n).bias[...] for n in hids])
  out = eqx.nn.LSTMCell(m.in_features, m.hidden_features, dtype=w_ih.dtype, key=_ekey())
  return _set(eqx, out, weight_ih=w_ih, weight_hh=w_hh, bias=bias)


def _gru_to_eqx(eqx: Any, m: nnx.GRUCell) -> Any:
  w_ih = m.dense_i.kernel[...].T
  out = eqx.nn.GRUCell(m.in_features, m.hidden_features, dtype=w_ih.dtype, key=_ekey())
  return _set(
    eqx,
    out,
    weight_ih=w_ih,
    weight_hh=m.dense_h.kernel[...].T,
    bias=_get(m.dense_i.bias),
    bias_n=jnp.zeros((m.hidden_features,), w_ih.dtype),
  )


def _mha_to_eqx(eqx: Any, m: nnx.MultiHeadAttention) -> Any:
  if m.num_kv_heads != m.num_heads or m.normalize_qk:
    raise _refuse(m, "grouped kv heads or normalize_qk", "Use num_kv_heads=num_heads.")
  heads, d = m.num_heads, m.head_dim
  use_bias = m.query.bias is not None
  out = eqx.nn.MultiheadAttention(
    heads,
    m.in_features,
    m.in_kv_features,
    m.in_kv_features,
    m.out_features,
    qk_size=d,
    vo_size=d,
    use_query_bias=use_bias,
    use_key_bias=use_bias,
    use_value_bias=use_bias,
    use_output_bias=use_bias,
    dtype=m.query.kernel.dtype,
    key=_ekey(),
  )
  values = {}
  for name, proj in (("query", "query_proj"), ("key", "key_proj"), ("value", "value_proj")):
    layer = getattr(m, name)
    kernel = layer.kernel[...]
    new = _set(
      eqx,
      getattr(out, proj),
      weight=kernel.reshape(kernel.shape[0], heads * d).T,
      **({"bias": layer.bias[...].reshape(-1)} if use_bias else {}),
    )
    values[proj] = new
  out_values = {"weight": m.out.kernel[...].reshape(heads * d, m.out_features).T}
  if use_bias:
    out_values["bias"] = _get(m.out.bias)
  values["output_proj"] = _set(eqx, out.output_proj, **out_values)
  return _set(eqx, out, **values)


def _batchnorm_to_eqx(eqx: Any, m: nnx.BatchNorm) -> tuple[Any, Any]:
  if m.use_scale != m.use_bias:
    raise _refuse(m, "use_scale != use_bias", "Equinox has one channelwise_affine flag.")
  # Equinox's "ema" mode updates its averages as pynnx does (r = m * r + (1 - m) * batch).
  out, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
    m.num_features,
    axis_name="batch",
    eps=m.epsilon,
    channelwise_affine=m.use_scale,
    momentum=m.momentum,
    inference=bool(m.use_running_average),
    mode="ema",
  )
  if m.use_scale:
    out = _set(eqx, out, weight=_get(m.scale), bias=_get(m.bias))
  state = state.set(out.ema_first_time_index, jnp.array(False))
  state = state.set(out.ema_state_index, (m.mean[...], m.var[...]))
  return out, state


def _tables(eqx: Any) -> tuple[list[tuple[type, Callable]], list[tuple[type, Callable]]]:
  to_nnx: list[tuple[type, Callable]] = [
    (eqx.nn.Linear, _linear_to_nnx),
    (eqx.nn.ConvTranspose, _conv_transpose_to_nnx),
    (eqx.nn.Conv, _conv_to_nnx),
    (eqx.nn.LayerNorm, _layernorm_to_nnx),
    (eqx.nn.RMSNorm, _rmsnorm_to_nnx),
    (eqx.nn.GroupNorm, _groupnorm_to_nnx),
    (eqx.nn.Embedding, _embedding_to_nnx),
    (eqx.nn.LSTMCell, _lstm_to_nnx),
    (eqx.nn.GRUCell, _gru_to_nnx),
    (eqx.nn.MultiheadAttention, _mha_to_nnx),
  ]
  to_eqx: list[tuple[type, Callable]] = [
    (nnx.Linear, _linear_to_eqx),
    (nnx.ConvTranspose, _conv_transpose_to_eqx),
    (nnx.Conv, _conv_to_eqx),
    (nnx.LayerNorm, _layernorm_to_eqx),
    (nnx.RMSNorm, _rmsnorm_to_eqx),
    (nnx.GroupNorm, _groupnorm_to_eqx),
    (nnx.Embed, _embed_to_eqx),
    (nnx.LSTMCell, _lstm_to_eqx),
    (nnx.GRUCell, _gru_to_eqx),
    (nnx.MultiHeadAttention, _mha_to_eqx),
  ]
  return to_nnx, to_eqx


def convert_weights(layer: Any, state: Any = None) -> Any:
  """The same layer in the other library, with the same weights.

  Supported pairs: ``Linear``, ``Conv`` and ``ConvTranspose`` (1-3d, explicit padding),
  ``LayerNorm`` (``weight`` <-> ``scale``, ``eps`` <-> ``epsilon``), ``RMSNorm``,
  ``GroupNorm``, ``Embedding`` <-> ``Embed``, ``LSTMCell`` and ``GRUCell`` (gate blocks split /
  joined) and ``MultiheadAttention`` <-> ``MultiHeadAttention`` (heads split / joined).

  Equinox layers take unbatched, channel-first inputs; pynnx layers batched, channel-last ones.
  ``LSTMCell`` carries are ``(h, c)`` in Equinox and ``(c, h)`` in pynnx.

  ``BatchNorm`` keeps its running statistics in an ``eqx.nn.State`` in Equinox: pass it as
  ``state`` (``convert_weights(eqx_bn, state)``); the other way returns ``(eqx_bn, state)``, an
  ``mode="ema"`` BatchNorm (whose running averages update as pynnx's do). Equinox's BatchNorm
  averages over a named ``vmap`` axis (``axis_name="batch"``).

  Example:
    >>> import equinox as eqx
    >>> lin = eqx.nn.Linear(3, 2, key=jax.random.key(0))
    >>> ours = nnx.bridge.convert_weights(lin)
    >>> x = jnp.ones(3)
    >>> bool(jnp.allclose(ours(x[None])[0], lin(x)))
    True
    >>> eqx.tree_equal(nnx.bridge.convert_weights(ours), lin)
    Array(True, dtype=bool)
  """
  eqx = _eqx()
  if isinstance(layer, eqx.nn.BatchNorm):
    return _batchnorm_to_nnx(eqx, layer, state)
  if state is not None:
    raise BridgeError(
      f"nnx.bridge.convert_weights: `state` is only for an Equinox BatchNorm; "
      f"{type(layer).__name__} has no state. Call `convert_weights(layer)`."
    )
  if isinstance(layer, nnx.BatchNorm):
    return _batchnorm_to_eqx(eqx, layer)
  to_nnx, to_eqx = _tables(eqx)
  table = to_nnx if isinstance(layer, eqx.Module) else to_eqx
  for cls, fn in table:
    if isinstance(layer, cls):
      return fn(eqx, layer)
  supported = ", ".join(sorted({c.__name__ for c, _ in to_nnx} | {"BatchNorm"}))
  raise BridgeError(
    f"nnx.bridge.convert_weights: no converter for {type(layer).__module__}."
    f"{type(layer).__qualname__}. Supported layers: {supported} (and their pynnx.nn "
    f"counterparts). For a whole Equinox model use nnx.bridge.from_equinox(model)."
  )
