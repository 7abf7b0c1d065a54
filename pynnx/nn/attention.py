"""Dot-product attention, attention masks and the :class:`MultiHeadAttention` layer.

Shapes follow Flax: queries are ``[batch..., q_length, num_heads, head_dim]``, keys and values
``[batch..., kv_length, num_kv_heads, head_dim]``, masks and biases broadcast to
``[batch..., num_heads, q_length, kv_length]`` (a mask keeps the entries that are ``True``).
Fewer key/value heads than query heads is grouped-query attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import pynnx as nnx

from . import initializers
from .dtypes import InputShapeError, LayerArgumentError, check_rngs, check_size, promote_dtype
from .linear import LinearGeneral, default_kernel_init

Shape = tuple[int, ...]  # the name Flax annotates with (`nnx.view_info` prints it)
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


def _check_qkv(api: str, query: jax.Array, key: jax.Array, value: jax.Array | None = None) -> None:
  arrays = (query, key) if value is None else (query, key, value)
  names = ("query", "key", "value")
  shapes = ", ".join(f"{n} {a.shape}" for n, a in zip(names, arrays, strict=False))
  if query.ndim < 3 or any(a.ndim != query.ndim for a in arrays):
    raise nnx.ShapeError(
      f"{api}: query, key and value must have the same rank, at least 3 "
      f"([batch..., length, heads, depth]); got {shapes}."
    )
  if any(a.shape[:-3] != query.shape[:-3] for a in arrays):
    raise nnx.ShapeError(f"{api}: the batch dimensions must match; got {shapes}.")
  if query.shape[-1] != key.shape[-1]:
    raise nnx.ShapeError(f"{api}: query and key need the same depth (last axis); got {shapes}.")
  if query.shape[-2] % key.shape[-2]:
    raise nnx.ShapeError(
      f"{api}: the number of query heads must be a multiple of the number of key/value heads "
      f"(grouped-query attention); got {shapes}."
    )
  if value is not None and (value.shape[-3] != key.shape[-3] or value.shape[-2] != key.shape[-2]):
    raise nnx.ShapeError(
      f"{api}: key and value need the same length and number of heads; got {shapes}."
    )


def dot_product_attention_weights(
  query: jax.Array,
  key: jax.Array,
  bias: jax.Array | None = None,
  mask: jax.Array | None = None,
  broadcast_dropout: bool = True,
  dropout_rng: jax.Array | None = None,
  dropout_rate: float = 0.0,
  deterministic: bool = False,
  dtype: Any = None,
  precision: Any = None,
  module: nnx.Module | None = None,
  promote_dtype: Callable[..., Any] = promote_dtype,
  is_causal: bool = False,
) -> jax.Array:
  """Attention weights ``softmax(q k^T / sqrt(depth) + bias)``: ``[batch..., heads, q, kv]``.

  Masked-out entries (``mask == False``, or above the diagonal with ``is_causal``) get zero
  weight. With ``module`` the weights are sown there as ``nnx.Intermediate`` under
  ``attention_weights``. Dropout (``dropout_rate > 0`` and not ``deterministic``) needs
  ``dropout_rng``; ``broadcast_dropout`` shares its mask across the batch dimensions.

  Example:
    >>> import jax, pynnx as nnx
    >>> q = k = jax.random.normal(jax.random.key(0), (2, 5, 4, 8))
    >>> w = nnx.dot_product_attention_weights(q, k, is_causal=True)
    >>> w.shape, float(w[0, 0, 0, 1])      # position 0 cannot see position 1
    ((2, 4, 5, 5), 0.0)
  """
  query, key = promote_dtype((query, key), dtype=dtype)
  dtype = query.dtype
  _check_qkv("dot_product_attention_weights", query, key)
  _check_mask_bias("dot_product_attention_weights", query, key, mask, bias)
  q_heads, kv_heads = query.shape[-2], key.shape[-2]
  groups = q_heads // kv_heads
  query = query / jnp.sqrt(jnp.asarray(query.shape[-1], dtype))
  # Group query heads by the key/value head they share: [..., q, kv_heads, groups, depth].
  query = query.reshape(query.shape[:-2] + (kv_heads, groups, query.shape[-1]))
  logits = jnp.einsum("...qhgd,...khd->...hgqk", query, key, precision=precision)
  logits = logits.reshape(logits.shape[:-4] + (q_heads,) + logits.shape[-2:])
  if bias is not None:
    logits = logits + jnp.asarray(bias, dtype)
  if is_causal:
    q_len, kv_len = logits.shape[-2:]
    causal = jnp.tril(jnp.ones((q_len, kv_len), jnp.bool_))
    mask = causal if mask is None else jnp.logical_and(jnp.asarray(mask, jnp.bool_), causal)
  if mask is not None:
    logits = jnp.where(jnp.asarray(mask, jnp.bool_), logits, jnp.finfo(dtype).min)
  weights = jax.nn.softmax(logits).astype(dtype)
  if module is not None:
    module.sow(nnx.Intermediate, "attention_weights", weights)
  if not deterministic and dropout_rate > 0.0:
    if dropout_rng is None:
      raise nnx.RngError(
        "dot_product_attention: dropout_rate > 0 and deterministic=False need a dropout_rng "
        "key (or pass deterministic=True)."
      )
    keep_prob = 1.0 - dropout_rate
    if broadcast_dropout:  # one mask for every batch index and head
      shape = (1,) * (weights.ndim - 2) + weights.shape[-2:]
    else:
      shape = weights.shape
    keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
    weights = weights * (keep.astype(dtype) / jnp.asarray(keep_prob, dtype))
  return weights


def _check_mask_bias(api: str, query: Any, key: Any, mask: Any, bias: Any) -> None:
  """``mask`` / ``bias`` must broadcast to ``[batch..., heads, q_length, kv_length]``."""
  target = (*query.shape[:-3], query.shape[-2], query.shape[-3], key.shape[-3])
  for name, x in (("mask", mask), ("bias", bias)):
    if x is None:
      continue
    shape = tuple(jnp.shape(x))
    try:
      fits = np.broadcast_shapes(shape, target) == target
    except ValueError:
      fits = False
    if not fits:
      raise InputShapeError(
        f"{api}: {name} of shape {shape} does not broadcast to [batch..., heads, q_length, "
        f"kv_length] = {target}. Build it with nnx.make_attention_mask(query_ids, key_ids) "
        "or nnx.make_causal_mask(ids)."
      )


def _to_4d(x: jax.Array | None, batch: tuple[int, ...], api: str, name: str) -> jax.Array | None:
  """``[batch..., a, b, c]`` (or broadcastable) -> ``[prod(batch), a, b, c]``."""
  if x is None:
    return None
  x = jnp.asarray(x)  # its shape was checked by _check_mask_bias
  x = x.reshape((1,) * (len(batch) + 3 - x.ndim) + x.shape)
  x = jnp.broadcast_to(x, batch + x.shape[-3:])
  return x.reshape((math.prod(batch),) + x.shape[-3:])


def dot_product_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  bias: jax.Array | None = None,
  mask: jax.Array | None = None,
  broadcast_dropout: bool = True,
  dropout_rng: jax.Array | None = None,
  dropout_rate: float = 0.0,
  deterministic: bool = False,
  dtype: Any = None,
  precision: Any = None,
  module: nnx.Module | None = None,
  promote_dtype: Callable[..., Any] = promote_dtype,
  is_causal: bool = False,
) -> jax.Array:
  """Attention output ``weights @ value``, of shape ``[batch..., q_length, heads, v_depth]``.

  Arguments are those of :func:`dot_product_attention_weights` plus ``value``. Without
  dropout and sowing this calls ``jax.nn.dot_product_attention`` (a fused kernel where the
  platform has one).

  Example:
    >>> import jax, pynnx as nnx
    >>> q = jax.random.normal(jax.random.key(0), (2, 5, 4, 8))
    >>> nnx.dot_product_attention(q, q, q).shape
    (2, 5, 4, 8)
  """
  api = "dot_product_attention"
  query, key, value = promote_dtype((query, key, value), dtype=dtype)
  _check_qkv(api, query, key, value)
  _check_mask_bias(api, query, key, mask, bias)
  fast = dropout_rate == 0.0 and module is None and value.shape[-1] == key.shape[-1]
  if fast:
    batch = query.shape[:-3]
    q4, k4, v4 = [x.reshape((math.prod(batch),) + x.shape[-3:]) for x in (query, key, value)]
    bias4 = _to_4d(bias, batch, api, "bias")
    mask4 = _to_4d(mask, batch, api, "mask")
    # jax.nn mixes float32 and half-precision internally; keep that working when the
    # user's program runs with strict dtype promotion (our inputs are already one dtype).
    with jax.numpy_dtype_promotion("standard"):
      out = jax.nn.dot_product_attention(
        q4,
        k4,
        v4,
        bias=None if bias4 is None else bias4.astype(query.dtype),
        mask=None if mask4 is None else mask4.astype(jnp.bool_),
        is_causal=is_causal,
      )
    return out.reshape(query.shape[:-1] + (value.shape[-1],))
  weights = dot_product_attention_weights(
    query,
    key,
    bias,
    mask,
    broadcast_dropout,
    dropout_rng,
    dropout_rate,
    deterministic,
    query.dtype,
    precision,
    module,
    promote_dtype,
    is_causal,
  )
  kv_heads = value.shape[-2]
  groups = weights.shape[-3] // kv_heads
  weights = weights.reshape(weights.shape[:-3] + (kv_heads, groups) + weights.shape[-2:])
  out = jnp.einsum("...hgqk,...khd->...qhgd", weights, value, precision=precision)
  return out.reshape(out.shape[:-3] + (kv_heads * groups, value.shape[-1]))


def make_attention_mask(
  query_input: jax.Array,
  key_input: jax.Array,
  pairwise_fn: Callable[..., Any] = jnp.multiply,
  extra_batch_dims: int = 0,
  dtype: Any = jnp.float32,
) -> jax.Array:
  """A ``[batch..., 1, q_len, kv_len]`` mask ``pairwise_fn(query_input[q], key_input[k])``.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> valid = jnp.array([[1, 1, 0]])            # the last token is padding
    >>> nnx.make_attention_mask(valid, valid)[0, 0]
    Array([[1., 1., 0.],
           [1., 1., 0.],
           [0., 0., 0.]], dtype=float32)
  """
  mask = pairwise_fn(jnp.expand_dims(query_input, -1), jnp.expand_dims(key_input, -2))
  mask = jnp.expand_dims(mask, -3)
  mask = mask.reshape((1,) * extra_batch_dims + mask.shape)
  return mask.astype(dtype)


def make_causal_mask(
  x: jax.Array, extra_batch_dims: int = 0, dtype: Any = jnp.float32
) -> jax.Array:
  """A ``[batch..., 1, len, len]`` mask letting position ``i`` see positions ``<= i``.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> nnx.make_causal_mask(jnp.ones((1, 3)))[0, 0]
    Array([[1., 0., 0.],
           [1., 1., 0.],
           [1., 1., 1.]], dtype=float32)
  """
  idx = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
  return make_attention_mask(idx, idx, jnp.greater_equal, extra_batch_dims, dtype)


def combine_masks(*masks: jax.Array | None, dtype: Any = jnp.float32) -> jax.Array | None:
  """The logical AND of the given masks (``None`` entries skipped; ``None`` if none remain).

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> nnx.combine_masks(jnp.array([[1, 1]]), None, jnp.array([[1, 0]]))
    Array([[1., 0.]], dtype=float32)
  """
  present = [jnp.asarray(m) for m in masks if m is not None]
  if not present:
    return None
  if any(m.ndim != present[0].ndim for m in present):
    raise nnx.ShapeError(
      f"combine_masks: masks must have the same rank, got shapes {[m.shape for m in present]}."
    )
  out = present[0]
  for m in present[1:]:
    out = jnp.logical_and(out, m)
  return out.astype(dtype)


class MultiHeadAttention(nnx.Module):
  """Multi-head (optionally grouped-query) dot-product attention with learned projections.

  ``inputs_q`` is projected to queries by ``query`` and ``inputs_k`` / ``inputs_v`` (default:
  ``inputs_q`` / ``inputs_k``) to keys and values by ``key`` / ``value`` (LinearGeneral layers
  to ``[..., heads, head_dim]``); ``out`` maps the attended values back to ``out_features``.

  For autoregressive decoding call :meth:`init_cache` once, then feed one token per call with
  ``decode=True``: keys and values accumulate in ``nnx.Cache`` Variables ``cached_key``,
  ``cached_value`` and ``cache_index``. ``decode=None`` (the default) means ``False``;
  ``deterministic`` must be set (here, per call, or by ``model.train()`` / ``model.eval()``)
  when ``dropout_rate > 0``.

  Args:
    num_heads: number of query heads; must divide ``qkv_features``.
    in_features: feature size of ``inputs_q``.
    qkv_features: total query/key/value size (default ``in_features``).
    out_features: output feature size (default ``in_features``).
    num_kv_heads: number of key/value heads (default ``num_heads``); must divide
      ``num_heads``. Fewer than ``num_heads`` gives grouped-query attention.
    in_kv_features: feature size of ``inputs_k`` / ``inputs_v`` (default ``in_features``).
    dtype: computation dtype (``None``: promote inputs and parameters).
    param_dtype: parameter dtype.
    broadcast_dropout: share the attention-dropout mask across batch dimensions and heads.
    dropout_rate: attention-weight dropout rate.
    deterministic: disable dropout (can be overridden per call).
    precision: matmul precision.
    kernel_init: initializer of the query/key/value kernels (and ``out``'s by default).
    out_kernel_init: initializer of ``out.kernel`` (default ``kernel_init``).
    bias_init: initializer of the biases.
    out_bias_init: initializer of ``out.bias`` (default ``bias_init``).
    use_bias: whether the projections have biases.
    attention_fn: ``f(q, k, v, mask=..., dropout_rng=..., ...)`` (default
      :func:`dot_product_attention`).
    decode: use the autoregressive cache (can be overridden per call).
    normalize_qk: apply a LayerNorm (no bias) to queries and keys per head.
    rngs: random streams (``params`` for weights; ``dropout`` is forked when
      ``dropout_rate > 0`` and ``keep_rngs``).

  Example:
    >>> import jax, jax.numpy as jnp, pynnx as nnx
    >>> layer = nnx.MultiHeadAttention(num_heads=2, in_features=6, rngs=nnx.Rngs(0))
    >>> x = jax.random.normal(jax.random.key(1), (3, 5, 6))     # batch 3, length 5
    >>> layer(x, mask=nnx.make_causal_mask(x[..., 0])).shape
    (3, 5, 6)
    >>> layer.query.kernel.shape, layer.out.kernel.shape
    ((6, 2, 3), (2, 3, 6))
  """

  def __init__(
    self,
    num_heads: int,
    in_features: int,
    qkv_features: int | None = None,
    out_features: int | None = None,
    num_kv_heads: int | None = None,
    in_kv_features: int | None = None,
    *,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    broadcast_dropout: bool = True,
    dropout_rate: float = 0.0,
    deterministic: bool | None = None,
    precision: Any = None,
    kernel_init: Any = default_kernel_init,
    out_kernel_init: Any = None,
    bias_init: Any = initializers.zeros,
    out_bias_init: Any = None,
    use_bias: bool = True,
    attention_fn: Callable[..., jax.Array] = dot_product_attention,
    decode: bool | None = None,
    normalize_qk: bool = False,
    qkv_promote_dtype: Callable[..., Any] = promote_dtype,
    out_promote_dtype: Callable[..., Any] = promote_dtype,
    ln_promote_dtype: Callable[..., Any] = promote_dtype,
    qkv_dot_general: Any = None,
    out_dot_general: Any = None,
    qkv_dot_general_cls: Any = None,
    out_dot_general_cls: Any = None,
    rngs: nnx.Rngs,
    keep_rngs: bool = True,
    kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    out_kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
    out_bias_metadata: Mapping[str, Any] = _NO_METADATA,
    query_ln_scale_metadata: Mapping[str, Any] = _NO_METADATA,
    key_ln_scale_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("MultiHeadAttention", rngs)
    name = "MultiHeadAttention"
    self.num_heads = check_size(name, "num_heads", num_heads)
    self.in_features = check_size(name, "in_features", in_features)
    self.qkv_features = check_size(
      name, "qkv_features", in_features if qkv_features is None else qkv_features
    )
    self.out_features = check_size(
      name, "out_features", in_features if out_features is None else out_features
    )
    self.in_kv_features = check_size(
      name, "in_kv_features", in_features if in_kv_features is None else in_kv_features
    )
    self.num_kv_heads = check_size(
      name, "num_kv_heads", num_heads if num_kv_heads is None else num_kv_heads
    )
    if self.qkv_features % self.num_heads:
      raise LayerArgumentError(
        f"{name}: qkv_features ({self.qkv_features}) must be divisible by num_heads "
        f"({self.num_heads}); each head gets qkv_features // num_heads features."
      )
    if self.num_heads % self.num_kv_heads:
      raise LayerArgumentError(
        f"{name}: num_heads ({self.num_heads}) must be divisible by num_kv_heads "
        f"({self.num_kv_heads}) for grouped-query attention."
      )
    if not 0.0 <= dropout_rate < 1.0:
      raise LayerArgumentError(f"{name}: dropout_rate must be in [0, 1), got {dropout_rate}.")
    self.head_dim = self.qkv_features // self.num_heads
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.broadcast_dropout = broadcast_dropout
    self.dropout_rate = dropout_rate
    self.deterministic = deterministic
    self.precision = precision
    self.use_bias = use_bias
    self.attention_fn = attention_fn
    self.decode = decode
    self.normalize_qk = normalize_qk
    self.qkv_promote_dtype = qkv_promote_dtype
    self.out_promote_dtype = out_promote_dtype
    self.ln_promote_dtype = ln_promote_dtype
    self.qkv_dot_general = qkv_dot_general
    self.out_dot_general = out_dot_general
    self.qkv_dot_general_cls = qkv_dot_general_cls
    self.out_dot_general_cls = out_dot_general_cls

    def projection(in_f: Any, out_f: Any, **kw: Any) -> LinearGeneral:
      return LinearGeneral(
        in_f,
        out_f,
        dtype=dtype,
        param_dtype=param_dtype,
        use_bias=use_bias,
        precision=precision,
        rngs=rngs,
        **kw,
      )

    qkv = dict(
      kernel_init=kernel_init,
      bias_init=bias_init,
      promote_dtype=qkv_promote_dtype,
      dot_general=qkv_dot_general,
      dot_general_cls=qkv_dot_general_cls,
      kernel_metadata=kernel_metadata,
      bias_metadata=bias_metadata,
    )
    self.query = projection(self.in_features, (self.num_heads, self.head_dim), **qkv)
    self.key = projection(self.in_kv_features, (self.num_kv_heads, self.head_dim), **qkv)
    self.value = projection(self.in_kv_features, (self.num_kv_heads, self.head_dim), **qkv)
    if normalize_qk:

      def layer_norm(scale_metadata: Mapping[str, Any]) -> Any:
        return nnx.LayerNorm(
          self.head_dim,
          use_bias=False,
          dtype=dtype,
          param_dtype=param_dtype,
          promote_dtype=ln_promote_dtype,
          rngs=rngs,
          scale_metadata=scale_metadata,
        )

      self.query_ln = layer_norm(query_ln_scale_metadata)
      self.key_ln = layer_norm(key_ln_scale_metadata)
    else:
      self.query_ln = nnx.data(None)
      self.key_ln = nnx.data(None)
    self.out = projection(
      (self.num_heads, self.head_dim),
      self.out_features,
      axis=(-2, -1),
      kernel_init=out_kernel_init or kernel_init,
      bias_init=out_bias_init or bias_init,
      promote_dtype=out_promote_dtype,
      dot_general=out_dot_general,
      dot_general_cls=out_dot_general_cls,
      kernel_metadata=out_kernel_metadata or kernel_metadata,
      bias_metadata=out_bias_metadata or bias_metadata,
    )
    self.rngs = rngs.dropout.fork() if keep_rngs and dropout_rate > 0 else nnx.data(None)
    self.cached_key = nnx.data(None)
    self.cached_value = nnx.data(None)
    self.cache_index = nnx.data(None)

  def __call__(
    self,
    inputs_q: jax.Array,
    inputs_k: jax.Array | None = None,
    inputs_v: jax.Array | None = None,
    *,
    mask: jax.Array | None = None,
    deterministic: bool | None = None,
    rngs: Any = None,
    sow_weights: bool = False,
    decode: bool | None = None,
    is_causal: bool = False,
    out_sharding: Any = None,
    qkv_sharding: Any = None,
  ) -> jax.Array:
    """Attends from ``inputs_q`` to ``inputs_k`` / ``inputs_v``: ``[batch..., q_len, out]``.

    ``mask`` broadcasts to ``[batch..., num_heads, q_len, kv_len]``; ``rngs`` (an
    ``nnx.Rngs`` or ``RngStream``) overrides the stored dropout stream; ``sow_weights``
    records the attention weights as an ``nnx.Intermediate``.
    """
    name = "MultiHeadAttention"
    if inputs_k is None:
      if inputs_v is not None:
        raise LayerArgumentError(
          f"{name}: inputs_v was given without inputs_k. Pass the same array as inputs_k and "
          f"leave inputs_v out to use it for both."
        )
      inputs_k = inputs_q
    if inputs_v is None:
      inputs_v = inputs_k
    for arg, x, want in (
      ("inputs_q", inputs_q, self.in_features),
      ("inputs_k", inputs_k, self.in_kv_features),
      ("inputs_v", inputs_v, self.in_kv_features),
    ):
      if jnp.shape(x)[-1:] != (want,):
        raise nnx.ShapeError(
          f"{name}: {arg} must have {want} features on the last axis, got shape {jnp.shape(x)}."
        )
    query = self.query(inputs_q, out_sharding=qkv_sharding)
    key = self.key(inputs_k, out_sharding=qkv_sharding)
    value = self.value(inputs_v, out_sharding=qkv_sharding)
    if self.normalize_qk:
      query = self.query_ln(query)
      key = self.key_ln(key)

    decode = self.decode if decode is None else decode
    if decode:
      key, value, mask = self._decode_step(key, value, mask)

    dropout_rng = None
    if self.dropout_rate > 0.0:
      deterministic = self.deterministic if deterministic is None else deterministic
      if deterministic is None:
        raise LayerArgumentError(
          f"{name} has dropout_rate={self.dropout_rate} but no `deterministic` setting: pass "
          f"deterministic=... to the constructor or the call, or use model.train() / "
          f"model.eval()."
        )
      if not deterministic:
        stream = self.rngs if rngs is None else rngs
        if isinstance(stream, nnx.Rngs):
          stream = stream.dropout
        if stream is None:
          raise nnx.RngError(
            f"{name}: dropout needs random keys, but the layer keeps no stream "
            f"(keep_rngs=False); pass rngs=nnx.Rngs(dropout=...) to the call."
          )
        dropout_rng = stream()
    else:
      deterministic = True

    x = self.attention_fn(
      query,
      key,
      value,
      mask=mask,
      dropout_rng=dropout_rng,
      dropout_rate=self.dropout_rate,
      broadcast_dropout=self.broadcast_dropout,
      deterministic=deterministic,
      dtype=self.dtype,
      precision=self.precision,
      module=self if sow_weights else None,
      is_causal=is_causal,
    )
    return self.out(x, out_sharding=out_sharding)

  def _decode_step(self, key: jax.Array, value: jax.Array, mask: Any) -> tuple[Any, Any, Any]:
    name = "MultiHeadAttention"
    if self.cached_key is None or self.cached_value is None or self.cache_index is None:
      raise LayerArgumentError(
        f"{name}: decode=True needs the autoregressive cache; call "
        f"`layer.init_cache((batch..., max_length, in_features))` first."
      )
    *batch, max_length, kv_heads, head_dim = self.cached_key.shape
    expected = (*batch, 1, kv_heads, head_dim)
    if key.shape != expected:
      raise nnx.ShapeError(
        f"{name}: in decode mode each call takes one token; the cache expects projected keys "
        f"of shape {expected}, got {key.shape} (inputs have batch shape {key.shape[:-3]} and "
        f"length {key.shape[-3]})."
      )
    index = self.cache_index[...]
    if not isinstance(index, jax.core.Tracer) and int(index) >= max_length:
      raise nnx.ShapeError(
        f"{name}: the decode cache is full ({max_length} steps); call init_cache with a "
        f"larger max_length."
      )
    zero = jnp.zeros((), index.dtype)
    start = (zero,) * len(batch) + (index, zero, zero)
    cache_dtype = self.cached_key.dtype
    key = jax.lax.dynamic_update_slice(self.cached_key[...], key.astype(cache_dtype), start)
    value = jax.lax.dynamic_update_slice(self.cached_value[...], value.astype(cache_dtype), start)
    self.cached_key[...] = key
    self.cached_value[...] = value
    self.cache_index[...] = index + 1
    visible = jnp.broadcast_to(jnp.arange(max_length) <= index, (*batch, 1, 1, max_length))
    return key, value, combine_masks(mask, visible)

  def set_view(
    self,
    deterministic: bool | None = None,
    decode: bool | None = None,
    batch_size: int | Shape | None = None,
    max_length: int | None = None,
  ) -> None:
    """Sets ``deterministic`` / ``decode``; turning decode on creates a missing cache.

    This is the hook flax's ``nnx.view`` calls. A cache of shape
    ``(*batch_size, max_length, num_kv_heads, head_dim)`` in ``dtype`` (float32 when
    ``dtype`` is None) is created when ``decode=True`` and the layer has none yet.

    Args:
      deterministic: if True, the module is set to deterministic mode.
      decode: if True, the module is set to decode mode.
      batch_size: the batch size to use for the cache.
      max_length: the max length to use for the cache.

    Example:
      >>> layer = nnx.MultiHeadAttention(2, 4, rngs=nnx.Rngs(0))
      >>> layer.set_view(decode=True, batch_size=1, max_length=8)
      >>> layer.cached_key.shape, layer(jnp.ones((1, 1, 4))).shape
      ((1, 8, 2, 2), (1, 1, 4))
    """
    if deterministic is not None:
      self._pynnx_setattr("deterministic", deterministic)
    if decode is None:
      return
    if not decode or self.cached_key is not None:
      self._pynnx_setattr("decode", decode)
      return
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
      if value is None:  # checked before any change, so a failed call changes nothing
        raise nnx.ConfigError(
          f"MultiHeadAttention.set_view: decode=True needs {name} to create the cache, e.g. "
          "set_view(decode=True, batch_size=1, max_length=128)."
        )
    assert batch_size is not None and max_length is not None  # checked above
    self._pynnx_setattr("decode", decode)
    batch = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
    dtype = jnp.float32 if self.dtype is None else self.dtype
    self.init_cache((*batch, max_length, self.in_features), dtype)

  def init_cache(self, input_shape: tuple[int, ...], dtype: Any = jnp.float32) -> None:
    """Creates (or resets) the decode cache for inputs of ``(batch..., max_length, features)``.

    Example:
      >>> import jax.numpy as jnp, pynnx as nnx
      >>> layer = nnx.MultiHeadAttention(2, 4, decode=True, rngs=nnx.Rngs(0))
      >>> layer.init_cache((1, 8, 4))                     # room for 8 tokens
      >>> layer(jnp.ones((1, 1, 4))).shape                  # one token per call
      (1, 1, 4)
      >>> int(layer.cache_index[...])
      1
    """
    if len(input_shape) < 2:
      raise nnx.ShapeError(
        f"MultiHeadAttention.init_cache: input_shape must be (batch..., max_length, "
        f"features), got {tuple(input_shape)}."
      )
    shape = (*input_shape[:-1], self.num_kv_heads, self.head_dim)
    # The layer is built (frozen); adding the cache is a sanctioned structural change.
    self._pynnx_setattr("cached_key", nnx.Cache(jnp.zeros(shape, dtype)))
    self._pynnx_setattr("cached_value", nnx.Cache(jnp.zeros(shape, dtype)))
    self._pynnx_setattr("cache_index", nnx.Cache(jnp.array(0, dtype=jnp.int32)))


__all__ = [
  "MultiHeadAttention",
  "combine_masks",
  "dot_product_attention",
  "dot_product_attention_weights",
  "make_attention_mask",
  "make_causal_mask",
]
