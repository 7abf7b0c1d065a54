"""Threads outside the transform pipeline: Rngs, split/merge/update, Optimizer, metrics,
``set_graph_mode``, Module construction and ``eval_shape`` run from several threads at once.

Every test asserts no error and no lost update (counts add up, keys are all distinct).
"""

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pynnx as nnx

N_THREADS = 8


def run_threads(work, n=N_THREADS, timeout=120.0):
  """Runs ``work(i)`` in ``n`` threads released together; returns (results, errors)."""
  results: list = [None] * n
  errors: list = []
  barrier = threading.Barrier(n)

  def target(i):
    try:
      barrier.wait()
      results[i] = work(i)
    except BaseException as e:  # noqa: BLE001 - every failure is reported by the test
      errors.append(e)

  threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout)
  assert not any(t.is_alive() for t in threads), "a thread hung"
  return results, errors


def _key_bits(key):
  return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def test_shared_rngs_stream_draws_distinct_keys_and_counts_every_draw():
  rngs = nnx.Rngs(0)
  draws = 40
  results, errors = run_threads(lambda i: [rngs.params() for _ in range(draws)])
  assert not errors
  keys = [_key_bits(k) for r in results for k in r]
  assert len(keys) == N_THREADS * draws
  assert len(set(keys)) == len(keys), "two threads drew the same key"
  assert int(rngs.params.count[...]) == N_THREADS * draws
  # The keys are exactly the ones a single thread would draw, in some order.
  expected = {_key_bits(jax.random.fold_in(jax.random.key(0), c)) for c in range(len(keys))}
  assert set(keys) == expected


def test_shared_dropout_layer_counter_is_not_lost():
  drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1))
  calls = 20
  _, errors = run_threads(lambda i: [drop(jnp.ones(4)) for _ in range(calls)])
  assert not errors
  assert int(drop.rngs.count[...]) == N_THREADS * calls


def test_split_merge_state_update_on_separate_models(graph):
  def work(i):
    model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(i)), nnx.BatchNorm(3, rngs=nnx.Rngs(i)))
    for _ in range(15):
      graphdef, state = nnx.split(model, graph=graph)
      copy = nnx.merge(graphdef, state)
      assert copy.layers[0].kernel.shape == (2, 3)
      params = nnx.state(model, nnx.Param, graph=graph)
      nnx.update(model, jax.tree.map(lambda x: x + 1, params), graph=graph)
    return np.asarray(model.layers[0].bias[...])

  results, errors = run_threads(work)
  assert not errors
  for r in results:
    np.testing.assert_allclose(r, np.full((3,), 15.0))


def test_optimizer_update_on_separate_models(graph):
  steps = 20

  def work(i):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(i))
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param, graph=graph)
    start = np.asarray(model.bias[...])
    for _ in range(steps):
      grads = nnx.state(model, nnx.Param, graph=graph)
      grads = jax.tree.map(jnp.ones_like, grads)
      opt.update(model, grads)
    return int(opt.step[...]), start, np.asarray(model.bias[...])

  results, errors = run_threads(work)
  assert not errors
  for step, start, end in results:
    assert step == steps
    np.testing.assert_allclose(end, start - 0.1 * steps, rtol=1e-5)


def test_shared_metric_updated_from_threads_keeps_every_batch():
  avg = nnx.metrics.Average()
  acc = nnx.metrics.Accuracy()
  welford = nnx.metrics.Welford()
  multi = nnx.MultiMetric(loss=nnx.metrics.Average("loss"))
  calls = 25
  logits = jnp.array([[0.0, 1.0], [1.0, 0.0]])

  def work(i):
    for _ in range(calls):
      avg.update(values=jnp.ones(2))
      acc.update(logits=logits, labels=jnp.array([1, 1]))
      welford.update(values=jnp.arange(4.0))
      multi.update(loss=jnp.array(2.0))

  _, errors = run_threads(work)
  assert not errors
  assert int(avg.count[...]) == 2 * N_THREADS * calls
  assert float(avg.compute()) == 1.0
  assert int(acc.count[...]) == 2 * N_THREADS * calls
  assert float(acc.compute()) == 0.5
  assert int(welford.count[...]) == 4 * N_THREADS * calls
  np.testing.assert_allclose(welford.compute().mean, 1.5, rtol=1e-5)
  assert float(multi.compute()["loss"]) == 2.0
  assert int(multi.loss.count[...]) == N_THREADS * calls


