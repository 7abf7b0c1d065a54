"""nnx.metrics: Average, Accuracy, Welford, MultiMetric numerics, reset, jit, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx as nnx

metrics = nnx.metrics
RNG = np.random.default_rng(0)
BATCHES = [RNG.normal(3.0, 2.0, size=n).astype(np.float32) for n in (5, 1, 8)]


def test_average_matches_numpy():
  avg = metrics.Average()
  assert np.isnan(avg.compute())
  for b in BATCHES:
    avg.update(values=jnp.asarray(b))
  np.testing.assert_allclose(avg.compute(), np.concatenate(BATCHES).mean(), rtol=1e-6)
  assert int(avg.count[...]) == 14


def test_average_scalars_ints_and_argname():
  avg = metrics.Average(argname="loss")
  avg.update(loss=jnp.array(1.0), values=jnp.array(100.0))  # other kwargs are ignored
  avg.update(loss=jnp.array([2, 3]))  # integer values are averaged as floats
  avg.update(loss=6.0)
  np.testing.assert_allclose(avg.compute(), 3.0)
  assert avg.compute().dtype == jnp.float32


def test_average_mask():
  avg = metrics.Average()
  avg.update(values=jnp.array([1.0, 2.0, 30.0, 4.0]), mask=jnp.array([1, 1, 0, 1]))
  np.testing.assert_allclose(avg.compute(), 7.0 / 3.0, rtol=1e-6)
  avg.update(values=jnp.ones((2, 3)), mask=jnp.array([True, False, True]))  # broadcast
  np.testing.assert_allclose(avg.compute(), (7.0 + 4.0) / 7.0, rtol=1e-6)


def test_reset_zeroes_in_place_and_keeps_structure():
  avg = metrics.Average()
  total, count = avg.total, avg.count
  treedef = jax.tree.structure(avg)
  avg.update(values=jnp.arange(4.0))
  avg.reset()
  assert avg.total is total and avg.count is count
  assert float(total[...]) == 0.0 and int(count[...]) == 0
  assert total[...].dtype == jnp.float32 and count[...].dtype == jnp.int32
  assert jax.tree.structure(avg) == treedef
  assert np.isnan(avg.compute())


def test_accuracy_multiclass():
  logits = jnp.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.0, 0.2, 0.7], [0.5, 0.4, 0.1]])
  labels = jnp.array([1, 0, 1, 1])
  acc = metrics.Accuracy()
  acc.update(logits=logits, labels=labels)
  np.testing.assert_allclose(acc.compute(), 0.5)
  acc.update(logits=logits[:1], labels=labels[:1], mask=jnp.array([False]))
  np.testing.assert_allclose(acc.compute(), 0.5)
  acc.update(logits=logits[:2], labels=labels[:2])
  np.testing.assert_allclose(acc.compute(), 4.0 / 6.0, rtol=1e-6)


def test_accuracy_binary_threshold():
  acc = metrics.Accuracy(threshold=0.5)
  acc.update(logits=jnp.array([0.2, 0.7, 0.9, 0.4]), labels=jnp.array([0, 1, 0, 0]))
  np.testing.assert_allclose(acc.compute(), 0.75)
  acc_bool = metrics.Accuracy(threshold=0.0)
  acc_bool.update(logits=jnp.array([-1.0, 1.0]), labels=jnp.array([False, False]))
  np.testing.assert_allclose(acc_bool.compute(), 0.5)


def test_welford_matches_numpy():
  w = metrics.Welford()
  for b in BATCHES:
    w.update(values=jnp.asarray(b))
  data = np.concatenate(BATCHES).astype(np.float64)
  stats = w.compute()
  assert isinstance(stats, metrics.Statistics)
  np.testing.assert_allclose(stats.mean, data.mean(), rtol=1e-5)
  np.testing.assert_allclose(stats.standard_deviation, data.std(), rtol=1e-5)
  np.testing.assert_allclose(
    stats.standard_error_of_mean, data.std() / np.sqrt(data.size), rtol=1e-5
  )


def test_welford_stable_with_large_offset():
  w = metrics.Welford()
  base = 1e4
  for chunk in ([1.0, 2.0], [3.0], [4.0, 5.0, 6.0]):
    w.update(values=jnp.asarray(chunk, jnp.float32) + base)
  np.testing.assert_allclose(w.compute().standard_deviation, np.std(np.arange(1.0, 7.0)), rtol=1e-3)


def test_welford_reset_and_empty():
  w = metrics.Welford()
  w.update(values=jnp.zeros((0,)))
  stats = w.compute()
  assert float(stats.mean) == 0.0 and np.isnan(stats.standard_deviation)
  w.update(values=jnp.array([1.0, 2.0]))
  w.reset()
  assert int(w.count[...]) == 0 and np.isnan(w.compute().standard_error_of_mean)
  assert w.compute().replace(mean=jnp.array(1.0)).mean == 1.0
  assert len(jax.tree.leaves(w.compute())) == 3  # Statistics is a pytree


def test_multimetric():
  mm = nnx.MultiMetric(accuracy=metrics.Accuracy(), loss=metrics.Average())
  out = mm.compute()
  assert set(out) == {"accuracy", "loss"} and all(np.isnan(v) for v in out.values())
  mm.update(
    logits=jnp.array([[0.0, 1.0], [1.0, 0.0]]),
    labels=jnp.array([1, 1]),
    values=jnp.array([2.0, 4.0]),
  )
  out = mm.compute()
  np.testing.assert_allclose(out["accuracy"], 0.5)
  np.testing.assert_allclose(out["loss"], 3.0)
  assert isinstance(mm.accuracy, metrics.Accuracy)
  mm.reset()
  assert int(mm.loss.count[...]) == 0 and int(mm.accuracy.count[...]) == 0


def test_metrics_inside_jit_are_written_back():
  mm = nnx.MultiMetric(loss=metrics.Average(), stats=metrics.Welford())

  @nnx.jit
  def step(mm, x):
    mm.update(values=x)

  for b in BATCHES:
    step(mm, jnp.asarray(b))
  data = np.concatenate(BATCHES)
  out = mm.compute()
  np.testing.assert_allclose(out["loss"], data.mean(), rtol=1e-5)
  np.testing.assert_allclose(out["stats"].standard_deviation, data.std(), rtol=1e-4)


def test_custom_metric_and_split():
  class Count(nnx.Metric):
    def __init__(self):
      self.n = metrics.MetricState(jnp.array(0))

    def update(self, **kwargs):
      self.n[...] += 1

    def compute(self):
      return self.n[...]

    def reset(self):
      self.n[...] = jnp.array(0)

  c = Count()
  c.update()
  c.update()
  assert int(c.compute()) == 2
  graphdef, state = c.split(metrics.MetricState)
  assert int(state["n"][...]) == 2
  assert int(nnx.merge(graphdef, state).compute()) == 2


def test_matches_flax_metrics():
  flax_nnx = pytest.importorskip("flax.nnx")
  logits = jnp.asarray(RNG.normal(size=(6, 3)).astype(np.float32))
  labels = jnp.array([0, 1, 2, 2, 1, 0])
  ours = nnx.MultiMetric(acc=metrics.Accuracy(), avg=metrics.Average(), w=metrics.Welford())
  theirs = flax_nnx.MultiMetric(
    acc=flax_nnx.metrics.Accuracy(), avg=flax_nnx.metrics.Average(), w=flax_nnx.metrics.Welford()
  )
  for b in BATCHES:
    kw = dict(logits=logits, labels=labels, values=jnp.asarray(b))
    ours.update(**kw)
    with jax.numpy_dtype_promotion("standard"):  # flax mixes dtypes implicitly
      theirs.update(**kw)
  a = ours.compute()
  with jax.numpy_dtype_promotion("standard"):
    b = theirs.compute()
  np.testing.assert_allclose(a["acc"], b["acc"], rtol=1e-6)
  np.testing.assert_allclose(a["avg"], b["avg"], rtol=1e-6)
  np.testing.assert_allclose(a["w"].mean, b["w"].mean, rtol=1e-5)
  np.testing.assert_allclose(a["w"].standard_deviation, b["w"].standard_deviation, rtol=1e-4)


# --- errors -------------------------------------------------------------------------------


def test_error_missing_argname():
  with pytest.raises(metrics.MetricArgumentError, match=r"expects the keyword argument 'loss'"):
    metrics.Average("loss").update(values=jnp.ones(2))
  with pytest.raises(TypeError, match=r"Welford.update expects the keyword argument 'values'"):
    metrics.Welford().update(x=jnp.ones(2))


def test_error_accuracy_shapes_and_dtypes():
  with pytest.raises(nnx.ShapeError, match=r"logits of shape \(4,\) do not fit labels"):
    metrics.Accuracy().update(logits=jnp.ones(4), labels=jnp.ones(4, jnp.int32))
  with pytest.raises(ValueError, match="must have the same shape"):
    metrics.Accuracy(threshold=0.5).update(logits=jnp.ones((4, 2)), labels=jnp.ones(4, jnp.int32))
  with pytest.raises(nnx.PynnxError, match="labels must hold integer class ids"):
    metrics.Accuracy().update(logits=jnp.ones((4, 2)), labels=jnp.ones(4))


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_error_multimetric_arguments():
  with pytest.raises(TypeError, match="is not a Metric"):
    nnx.MultiMetric(loss=3.0)
  with pytest.raises(nnx.PynnxError, match="would hide the method MultiMetric.update"):
    nnx.MultiMetric(update=metrics.Average())


def test_error_base_metric_methods():
  m = nnx.Metric()
  with pytest.raises(NotImplementedError, match="must implement update"):
    m.update()
  with pytest.raises(NotImplementedError, match="must implement compute"):
    m.compute()
  with pytest.raises(NotImplementedError, match="must implement reset"):
    m.reset()


def test_error_metric_is_frozen():
  avg = metrics.Average()
  with pytest.raises(nnx.FrozenModuleError, match="'total'"):
    avg.total = metrics.MetricState(jnp.array(1.0))
