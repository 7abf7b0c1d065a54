"""The lift pipeline end to end (issue 8): keyword slots, returned-object identity, bound
methods, readable JAX errors, Variable writes, deep and cyclic Modules.

Transform tests run in tree and graph mode (the ``graph`` fixture of tests/conftest.py).
"""

import functools
import os
import subprocess
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import pynnx as nnx


class Counter(nnx.Module):
  def __init__(self, scale: float = 3.0, size: tuple = ()):
    self.w = nnx.Param(jnp.full(size, scale))
    self.count = nnx.BatchStat(jnp.zeros(size))


def as_float(x) -> float:
  return float(x[...] if isinstance(x, nnx.Variable) else x)


# --- 2. one Module given twice, through keyword slots ---------------------------------------


def bump_both(a, b):
  a.count[...] += 1.0
  b.count[...] += 10.0
  return a.w[...] + b.w[...]


CALLS = {
  "positional+keyword": lambda jf, c: jf(c, b=c),
  "keyword+keyword": lambda jf, c: jf(a=c, b=c),
  "positional+positional": lambda jf, c: jf(c, c),
}


@pytest.mark.parametrize("how", list(CALLS))
def test_same_module_twice_is_rejected_in_tree_mode(how):
  c = Counter()
  with pytest.raises(nnx.SharedReferenceError, match=r"a\.count\n\s+b\.count"):
    CALLS[how](nnx.jit(bump_both), c)
  assert as_float(c.count) == 0.0  # nothing was written


@pytest.mark.parametrize("how", list(CALLS))
def test_same_module_twice_updates_both_in_graph_mode(how):
  c = Counter()
  out = CALLS[how](nnx.jit(bump_both, graph=True), c)
  assert as_float(out) == 6.0
  assert as_float(c.count) == 11.0  # neither update lost
  CALLS[how](nnx.jit(bump_both, graph=True), c)
  assert as_float(c.count) == 22.0


@pytest.mark.parametrize("transform", [nnx.grad, nnx.value_and_grad, nnx.remat, nnx.vmap])
def test_same_module_positional_and_keyword_other_transforms(graph, transform):
  # vmap maps keywords on axis 0, so the positional Module is mapped on axis 0 too
  c = Counter(size=(2,)) if transform is nnx.vmap else Counter()
  f = transform(bump_both, graph=graph)
  if not graph:
    with pytest.raises(nnx.SharedReferenceError, match=r"a\.count\n\s+b\.count"):
      f(c, b=c)
    np.testing.assert_array_equal(c.count[...], 0.0)
  else:
    f(c, b=c)
    np.testing.assert_array_equal(c.count[...], 11.0)


def test_same_variable_in_keyword_container_is_rejected():
  c = Counter()
  f = nnx.jit(lambda x, *, pair: x + pair[0][...] + pair[1][...])
  with pytest.raises(nnx.SharedReferenceError, match=r"pair\[0\]\n\s+pair\[1\]"):
    f(jnp.array(1.0), pair=(c.w, c.w))


# --- 3. keywords through every transform --------------------------------------------------


def loss_with_stats(w, stats):
  stats.count[...] += 1.0
  return jnp.sum(w**2 * stats.w[...])


def test_grad_keyword_module_is_updated_but_not_differentiated(graph):
  stats = Counter(scale=3.0)
  w = jnp.array(2.0)
  g = nnx.grad(loss_with_stats, graph=graph)(w, stats=stats)
  # only d/dw (argnums=0): an array, not a pair holding the keyword's gradient
  assert isinstance(g, jax.Array)
  assert as_float(g) == 12.0
  assert as_float(stats.count) == 1.0
  value, g = nnx.value_and_grad(loss_with_stats, graph=graph)(w, stats=stats)
  assert (as_float(value), as_float(g), as_float(stats.count)) == (12.0, 12.0, 2.0)


