"""Recurrent cells, RNN and Bidirectional against direct JAX formulas and Python loops."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx
from pynnx.nn.recurrent import flip_sequences

B, T, IN, HID = 2, 5, 3, 4


def _x(shape, seed=0):
  # numpy draws: no XLA compilation per shape, which keeps the tests fast
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _close(a, b, tol=1e-5):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=tol, atol=tol), a, b)


def _lin(layer, x):
  y = x @ layer.kernel[...]
  return y if layer.bias is None else y + layer.bias[...]


# --- cells -----------------------------------------------------------------------------------


def test_lstm_cells_match_formula_and_each_other():
  cell = nnx.LSTMCell(IN, HID, rngs=nnx.Rngs(0))
  assert (
    cell.ii.bias is None and cell.hi.bias.shape == (HID,) and cell.if_.kernel.shape == (IN, HID)
  )
  x, c, h = _x((B, IN)), _x((B, HID), 1), _x((B, HID), 2)
  sig = jax.nn.sigmoid
  i = sig(_lin(cell.ii, x) + _lin(cell.hi, h))
  f = sig(_lin(cell.if_, x) + _lin(cell.hf, h))
  g = jnp.tanh(_lin(cell.ig, x) + _lin(cell.hg, h))
  o = sig(_lin(cell.io, x) + _lin(cell.ho, h))
  new_c = f * c + i * g
  want = ((new_c, o * jnp.tanh(new_c)), o * jnp.tanh(new_c))
  _close(cell((c, h), x), want)
  # OptimizedLSTMCell with the same weights, fused in (i, f, g, o) order, gives the same step.
  opt = nnx.OptimizedLSTMCell(IN, HID, rngs=nnx.Rngs(1))
  assert opt.dense_i.kernel.shape == (IN, 4 * HID) and opt.dense_i.bias is None
  opt.dense_i.kernel[...] = jnp.concatenate(
    [cell.ii.kernel[...], cell.if_.kernel[...], cell.ig.kernel[...], cell.io.kernel[...]], -1
  )
  opt.dense_h.kernel[...] = jnp.concatenate(
    [cell.hi.kernel[...], cell.hf.kernel[...], cell.hg.kernel[...], cell.ho.kernel[...]], -1
  )
  opt.dense_h.bias[...] = jnp.concatenate(
    [cell.hi.bias[...], cell.hf.bias[...], cell.hg.bias[...], cell.ho.bias[...]], -1
  )
  _close(opt((c, h), x), want)


def test_gru_and_simple_cells_match_formula():
  gru = nnx.GRUCell(IN, HID, rngs=nnx.Rngs(0))
  assert gru.dense_i.bias.shape == (3 * HID,) and gru.dense_h.bias is None
  x, h = _x((B, IN)), _x((B, HID), 1)
  xr, xz, xn = jnp.split(_lin(gru.dense_i, x), 3, -1)
  hr, hz, hn = jnp.split(_lin(gru.dense_h, h), 3, -1)
  r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
  want = (1 - z) * jnp.tanh(xn + r * hn) + z * h
  _close(gru(h, x), (want, want))
  for residual in (False, True):
    cell = nnx.SimpleCell(IN, HID, residual=residual, rngs=nnx.Rngs(0))
    pre = _lin(cell.dense_i, x) + _lin(cell.dense_h, h) + (h if residual else 0.0)
    _close(cell(h, x), (jnp.tanh(pre), jnp.tanh(pre)))


def test_initialize_carry():
  cell = nnx.LSTMCell(IN, HID, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  c, h = cell.initialize_carry((7, 2, IN))
  assert c.shape == h.shape == (7, 2, HID) and c.dtype == jnp.bfloat16 and not c.any()
  ones = jax.nn.initializers.ones
  g = nnx.GRUCell(IN, HID, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(g.initialize_carry((B, IN), nnx.Rngs(0), ones), jnp.ones((B, HID)))
  rand = jax.nn.initializers.normal()
  carry = g.initialize_carry((B, IN), nnx.Rngs(carry=0), carry_init=rand)
  assert carry.shape == (B, HID) and float(jnp.abs(carry).sum()) > 0
  with pytest.raises(nnx.RngError, match="carry_init was given, and it needs a random key"):
    nnx.SimpleCell(IN, HID, carry_init=rand, rngs=nnx.Rngs(0)).initialize_carry((B, IN))
  with pytest.warns(DeprecationWarning, match="keep_rngs=True"):
    kept = nnx.GRUCell(IN, HID, keep_rngs=True, carry_init=rand, rngs=nnx.Rngs(0))
  assert kept.initialize_carry((B, IN)).shape == (B, HID)


def test_cell_errors():
  cell = nnx.GRUCell(IN, HID, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.ShapeError, match=r"GRUCell expects inputs with 3 features.*\(2, 4\)"):
    cell(jnp.zeros((B, HID)), jnp.zeros((B, 4)))
  with pytest.raises(nnx.ShapeError, match=r"GRUCell expects a carry with 4 features.*\(2, 3\)"):
    cell(jnp.zeros((B, 3)), jnp.zeros((B, IN)))
  with pytest.raises(nnx.LayerArgumentError, match="LSTMCell: hidden_features must be an integer"):
    nnx.LSTMCell(IN, 0, rngs=nnx.Rngs(0))


# --- RNN -------------------------------------------------------------------------------------


def _loop(cell, x, carry=None):
  carry = cell.initialize_carry(x[:, 0].shape) if carry is None else carry
  ys = []
  for t in range(x.shape[1]):
    carry, y = cell(carry, x[:, t])
    ys.append(y)
  return carry, jnp.stack(ys, 1)


@pytest.fixture(scope="module")
def lstm_rnn():
  return nnx.RNN(nnx.LSTMCell(IN, HID, rngs=nnx.Rngs(0)))


def test_rnn_matches_python_loop_and_options(lstm_rnn):
  x = _x((B, T, IN))
  want_carry, want = _loop(lstm_rnn.cell, x)
  _close(lstm_rnn(x, return_carry=True), (want_carry, want))
  _close(lstm_rnn(jnp.swapaxes(x, 0, 1), time_major=True), jnp.swapaxes(want, 0, 1))
  unrolled = nnx.RNN(lstm_rnn.cell, unroll=2, rngs=False)
  _close(unrolled(x), want)
  # reverse runs from the end; keep_order flips the outputs back into input order.
  rev_carry, rev = _loop(lstm_rnn.cell, x[:, ::-1])
  _close(lstm_rnn(x, reverse=True, return_carry=True), (rev_carry, rev))
  _close(lstm_rnn(x, reverse=True, keep_order=True), rev[:, ::-1])
  init = jax.tree.map(lambda c: c + 1.0, want_carry)
  _close(lstm_rnn(x, initial_carry=init), _loop(lstm_rnn.cell, x, init)[1])


def test_rnn_seq_lengths(lstm_rnn):
  x = _x((B, T, IN))
  lengths = jnp.array([T, 2])
  carry, ys = lstm_rnn(x, seq_lengths=lengths, return_carry=True)
  short_carry, short = _loop(lstm_rnn.cell, x[1:, :2])
  _close(jax.tree.map(lambda c: c[1:], carry), short_carry)
  _close(ys[1:, :2], short)
  # Reversed with lengths: only the valid prefix of each sequence is reversed.
  rcarry, rys = lstm_rnn(x, seq_lengths=lengths, reverse=True, keep_order=True, return_carry=True)
  back_carry, back = _loop(lstm_rnn.cell, x[1:, 1::-1])
  _close(jax.tree.map(lambda c: c[1:], rcarry), back_carry)
  _close(rys[1:, :2], back[:, ::-1])


def test_flip_sequences():
  x = jnp.arange(12).reshape(2, 3, 2)
  got = flip_sequences(x, jnp.array([3, 1]), num_batch_dims=1, time_major=False)
  np.testing.assert_array_equal(got[0], x[0, ::-1])
  np.testing.assert_array_equal(got[1], x[1, jnp.array([0, 2, 1])])
  tm = flip_sequences(jnp.swapaxes(x, 0, 1), jnp.array([3, 1]), num_batch_dims=1, time_major=True)
  np.testing.assert_array_equal(jnp.swapaxes(tm, 0, 1), got)
  np.testing.assert_array_equal(flip_sequences(x, None, 1, False), x[:, ::-1])


def test_rnn_under_jax_jit_and_grad(lstm_rnn):
  x = _x((B, T, IN))
  _close(jax.jit(lambda m, x: m(x))(lstm_rnn, x), lstm_rnn(x))
  grads = jax.grad(lambda m: jnp.sum(m(x) ** 2))(lstm_rnn)
  assert isinstance(grads, nnx.RNN)
  want = jax.grad(lambda c: jnp.sum(_loop(c, x)[1] ** 2))(lstm_rnn.cell)
  _close(grads.cell, want)


def test_bidirectional_matches_two_rnns():
  fwd = nnx.RNN(nnx.GRUCell(IN, HID, rngs=nnx.Rngs(0)))
  bwd = nnx.RNN(nnx.SimpleCell(IN, HID, rngs=nnx.Rngs(1)))
  layer = nnx.Bidirectional(fwd, bwd, return_carry=True)
  x = _x((B, T, IN))
  (cf, cb), out = layer(x)
  want_cf, yf = _loop(fwd.cell, x)
  want_cb, yb = _loop(bwd.cell, x[:, ::-1])
  _close(out, jnp.concatenate([yf, yb[:, ::-1]], -1))
  _close((cf, cb), (want_cf, want_cb))
  summed = nnx.Bidirectional(fwd, bwd, merge_fn=jnp.add)(x)
  _close(summed, yf + yb[:, ::-1])


class _CountingCell(nnx.RNNCellBase):
  """A cell whose BatchStat counts steps: tests that non-Param state is carried and kept."""

  def __init__(self):
    self.steps = nnx.BatchStat(jnp.zeros((), jnp.int32))
    self.hidden_features = 1

  def __call__(self, carry, x):
    self.steps[...] = self.steps[...] + 1
    return carry + x, carry

  def initialize_carry(self, input_shape, rngs=None, carry_init=None):
    return jnp.zeros(input_shape)

  @property
  def num_feature_axes(self):
    return 1


class _SowingCell(_CountingCell):
  def __call__(self, carry, x):
    self.sow(nnx.Intermediate, "seen", x)
    return carry + x, carry


def test_rnn_carries_cell_state_and_rejects_structure_changes():
  rnn = nnx.RNN(_CountingCell())
  x = jnp.ones((B, T, 1))
  np.testing.assert_allclose(rnn(x)[:, -1, 0], T - 1)
  assert int(rnn.cell.steps[...]) == T
  with pytest.raises(nnx.StructureChangeError, match="changed its structure"):
    nnx.RNN(_SowingCell())(x)


def test_rnn_random_carry_uses_its_stream():
  rand = jax.nn.initializers.normal()
  rnn = nnx.RNN(nnx.GRUCell(IN, HID, carry_init=rand, rngs=nnx.Rngs(0)))
  assert isinstance(rnn.rngs, nnx.RngStream)
  assert nnx.RNN(nnx.GRUCell(IN, HID, rngs=nnx.Rngs(0))).rngs is None
  x = _x((B, T, IN))
  a, b = rnn(x), rnn(x)
  assert not np.allclose(a, b)  # a fresh initial carry per call
  c1 = rnn(x, rngs=nnx.Rngs(carry=5))
  c2 = rnn(x, rngs=nnx.Rngs(carry=5))
  _close(c1, c2)


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_rnn_errors():
  cell = nnx.GRUCell(IN, HID, rngs=nnx.Rngs(0))
  rnn = nnx.RNN(cell)
  with pytest.raises(nnx.ShapeError, match=r"RNN expects inputs of shape .*got shape \(3,\)"):
    rnn(jnp.zeros((IN,)))
  with pytest.raises(nnx.ShapeError, match=r"seq_lengths must have the batch shape \(2,\)"):
    rnn(jnp.zeros((B, T, IN)), seq_lengths=jnp.array([1, 2, 3]))
  with pytest.raises(nnx.LayerArgumentError, match="state_axes / broadcast_rngs are not supported"):
    nnx.RNN(cell, state_axes={})
  with pytest.raises(nnx.LayerArgumentError, match="cell must be a recurrent cell"):
    nnx.RNN(jnp.tanh)
  with pytest.raises(nnx.ConfigError, match="RNN: rngs must be an nnx.Rngs"):
    nnx.RNN(cell, rngs=3)
  with pytest.raises(nnx.ConfigError, match="Bidirectional: rngs must be"):
    nnx.Bidirectional(rnn, nnx.RNN(cell), rngs="x")
  with pytest.raises(nnx.LayerArgumentError, match="RNN: unroll must be an integer"):
    nnx.RNN(cell, unroll=0)


def test_no_warnings_on_normal_use():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    nnx.RNN(nnx.LSTMCell(IN, HID, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(carry=1))


def test_rnn_under_nnx_grad(graph, lstm_rnn):
  x = _x((B, T, IN))
  grads = nnx.grad(lambda m, x: jnp.sum(m(x) ** 2), graph=graph)(lstm_rnn, x)
  want = jax.grad(lambda c: jnp.sum(_loop(c, x)[1] ** 2))(lstm_rnn.cell)
  got = grads.cell if not graph else grads["cell"]
  np.testing.assert_allclose(got.hi.kernel[...], want.hi.kernel[...], rtol=1e-5, atol=1e-6)
