"""Metrics that accumulate over batches: ``Average``, ``Accuracy``, ``Welford``, ``MultiMetric``.

A metric is a frozen :class:`~pynnx.Pytree` whose running totals live in
:class:`MetricState` Variables, so ``update`` works eagerly and inside ``nnx.jit`` (the totals
are written back) and ``reset`` zeroes the totals in place without changing the structure.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any

import jax
import jax.numpy as jnp

from .. import _functional
from .._core.errors import ArgumentTypeError, MetricArgumentError, ShapeError
from .._core.module import module_repr
from .._core.pytree import Pytree
from .._core.variables import Variable
from ..nn.dtypes import numeric_array

__all__ = [
  "Metric",
  "MetricState",
  "MetricArgumentError",
  "Average",
  "Accuracy",
  "Welford",
  "Statistics",
  "MultiMetric",
]


class MetricState(Variable):
  """A Variable holding a metric's running total (a count, a sum, a mean...)."""


# update() and reset() read and write several totals; one lock makes each call a single step,
# so threads sharing a metric lose no batch (re-entrant: MultiMetric.update calls its metrics').
_UPDATE_LOCK = threading.RLock()


def _serialized(method: Any) -> Any:
  @functools.wraps(method)
  def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
    with _UPDATE_LOCK:
      return method(self, *args, **kwargs)

  locked._pynnx_serialized = True  # type: ignore[attr-defined]
  return locked


class Metric(Pytree):
  """Base class of metrics: subclasses implement ``update``, ``compute`` and ``reset``.

  Example:
    >>> class Maximum(nnx.Metric):
    ...   def __init__(self):
    ...     self.best = nnx.metrics.MetricState(jnp.array(-jnp.inf))
    ...   def update(self, *, values, **_):
    ...     self.best[...] = jnp.maximum(self.best[...], jnp.max(values))
    ...   def compute(self):
    ...     return self.best[...]
    ...   def reset(self):
    ...     self.best[...] = jnp.array(-jnp.inf)
    >>> m = Maximum(); m.update(values=jnp.array([1.0, 3.0])); m.compute()
    Array(3., dtype=float32)
  """

  def __init_subclass__(cls, **kwargs: Any):
    super().__init_subclass__(**kwargs)
    for name in ("update", "reset"):
      method = cls.__dict__.get(name)
      if callable(method) and not getattr(method, "_pynnx_serialized", False):
        setattr(cls, name, _serialized(method))

  def update(self, **kwargs: Any) -> None:
    """Accumulates one batch."""
    raise NotImplementedError(f"{type(self).__name__} must implement update(**kwargs).")

  def compute(self) -> Any:
    """The metric over every batch since the last reset."""
    raise NotImplementedError(f"{type(self).__name__} must implement compute().")

  def reset(self) -> None:
    """Zeroes the running totals in place."""
    raise NotImplementedError(f"{type(self).__name__} must implement reset().")

  def split(self, *filters: Any) -> tuple:
    """``nnx.split(self, *filters)``."""
    return _functional.split(self, *filters)

  def __repr__(self) -> str:
    return module_repr(self)


def _argument(metric: Metric, kwargs: dict, name: str) -> Any:
  if name not in kwargs:
    raise MetricArgumentError(
      f"{type(metric).__name__}.update expects the keyword argument {name!r} (its argname), "
      f"but got {sorted(kwargs)}. Call `metric.update({name}=...)`, or build the metric "
      f"with the argname you pass: `{type(metric).__name__}(argname=...)`."
    )
  value = kwargs[name]
  array = numeric_array(value)
  if array is None:
    raise ArgumentTypeError(
      f"{type(metric).__name__}.update({name}=...) needs numbers (an array or a scalar), "
      f"got {type(value).__name__} {value!r:.60}. Pass the batch's values, e.g. "
      f"`metric.update({name}=loss)`."
    )
  return array