def test_grad_of_plain_arrays(graph):
  # no Module at all: the gradient is the array's (as in jax.grad and Flax's graph mode)
  f = lambda w, v: jnp.sum(w**2 * v)  # noqa: E731
  w, v = jnp.array(2.0), jnp.array(3.0)
  assert as_float(nnx.grad(f, graph=graph)(w, v)) == 12.0
  gw, gv = nnx.grad(f, argnums=(0, 1), graph=graph)(w, v)
  assert (as_float(gw), as_float(gv)) == (12.0, 4.0)


def test_grad_keyword_next_to_a_differentiated_module(graph):
  model, stats = Counter(scale=2.0), Counter(scale=5.0)

  def loss(model, stats):
    stats.count[...] += 1.0
    model.count[...] += 1.0
    return jnp.sum(model.w[...] * stats.w[...])

  g = nnx.grad(loss, graph=graph)(model, stats=stats)
  grad_w = g["w"][...] if graph else g.w[...]
  assert as_float(grad_w) == 5.0
  assert as_float(stats.count) == 1.0 and as_float(model.count) == 1.0


def bump_kw(x, m):
  m.count[...] += 1.0
  return x * m.w[...]


def test_jit_keyword_updates(graph):
  m = Counter()
  f = nnx.jit(bump_kw, graph=graph)
  for i in range(1, 4):
    assert as_float(f(jnp.array(2.0), m=m)) == 6.0
    assert as_float(m.count) == float(i)


def test_remat_keyword_updates(graph):
  m = Counter()
  assert as_float(nnx.remat(bump_kw, graph=graph)(jnp.array(2.0), m=m)) == 6.0
  assert as_float(m.count) == 1.0

  def outer(model, m):
    return nnx.remat(bump_kw, graph=graph)(model.w[...], m=m)

  g = nnx.grad(outer, graph=graph)(Counter(scale=2.0), m)
  assert as_float(g["w"] if graph else g.w) == 3.0
  assert as_float(m.count) == 2.0


def test_vmap_keyword_is_mapped_on_axis_0(graph):
  m = Counter(size=(3,))
  m.w[...] = jnp.arange(3.0)
  xs = jnp.array([1.0, 10.0, 100.0])
  out = nnx.vmap(bump_kw, in_axes=0, graph=graph)(xs, m=m)
  np.testing.assert_array_equal(out, jnp.array([0.0, 10.0, 200.0]))
  np.testing.assert_array_equal(m.count[...], jnp.ones(3))


def test_scan_keyword_is_broadcast_and_its_updates_threaded(graph):
  m = Counter(scale=2.0)

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), graph=graph)
  def step(carry, x, *, m):
    carry.count[...] += 1.0
    return carry, x * m.w[...]

  carry = Counter()
  _, ys = step(carry, jnp.arange(4.0), m=m)
  np.testing.assert_array_equal(ys, 2.0 * jnp.arange(4.0))
  assert as_float(carry.count) == 4.0  # the carry's update is written back
  assert as_float(m.count) == 0.0

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), graph=graph)
  def counting(carry, x, *, m):
    m.count[...] += 1.0
    return carry, x

  counting(carry, jnp.arange(4.0), m=m)
  assert as_float(m.count) == 4.0  # threaded through the 4 steps, as a broadcast argument


def test_eval_shape_keyword_leaves_the_argument_unchanged(graph):
  m = Counter(size=(2,))
  out = nnx.eval_shape(bump_kw, jnp.ones((5, 2)), m=m, graph=graph)
  assert (out.shape, out.dtype) == ((5, 2), jnp.float32)
  assert isinstance(m.count[...], jax.Array)  # not a ShapeDtypeStruct or a tracer
  np.testing.assert_array_equal(m.count[...], jnp.zeros(2))


@pytest.mark.parametrize("by_keyword", [False, True], ids=["positional", "keyword"])
def test_custom_vjp_writes_back_a_batchstat_update(graph, by_keyword):
  # the BatchStat gets no cotangent and may be updated (tree mode documents it; Flax's
  # graph mode does it too)
  @nnx.custom_vjp(graph=graph)
  def f(x, m):
    m.count[...] += 1.0
    return x * m.w[...]

  f.defvjp(lambda x, m: (f(x, m), m.w[...]), lambda res, g: (g * res, None))
  m = Counter(scale=3.0)
  out = f(jnp.array(2.0), m=m) if by_keyword else f(jnp.array(2.0), m)
  assert as_float(out) == 6.0
  assert as_float(m.count) == 1.0


