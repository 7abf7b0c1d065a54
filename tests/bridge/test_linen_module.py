"""nnx.bridge.Module / compact (pynnx Modules written Linen-style), against flax.nnx.bridge.

Each module family is defined once per library (``lib`` = ``flax.nnx`` or ``pynnx``), run
through ``init`` / ``apply``, and the variable dicts and outputs compared.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pynnx

fnnx = pytest.importorskip("flax.nnx")

X = jnp.arange(6.0).reshape(2, 3) / 6
# Flax 0.12.8 deprecates `.value`; the snippet is shared with pynnx (where it is fine).
pytestmark = pytest.mark.filterwarnings("ignore:'.value' access is now deprecated")


def families(lib):
  bridge = lib.bridge

  class Dense(bridge.Module):
    features: int

    @bridge.compact
    def __call__(self, x):
      w = self.param("kernel", lib.initializers.lecun_normal(), (x.shape[-1], self.features))
      b = self.param("bias", lib.initializers.zeros_init(), (self.features,))
      return x @ w + b

  class MLP(bridge.Module):
    hidden: int

    @bridge.compact
    def __call__(self, x):
      x = lib.relu(Dense(self.hidden)(x))
      count = self.variable("counter", "count", lambda: jnp.zeros((), jnp.int32))
      count.value += 1
      x = x + 0.1 * jax.random.normal(self.make_rng("noise"), x.shape)
      return Dense(2, name="out")(x)

  class WithSetup(bridge.Module):
    def setup(self):
      self.first = Dense(4)
      self.second = lib.Linear(4, 2, rngs=lib.Rngs(0))

    def __call__(self, x):
      return self.second(self.first(x))

    def features(self, x):
      return self.first(x)

  return Dense, MLP, WithSetup


def assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)


def test_compact_modules_match_flax():
  def run(lib):
    _, mlp, _ = families(lib)
    rngs = {"params": jax.random.key(0), "noise": jax.random.key(1)}
    variables = mlp(8).init(rngs, X)
    y, updates = mlp(8).apply(variables, X, rngs={"noise": jax.random.key(2)}, mutable=["counter"])
    return variables, y, updates["counter"]

  f, p = run(fnnx), run(pynnx)
  for a, b in zip(f, p):
    assert_same_tree(a, b)
  variables = p[0]
  assert set(variables["params"]) == {"Dense_0", "out"}
  assert int(p[2]["count"]) == 2


def test_setup_modules_and_plain_layers_match_flax():
  def run(lib):
    _, _, with_setup = families(lib)
    module = with_setup()
    variables = module.init(jax.random.key(0), X)
    bumped = jax.tree.map(lambda a: a + 1.0, variables)  # apply must use these, not a re-init
    return variables, module.apply(bumped, X), module.apply(variables, X, method="features")

  f, p = run(fnnx), run(pynnx)
  for a, b in zip(f, p):
    assert_same_tree(a, b)
  assert p[0]["params"]["second"]["kernel"].shape == (4, 2)


def test_init_with_output_and_int_seed_match_flax():
  def run(lib):
    dense, _, _ = families(lib)
    return dense(3).init_with_output(7, X)

  (yf, vf), (yp, vp) = run(fnnx), run(pynnx)
  np.testing.assert_allclose(yf, yp, rtol=1e-6)
  assert_same_tree(vf, vp)


def test_partition_metadata_round_trips():
  def run(lib):
    class Sharded(lib.bridge.Module):
      @lib.bridge.compact
      def __call__(self, x):
        init = lib.bridge.with_partitioning(lib.initializers.ones, ("data", None))
        return x @ self.param("w", init, (3, 2))

    with lib.use_eager_sharding(False):
      variables = Sharded().init(0, X)
      return variables, Sharded().apply(variables, X, mutable=True)

  (vf, (yf, uf)), (vp, (yp, up)) = run(fnnx), run(pynnx)
  assert type(vp["params"]["w"]).__name__ == type(vf["params"]["w"]).__name__ == "Partitioned"
  assert vp["params"]["w"].names == vf["params"]["w"].names == ("data", None)
  np.testing.assert_allclose(yf, yp)
  assert type(up["params"]["w"]).__name__ == type(uf["params"]["w"]).__name__ == "Partitioned"


def test_a_compact_method_called_twice_reuses_its_submodule_params():
  # Linen's rule (same name -> same params). Flax's bridge re-initializes the second
  # submodule instead (and fails in apply without a params key): docs/migrating.md.
  dense, _, _ = families(pynnx)

  class Twice(pynnx.bridge.Module):
    @pynnx.bridge.compact
    def helper(self, x):
      return dense(3)(x)

    def __call__(self, x):
      return self.helper(x) - self.helper(x)

  variables = Twice().init(jax.random.key(0), X)
  assert list(variables["params"]) == ["Dense_0"]
  np.testing.assert_allclose(Twice().apply(variables, X), 0.0)


def test_the_module_itself_is_not_changed_by_init():
  dense, _, _ = families(pynnx)
  module = dense(3)
  module.init(jax.random.key(0), X)
  assert not pynnx.state(module)  # init worked on a clone
  assert module.features == 3


# --- errors -----------------------------------------------------------------------------------


def test_param_outside_init_or_apply():
  dense, _, _ = families(pynnx)
  with pytest.raises(pynnx.LinenBridgeError, match=r"Dense.param\('kernel'\) needs a bound"):
    dense(3)(X)


def test_stored_shape_mismatch():
  dense, _, _ = families(pynnx)
  variables = dense(3).init(jax.random.key(0), X)
  with pytest.raises(pynnx.LinenBridgeError, match=r"stored 'kernel' at kernel has shape \(3, 3\)"):
    dense(4).apply(variables, X)


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_missing_rngs():
  dense, _, _ = families(pynnx)
  with pytest.raises(pynnx.LinenBridgeError, match=r"make_rng\('params'\) needs a key"):
    dense(3).init(None, X)
  with pytest.raises(pynnx.LinenBridgeError, match=r"rngs must be an int seed.*got str"):
    dense(3).init("seed", X)


def test_bad_names_methods_and_variables():
  dense, _, _ = families(pynnx)

  class BadName(pynnx.bridge.Module):
    @pynnx.bridge.compact
    def __call__(self, x):
      return dense(3, name=3)(x)

  with pytest.raises(pynnx.LinenBridgeError, match=r"Dense\(name=...\) must be a str, got int"):
    BadName().init(0, X)

  class NoInit(pynnx.bridge.Module):
    @pynnx.bridge.compact
    def __call__(self, x):
      return self.variable("stats", "s")

  with pytest.raises(pynnx.LinenBridgeError, match=r"variable\('stats', 's'\) needs an init_fn"):
    NoInit().init(0, X)

  class Clash(pynnx.bridge.Module):
    @pynnx.bridge.compact
    def __call__(self, x):
      self.variable("batch_stats", "w", jnp.zeros, (2,))
      return self.param("w", pynnx.initializers.ones, (2,))

  with pytest.raises(pynnx.LinenBridgeError, match=r"'w' already holds a BatchStat, not a Param"):
    Clash().init(0, X)

  with pytest.raises(pynnx.LinenBridgeError, match=r"apply\(method='nope'\): not a method"):
    dense(3).apply({}, X, method="nope")

  with pytest.raises(pynnx.LinenBridgeError, match=r"belong to an nnx.bridge.Module, got Linear"):
    pynnx.bridge.compact(lambda self, x: x)(pynnx.Linear(2, 2, rngs=pynnx.Rngs(0)), X)


def test_pynnx_and_linen_submodules_inside_a_bridge_module_match_flax():
  linen = pytest.importorskip("flax.linen")

  def run(lib):
    bridge = lib.bridge

    class Compact(bridge.Module):
      @bridge.compact
      def __call__(self, x):
        x = bridge.nnx_in_bridge_mdl(lambda rngs: lib.Linear(3, 4, rngs=rngs))(x)
        return bridge.linen_in_bridge_mdl(linen.Dense(2), name="dense")(x)

    class Setup(bridge.Module):
      def setup(self):
        self.lin = bridge.nnx_in_bridge_mdl(lambda rngs: lib.Linear(3, 4, rngs=rngs))
        self.dense = bridge.linen_in_bridge_mdl(linen.Dense(2))

      def __call__(self, x):
        return self.dense(self.lin(x))

    out = []
    for cls in (Compact, Setup):
      variables = cls().init(jax.random.key(0), X)
      bumped = jax.tree.map(lambda a: a + 1.0, variables)  # apply must load these
      out += [variables, cls().apply(bumped, X)]
    return out

  f, p = run(fnnx), run(pynnx)
  for a, b in zip(f, p):
    assert_same_tree(a, b)
  assert set(p[0]["params"]) == {"Linear_0", "dense"}


def test_current_module_and_context():
  seen = []

  class Probe(pynnx.bridge.Module):
    @pynnx.bridge.compact
    def __call__(self, x):
      ctx = pynnx.bridge.current_context()
      seen.append((pynnx.bridge.current_module() is self, ctx.in_compact))
      return x

  Probe().apply({}, X)
  assert seen == [(True, True)]
  assert pynnx.bridge.current_module() is None and pynnx.bridge.current_context() is None


def test_interop_helpers_outside_a_bridge_module():
  with pytest.raises(pynnx.LinenBridgeError, match=r"nnx_in_bridge_mdl\(\) runs inside a bridge"):
    pynnx.bridge.nnx_in_bridge_mdl(lambda rngs: pynnx.Linear(2, 2, rngs=rngs))
  linen = pytest.importorskip("flax.linen")
  with pytest.raises(pynnx.LinenBridgeError, match=r"linen_in_bridge_mdl\(\) runs inside"):
    pynnx.bridge.linen_in_bridge_mdl(linen.Dense(2))


def test_a_linen_submodule_follows_the_calls_mutable_as_in_flax():
  linen = pytest.importorskip("flax.linen")

  def run(lib):
    class Norm(lib.bridge.Module):
      @lib.bridge.compact
      def __call__(self, x, train):
        bn = linen.BatchNorm(use_running_average=not train)
        return lib.bridge.linen_in_bridge_mdl(bn)(x)

    variables = Norm().init(jax.random.key(0), X, False)
    y, updates = Norm().apply(variables, X, True, mutable=["batch_stats"])
    return variables, y, updates["batch_stats"], Norm().apply(variables, X, False)

  f, p = run(fnnx), run(pynnx)
  for a, b in zip(f, p):
    assert_same_tree(a, b)
  assert float(p[2]["BatchNorm_0"]["mean"][0]) > 0  # the running mean moved
