"""Differential tests, part 3: user programs around graph mode, control flow, checkpointing,
metrics and recurrent layers (see ``test_user_snippets.py`` for the helpers and conventions)."""

import contextlib

import jax
import jax.numpy as jnp
import optax
import pytest
from test_user_snippets import paths, pure, run_both, same, x_

import pynnx

SNIPPETS = {}


def snippet(fn):
  SNIPPETS[fn.__name__] = fn
  return fn


@snippet
def graph_mode_tied_weights(nnx):
  class Tied(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(6, 4, rngs=rngs)
      self.proj = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, t):
      return self.embed.attend(self.proj(self.embed(t)))

  m = Tied(nnx.Rngs(0))
  opt = nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param)

  @nnx.jit
  def step(m, opt, t):
    loss, g = nnx.value_and_grad(lambda m: m(t).mean())(m)
    opt.update(m, g)
    return loss

  return [step(m, opt, jnp.array([1, 2])) for _ in range(3)] + [m.embed.embedding.value]


@snippet
def set_graph_mode_shared(nnx):
  # Flax's default is graph mode; pynnx code opts in once
  with nnx.set_graph_mode(True) if nnx is pynnx else contextlib.nullcontext():

    class Tied(nnx.Module):
      def __init__(self, rngs):
        self.a = nnx.Linear(2, 2, rngs=rngs)
        self.b = self.a

      def __call__(self, x):
        return self.b(self.a(x))

    m = Tied(nnx.Rngs(0))
    g = nnx.grad(lambda m: m(jnp.ones((1, 2))).sum())(m)
    return [pure(nnx, nnx.state(g, nnx.Param)), paths(nnx, nnx.state(m))]


@snippet
def cond_and_fori(nnx):
  m = nnx.Linear(3, 3, rngs=nnx.Rngs(0))

  @nnx.jit
  def f(m, x, flag):
    y = nnx.cond(flag, lambda m, x: m(x), lambda m, x: x, m, x)

    def body(i, carry):
      m, x = carry
      return m, m(x)

    m, z = nnx.fori_loop(0, 3, body, (m, y))
    return z

  return [f(m, jnp.ones((1, 3)), True), f(m, jnp.ones((1, 3)), False)]


@snippet
def stateful_counter_in_jit(nnx):
  class Count(nnx.Variable):
    pass

  class M(nnx.Module):
    def __init__(self):
      self.n = Count(jnp.array(0))
      self.total = nnx.BatchStat(jnp.zeros(2))

    def __call__(self, x):
      self.n[...] += 1
      self.total.value = self.total.value + x
      return self.total.value

  m = M()
  f = nnx.jit(lambda m, x: m(x))
  for i in range(3):
    f(m, jnp.ones(2) * i)
  return [m.n.value, m.total.value]


@snippet
def einsum_linear_general(nnx):
  rngs = nnx.Rngs(0)
  lg = nnx.LinearGeneral((4,), (2, 3), rngs=rngs)
  lg2 = nnx.LinearGeneral((2, 3), 5, axis=(-2, -1), rngs=rngs)
  es = nnx.Einsum("bi,io->bo", (4, 5), (5,), rngs=rngs)
  x = x_((2, 4))
  return [lg(x), lg2(lg(x)), es(x), lg.kernel.value.shape]


@snippet
def instance_norm_and_dropout_broadcast(nnx):
  rngs = nnx.Rngs(0, dropout=1)
  inn = nnx.InstanceNorm(3, rngs=rngs)
  d = nnx.Dropout(0.3, broadcast_dims=(1,), rngs=rngs)
  x = x_((2, 4, 3))
  return [inn(x), d(x)]


@snippet
def module_iteration(nnx):
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.enc = nnx.Sequential(nnx.Linear(2, 3, rngs=rngs), nnx.Linear(3, 3, rngs=rngs))
      self.dec = nnx.Linear(3, 2, rngs=rngs)

  m = Net(nnx.Rngs(0))
  mods = [(tuple(str(p) for p in path), type(x).__name__) for path, x in nnx.iter_modules(m)]
  kids = [(str(name), type(x).__name__) for name, x in nnx.iter_children(m)]
  # nnx.List is a Pytree in pynnx, not a Module (docs/migrating.md): it is not yielded
  mods = [m for m in mods if m[1] != "List"]
  return [sorted(mods), sorted(kids)]