def test_vmap_keyword_axis_error_gives_a_fix_for_keywords():
  # a keyword is always mapped on axis 0, so "give it None in in_axes" cannot apply
  f = nnx.vmap(lambda x, s: x * s)
  with pytest.raises(nnx.AxisSpecError, match=r"(?s)axis 0 of s\b.*keyword.*positional"):
    f(jnp.ones(3), s=jnp.array(2.0))


def test_shard_map_rejects_keywords(graph):
  mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
  f = nnx.shard_map(bump_kw, mesh=mesh, in_specs=(P(), P()), out_specs=P(), graph=graph)
  with pytest.raises(nnx.ConfigError, match=r"keyword argument\(s\) m\b.*positionally"):
    f(jnp.ones(2), m=Counter())


def test_vjp_rejects_keywords(graph):
  f = nnx.vjp(bump_kw, graph=graph)
  with pytest.raises(nnx.ConfigError, match=r"keyword argument\(s\) m\b.*positionally"):
    f(jnp.array(1.0), m=Counter())


# --- 5. returned inputs come back as the caller's own objects ----------------------------


class Net(nnx.Module):
  def __init__(self):
    self.linear1 = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    self.count = nnx.BatchStat(jnp.array(0.0))


def bump_and_return(m):
  m.count[...] += 1.0
  return m.count, m.linear1, m, nnx.BatchStat(jnp.array(5.0))


def check_identity(m, out, count=1.0):
  ret_count, ret_linear, ret_model, created = out
  assert ret_count is m.count
  assert ret_linear is m.linear1
  assert ret_model is m
  assert as_float(m.count) == count
  assert isinstance(created, nnx.BatchStat)
  assert created is not m.count
  assert as_float(created) == 5.0


def test_jit_returns_the_callers_objects(graph):
  m = Net()
  f = nnx.jit(bump_and_return, graph=graph)
  check_identity(m, f(m))
  check_identity(m, f(m), count=2.0)  # cached path


def test_grad_aux_returns_the_callers_objects(graph):
  m = Net()

  def loss(m):
    out = bump_and_return(m)
    return jnp.sum(m.linear1(jnp.ones((1, 2)))), out

  _, aux = nnx.grad(loss, has_aux=True, graph=graph)(m)
  check_identity(m, aux)


def test_remat_returns_the_callers_objects(graph):
  m = Net()
  check_identity(m, nnx.remat(bump_and_return, graph=graph)(m))


def test_eval_shape_returns_the_callers_objects(graph):
  m = Net()
  count, linear, model, created = nnx.eval_shape(bump_and_return, m, graph=graph)
  assert count is m.count and linear is m.linear1 and model is m
  assert as_float(m.count) == 0.0  # eval_shape never changes its arguments
  assert isinstance(created, nnx.BatchStat) and created[...].shape == ()


def test_vmap_returns_the_callers_objects(graph):
  m = Net()

  def f(m, x):
    m.count[...] += 1.0
    return m.count, m.linear1, m, 2 * x

  count, linear, model, y = nnx.vmap(f, in_axes=(None, 0), graph=graph)(m, jnp.ones((3, 2)))
  assert count is m.count and linear is m.linear1 and model is m
  assert as_float(m.count) == 1.0
  assert y.shape == (3, 2)


def test_cond_returns_the_callers_objects(graph):
  m = Net()

  def taken(m):
    m.count[...] += 1.0
    return m.count, m.linear1, m

  def other(m):
    return m.count, m.linear1, m

  count, linear, model = nnx.cond(jnp.array(True), taken, other, m, graph=graph)
  assert count is m.count and linear is m.linear1 and model is m
  assert as_float(m.count) == 1.0


