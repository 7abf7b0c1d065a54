"""Recurrent cells and the layers that run them over a sequence.

A cell maps ``(carry, x_t) -> (carry, y_t)`` for one time step. :class:`RNN` runs a cell over
the time axis with one ``jax.lax.scan``: the cell's Params are loop constants; any other
Variable the cell updates (a random stream, a counter) travels in the scan carry and is
written back afterwards, so a plain ``jax.jit`` / ``jax.grad`` over the Module just works.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp

import pynnx as nnx

from . import initializers
from .dtypes import LayerArgumentError, check_rngs, check_size, promote_dtype
from .linear import Linear

default_kernel_init = initializers.lecun_normal()
default_bias_init = initializers.zeros
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


def modified_orthogonal(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Any:
  """An orthogonal matrix drawn in float32, then cast (so half precision keeps orthogonality)."""
  return initializers.orthogonal()(key, shape, jnp.float32).astype(dtype)


class RNNCellBase(nnx.Module):
  """Base class of recurrent cells: ``cell(carry, x) -> (new_carry, y)``."""

  def initialize_carry(
    self, input_shape: tuple[int, ...], rngs: Any = None, carry_init: Any = None
  ) -> Any:
    """The initial carry for inputs of ``input_shape`` (``[batch..., features]``)."""
    raise NotImplementedError

  def __call__(self, carry: Any, inputs: jax.Array) -> tuple[Any, jax.Array]:
    raise NotImplementedError

  @property
  def num_feature_axes(self) -> int:
    """How many trailing axes of an input are features (the time axis sits before them)."""
    raise NotImplementedError

  # -- helpers shared by the cells --------------------------------------------------------
  def _init_cell(
    self,
    in_features: int,
    hidden_features: int,
    dtype: Any,
    param_dtype: Any,
    carry_init: Any,
    promote: Callable,
    keep_rngs: bool,
    rngs: nnx.Rngs,
  ) -> None:
    name = type(self).__name__
    self.in_features = check_size(name, "in_features", in_features)
    self.hidden_features = check_size(name, "hidden_features", hidden_features)
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.carry_init = carry_init
    self.promote_dtype = promote
    if keep_rngs:
      warnings.warn(
        f"{name}(keep_rngs=True) is deprecated: pass `rngs` to initialize_carry / RNN instead.",
        DeprecationWarning,
        stacklevel=3,
      )
      self.rngs = rngs.carry.fork()
    else:
      self.rngs = nnx.data(None)

  def _one_carry(self, batch_dims: tuple[int, ...], rngs: Any, carry_init: Any) -> jax.Array:
    init = carry_init if carry_init is not None else self.carry_init
    shape = (*batch_dims, self.hidden_features)
    if rngs is None:
      rngs = self.rngs
    if isinstance(rngs, nnx.Rngs):
      rngs = rngs.carry
    if init is None:  # the default zeros need no key, but a given stream advances as in flax
      if rngs is not None:
        rngs()
      return jnp.zeros(shape, self.param_dtype)
    if rngs is None:
      raise nnx.RngError(
        f"{type(self).__name__}.initialize_carry: a carry_init was given, and it needs a random "
        f"key; pass `rngs=nnx.Rngs(carry=seed)` (or an RngStream)."
      )
    return init(rngs(), shape, self.param_dtype)

  def _check_step(self, inputs: jax.Array, hidden: jax.Array) -> None:
    name = type(self).__name__
    if jnp.shape(inputs)[-1:] != (self.in_features,):
      raise nnx.ShapeError(
        f"{name} expects inputs with {self.in_features} features on the last axis, got shape "
        f"{jnp.shape(inputs)}."
      )
    if jnp.shape(hidden)[-1:] != (self.hidden_features,):
      raise nnx.ShapeError(
        f"{name} expects a carry with {self.hidden_features} features on the last axis, got "
        f"shape {jnp.shape(hidden)}; build it with `cell.initialize_carry(x.shape)`."
      )


def _dense(
  in_f: int,
  out_f: int,
  use_bias: bool,
  init: Any,
  bias_init: Any,
  cell: RNNCellBase,
  rngs: nnx.Rngs,
  kernel_metadata: Mapping,
  bias_metadata: Mapping = _NO_METADATA,
) -> Linear:
  return Linear(
    in_f,
    out_f,
    use_bias=use_bias,
    kernel_init=init,
    bias_init=bias_init,
    dtype=cell.dtype,
    param_dtype=cell.param_dtype,
    promote_dtype=cell.promote_dtype,
    rngs=rngs,
    kernel_metadata=kernel_metadata,
    bias_metadata=bias_metadata,
  )


class LSTMCell(RNNCellBase):
  r"""Long short-term memory cell with one Linear per gate.

  ``i, f, o = gate_fn(x W_i* + h W_h* + b_h*)``, ``g = activation_fn(...)``,
  ``c' = f c + i g``, ``h' = o activation_fn(c')``. The carry is ``(c, h)``; the output is
  ``h'``. Input kernels are ``ii, if_, ig, io`` (no bias); recurrent ones ``hi, hf, hg, ho``.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> cell = nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((2, 3))
    >>> carry = cell.initialize_carry(x.shape)
    >>> (c, h), y = cell(carry, x)
    >>> c.shape, y.shape
    ((2, 4), (2, 4))
  """

  # the per-gate Linears, set with setattr in __init__
  ii: Linear
  if_: Linear
  ig: Linear
  io: Linear
  hi: Linear
  hf: Linear
  hg: Linear
  ho: Linear

  def __init__(
    self,
    in_features: int,
    hidden_features: int,
    *,
    gate_fn: Callable[..., Any] = jax.nn.sigmoid,
    activation_fn: Callable[..., Any] = jnp.tanh,
    kernel_init: Any = default_kernel_init,
    recurrent_kernel_init: Any = modified_orthogonal,
    bias_init: Any = default_bias_init,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    carry_init: Any = None,
    promote_dtype: Callable[..., Any] = promote_dtype,
    keep_rngs: bool = False,
    rngs: nnx.Rngs,
    kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    recurrent_kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("LSTMCell", rngs)
    self._init_cell(
      in_features, hidden_features, dtype, param_dtype, carry_init, promote_dtype, keep_rngs, rngs
    )
    self.gate_fn = gate_fn
    self.activation_fn = activation_fn
    h = self.hidden_features
    for name in ("ii", "if_", "ig", "io"):
      setattr(
        self,
        name,
        _dense(self.in_features, h, False, kernel_init, bias_init, self, rngs, kernel_metadata),
      )
    for name in ("hi", "hf", "hg", "ho"):
      setattr(
        self,
        name,
        _dense(
          h,
          h,
          True,
          recurrent_kernel_init,
          bias_init,
          self,
          rngs,
          recurrent_kernel_metadata,
          bias_metadata,
        ),
      )

  def __call__(self, carry: tuple[jax.Array, jax.Array], inputs: jax.Array):
    """One step: ``((c, h), x) -> ((c', h'), h')``."""
    c, h = carry
    self._check_step(inputs, h)
    i = self.gate_fn(self.ii(inputs) + self.hi(h))
    f = self.gate_fn(self.if_(inputs) + self.hf(h))
    g = self.activation_fn(self.ig(inputs) + self.hg(h))
    o = self.gate_fn(self.io(inputs) + self.ho(h))
    new_c = f * c + i * g
    new_h = o * self.activation_fn(new_c)
    return (new_c, new_h), new_h

  def initialize_carry(
    self, input_shape: tuple[int, ...], rngs: Any = None, carry_init: Any = None
  ) -> tuple[jax.Array, jax.Array]:
    """``(c, h)``, each ``[batch..., hidden_features]`` (zeros unless a carry_init is given)."""
    batch = tuple(input_shape[:-1])
    return self._one_carry(batch, rngs, carry_init), self._one_carry(batch, rngs, carry_init)

  @property
  def num_feature_axes(self) -> int:
    return 1


class OptimizedLSTMCell(RNNCellBase):
  """An LSTM cell computing all four gates with one input and one recurrent matmul.

  Same math as :class:`LSTMCell`; the kernels are fused: ``dense_i`` (``in x 4*hidden``, no
  bias) and ``dense_h`` (``hidden x 4*hidden`` plus bias), gates in the order ``i, f, g, o``.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> cell = nnx.OptimizedLSTMCell(3, 4, rngs=nnx.Rngs(0))
    >>> cell.dense_h.kernel.shape
    (4, 16)
  """

  def __init__(
    self,
    in_features: int,
    hidden_features: int,
    *,
    gate_fn: Callable[..., Any] = jax.nn.sigmoid,
    activation_fn: Callable[..., Any] = jnp.tanh,
    kernel_init: Any = default_kernel_init,
    recurrent_kernel_init: Any = initializers.orthogonal(),
    bias_init: Any = default_bias_init,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    carry_init: Any = None,
    promote_dtype: Callable[..., Any] = promote_dtype,
    keep_rngs: bool = False,
    rngs: nnx.Rngs,
    kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    recurrent_kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("OptimizedLSTMCell", rngs)
    self._init_cell(
      in_features, hidden_features, dtype, param_dtype, carry_init, promote_dtype, keep_rngs, rngs
    )
    self.gate_fn = gate_fn
    self.activation_fn = activation_fn
    h4 = 4 * self.hidden_features
    self.dense_i = _dense(
      self.in_features, h4, False, kernel_init, bias_init, self, rngs, kernel_metadata
    )
    self.dense_h = _dense(
      self.hidden_features,
      h4,
      True,
      recurrent_kernel_init,
      bias_init,
      self,
      rngs,
      recurrent_kernel_metadata,
      bias_metadata,
    )

  def __call__(self, carry: tuple[jax.Array, jax.Array], inputs: jax.Array):
    """One step: ``((c, h), x) -> ((c', h'), h')``."""
    c, h = carry
    self._check_step(inputs, h)
    i, f, g, o = jnp.split(self.dense_i(inputs) + self.dense_h(h), 4, axis=-1)
    new_c = self.gate_fn(f) * c + self.gate_fn(i) * self.activation_fn(g)
    new_h = self.gate_fn(o) * self.activation_fn(new_c)
    return (new_c, new_h), new_h

  initialize_carry = LSTMCell.initialize_carry

  @property
  def num_feature_axes(self) -> int:
    return 1


class SimpleCell(RNNCellBase):
  """Elman cell: ``h' = activation_fn(x W_i + b_i + h W_h)`` (``+ h`` inside if ``residual``).

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> cell = nnx.SimpleCell(3, 4, rngs=nnx.Rngs(0))
    >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
    >>> h.shape
    (2, 4)
  """

  def __init__(
    self,
    in_features: int,
    hidden_features: int,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    carry_init: Any = None,
    residual: bool = False,
    activation_fn: Callable[..., Any] = jnp.tanh,
    kernel_init: Any = default_kernel_init,
    recurrent_kernel_init: Any = initializers.orthogonal(),
    bias_init: Any = default_bias_init,
    promote_dtype: Callable[..., Any] = promote_dtype,
    keep_rngs: bool = False,
    rngs: nnx.Rngs,
    kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    recurrent_kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("SimpleCell", rngs)
    self._init_cell(
      in_features, hidden_features, dtype, param_dtype, carry_init, promote_dtype, keep_rngs, rngs
    )
    self.residual = residual
    self.activation_fn = activation_fn
    h = self.hidden_features
    # Flax draws the recurrent kernel first; the same order keeps seeded inits identical.
    self.dense_h = _dense(
      h, h, False, recurrent_kernel_init, bias_init, self, rngs, recurrent_kernel_metadata
    )
    self.dense_i = _dense(
      self.in_features, h, True, kernel_init, bias_init, self, rngs, kernel_metadata, bias_metadata
    )

  def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One step: ``(h, x) -> (h', h')``."""
    self._check_step(inputs, carry)
    pre = self.dense_i(inputs) + self.dense_h(carry)
    if self.residual:
      pre = pre + carry
    new_h = self.activation_fn(pre)
    return new_h, new_h

  def initialize_carry(
    self, input_shape: tuple[int, ...], rngs: Any = None, carry_init: Any = None
  ) -> jax.Array:
    """``h`` of shape ``[batch..., hidden_features]``."""
    return self._one_carry(tuple(input_shape[:-1]), rngs, carry_init)

  @property
  def num_feature_axes(self) -> int:
    return 1


class GRUCell(RNNCellBase):
  """Gated recurrent unit.

  ``r, z = gate_fn(x W_i* + b_i* + h W_h*)``, ``n = activation_fn(x W_in + b_in + r (h W_hn))``,
  ``h' = (1 - z) n + z h``. Fused kernels: ``dense_i`` (``in x 3*hidden`` plus bias) and
  ``dense_h`` (``hidden x 3*hidden``, no bias), gates in the order ``r, z, n``.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> cell = nnx.GRUCell(3, 4, rngs=nnx.Rngs(0))
    >>> h, y = cell(cell.initialize_carry((2, 3)), jnp.ones((2, 3)))
    >>> y.shape
    (2, 4)
  """

  def __init__(
    self,
    in_features: int,
    hidden_features: int,
    *,
    gate_fn: Callable[..., Any] = jax.nn.sigmoid,
    activation_fn: Callable[..., Any] = jnp.tanh,
    kernel_init: Any = default_kernel_init,
    recurrent_kernel_init: Any = initializers.orthogonal(),
    bias_init: Any = default_bias_init,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    carry_init: Any = None,
    promote_dtype: Callable[..., Any] = promote_dtype,
    keep_rngs: bool = False,
    rngs: nnx.Rngs,
    kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    recurrent_kernel_metadata: Mapping[str, Any] = _NO_METADATA,
    bias_metadata: Mapping[str, Any] = _NO_METADATA,
  ):
    check_rngs("GRUCell", rngs)
    self._init_cell(
      in_features, hidden_features, dtype, param_dtype, carry_init, promote_dtype, keep_rngs, rngs
    )
    self.gate_fn = gate_fn
    self.activation_fn = activation_fn
    h3 = 3 * self.hidden_features
    self.dense_i = _dense(
      self.in_features, h3, True, kernel_init, bias_init, self, rngs, kernel_metadata, bias_metadata
    )
    self.dense_h = _dense(
      self.hidden_features,
      h3,
      False,
      recurrent_kernel_init,
      bias_init,
      self,
      rngs,
      recurrent_kernel_metadata,
    )

  def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One step: ``(h, x) -> (h', h')``."""
    self._check_step(inputs, carry)
    xr, xz, xn = jnp.split(self.dense_i(inputs), 3, axis=-1)
    hr, hz, hn = jnp.split(self.dense_h(carry), 3, axis=-1)
    r = self.gate_fn(xr + hr)
    z = self.gate_fn(xz + hz)
    n = self.activation_fn(xn + r * hn)
    new_h = (1.0 - z) * n + z * carry
    return new_h, new_h

  initialize_carry = SimpleCell.initialize_carry

  @property
  def num_feature_axes(self) -> int:
    return 1


def flip_sequences(
  inputs: jax.Array, seq_lengths: jax.Array | None, num_batch_dims: int, time_major: bool
) -> jax.Array:
  """Reverses each sequence along the time axis, keeping padding at the end.

  With ``seq_lengths``, only the first ``seq_lengths[b]`` steps of sequence ``b`` are reversed;
  without it the whole time axis is.

  Example:
    >>> import jax.numpy as jnp
    >>> from pynnx.nn.recurrent import flip_sequences
    >>> x = jnp.array([[1, 2, 0], [3, 4, 5]])
    >>> flip_sequences(x, jnp.array([2, 3]), num_batch_dims=1, time_major=False)
    Array([[2, 1, 0],
           [5, 4, 3]], dtype=int32)
  """
  time_axis = 0 if time_major else num_batch_dims
  if seq_lengths is None:
    return jnp.flip(inputs, axis=time_axis)
  steps = inputs.shape[time_axis]
  lengths = jnp.asarray(seq_lengths)
  # Source index of output step t in sequence b: (len_b - 1 - t) mod steps, so the valid
  # prefix is reversed and the padding (which wraps around) stays behind it.
  rev = jnp.arange(steps - 1, -1, -1)
  if time_major:
    idx = rev.reshape((steps,) + (1,) * lengths.ndim) + lengths[None]
  else:
    idx = rev.reshape((1,) * lengths.ndim + (steps,)) + lengths[..., None]
  idx = (idx % steps).astype(jnp.int32)
  idx = idx.reshape(idx.shape + (1,) * (inputs.ndim - idx.ndim))
  return jnp.take_along_axis(inputs, idx, axis=time_axis)


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def _scan_cell(
  cell: Any, carry: Any, xs: Any, seq_lengths: jax.Array | None, unroll: int
) -> tuple[Any, Any]:
  """Runs ``cell`` over axis 0 of ``xs`` with ``lax.scan``; writes back updated Variables."""
  nodes, treedef = jax.tree.flatten(cell, is_leaf=_is_variable)
  # Params are loop constants; other Variables (rng counters, ...) may change each step.
  carried = [i for i, n in enumerate(nodes) if _is_variable(n) and not isinstance(n, nnx.Param)]
  changed: set[int] = set()

  def step(state: Any, x_t: Any) -> tuple[Any, Any]:
    values, h, last, t = state
    fresh = list(nodes)
    for i, value in zip(carried, values, strict=True):
      fresh[i] = nodes[i].replace(value)
    module = jax.tree.unflatten(treedef, fresh)
    new_h, y = module(h, x_t)
    # jaxlib ships no stub for PyTreeDef, so mypy cannot type the comparison (ignore below)
    if jax.tree.structure(module, is_leaf=_is_variable) != treedef:  # type: ignore[operator]
      raise nnx.StructureChangeError(
        f"RNN: the cell {type(cell).__name__} changed its structure (added or removed "
        f"Variables, e.g. with `sow`) inside the time loop; a scanned cell must keep a fixed "
        f"structure. Record per-step values in the cell's outputs instead."
      )
    new_values = []
    for i, old in zip(carried, values, strict=True):
      new = fresh[i].raw_value
      if new is not old:
        changed.add(i)
      new_values.append(new)
    if seq_lengths is not None:  # remember each sequence's carry after its last valid step
      live = t < seq_lengths

      def keep(new: jax.Array, old: jax.Array) -> jax.Array:
        mask = live.reshape(live.shape + (1,) * (jnp.ndim(new) - live.ndim))
        return jnp.where(mask, new, old)

      last = jax.tree.map(keep, new_h, last)
    return (new_values, new_h, last, t + 1), y

  last0 = carry if seq_lengths is not None else None
  init = ([nodes[i].raw_value for i in carried], carry, last0, jnp.zeros((), jnp.int32))
  (values, carry, last, _), ys = jax.lax.scan(step, init, xs, unroll=unroll)
  for i, value in zip(carried, values, strict=True):
    if i in changed:  # untouched Variables keep their (possibly concrete) values
      nodes[i].value = value
  return (carry if seq_lengths is None else last), ys


def _carry_stream(rngs: Any, layer: str, needs_key: bool) -> Any:
  if rngs is True:
    # Only a random carry_init draws keys. Holding no stream otherwise keeps integer rng
    # state out of the Module, so plain `jax.grad` over it works.
    return nnx.RngStream(0, tag="carry") if needs_key else nnx.data(None)
  if rngs is False or rngs is None:
    return nnx.data(None)
  if isinstance(rngs, nnx.Rngs):
    return rngs.carry.fork()
  if isinstance(rngs, nnx.RngStream):
    return rngs
  raise nnx.ConfigError(
    f"{layer}: rngs must be an nnx.Rngs, an nnx.RngStream or a bool, got {type(rngs).__name__}."
  )


class RNN(nnx.Module):
  """Runs a recurrent cell over the time axis of a sequence (one ``jax.lax.scan``).

  Inputs are ``[batch..., time, features]`` (``[time, batch..., features]`` with
  ``time_major=True``). ``seq_lengths`` (shape ``[batch...]``) marks where each sequence
  ends: the returned carry is the one after the last valid step, and ``reverse=True`` reverses
  only the valid prefix. Each call option defaults to the value given to the constructor.

  Args:
    cell: an :class:`RNNCellBase` instance.
    time_major: whether time is axis 0.
    return_carry: return ``(carry, outputs)`` instead of ``outputs``.
    reverse: run from the last step to the first.
    keep_order: with ``reverse``, put the outputs back in input order.
    unroll: loop iterations unrolled per scan step.
    state_axes: not supported (the cell's non-Param Variables are always carried).
    broadcast_rngs: not supported (random streams advance step by step, as a carry).
    rngs: the stream that draws a random initial carry: ``True`` (a fresh ``carry`` stream,
      created only when the cell has a ``carry_init``; the default zero carry needs no key),
      ``False``, an ``nnx.Rngs`` (its ``carry`` stream is forked) or an ``nnx.RngStream``.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> rnn = nnx.RNN(nnx.GRUCell(3, 5, rngs=nnx.Rngs(0)))
    >>> x = jnp.ones((2, 7, 3))                  # batch 2, 7 steps, 3 features
    >>> rnn(x).shape
    (2, 7, 5)
    >>> carry, y = rnn(x, return_carry=True, seq_lengths=jnp.array([7, 4]))
    >>> bool(jnp.allclose(carry[1], y[1, 3]))    # sequence 1 stopped after step 4
    True
  """

  def __init__(
    self,
    cell: RNNCellBase,
    *,
    time_major: bool = False,
    return_carry: bool = False,
    reverse: bool = False,
    keep_order: bool = False,
    unroll: int = 1,
    state_axes: Any = None,
    broadcast_rngs: Any = None,
    rngs: Any = True,
  ):
    if state_axes is not None or broadcast_rngs is not None:
      raise LayerArgumentError(
        "RNN: state_axes / broadcast_rngs are not supported in pynnx. The cell's Params are "
        "loop constants and every other Variable it updates is carried step to step, which is "
        "Flax's default; drop these arguments."
      )
    if not callable(cell) or not hasattr(cell, "initialize_carry"):
      raise LayerArgumentError(
        f"RNN: cell must be a recurrent cell (an RNNCellBase with initialize_carry), got "
        f"{type(cell).__name__}."
      )
    self.cell = cell
    self.time_major = time_major
    self.return_carry = return_carry
    self.reverse = reverse
    self.keep_order = keep_order
    self.unroll = check_size("RNN", "unroll", unroll)
    self.rngs = _carry_stream(rngs, "RNN", getattr(cell, "carry_init", None) is not None)

  def __call__(
    self,
    inputs: jax.Array,
    *,
    initial_carry: Any = None,
    seq_lengths: jax.Array | None = None,
    return_carry: bool | None = None,
    time_major: bool | None = None,
    reverse: bool | None = None,
    keep_order: bool | None = None,
    rngs: Any = None,
  ) -> Any:
    """Runs the cell over ``inputs``; returns the outputs (and the final carry)."""
    return_carry = self.return_carry if return_carry is None else return_carry
    time_major = self.time_major if time_major is None else time_major
    reverse = self.reverse if reverse is None else reverse
    keep_order = self.keep_order if keep_order is None else keep_order
    n_features = self.cell.num_feature_axes
    if jnp.ndim(inputs) < n_features + 1:
      raise nnx.ShapeError(
        f"RNN expects inputs of shape [batch..., time, features] (or [time, batch..., "
        f"features] with time_major=True), got shape {jnp.shape(inputs)}."
      )
    time_axis = 0 if time_major else inputs.ndim - n_features - 1
    batch_dims = inputs.shape[1:-n_features] if time_major else inputs.shape[:time_axis]
    if seq_lengths is not None:
      seq_lengths = jnp.asarray(seq_lengths)
      if seq_lengths.shape != batch_dims:
        raise nnx.ShapeError(
          f"RNN: seq_lengths must have the batch shape {batch_dims} of the inputs (shape "
          f"{inputs.shape}), got shape {seq_lengths.shape}."
        )
    if reverse:
      inputs = flip_sequences(inputs, seq_lengths, len(batch_dims), time_major)
    if initial_carry is None:
      rngs = self.rngs if rngs is None else rngs
      if isinstance(rngs, nnx.Rngs):
        rngs = rngs.carry.fork()
      step_shape = inputs.shape[:time_axis] + inputs.shape[time_axis + 1 :]
      initial_carry = self.cell.initialize_carry(step_shape, rngs)
    xs = jnp.moveaxis(inputs, time_axis, 0)
    carry, ys = _scan_cell(self.cell, initial_carry, xs, seq_lengths, self.unroll)
    outputs = jax.tree.map(lambda y: jnp.moveaxis(y, 0, time_axis), ys)
    if reverse and keep_order:
      outputs = jax.tree.map(
        lambda y: flip_sequences(y, seq_lengths, len(batch_dims), time_major), outputs
      )
    return (carry, outputs) if return_carry else outputs


def _concatenate(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.concatenate([a, b], axis=-1)


class Bidirectional(nnx.Module):
  """Runs one RNN forward and one backward over the inputs and merges their outputs.

  The backward RNN's outputs are put back in input order before ``merge_fn`` (concatenation
  on the feature axis by default) combines them. ``rngs`` (an ``nnx.Rngs`` or
  ``nnx.RngStream``) is handed to both RNNs; with ``True`` each RNN uses its own stream.

  Example:
    >>> import jax.numpy as jnp, pynnx as nnx
    >>> fwd = nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(0)))
    >>> bwd = nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(1)))
    >>> nnx.Bidirectional(fwd, bwd)(jnp.ones((2, 5, 3))).shape
    (2, 5, 8)
  """

  def __init__(
    self,
    forward_rnn: Any,
    backward_rnn: Any,
    *,
    merge_fn: Callable[[jax.Array, jax.Array], jax.Array] = _concatenate,
    time_major: bool = False,
    return_carry: bool = False,
    rngs: Any = True,
  ):
    self.forward_rnn = forward_rnn
    self.backward_rnn = backward_rnn
    self.merge_fn = merge_fn
    self.time_major = time_major
    self.return_carry = return_carry
    self.rngs = _carry_stream(rngs, "Bidirectional", False)

  def __call__(
    self,
    inputs: jax.Array,
    *,
    initial_carry: Any = None,
    rngs: Any = None,
    seq_lengths: jax.Array | None = None,
    return_carry: bool | None = None,
    time_major: bool | None = None,
    reverse: bool | None = None,
    keep_order: bool | None = None,
  ) -> Any:
    """Returns the merged outputs (and ``(forward_carry, backward_carry)``)."""
    del reverse, keep_order  # fixed per direction; accepted so both fit the RNN call protocol
    time_major = self.time_major if time_major is None else time_major
    return_carry = self.return_carry if return_carry is None else return_carry
    rngs = self.rngs if rngs is None else rngs
    if isinstance(rngs, nnx.Rngs):
      rngs = rngs.carry
    fwd_carry0, bwd_carry0 = (None, None) if initial_carry is None else initial_carry
    common = dict(rngs=rngs, seq_lengths=seq_lengths, return_carry=True, time_major=time_major)
    fwd_carry, fwd_out = self.forward_rnn(inputs, initial_carry=fwd_carry0, reverse=False, **common)
    bwd_carry, bwd_out = self.backward_rnn(
      inputs, initial_carry=bwd_carry0, reverse=True, keep_order=True, **common
    )
    outputs = jax.tree.map(self.merge_fn, fwd_out, bwd_out)
    return ((fwd_carry, bwd_carry), outputs) if return_carry else outputs


__all__ = [
  "Bidirectional",
  "GRUCell",
  "LSTMCell",
  "OptimizedLSTMCell",
  "RNN",
  "RNNCellBase",
  "SimpleCell",
  "flip_sequences",
  "modified_orthogonal",
]