class Average(Metric):
  """The mean of every value passed as ``update(**{argname: values})``.

  Args:
    argname: the keyword argument of ``update`` holding the values (default ``'values'``).

  Example:
    >>> avg = nnx.metrics.Average()
    >>> avg.update(values=jnp.array([1.0, 2.0])); avg.update(values=jnp.array(6.0))
    >>> avg.compute()
    Array(3., dtype=float32)
    >>> avg.reset(); avg.compute()
    Array(nan, dtype=float32)
  """

  def __init__(self, argname: str = "values"):
    self.argname = argname
    self.total = MetricState(jnp.array(0, dtype=jnp.float32))
    self.count = MetricState(jnp.array(0, dtype=jnp.int32))

  def reset(self) -> None:
    self.total[...] = jnp.zeros_like(self.total[...])
    self.count[...] = jnp.zeros_like(self.count[...])

  def update(self, mask: jax.Array | None = None, **kwargs: Any) -> None:
    """Adds ``kwargs[argname]`` (an array or a scalar); ``mask`` (broadcastable) drops values."""
    values = jnp.asarray(_argument(self, kwargs, self.argname))
    self._accumulate(values, mask)

  def _accumulate(self, values: jax.Array, mask: jax.Array | None) -> None:
    values = values.astype(jnp.float32)
    count: int | jax.Array
    if mask is None:
      total, count = jnp.sum(values), values.size
    else:
      mask = jnp.broadcast_to(jnp.asarray(mask), values.shape)
      total = jnp.sum(jnp.where(mask, values, jnp.zeros((), jnp.float32)))
      count = jnp.sum(mask.astype(jnp.int32))
    self.total[...] = self.total[...] + total
    self.count[...] = self.count[...] + jnp.asarray(count, dtype=jnp.int32)

  def compute(self) -> jax.Array:
    return self.total[...] / self.count[...].astype(jnp.float32)


