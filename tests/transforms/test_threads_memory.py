"""Transforms under threads, and what a transform keeps alive (issue 8).

Thread tests: several threads trace and run transforms at once, each on its own Module;
no call may fail and no Variable update may be lost. Memory tests: a transform (and its
caches) must not keep the Modules it was called with alive.
"""

import gc
import threading
import weakref

import jax
import jax.numpy as jnp
import optax
import pytest

import pynnx as nnx

N_THREADS = 4
N_CALLS = 200


def run_threads(work, n=N_THREADS, timeout=60.0):
  """Runs ``work(i)`` in ``n`` threads started together; returns the errors raised."""
  errors: list = []
  barrier = threading.Barrier(n)

  def target(i):
    try:
      barrier.wait()
      work(i)
    except BaseException as e:  # noqa: BLE001 - every failure is reported by the test
      errors.append(e)

  threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout)
  assert not any(t.is_alive() for t in threads), "a thread hung"
  return errors


class Tiny(nnx.Module):
  def __init__(self, size: int):
    self.w = nnx.Param(jnp.full((size,), 1.5))
    self.count = nnx.BatchStat(jnp.array(0.0))


def loss(m, x):
  m.count[...] += 1.0
  return jnp.sum(m.w[...] * x)


def scan_step(c, x):
  c.count[...] += 1.0
  return c, x * c.w[...]


def make_call(name, graph):
  """A per-thread callable doing one transformed call that bumps ``m.count`` once."""
  if name == "jit":
    f = nnx.jit(loss, graph=graph)
    return lambda m, x: f(m, x)
  if name == "grad":
    f = nnx.grad(loss, graph=graph)  # traces on every call
    return lambda m, x: f(m, x)
  if name == "vmap":
    f = nnx.vmap(loss, in_axes=(None, 0), graph=graph)  # traces on every call

    # mapped over a batch of one; the broadcast count's update is the same for every element
    def bump_once(m, x):
      return f(m, x[None])

    return bump_once
  if name == "scan":
    # An eager scan compiles on every call; inside jit it traces once per thread and shape.
    scanned = nnx.scan(scan_step, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), graph=graph)
    f = nnx.jit(lambda m, x: scanned(m, x[None])[1], graph=graph)
    return lambda m, x: f(m, x)
  raise AssertionError(name)


@pytest.mark.parametrize("name", ["jit", "grad", "vmap", "scan"])
def test_concurrent_calls_lose_no_update(graph, name):
  call = make_call(name, graph)  # one transformed function object shared by every thread
  models = [Tiny(size=i + 1) for i in range(N_THREADS)]  # shapes differ: traces overlap

  def work(i):
    m, x = models[i], jnp.ones(i + 1)
    for _ in range(N_CALLS):
      call(m, x)

  assert run_threads(work) == []
  assert [float(m.count[...]) for m in models] == [float(N_CALLS)] * N_THREADS