@snippet
def variable_metadata(nnx):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.w = nnx.Param(jnp.ones((2, 3)), description="weights")
      self.l = nnx.Linear(
        2,
        3,
        kernel_init=nnx.with_metadata(nnx.initializers.ones_init(), role="projection"),
        rngs=rngs,
      )

  m = M(nnx.Rngs(0))
  md = m.w.get_metadata()
  return [
    md.get("description"),
    m.w.description,
    m.l.kernel.get_metadata().get("role"),
    m.l.kernel.value,
  ]


@snippet
def capture_intermediates(nnx):
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
      h = self.a(x)
      self.sow(nnx.Intermediate, "h", h)
      return h * 2

  m = Block(nnx.Rngs(0))
  y, inter = nnx.capture(m, nnx.Intermediate)(x_((2, 3)))
  return [y, pure(nnx, inter)]


@snippet
def rnn_state(nnx):
  rnn = nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(0)))
  y = rnn(x_((2, 5, 3)))
  state = paths(nnx, nnx.state(rnn))
  # Documented (docs/migrating.md): flax's RNN always holds a `carry` RngStream; pynnx's only
  # when the cell has a random carry_init, since zero carries need no key.
  if nnx is not pynnx:
    assert (("rngs", "count"), "RngCount") in state
    state = [p for p in state if p[0][0] != "rngs"]
  return [y, state]


@snippet
def bidirectional(nnx):
  rngs = nnx.Rngs(0)
  f = nnx.RNN(nnx.LSTMCell(3, 4, rngs=rngs))
  b = nnx.RNN(nnx.LSTMCell(3, 4, rngs=rngs))
  bi = nnx.Bidirectional(f, b)
  return [bi(x_((2, 5, 3)))]


@snippet
def checkpoint_orbax(nnx):
  ocp = pytest.importorskip("orbax.checkpoint")
  m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  _, state = nnx.split(m)
  d = str(_TMP[0] / nnx.__name__)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(d + "/s", state)
  ckpt.wait_until_finished()
  abstract = nnx.eval_shape(lambda: nnx.Linear(3, 2, rngs=nnx.Rngs(1)))
  gdef, abs_state = nnx.split(abstract)
  restored = ckpt.restore(d + "/s", abs_state)
  m2 = nnx.merge(gdef, restored)
  return [m2.kernel.value, m2(jnp.ones((1, 3)))]


@snippet
def welford_and_metric_types(nnx):
  avg = nnx.metrics.Average()
  avg.update(values=jnp.array([1.0, 2.0, 3.0]))
  avg.update(values=jnp.array(5.0))
  w = nnx.metrics.Welford()
  w.update(values=jnp.array([1.0, 2.0, 4.0]))
  acc = nnx.metrics.Accuracy()
  acc.update(logits=jnp.array([[0.1, 0.9], [0.8, 0.2]]), labels=jnp.array([1, 1]))
  stats = w.compute()
  return [
    avg.compute(),
    stats.mean,
    stats.standard_deviation,
    stats.standard_error_of_mean,
    acc.compute(),
  ]


@snippet
def optimizer_update_outside_jit_with_grads_state(nnx):
  m = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(m, optax.adam(1e-1), wrt=nnx.Param)
  x = x_((4, 2))
  y = x_((4, 1), 1)
  losses = []
  for _ in range(5):

    def loss_fn(m):
      return ((m(x) - y) ** 2).mean()

    loss, g = nnx.value_and_grad(loss_fn)(m)
    opt.update(m, g)
    losses.append(loss)
  return [losses, opt.step.value, len(jax.tree.leaves(nnx.state(opt)))]


_TMP = []


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_snippet(name, tmp_path):
  _TMP[:] = [tmp_path]
  f_out, p_out = run_both(SNIPPETS[name])
  same(f_out, p_out)