def test_loops_return_the_callers_carry(graph):
  # as scan's carry and every other transform's returned input (and graph mode's loops)
  def body(i, m):
    m.count[...] += 1.0
    return m

  m = Net()
  assert nnx.fori_loop(0, 3, body, m, graph=graph) is m
  assert as_float(m.count) == 3.0
  out = nnx.while_loop(lambda m: m.count[...] < 5.0, lambda m: body(0, m), m, graph=graph)
  assert out is m and as_float(m.count) == 5.0


def test_returned_variable_from_a_keyword_is_the_callers(graph):
  m = Net()
  out = nnx.jit(lambda x, *, m: (bump_and_return(m)[0], x), graph=graph)(jnp.ones(1), m=m)
  assert out[0] is m.count and as_float(m.count) == 1.0


class Wrap(nnx.Module):
  def __init__(self, inner, count):
    self.inner = inner
    self.count = count
    self.extra = nnx.Param(jnp.ones(1))


def test_new_module_holding_input_objects_keeps_them(graph):
  m = Net()

  def f(m):
    m.count[...] += 1.0
    return Wrap(m.linear1, m.count)

  w = nnx.jit(f, graph=graph)(m)
  assert isinstance(w, Wrap) and w is not m
  assert w.inner is m.linear1  # the caller's sub-Module, not a copy
  assert w.count is m.count and as_float(m.count) == 1.0
  np.testing.assert_array_equal(w.extra[...], jnp.ones(1))


class Shared(nnx.Module):
  def __init__(self, extra=None):
    self.a = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    self.b = self.a
    self.extra = extra


@pytest.mark.parametrize("transform", ["jit", "eval_shape"])
def test_new_module_with_shared_submodule_keeps_sharing_in_graph_mode(transform):
  m = Net()

  def f(m):
    m.count[...] += 1.0
    return Shared(m.linear1)

  if transform == "jit":
    out = nnx.jit(f, graph=True)(m)
  else:
    out = nnx.eval_shape(f, m, graph=True)
  assert out.a is out.b  # one sub-Module at two places stays one object
  assert out.extra is m.linear1  # and an input sub-Module comes back as the caller's


def test_new_variable_returned_twice_raises_in_tree_mode():
  # tree mode returns each Variable as its own array: the aliasing would be lost silently
  with pytest.raises(
    nnx.SharedReferenceError,
    match=r"(?s)pynnx.jit returned the same Param at two places:.*output.a.bias.*"
    r"output.b.bias.*graph=True",
  ):
    nnx.jit(lambda: Shared())()
  m = Net()
  out = nnx.jit(lambda m: (m.count, m.count))(m)  # an input returned twice is the caller's
  assert out[0] is m.count and out[1] is m.count


def test_static_attribute_changes_inside_graph_mode_transforms():
  # as Flax's graph mode: set on the caller with graph_updates (jit), never an error
  def apply(m, x):
    m.eval()
    return m(x)

  m = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
  assert nnx.jit(apply, graph=True)(m, jnp.ones(2)).shape == (2,) and m.deterministic
  m = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
  out = nnx.vmap(apply, in_axes=(None, 0), graph=True)(m, jnp.ones((3, 2)))
  assert out.shape == (3, 2) and m.deterministic  # reported beside the mapped output
  m = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
  nnx.vmap(apply, in_axes=(None, 0), graph=True, graph_updates=False)(m, jnp.ones((3, 2)))
  assert not m.deterministic
  m = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
  nnx.jit(apply, graph=True, graph_updates=False)(m, jnp.ones(2))
  assert not m.deterministic  # graph_updates=False: nothing reaches the caller
  m = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
  nnx.jit(apply)(m, jnp.ones(2))
  assert not m.deterministic  # tree mode: nothing reaches the caller (docs/migrating.md)


