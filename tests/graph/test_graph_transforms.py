"""Graph mode through the transforms: sharing kept, structural updates, graph-only specs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import pynnx as nnx


class Tied(nnx.Module):
  def __init__(self, rngs):
    self.enc = nnx.Linear(2, 2, rngs=rngs)
    self.dec = nnx.Linear(2, 2, rngs=rngs)
    self.dec_kernel = self.enc.kernel  # the same Param at two paths

  def __call__(self, x):
    return self.dec(x @ self.dec_kernel[...])


class Sower(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.ones(2))

  def __call__(self, x):
    self.sow(nnx.Intermediate, "h", x * self.w[...])
    return x * self.w[...]


X = jnp.ones((3, 2))


def test_tree_mode_rejects_sharing_that_graph_mode_keeps():
  m = Tied(nnx.Rngs(0))
  f = lambda m, x: m(x)  # noqa: E731
  with pytest.raises(
    nnx.SharedReferenceError, match=r"(?s)m\.dec_kernel\n  m\.enc\.kernel.*graph=True"
  ):
    nnx.jit(f)(m, X)
  np.testing.assert_allclose(nnx.jit(f, graph=True)(m, X), m(X), rtol=1e-6)


def test_jit_graph_updates_shared_param_once_and_returns_inputs_by_identity():
  m = Tied(nnx.Rngs(0))
  k0 = m.enc.kernel[...]

  @nnx.jit(graph=True)
  def step(m):
    m.dec_kernel[...] = m.dec_kernel[...] + 1.0
    return m

  assert step(m) is m
  assert m.dec_kernel is m.enc.kernel
  np.testing.assert_allclose(m.enc.kernel[...], k0 + 1.0)


def test_grad_graph_mode_returns_state_with_shared_param_once():
  m = Tied(nnx.Rngs(0))
  grads = nnx.grad(lambda m: jnp.sum(m(X)), graph=True)(m)
  assert isinstance(grads, nnx.State)
  paths = [p for p, _ in grads.flat_state()]
  assert ("dec_kernel",) in paths and ("enc", "kernel") not in paths

  # equals the tree-mode gradient of an untied copy, summed over both uses
  def untied(k_enc, k_dec_use):
    y = (X @ k_dec_use) @ m.dec.kernel[...] + m.dec.bias[...]
    return jnp.sum(y)

  g_use = jax.grad(untied, argnums=1)(m.enc.kernel[...], m.enc.kernel[...])
  np.testing.assert_allclose(grads["dec_kernel"][...], g_use, rtol=1e-5)


def test_structural_updates_propagate_with_graph_updates():
  s = Sower()
  nnx.jit(lambda s, x: s(x), graph=True)(s, jnp.ones(2))
  assert isinstance(s.h, nnx.Intermediate)
  np.testing.assert_allclose(s.h[...][0], jnp.ones(2))
  popped = nnx.pop(s, nnx.Intermediate)
  assert "h" in popped and not hasattr(s, "h")


def test_structural_update_with_graph_updates_false_raises():
  with pytest.raises(nnx.StructureChangeError, match="graph_updates=False"):
    nnx.jit(lambda s, x: s(x), graph=True, graph_updates=False)(Sower(), jnp.ones(2))


def test_explicit_graph_updates_true_opts_a_graph_none_call_in():
  s = Sower()
  nnx.jit(lambda s, x: s(x), graph_updates=True)(s, jnp.ones(2))  # graph=None: graph mode
  assert isinstance(s.h, nnx.Intermediate)
  with nnx.set_graph_updates(True):  # the setting alone does not change the mode
    with pytest.raises(nnx.StructureChangeError, match="tree-mode transform"):
      nnx.jit(lambda s, x: s(x))(Sower(), jnp.ones(2))
  with pytest.raises(nnx.StructureChangeError, match="tree-mode transform"):  # graph=False wins
    nnx.jit(lambda s, x: s(x), graph=False, graph_updates=True)(Sower(), jnp.ones(2))
  g = nnx.grad(lambda m: jnp.sum(m(X)), graph_updates=True)(Tied(nnx.Rngs(0)))  # sharing kept
  assert isinstance(g, nnx.State)


def test_structural_update_inside_vmap_raises():
  with pytest.raises(
    nnx.StructureChangeError,
    match=r"pynnx\.vmap maps, scans or loops over it, so its structure must stay fixed",
  ):
    nnx.vmap(lambda s, x: s(x), in_axes=(None, 0), graph=True)(Sower(), jnp.ones((3, 2)))


def test_set_graph_mode_switches_the_default():
  m = Tied(nnx.Rngs(0))
  with nnx.set_graph_mode(True):
    g = nnx.grad(lambda m: jnp.sum(m(X)))(m)
  assert isinstance(g, nnx.State)
  with pytest.raises(nnx.SharedReferenceError):
    nnx.grad(lambda m: jnp.sum(m(X)))(m)


def test_vmap_state_axes_and_scan_in_graph_mode_keep_sharing():
  class Pair(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.arange(3.0))
      self.alias = self.w
      self.count = nnx.BatchStat(jnp.zeros(3))

  m = Pair()

  @nnx.vmap(in_axes=(nnx.StateAxes({nnx.Param: 0, nnx.BatchStat: 0}),))
  def f(m):
    m.count[...] += 1.0
    return m.w[...] * m.alias[...]

  np.testing.assert_allclose(f(m), jnp.arange(3.0) ** 2)
  np.testing.assert_allclose(m.count[...], jnp.ones(3))
  assert m.alias is m.w

  @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), graph=True)
  def body(m, x):
    m.count[...] += x
    return m, m.w[...] * x

  out_m, ys = body(m, jnp.ones((4, 3)))
  assert out_m is m and m.alias is m.w
  np.testing.assert_allclose(m.count[...], jnp.full(3, 5.0))
  assert ys.shape == (4, 3)


def test_cond_and_fori_loop_in_graph_mode():
  m = Tied(nnx.Rngs(0))
  k0 = m.enc.kernel[...]

  def bump(m):
    m.dec_kernel[...] += 1.0

  nnx.cond(True, bump, lambda m: None, m, graph=True)
  np.testing.assert_allclose(m.enc.kernel[...], k0 + 1.0)

  def body(i, m):
    m.dec_kernel[...] += 1.0
    return m

  out = nnx.fori_loop(0, 3, body, m, graph=True)
  assert out is m and m.dec_kernel is m.enc.kernel
  np.testing.assert_allclose(m.enc.kernel[...], k0 + 4.0)


def test_shard_map_state_sharding_matches_unsharded():
  mesh = jax.sharding.Mesh(jax.devices()[:4], ("model",))
  m = nnx.Linear(2, 8, use_bias=False, rngs=nnx.Rngs(0))
  spec = nnx.StateSharding({nnx.PathContains("kernel"): P(None, "model")})

  @nnx.shard_map(mesh=mesh, in_specs=(spec, P()), out_specs=P(None, "model"))
  def f(m, x):
    return x @ m.kernel[...]

  np.testing.assert_allclose(f(m, X), m(X), rtol=1e-6)


def test_remat_and_eval_shape_in_graph_mode():
  m = Tied(nnx.Rngs(0))
  g1 = nnx.grad(lambda m: jnp.sum(nnx.remat(lambda m: m(X), graph=True)(m)), graph=True)(m)
  g2 = nnx.grad(lambda m: jnp.sum(m(X)), graph=True)(m)
  np.testing.assert_allclose(g1["dec_kernel"][...], g2["dec_kernel"][...], rtol=1e-6)
  abstract = nnx.eval_shape(lambda: Tied(nnx.Rngs(0)), graph=True)
  assert abstract.dec_kernel is abstract.enc.kernel
  assert isinstance(abstract.enc.kernel[...], jax.ShapeDtypeStruct)


# --- graph-only features and their tree-mode errors ---------------------------------------


def test_diffstate_with_graph_false_explains_the_fix():
  diff = nnx.DiffState(0, nnx.PathContains("kernel"))
  with pytest.raises(nnx.GraphModeRequiredError, match=r"need graph mode.*Pass graph=True"):
    nnx.grad(lambda m: jnp.sum(m(X)), argnums=diff, graph=False)(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


def test_diffstate_with_graph_none_opts_in():
  diff = nnx.DiffState(0, nnx.PathContains("kernel"))
  g = nnx.grad(lambda m: jnp.sum(m(X)), argnums=diff)(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
  assert list(g.keys()) == ["kernel"]


def test_state_axes_with_graph_false_raises():
  axes = nnx.StateAxes({nnx.Param: 0, ...: None})
  with pytest.raises(nnx.GraphModeRequiredError, match="graph"):
    nnx.vmap(lambda m: m.kernel[...], in_axes=(axes,), graph=False)(
      nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    )


def test_state_sharding_with_graph_false_raises():
  mesh = jax.sharding.Mesh(jax.devices()[:2], ("d",))
  spec = nnx.StateSharding({nnx.Param: P()})
  with pytest.raises(nnx.GraphModeRequiredError, match="graph"):
    nnx.shard_map(lambda m: m.kernel[...], mesh=mesh, in_specs=(spec,), out_specs=P(), graph=False)(
      nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    )


def test_state_axes_leaving_variables_unmatched_names_them():
  m = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  with pytest.raises(nnx.FilterError, match=r"bias|kernel"):
    nnx.vmap(lambda m: m.kernel[...], in_axes=(nnx.StateAxes({nnx.BatchStat: 0}),))(m)


def test_shared_variable_with_two_in_axes_names_both_paths():
  class Holder(nnx.Module):
    def __init__(self, k):
      self.k = k

  a = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  h = Holder(a.kernel)
  with pytest.raises(
    nnx.AxisSpecError, match=r"(?s)two different in_axes:\n  a\.kernel: None\n  h\.k: 0"
  ):
    nnx.vmap(lambda a, h: a.kernel[...], in_axes=(None, 0), graph=True)(a, h)


def test_shared_variable_with_two_in_specs_names_both_paths():
  class Holder(nnx.Module):
    def __init__(self, k):
      self.k = k

  mesh = jax.sharding.Mesh(jax.devices()[:2], ("d",))
  a = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  h = Holder(a.kernel)
  with pytest.raises(nnx.AxisSpecError, match=r"(?s)two different in_specs"):
    nnx.shard_map(
      lambda a, h: a.kernel[...], mesh=mesh, in_specs=(P(), P("d")), out_specs=P(), graph=True
    )(a, h)
