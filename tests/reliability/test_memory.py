"""Long loops over the public API must not keep discarded Modules alive.

Each test builds a fresh Module per iteration, runs one operation on it, drops it, and checks
with weak references that no cache (GraphDef plans, ``cached_partial``, Optimizer, checkpoint,
``eval_shape``...) still holds any of them.
"""

import gc
import weakref

import jax.numpy as jnp
import optax
import pytest

import pynnx as nnx

N = 12


def assert_all_freed(make, use, n=N):
  refs = []
  for i in range(n):
    obj = make(i)
    refs.append(weakref.ref(obj))
    use(obj)
    del obj
  gc.collect()
  alive = sum(r() is not None for r in refs)
  assert alive == 0, f"{alive} of {n} discarded objects are still alive"


def linear(i):
  return nnx.Linear(2, 3, rngs=nnx.Rngs(i))


def _bn(i):
  return nnx.BatchNorm(3, rngs=nnx.Rngs(i))


OPERATIONS = {
  "split_merge": lambda m, g: nnx.merge(*nnx.split(m, graph=g)),
  "split_filters": lambda m, g: nnx.split(m, nnx.Param, ..., graph=g),
  "state_update": lambda m, g: nnx.update(m, nnx.state(m, graph=g), graph=g),
  "graphdef": lambda m, g: nnx.graphdef(m, graph=g),
  "clone": lambda m, g: nnx.clone(m, graph=g),
  "iter_graph": lambda m, g: list(nnx.iter_graph(m, graph=g)),
  "pop": lambda m, g: nnx.pop(m, nnx.Intermediate, graph=g),
  "view": lambda m, g: nnx.view(m, use_bias=True, graph=g),
  "optimizer": lambda m, g: nnx.Optimizer(m, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param, graph=g),
  "optimizer_update": lambda m, g: nnx.Optimizer(
    m, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param, graph=g
  ).update(m, nnx.state(m, nnx.Param, graph=g)),
  "jit": lambda m, g: nnx.jit(lambda m: m(jnp.ones(2)), graph=g)(m),
  "cached_partial": lambda m, g: nnx.cached_partial(nnx.jit(lambda m, x: m(x), graph=g), m)(
    jnp.ones(2)
  ),
}


@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_operation_does_not_keep_models_alive(op, graph):
  assert_all_freed(linear, lambda m: OPERATIONS[op](m, graph))


def test_eval_shape_results_are_freed(graph):
  assert_all_freed(lambda i: nnx.eval_shape(lambda: linear(i), graph=graph), lambda m: None)


def test_view_of_batchnorm_frees_both(graph):
  views = []

  def use(m):
    views.append(weakref.ref(nnx.view(m, use_running_average=True, graph=graph)))

  assert_all_freed(_bn, use)
  assert all(r() is None for r in views)


def test_checkpoint_roundtrip_frees_models(tmp_path):
  step = iter(range(1000))  # not id(m): a freed model's id can come back

  def use(m):
    path = nnx.checkpoint.save(tmp_path / f"step_{next(step)}", m)
    restored = nnx.checkpoint.restore(path, m)
    assert restored is not m

  assert_all_freed(linear, use, n=4)


def test_many_distinct_module_classes_do_not_keep_instances_alive(graph):
  # JAX keeps every registered pytree class in its registry (a class is never freed), but
  # pynnx must not keep the instances.
  def make(i):
    cls = type(f"Distinct{i}", (nnx.Module,), {"__init__": _distinct_init})
    return cls(nnx.Rngs(i))

  def use(m):
    nnx.merge(*nnx.split(m, graph=graph))
    nnx.jit(lambda m: m.layer(jnp.ones(2)), graph=graph)(m)

  assert_all_freed(make, use)


def _distinct_init(self, rngs):
  self.layer = nnx.Linear(2, 2, rngs=rngs)


def test_failed_construction_is_freed():
  class Failing(nnx.Module):
    def __init__(self, rngs):
      self.layer = nnx.Linear(2, 2, rngs=rngs)
      raise RuntimeError("boom")

  refs = []
  for i in range(N):
    rngs = nnx.Rngs(i)
    refs.append(weakref.ref(rngs))
    with pytest.raises(RuntimeError, match="boom"):
      Failing(rngs)
    del rngs
  gc.collect()
  assert all(r() is None for r in refs)


def test_graph_walks_leave_no_reference_cycle():
  # The graph plan cached on a root must not point back at it: with the cycle collector off,
  # a model dropped after graph-mode split / transforms / merge is freed at once.
  gc.collect()
  gc.disable()
  try:
    m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(m, graph=True)
    nnx.jit(lambda m: m(jnp.ones((1, 2))), graph=True)(m)
    ref = weakref.ref(m)
    del m
    assert ref() is None
    merged = nnx.merge(graphdef, state)
    nnx.split(merged, graph=True)
    ref = weakref.ref(merged)
    del merged
    assert ref() is None
  finally:
    gc.enable()