def test_static_attribute_changes_through_fixed_transforms():
  # vmap, shard_map, pmap, cond/switch: the change is reported while tracing and set after
  def apply(m, x):
    m.eval()
    return m(x)

  mesh = jax.sharding.Mesh(jax.devices()[:1], ("d",))
  runs = {
    "vmap": lambda m, x: nnx.vmap(apply, in_axes=(None, 0), graph=True)(m, x),
    "pmap": lambda m, x: nnx.pmap(apply, in_axes=(None, 0), graph=True)(m, x[:1]),
    "shard_map": lambda m, x: nnx.shard_map(
      apply, mesh=mesh, in_specs=(P(), P()), out_specs=P(), graph=True
    )(m, x),
    "cond": lambda m, x: nnx.cond(True, apply, apply, m, x, graph=True),
    "switch": lambda m, x: nnx.switch(1, [apply, apply], m, x, graph=True),
  }
  for name, run in runs.items():
    m = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
    run(m, jnp.ones((2, 3)))
    assert m.deterministic, name
  # inside an outer jit: the vmap sets it on jit's rebuilt Module, and jit on the caller's
  m = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
  nnx.jit(runs["vmap"], graph=True)(m, jnp.ones((2, 3)))
  assert m.deterministic


def test_static_attribute_changes_in_one_branch_only_raise():
  def evaluate(m, x):
    m.eval()
    return m(x)

  m = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
  with pytest.raises(
    nnx.StructureChangeError,
    match=r"pynnx.cond.*change static attributes of argument root 0 differently.*"
    r"make the same change in every branch, or make it before the call",
  ):
    nnx.cond(True, evaluate, lambda m, x: m(x), m, jnp.ones(2), graph=True)
  assert not m.deterministic


# --- 6. bound methods -----------------------------------------------------------------------


class Model(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.array(2.0))

  def forward(self, x):
    return x * self.w[...]


def mesh1():
  return jax.sharding.Mesh(jax.devices()[:1], ("data",))


BOUND = {
  "jit": lambda f: nnx.jit(f),
  "grad": lambda f: nnx.grad(f),
  "value_and_grad": lambda f: nnx.value_and_grad(f),
  "vmap": lambda f: nnx.vmap(f),
  "scan": lambda f: nnx.scan(f, in_axes=0, out_axes=0),
  "remat": lambda f: nnx.remat(f),
  "shard_map": lambda f: nnx.shard_map(f, mesh=mesh1(), in_specs=P(), out_specs=P()),
  "custom_vjp": lambda f: nnx.custom_vjp(f),
  "vjp": lambda f: nnx.vjp(f, jnp.array(1.0)),
  "jvp": lambda f: nnx.jvp(f, (jnp.array(1.0),), (jnp.array(1.0),)),
  "eval_shape": lambda f: nnx.eval_shape(f, jnp.array(1.0)),
}


@pytest.mark.parametrize("name", list(BOUND))
def test_bound_method_is_rejected(name):
  m = Model()
  with pytest.raises(nnx.BoundMethodError, match=rf"pynnx\.{name} .*Model\(\.\.\.\)\.forward"):
    BOUND[name](m.forward)
  assert issubclass(nnx.BoundMethodError, ValueError)


@pytest.mark.parametrize("name", ["jit", "grad"])
def test_partial_of_a_bound_method_is_rejected(name):
  # as in Flax: the Module is still captured behind the partial
  m = Model()
  with pytest.raises(nnx.BoundMethodError, match=r"Model\(\.\.\.\)\.forward"):
    BOUND[name](functools.partial(m.forward))


class Helper:
  """Not a Module: nothing of it needs writing back (Flax accepts its bound methods)."""

  def __init__(self, k):
    self.k = k

  def scale(self, x):
    return x * self.k


def test_bound_method_of_a_plain_object_is_accepted():
  assert as_float(nnx.jit(Helper(3.0).scale)(jnp.array(2.0))) == 6.0
  assert as_float(nnx.grad(Helper(3.0).scale)(jnp.array(2.0))) == 3.0


