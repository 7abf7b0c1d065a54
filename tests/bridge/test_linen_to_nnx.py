"""nnx.bridge.ToNNX / lazy_init: Linen modules inside pynnx, checked against flax.nnx.bridge.

Each differential test runs one snippet with ``lib`` = ``flax.nnx`` and ``lib`` = ``pynnx`` and
compares outputs, state paths, Variable types and values (rng counters included).
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pynnx

fnnx = pytest.importorskip("flax.nnx")
nn = pytest.importorskip("flax.linen")

LIBS = pytest.mark.parametrize("lib", [fnnx, pynnx], ids=["flax", "pynnx"])
ROOT = pathlib.Path(__file__).resolve().parents[2]
X = jnp.arange(8.0).reshape(2, 4) / 8


class Inner(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(3)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Dropout(0.5, deterministic=not train)(x)
    self.sow("intermediates", "h", x)
    return x


class Outer(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = Inner(name="inner")(x, train)
    return x @ self.param("w", nn.initializers.ones, (3, 2))

  def double(self, x):
    return 2 * x


def flat(lib, tree):
  """``{path: (Variable type name, numpy value)}`` (keys as their key data)."""
  out = {}
  for path, v in lib.to_flat_state(tree):
    value = v.get_value()
    leaves = jax.tree.leaves(value)
    leaves = [
      np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a)
      for a in leaves
    ]
    out[tuple(path)] = (type(v).__name__, leaves)
  return out


def same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    assert a[k][0] == b[k][0], k
    assert len(a[k][1]) == len(b[k][1]), k
    for x, y in zip(a[k][1], b[k][1]):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6, err_msg=str(k))


def both(fn):
  return fn(fnnx), fn(pynnx)


def test_dense_matches_flax():
  def run(lib):
    model = lib.bridge.ToNNX(nn.Dense(3), rngs=lib.Rngs(0)).lazy_init(X)
    return model(X), flat(lib, lib.state(model)), type(model.kernel).__name__

  (yf, sf, tf), (yp, sp, tp) = both(run)
  np.testing.assert_allclose(yf, yp)
  same(sf, sp)
  assert tf == tp == "Param"
  assert ("kernel",) in sp and ("to_nnx__rngs", "default", "count") in sp


def test_nested_collections_update_as_in_flax():
  def run(lib):
    model = lib.bridge.ToNNX(Outer(), rngs=lib.Rngs(0, dropout=1))
    lib.bridge.lazy_init(model, X)
    after_init = flat(lib, lib.state(model))
    y1 = model(X, train=True, mutable=["batch_stats"])
    y2 = model(X, train=True, mutable=True)  # intermediates too
    y3 = model(X, train=True, mutable=True)  # sow appends to the existing tuple
    y4 = model(X)  # mutable defaults to none: nothing changes but the rng counters
    return [y1, y2, y3, y4], after_init, flat(lib, lib.state(model))

  (yf, initf, sf), (yp, initp, sp) = both(run)
  for a, b in zip(yf, yp):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  same(initf, initp)
  same(sf, sp)
  assert sp[("inner", "BatchNorm_0", "mean")][0] == "BatchStat"
  assert sp[("inner", "h")][0] == "Intermediate" and len(sp[("inner", "h")][1]) == 2


def test_train_step_under_jit_matches_flax():
  def run(lib):
    model = lib.bridge.ToNNX(Outer(), rngs=lib.Rngs(0, dropout=1)).lazy_init(X)
    opt = lib.Optimizer(model, optax.sgd(0.1), wrt=lib.Param)

    @lib.jit
    def step(model, opt, x):
      def loss(model):
        return (model(x, train=True, mutable=["batch_stats"]) ** 2).mean()

      value, grads = lib.value_and_grad(loss)(model)
      opt.update(model, grads)
      return value

    losses = [step(model, opt, X) for _ in range(3)]
    return losses, flat(lib, lib.state(model))

  (lf, sf), (lp, sp) = both(run)
  np.testing.assert_allclose(lf, lp, rtol=1e-6)
  same(sf, sp)


def test_linen_methods_by_name_and_rngs_override():
  def run(lib):
    model = lib.bridge.ToNNX(Outer(), rngs=lib.Rngs(0, dropout=1)).lazy_init(X)
    doubled = model.double(jnp.ones(2))
    y1 = model(X, train=True, rngs=lib.Rngs(3, dropout=4), mutable=["batch_stats"])
    y2 = model(X, rngs=jax.random.key(5), method="__call__")  # a key: Linen's params stream
    return [doubled, y1, y2], flat(lib, lib.state(model))

  (of, sf), (op, sp) = both(run)
  for a, b in zip(of, op):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  same(sf, sp)


def test_partition_metadata_is_kept():
  class Sharded(nn.Module):
    @nn.compact
    def __call__(self, x):
      w = self.param("w", nn.with_partitioning(nn.initializers.ones, ("a", None)), (4, 2))
      v = self.param(
        "v", nn.with_logical_partitioning(nn.initializers.ones, ("emb", "mlp")), (4, 2)
      )
      return x @ w + x @ v

  def run(lib):
    with lib.use_eager_sharding(False):
      model = lib.bridge.ToNNX(Sharded(), rngs=lib.Rngs(0)).lazy_init(X)
      specs = lib.get_partition_spec(lib.state(model, lib.Param))
      return (
        model(X),
        {k: v.get_value() for k, v in lib.to_flat_state(specs)},
        model.w.get_metadata()["linen_meta_type"],
        model.v.get_metadata()["sharding_rules"],
      )

  (yf, *rest_f), (yp, *rest_p) = both(run)
  np.testing.assert_allclose(yf, yp)
  assert rest_f == rest_p
  assert rest_p[0][("w",)] == jax.sharding.PartitionSpec("a", None)
  assert rest_p[1] is nn.Partitioned


def test_unknown_collection_gets_a_registered_type():
  class Counter(nn.Module):
    @nn.compact
    def __call__(self, x):
      n = self.variable("linen_bridge_counter", "n", lambda: jnp.zeros((), jnp.int32))
      n.value += 1
      return x

  def run(lib):
    model = lib.bridge.ToNNX(Counter()).lazy_init(X)
    model(X, mutable=["linen_bridge_counter"])
    return type(model.n).__name__, int(model.n.get_value())

  assert run(fnnx) == run(pynnx) == ("linen_bridge_counter", 2)


def test_inside_a_pynnx_module_and_through_a_bound_method():
  class Parent(pynnx.Module):
    def __init__(self, rngs):
      self.linen = pynnx.bridge.ToNNX(nn.Dense(3), rngs=rngs)
      self.head = pynnx.Linear(3, 1, rngs=rngs)

    def __call__(self, x):
      return self.head(self.linen(x))

    def features(self, x):
      return self.linen(x)

  parent = Parent(pynnx.Rngs(0))
  assert pynnx.bridge.lazy_init(parent.features, X) == parent.features
  assert parent.linen.kernel.shape == (4, 3)
  grads = pynnx.grad(lambda m: m(X).sum())(parent)
  assert grads.linen.kernel.shape == (4, 3)
  y, new = pynnx.jit(lambda m, x: (m(x), m))(parent, X)
  assert y.shape == (2, 1)


def test_structure_changes_in_tree_mode_transforms_raise_and_graph_mode_keeps_them():
  model = pynnx.bridge.ToNNX(Outer(), rngs=pynnx.Rngs(0, dropout=1))
  with pytest.raises(pynnx.StructureChangeError, match=r"added args\[0\]\.inner"):
    pynnx.jit(lambda m, x: pynnx.bridge.lazy_init(m, x) and None)(model, X)
  model.lazy_init(X)
  with pytest.raises(pynnx.StructureChangeError, match=r"added args\[0\]\.inner\.h"):
    pynnx.jit(lambda m, x: m(x, mutable=["intermediates"]))(model, X)
  assert "h" not in model.inner  # nothing leaked from the failed call
  pynnx.jit(lambda m, x: m(x, mutable=["intermediates"]), graph=True, graph_updates=True)(model, X)
  assert isinstance(model.inner["h"], pynnx.Intermediate)


def test_split_merge_round_trip():
  model = pynnx.bridge.ToNNX(Outer(), rngs=pynnx.Rngs(0, dropout=1)).lazy_init(X)
  graphdef, state = pynnx.split(model)
  again = pynnx.merge(graphdef, state)
  np.testing.assert_allclose(again(X), model(X))


def test_variables_helpers_match_flax():
  def run(lib):
    linen = {"params": {"a": {"w": jnp.ones(2)}}, "batch_stats": {"a": {"m": jnp.zeros(2)}}}
    attrs = lib.bridge.variables.linen_vars_to_nnx_attrs(linen)
    back = lib.bridge.variables.nnx_attrs_to_linen_vars(attrs)
    boxed = lib.bridge.variables.nnx_attrs_to_linen_vars({"b": lib.Param(jnp.ones(1), note="x")})
    return (
      {k: type(v).__name__ for k, v in attrs["a"].items()},
      jax.tree.map(np.asarray, back),
      boxed["params"]["b"].metadata["note"],
      type(lib.bridge.variables.to_nnx_var("params", boxed["params"]["b"])).__name__,
    )

  f, p = both(run)
  assert f[0] == p[0] == {"w": "Param", "m": "BatchStat"}
  assert jax.tree.structure(f[1]) == jax.tree.structure(p[1])
  assert f[2:] == p[2:] == ("x", "Param")


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_bad_constructor_arguments():
  with pytest.raises(pynnx.BridgeError, match=r"expects a flax.linen Module instance, got Linear"):
    pynnx.bridge.ToNNX(pynnx.Linear(2, 2, rngs=pynnx.Rngs(0)))
  with pytest.raises(pynnx.BridgeError, match=r"got int; pass `rngs=nnx.Rngs\(3\)`"):
    pynnx.bridge.ToNNX(nn.Dense(2), rngs=3)


def test_call_before_lazy_init():
  model = pynnx.bridge.ToNNX(nn.Dense(2), rngs=pynnx.Rngs(0))
  with pytest.raises(
    pynnx.LinenBridgeError, match=r"ToNNX\(Dense\) has no variables yet.*lazy_init"
  ):
    model(X)


def test_lazy_init_needs_a_module_or_its_method():
  with pytest.raises(pynnx.LinenBridgeError, match=r"got function; pass the model"):
    pynnx.bridge.lazy_init(lambda x: x, X)


def test_unknown_attribute():
  model = pynnx.bridge.ToNNX(nn.Dense(2), rngs=pynnx.Rngs(0))
  with pytest.raises(AttributeError, match=r"ToNNX has no attribute 'nope'"):
    model.nope  # noqa: B018


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_variables_helper_errors():
  v = pynnx.bridge.variables
  with pytest.raises(pynnx.LinenBridgeError, match=r"a/w is in both collection 'params' and"):
    v.linen_vars_to_nnx_attrs({"params": {"a": {"w": 1.0}}, "batch_stats": {"a": {"w": 2.0}}})
  with pytest.raises(pynnx.LinenBridgeError, match=r"a\.w is a float, not an nnx.Variable"):
    v.nnx_attrs_to_linen_vars({"a": {"w": 1.0}})
  with pytest.raises(pynnx.LinenBridgeError, match=r"expects a nested dict, got list"):
    v.nnx_attrs_to_linen_vars([1])
  with pytest.raises(pynnx.LinenBridgeError, match=r"expects an nnx.Variable, got float"):
    v.to_linen_var(1.0)
  box = v.NNXMeta(pynnx.BatchStat, jnp.ones(1), {})
  with pytest.raises(pynnx.LinenBridgeError, match=r"NNXMeta box of a BatchStat.*'params'"):
    v.to_nnx_var("params", box)


def test_pynnx_imports_without_flax_and_the_linen_names_say_what_is_missing():
  import subprocess
  import sys

  code = (
    "import sys; sys.modules['flax'] = None\n"
    "import pynnx\n"
    "assert 'ToNNX' in dir(pynnx.bridge) and pynnx.bridge.from_equinox\n"
    "try:\n"
    "  pynnx.bridge.ToNNX\n"
    "except ImportError as e:\n"
    "  print(e)\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
  )
  assert "nnx.bridge.ToNNX wraps Flax Linen and needs flax: `pip install flax`." in out.stdout


def test_flax_is_loaded_only_by_the_linen_names():
  import subprocess
  import sys

  code = "import sys, pynnx; print(sorted(m for m in sys.modules if m.startswith('flax.linen')))"
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
  )
  assert out.stdout.strip() == "[]"


def test_unhashable_linen_module_works_under_jit():
  # nn.Sequential holds a list: unhashable, yet it must be a static attribute.
  def run(lib):
    seq = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
    model = lib.bridge.ToNNX(seq, rngs=lib.Rngs(0)).lazy_init(X)
    step = lib.jit(lambda m, x: m(x))
    return [step(model, X), step(model, X)], flat(lib, lib.state(model)), model.to_nnx__module

  (yf, sf, mf), (yp, sp, mp) = both(run)
  for a, b in zip(yf, yp):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  same(sf, sp)
  assert mp == mf and isinstance(mp, nn.Sequential)