def test_user_metric_subclass_updates_are_serialized():
  class Total(nnx.Metric):
    def __init__(self):
      self.total = nnx.metrics.MetricState(jnp.array(0, jnp.int32))

    def update(self, **kwargs):
      current = self.total[...]
      time.sleep(0)  # invites a thread switch between the read and the write
      self.total[...] = current + 1

    def compute(self):
      return self.total[...]

    def reset(self):
      self.total[...] = jnp.array(0, jnp.int32)

  metric = Total()
  calls = 25
  _, errors = run_threads(lambda i: [metric.update() for _ in range(calls)])
  assert not errors
  assert int(metric.compute()) == N_THREADS * calls


def test_set_graph_mode_is_per_thread():
  def work(i):
    want = bool(i % 2)
    seen = set()
    for _ in range(30):
      with nnx.set_graph_mode(want):
        time.sleep(0)
        graphdef = nnx.graphdef(nnx.Linear(1, 1, rngs=nnx.Rngs(0)))
        seen.add(isinstance(graphdef, nnx.TreeGraphDef))
    return want, seen

  results, errors = run_threads(work)
  assert not errors
  for want, seen in results:
    assert seen == {not want}
  assert isinstance(nnx.graphdef(nnx.Linear(1, 1, rngs=nnx.Rngs(0))), nnx.TreeGraphDef)


class _Slow(nnx.Module):
  def __init__(self, tag, rngs):
    self.layers = nnx.List([nnx.Linear(3, 3, rngs=rngs) for _ in range(3)])
    time.sleep(0.001)  # another thread's constructor finishes meanwhile
    self.head = nnx.Linear(3, 1, rngs=rngs)
    self.tag = tag


def test_concurrent_construction_freezes_each_module_when_its_own_constructor_returns():
  def work(i):
    out = []
    for _ in range(10):
      m = _Slow(i, nnx.Rngs(i))
      assert m.tag == i and m.head.kernel.shape == (3, 1)
      for obj, name in ((m, "tag"), (m.head, "use_bias")):
        try:
          setattr(obj, name, 5)
          out.append(f"{type(obj).__name__} not frozen")
        except nnx.FrozenModuleError:
          pass
    return out

  results, errors = run_threads(work)
  assert not errors
  assert results == [[]] * N_THREADS


def test_eval_shape_construction_in_threads():
  def work(i):
    abstract = nnx.eval_shape(lambda: _Slow(i, nnx.Rngs(i)))
    assert isinstance(abstract.head.kernel[...], jax.ShapeDtypeStruct)
    real = _Slow(i, nnx.Rngs(i))  # a concrete build right after works too
    return abstract.head.kernel.shape, type(real.head.kernel[...])

  results, errors = run_threads(work)
  assert not errors
  assert {r[0] for r in results} == {(3, 1)}
  assert all(issubclass(r[1], jax.Array) for r in results)


class _MaybeFails(nnx.Module):
  def __init__(self, fail, rngs):
    self.head = nnx.Linear(3, 1, rngs=rngs)
    time.sleep(0.001)
    if fail:
      raise RuntimeError("constructor failed")
    self.tag = 0


def test_a_constructor_failing_in_one_thread_does_not_disturb_the_others():
  def work(i):
    built = []
    for k in range(10):
      if (i + k) % 2:
        try:
          _MaybeFails(True, nnx.Rngs(i))
        except RuntimeError:
          continue
        raise AssertionError("the constructor should have raised")
      m = _MaybeFails(False, nnx.Rngs(i))
      try:
        m.tag = 1
        built.append("not frozen")
      except nnx.FrozenModuleError:
        built.append("frozen")
    return built

  results, errors = run_threads(work)
  assert not errors
  assert all(r == ["frozen"] * 5 for r in results)