def test_unbound_method_and_decorated_method_work(graph):
  m = Model()
  assert as_float(nnx.jit(Model.forward, graph=graph)(m, jnp.array(3.0))) == 6.0

  class Decorated(Model):
    @nnx.jit(graph=graph)
    def forward(self, x):
      return x * self.w[...] + 1.0

  assert as_float(Decorated().forward(jnp.array(3.0))) == 7.0


# --- 7. JAX errors inside a transform read like the user's code --------------------------


def my_fn(m, x):
  return jnp.dot(x, m.w[...])


TRANSFORMED = {
  "jit": lambda: nnx.jit(my_fn),
  "grad": lambda: nnx.grad(lambda m, x: jnp.sum(my_fn(m, x))),
  "vmap": lambda: nnx.vmap(my_fn, in_axes=(None, 0)),
  "remat": lambda: nnx.remat(my_fn),
  "jit(grad)": lambda: nnx.jit(lambda m, x: nnx.grad(lambda m: jnp.sum(my_fn(m, x)))(m)),
}


@pytest.mark.parametrize("name", list(TRANSFORMED))
def test_jax_error_traceback_names_the_user_function(name):
  m = Counter(size=(3, 4))
  with pytest.raises(TypeError, match=r"dot_general requires contracting dimensions") as info:
    TRANSFORMED[name]()(m, jnp.ones((2, 5, 7)))
  frames = traceback.extract_tb(info.value.__traceback__)
  assert "my_fn" in [fr.name for fr in frames]
  transforms_dir = os.path.join("pynnx", "_transforms") + os.sep
  assert [fr.filename for fr in frames if transforms_dir in fr.filename] == []


# --- 8. Variable writes keep the cell ------------------------------------------------------


def test_setitem_broadcasts_into_the_cell():
  bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
  bn.mean[...] = 0.0
  assert (bn.mean[...].shape, bn.mean[...].dtype) == ((3,), jnp.float32)
  v = nnx.Param(jnp.zeros(3))
  v[...] = 1  # an int into a float cell stays float
  assert v[...].dtype == jnp.float32
  np.testing.assert_array_equal(v[...], jnp.ones(3))
  v[...] = jnp.arange(3.0)
  np.testing.assert_array_equal(v[...], jnp.arange(3.0))


def test_setitem_wrong_shape_suggests_value():
  v = nnx.Param(jnp.zeros(3))
  with pytest.raises(nnx.ShapeError, match=r"shape \(3,\).*shape \(4,\).*`\.value = x`"):
    v[...] = jnp.ones(4)
  assert issubclass(nnx.ShapeError, ValueError)
  np.testing.assert_array_equal(v[...], jnp.zeros(3))


def test_value_assignment_replaces():
  v = nnx.Param(jnp.zeros(3))
  v.value = jnp.ones((2, 4), jnp.int32)
  assert (v[...].shape, v[...].dtype) == ((2, 4), jnp.int32)
  v.value = [1, 2, 3]
  assert isinstance(v[...], jax.Array) and v[...].shape == (3,)
  np.testing.assert_array_equal(v[...], jnp.array([1, 2, 3]))


def test_item_write_on_a_dict_value():
  original = {"a": 0, "b": 2}
  v = nnx.Variable(original)
  v["a"] = 1
  assert v[...] == {"a": 1, "b": 2}
  assert original == {"a": 0, "b": 2}  # the caller's dict is not mutated


class Tagged(nnx.Module):
  def __init__(self):
    self.p = nnx.Param(jnp.ones(3), tags=["a", "b"], info={"k": 1})
    self.count = nnx.BatchStat(jnp.zeros(3))


def check_meta(var):
  tags, info = var.get_metadata("tags"), var.get_metadata("info")
  assert type(tags) is list and tags == ["a", "b"]
  assert type(info) is dict and info == {"k": 1}