def test_concurrent_new_modules_traced_by_grad(graph):
  grad = nnx.grad(loss, graph=graph)

  def work(i):
    for k in range(N_CALLS // 4):
      m = Tiny(size=1 + (i + k) % 3)  # fresh Modules, several structures
      g = grad(m, jnp.ones(m.w[...].shape))
      assert float(m.count[...]) == 1.0
      got = g["w"][...] if graph else g.w[...]
      assert got.shape == m.w[...].shape and bool(jnp.all(got == 1.0))

  assert run_threads(work) == []


def test_one_transform_used_in_tree_and_graph_mode_threads_at_once():
  # the same nnx.jit object, graph=None: half the threads run it inside a graph-mode block
  f = nnx.jit(lambda a, b: a.w[0] + b.w[0])
  models = [Tiny(1) for _ in range(N_THREADS)]
  outcomes = [[] for _ in range(N_THREADS)]

  def work(i):
    c = models[i]
    for _ in range(N_CALLS // 4):
      if i % 2:
        with nnx.set_graph_mode(True):
          outcomes[i].append(float(f(c, c)))  # shared references are fine in graph mode
      else:
        try:
          f(c, c)
          outcomes[i].append("no error")
        except nnx.SharedReferenceError:
          outcomes[i].append("shared")

  assert run_threads(work) == []
  for i, got in enumerate(outcomes):
    assert got == ([3.0] if i % 2 else ["shared"]) * (N_CALLS // 4)


# --- constructors in threads ------------------------------------------------------------


class Slow(nnx.Module):
  """A constructor that pauses (so another thread builds meanwhile), then maybe fails."""

  def __init__(self, inside: threading.Event, resume: threading.Event, fail: bool):
    self.w = nnx.Param(jnp.ones(2))
    inside.set()
    assert resume.wait(30)
    if fail:
      raise RuntimeError("constructor failed on purpose")


def assert_frozen(m):
  with pytest.raises(nnx.FrozenModuleError, match=r"Cannot set attribute 'extra'"):
    m.extra = 1


def test_failing_constructor_does_not_unfreeze_another_threads_module():
  inside, resume = threading.Event(), threading.Event()
  failures: list = []

  def build_and_fail():
    try:
      Slow(inside, resume, fail=True)
    except RuntimeError as e:
      failures.append(e)

  t = threading.Thread(target=build_and_fail)
  t.start()
  assert inside.wait(30)
  other = nnx.Linear(2, 2, rngs=nnx.Rngs(0))  # built while the other constructor runs
  assert_frozen(other)
  resume.set()
  t.join(30)
  assert len(failures) == 1
  assert_frozen(other)  # the failure over there did not drop or unfreeze it
  y = nnx.jit(lambda m, x: m(x))(other, jnp.ones((1, 2)))
  assert y.shape == (1, 2)


def test_constructor_running_in_another_thread_does_not_delay_freezing():
  inside, resume = threading.Event(), threading.Event()
  built: list = []

  def build_slowly():
    built.append(Slow(inside, resume, fail=False))

  t = threading.Thread(target=build_slowly)
  t.start()
  assert inside.wait(30)
  done = threading.Event()
  done.set()
  with pytest.raises(RuntimeError, match="on purpose"):
    Slow(threading.Event(), done, fail=True)  # a failure here, while the other one runs
  mine = Tiny(2)
  assert_frozen(mine)  # frozen now, not when the other thread's constructor returns
  resume.set()
  t.join(30)
  assert_frozen(built[0])


# --- settings in threads -----------------------------------------------------------------


def test_with_set_graph_mode_is_local_to_its_thread():
  entered, checked = threading.Event(), threading.Event()
  seen: dict = {}

  def scoped():
    with nnx.set_graph_mode(True):
      seen["inside"] = nnx.set_graph_mode.current_value()
      entered.set()
      assert checked.wait(30)
    seen["after"] = nnx.set_graph_mode.current_value()

  t = threading.Thread(target=scoped)
  t.start()
  assert entered.wait(30)
  seen["other thread"] = nnx.set_graph_mode.current_value()
  # a transform with graph=None in this thread runs in tree mode meanwhile
  c = Tiny(1)
  with pytest.raises(nnx.SharedReferenceError, match=r"a\.count\n\s+b\.count"):
    nnx.jit(lambda a, b: a.w[...] + b.w[...])(c, c)
  checked.set()
  t.join(30)
  assert seen == {"inside": True, "other thread": False, "after": False}


def test_bare_set_graph_mode_is_process_wide():
  seen: dict = {}
  try:

    def set_it():
      nnx.set_graph_mode(True)
      seen["there"] = nnx.set_graph_mode.current_value()

    t = threading.Thread(target=set_it)
    t.start()
    t.join(30)
    seen["here"] = nnx.set_graph_mode.current_value()
    c = Tiny(1)  # graph=None now means graph mode here too: sharing is allowed
    assert float(nnx.jit(lambda a, b: a.w[0] + b.w[0])(c, c)) == 3.0
  finally:
    nnx.set_graph_mode(False)
  assert seen == {"there": True, "here": True}
  assert nnx.set_graph_mode.current_value() is False


# --- retained memory -----------------------------------------------------------------------


def assert_all_freed(refs, what):
  gc.collect()
  alive = [r() for r in refs if r() is not None]
  if alive:
    holders = [type(h).__name__ for h in gc.get_referrers(alive[0])]
    raise AssertionError(f"{len(alive)} of {len(refs)} {what} still alive; held by {holders}")


@pytest.fixture
def standard_promotion():
  """optax's Adam mixes its int32 step count with Python floats, which the suite's strict
  dtype promotion rejects (an optax matter; see tests/training/test_optimizer.py)."""
  with jax.numpy_dtype_promotion("standard"):
    yield


# One optax transformation for every model: the Optimizer keeps it as a static attribute,
# so a fresh ``optax.adam`` per model would recompile the train step for each of them.
ADAM = optax.adam(1e-3)


def new_model_and_optimizer():
  model = nnx.Linear(64, 64, rngs=nnx.Rngs(0))
  return model, nnx.Optimizer(model, ADAM, wrt=nnx.Param)


def mse(model, x):
  return jnp.mean(model(x) ** 2)


N_MODELS = 60
X = jnp.ones((2, 64))


def train_models(step):
  refs = []
  for _ in range(N_MODELS):
    model, opt = new_model_and_optimizer()
    before = model.kernel[...]
    step(model, opt, X)
    assert not bool(jnp.all(model.kernel[...] == before))  # the step really ran
    refs += [weakref.ref(model), weakref.ref(opt)]
    del model, opt, before
  return refs


def test_jit_train_step_keeps_no_model_alive(graph, standard_promotion):
  @nnx.jit(graph=graph)
  def train_step(model, opt, x):
    loss, grads = nnx.value_and_grad(mse, graph=graph)(model, x)
    opt.update(model, grads)
    return loss

  assert_all_freed(train_models(train_step), "models/optimizers")


def test_eager_grad_keeps_no_model_alive(graph, standard_promotion):
  vg = nnx.value_and_grad(mse, graph=graph)

  def step(model, opt, x):
    _, grads = vg(model, x)
    opt.update(model, grads)

  assert_all_freed(train_models(step), "models/optimizers")


def test_vmap_keeps_no_model_alive(graph):
  @nnx.vmap(in_axes=(None, 0), graph=graph)
  def apply(model, x):
    return model(x)

  refs = []
  for _ in range(N_MODELS):
    model = nnx.Linear(4, 4, rngs=nnx.Rngs(0))
    assert apply(model, jnp.ones((3, 1, 4))).shape == (3, 1, 4)
    refs.append(weakref.ref(model))
    del model
  assert_all_freed(refs, "models")


def test_jitted_vmap_and_grad_keep_no_model_alive(graph):
  @nnx.jit(graph=graph)
  def step(model, x):
    ys = nnx.vmap(lambda m, x: m(x), in_axes=(None, 0), graph=graph)(model, x)
    g = nnx.grad(lambda m: jnp.sum(m(x[0])), graph=graph)(model)
    return ys, g

  refs = []
  for _ in range(N_MODELS):
    model = nnx.Linear(4, 4, rngs=nnx.Rngs(0))
    ys, g = step(model, jnp.ones((3, 1, 4)))
    refs += [weakref.ref(model)]
    del model, ys, g
  assert_all_freed(refs, "models")