class Accuracy(Average):
  """The fraction of correct predictions, from ``update(logits=..., labels=...)``.

  With ``threshold=None`` (multi-class) the prediction is ``argmax(logits, -1)`` and
  ``logits`` has one more (trailing) axis than ``labels``; with a ``threshold`` (binary) the
  prediction is ``logits > threshold`` and both have the same shape.

  Example:
    >>> acc = nnx.metrics.Accuracy()
    >>> acc.update(logits=jnp.array([[0.1, 0.9], [0.8, 0.2]]), labels=jnp.array([1, 1]))
    >>> acc.compute()
    Array(0.5, dtype=float32)
  """

  def __init__(self, threshold: float | None = None, *args: Any, **kwargs: Any):
    self.threshold = threshold  # set first: reprs list attributes in assignment order
    super().__init__(*args, **kwargs)

  def update(  # type: ignore[override]
    self,
    *,
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array | None = None,
    **_: Any,
  ) -> None:
    """Counts the correct predictions of one batch; ``mask`` drops entries."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if not (jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_):
      raise MetricArgumentError(
        f"Accuracy.update: labels must hold integer class ids, got dtype {labels.dtype}. "
        "Convert them, e.g. `labels.astype(jnp.int32)`."
      )
    if self.threshold is None:
      if logits.ndim != labels.ndim + 1 or logits.shape[:-1] != labels.shape:
        raise ShapeError(
          f"Accuracy.update: logits of shape {logits.shape} do not fit labels of shape "
          f"{labels.shape}; multi-class logits need one trailing class axis more than the "
          "labels. For binary predictions pass `Accuracy(threshold=...)`."
        )
      predictions = jnp.argmax(logits, axis=-1).astype(labels.dtype)
    else:
      if logits.shape != labels.shape:
        raise ShapeError(
          f"Accuracy.update: with threshold={self.threshold} logits and labels must have the "
          f"same shape, got {logits.shape} and {labels.shape}."
        )
      predictions = (logits > self.threshold).astype(labels.dtype)
    self._accumulate(predictions == labels, mask)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Statistics:
  """What :class:`Welford` computes: the mean, its standard error and the standard deviation."""

  mean: jax.Array
  standard_error_of_mean: jax.Array
  standard_deviation: jax.Array

  def replace(self, **updates: Any) -> Statistics:
    return dataclasses.replace(self, **updates)


class Welford(Metric):
  """Running mean and (population) variance of every value passed, by Welford's method.

  Batches are merged with the parallel form of the algorithm, which stays accurate when
  the mean is large compared with the spread.

  Args:
    argname: the keyword argument of ``update`` holding the values (default ``'values'``).

  Example:
    >>> w = nnx.metrics.Welford()
    >>> w.update(values=jnp.array([1.0, 3.0])); w.update(values=jnp.array([5.0, 7.0]))
    >>> stats = w.compute(); stats.mean, stats.standard_deviation
    (Array(4., dtype=float32), Array(2.236068, dtype=float32))
  """

  def __init__(self, argname: str = "values"):
    self.argname = argname
    self.count = MetricState(jnp.array(0, dtype=jnp.int32))
    self.mean = MetricState(jnp.array(0, dtype=jnp.float32))
    self.m2 = MetricState(jnp.array(0, dtype=jnp.float32))

  def reset(self) -> None:
    self.count[...] = jnp.zeros_like(self.count[...])
    self.mean[...] = jnp.zeros_like(self.mean[...])
    self.m2[...] = jnp.zeros_like(self.m2[...])

  def update(self, **kwargs: Any) -> None:
    """Merges the values ``kwargs[argname]`` into the running statistics."""
    values = jnp.asarray(_argument(self, kwargs, self.argname)).astype(jnp.float32).ravel()
    n_b = jnp.asarray(values.size, dtype=jnp.float32)
    if values.size == 0:
      return
    mean_b = jnp.mean(values)
    m2_b = jnp.sum(jnp.square(values - mean_b))
    n_a = self.count[...].astype(jnp.float32)
    n = n_a + n_b
    delta = mean_b - self.mean[...]
    self.mean[...] = self.mean[...] + delta * (n_b / n)
    self.m2[...] = self.m2[...] + m2_b + jnp.square(delta) * (n_a * n_b / n)
    self.count[...] = self.count[...] + jnp.asarray(values.size, dtype=jnp.int32)

  def compute(self) -> Statistics:
    n = self.count[...].astype(jnp.float32)
    variance = self.m2[...] / n
    standard_deviation = variance**0.5
    return Statistics(  # the standard error rounded as Flax rounds it: sd / sqrt(n)
      mean=self.mean[...],
      standard_error_of_mean=standard_deviation / n**0.5,
      standard_deviation=standard_deviation,
    )


class MultiMetric(Metric):
  """Several named metrics updated together: ``update(**kwargs)`` feeds each of them.

  Every metric receives all keyword arguments and reads the ones it needs, so
  ``Accuracy`` takes ``logits``/``labels`` while ``Average`` takes its ``argname``.

  Example:
    >>> metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average())
    >>> metrics.update(logits=jnp.array([[0.0, 1.0]]), labels=jnp.array([1]),
    ...                values=jnp.array(0.5))
    >>> metrics.compute()
    {'accuracy': Array(1., dtype=float32), 'loss': Array(0.5, dtype=float32)}
  """

  def __init__(self, **metrics: Metric):
    for name, metric in metrics.items():
      if not isinstance(metric, Metric):
        raise MetricArgumentError(
          f"MultiMetric: {name}={metric!r} is not a Metric; pass instances such as "
          f"`{name}=nnx.metrics.Average()`."
        )
      if name in ("update", "compute", "reset", "split"):
        raise MetricArgumentError(
          f"MultiMetric: the name {name!r} would hide the method MultiMetric.{name}; "
          "choose another name for that metric."
        )
      setattr(self, name, metric)
    self._metric_names = tuple(metrics)

  def reset(self) -> None:
    for name in self._metric_names:
      getattr(self, name).reset()

  def update(self, **updates: Any) -> None:
    # All metrics or none: if one metric rejects the batch, those before it are rolled back.
    cells = [
      v
      for v in jax.tree.leaves(self, is_leaf=lambda x: isinstance(x, Variable))
      if isinstance(v, Variable)
    ]
    saved = [v.get_value() for v in cells]
    try:
      for name in self._metric_names:
        getattr(self, name).update(**updates)
    except BaseException:
      for v, value in zip(cells, saved, strict=True):
        v.set_value(value)
      raise

  def compute(self) -> dict[str, Any]:
    return {name: getattr(self, name).compute() for name in self._metric_names}