def test_list_and_dict_metadata_through_transforms(graph):
  m = Tagged()
  seen = []

  def body(m, x):
    check_meta(m.p)
    seen.append(True)
    m.count[...] += 1.0
    return jnp.sum(m.p[...] * x)

  nnx.jit(body, graph=graph)(m, jnp.ones(3))
  grads = nnx.grad(body, graph=graph)(m, jnp.ones(3))
  check_meta(grads["p"] if graph else grads.p)
  nnx.vmap(body, in_axes=(0, 0), graph=graph)(m, jnp.ones(3))

  @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry, graph=graph)
  def scanned(m, c):
    return c + body(m, jnp.ones(()))

  scanned(m, jnp.array(0.0))
  assert len(seen) == 4
  check_meta(m.p)
  np.testing.assert_array_equal(m.count[...], jnp.full(3, 4.0))


def test_new_variable_with_list_metadata_comes_back_equal(graph):
  def make(x):
    return nnx.Param(x * 2, tags=["x", "y"], info={"k": [1, 2]})

  for f in (nnx.jit(make, graph=graph), nnx.vmap(make, graph=graph)):
    out = f(jnp.ones(2))
    assert type(out.tags) is list and out.tags == ["x", "y"]
    assert out.info == {"k": [1, 2]} and type(out.info["k"]) is list


# --- 9. deep and cyclic Modules ------------------------------------------------------------


class Node(nnx.Module):
  def __init__(self, child):
    self.child = child
    self.w = nnx.Param(jnp.array(1.0))


def chain(n):
  node = None
  for _ in range(n):
    node = Node(node)
  return node


def too_deep():
  """A chain deeper than tree mode flattens, whatever the recursion limit in force (1000
  by default; a library or plugin may have raised it)."""
  return chain(max(1000, sys.getrecursionlimit() // 3 + 10))


def test_deep_chain_raises_in_tree_mode_and_interpreter_survives():
  deep = too_deep()
  with pytest.raises(
    nnx.TreeStructureError,
    match=r"\.child\.child(\.child)* is nested \d+ levels deep.*nnx\.List.*nnx\.scan",
  ):
    nnx.jit(lambda deep: deep.w[...])(deep)
  # the interpreter is still usable: a new transform call works
  shallow = chain(3)
  assert as_float(nnx.jit(lambda m: m.w[...] + m.child.child.w[...])(shallow)) == 2.0


@pytest.mark.no_typecheck("the checker's wrappers deepen the stack this test measures")
def test_deep_chain_in_graph_mode_has_a_clear_limit():
  # graph mode walks, hashes and rebuilds graphs recursively: about a quarter of the
  # recursion limit, with an error naming the path beyond it instead of a RecursionError
  limit = sys.getrecursionlimit() // 4
  ok = chain(limit - 10)
  assert as_float(nnx.jit(lambda m: m.w[...] + 1.0, graph=True)(ok)) == 2.0
  grads = nnx.grad(lambda m: m.w[...] * 2.0, graph=True)(ok)
  assert as_float(grads.w) == 2.0
  with pytest.raises(
    nnx.TreeStructureError,
    match=r"model\.child\.child\.child \.\.\. \.\w+ is nested \d+ levels deep, more than graph "
    r"mode can walk.*nnx\.List.*nnx\.scan",
  ):
    nnx.jit(lambda m: m.w[...], graph=True)(chain(limit + 5))
  assert as_float(nnx.jit(lambda m: m.w[...], graph=True)(chain(3))) == 1.0  # still usable


DEEP_IN_CONTAINER = """
import jax.numpy as jnp, pynnx as nnx

class Node(nnx.Module):
  def __init__(self, child):
    self.child = child
    self.w = nnx.Param(jnp.array(1.0))

deep = None
for _ in range(1000):
  deep = Node(deep)
for arg in ([deep], {"a": deep}, (1, [deep])):
  try:
    nnx.jit(lambda arg: 0)(arg)
  except nnx.TreeStructureError as e:
    print("TreeStructureError", "levels deep" in str(e))
print("after", float(nnx.jit(lambda x: x + 1)(jnp.ones(()))))
"""


def test_deep_chain_inside_a_container_argument():
  # In a subprocess: a RecursionError inside JAX's flattening leaves the interpreter unusable,
  # which would break every later test of the session.
  result = subprocess.run(
    [sys.executable, "-c", DEEP_IN_CONTAINER],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  )
  lines = result.stdout.splitlines()
  assert lines == ["TreeStructureError True"] * 3 + ["after 2.0"], (
    result.stdout + result.stderr[-2000:]
  )


def test_deep_chain_error_suggests_a_list_not_graph_mode():
  # graph mode walks the graph recursively too (a known limit), so the tree-mode error
  # only suggests what works: nnx.List of the repeated layers, or stacking + nnx.scan
  with pytest.raises(nnx.TreeStructureError, match=r"nnx\.List.*nnx\.scan`\)\.") as err:
    nnx.jit(lambda deep: 0)(too_deep())
  assert "graph=True" not in str(err.value)


class Child(nnx.Module):
  def __init__(self, parent):
    self.parent = parent
    self.w = nnx.Param(jnp.array(1.0))


class Parent(nnx.Module):
  def __init__(self):
    self.count = nnx.BatchStat(jnp.array(0.0))
    self.child = Child(self)


def bump_cycle(p):
  p.count[...] += 1.0
  p.child.w[...] += 1.0
  return p.child.parent.count[...]


def test_cycle_raises_in_tree_mode():
  p = Parent()
  with pytest.raises(
    nnx.TreeStructureError, match=r"\.child\.parent refers back.*cycle.*graph=True"
  ):
    nnx.jit(bump_cycle)(p)
  assert as_float(p.count) == 0.0


def test_structure_errors_name_the_argument():
  # the path a user would type starts with the function's parameter name (as in the
  # SharedReferenceError), not a fixed "model"
  with pytest.raises(nnx.TreeStructureError, match=r"^deep\.child\.child"):
    nnx.jit(lambda deep: deep.w[...])(too_deep())
  with pytest.raises(nnx.TreeStructureError, match=r"^p\.child\.parent refers back"):
    nnx.jit(bump_cycle)(Parent())
  with pytest.raises(nnx.TreeStructureError, match=r"^extra\.child\.parent refers back"):
    nnx.jit(lambda x, *, extra: x)(jnp.ones(1), extra=Parent())


def test_cycle_works_in_graph_mode():
  p = Parent()
  f = nnx.jit(bump_cycle, graph=True)
  assert as_float(f(p)) == 1.0
  assert as_float(f(p)) == 2.0
  assert as_float(p.count) == 2.0 and as_float(p.child.w) == 3.0
  assert p.child.parent is p


def test_modules_built_by_a_transform_inside_a_constructor(graph):
  # the vmapped constructor runs in its own build scope: its typed Linear is frozen (and
  # checked) inside the trace, not later with the outer Module's objects
  @nnx.vmap(in_axes=0, out_axes=0, graph=graph)
  def make(key):
    return nnx.Linear(2, 3, rngs=nnx.Rngs(key))

  class Outer(nnx.Module):
    def __init__(self):
      self.stack = make(jax.random.split(jax.random.key(0), 4))

  outer = Outer()
  assert outer.stack.kernel.shape == (4, 2, 3)
  with pytest.raises(nnx.FrozenModuleError):
    outer.stack = None


@pytest.mark.parametrize(
  "make",
  [
    lambda: nnx.jit(None),
    lambda: nnx.grad(None),
    lambda: nnx.vmap(3),
    lambda: nnx.scan("f"),
    lambda: nnx.remat(None),
    lambda: nnx.eval_shape(None),
    lambda: nnx.custom_vjp(None),
  ],
  ids=["jit", "grad", "vmap", "scan", "remat", "eval_shape", "custom_vjp"],
)
@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_transforming_a_non_function_raises(make):
  with pytest.raises(nnx.ConfigError, match=r"pynnx\.\w+ transforms a function, got"):
    make()


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_cached_partial_of_a_non_function_raises():
  with pytest.raises(nnx.ConfigError, match=r"cached_partial binds arguments to a transformed"):
    nnx.cached_partial(None, Model())
