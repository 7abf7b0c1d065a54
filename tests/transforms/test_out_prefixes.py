"""Per-output prefixes (out_shardings, out_specs, out_axes) reach each output, in both modes.

Graph mode's inner function returns the user's output beside its structural changes; a
tuple prefix must still line up with the user's tuple (it used to be matched against the
pair, so a 3-tuple failed and a 2-tuple gave its first spec to every output).
"""

import flax.nnx as fnnx
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import pynnx as nnx


@pytest.fixture
def mesh():
  return jax.sharding.Mesh(jax.devices()[:2], ("data",))


def _outputs(m, x):
  return m(x), x, jnp.sum(m(x))


@pytest.mark.parametrize("n", [2, 3])
def test_jit_out_shardings_tuple(graph, mesh, n):
  specs = (P("data"), P(), P())[:n]
  shardings = tuple(NamedSharding(mesh, s) for s in specs)
  x = jnp.ones((4, 2))

  def run(lib):
    m = lib.Linear(2, 3, rngs=lib.Rngs(0))
    f = lib.jit(lambda m, x: _outputs(m, x)[:n], out_shardings=shardings, graph=graph)
    return f(m, x)

  ours, theirs = run(nnx), run(fnnx)
  assert [o.sharding.spec for o in ours] == list(specs)
  assert [o.sharding.spec for o in theirs] == list(specs)
  for a, b in zip(ours, theirs):
    assert jnp.allclose(a, b)


def test_jit_out_shardings_single_spec_still_broadcasts(graph, mesh):
  rep = NamedSharding(mesh, P())
  m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  outs = nnx.jit(_outputs, out_shardings=rep, graph=graph)(m, jnp.ones((4, 2)))
  assert all(o.sharding.spec == P() for o in outs)


def test_jit_out_shardings_with_returned_module(graph, mesh):
  # a returned input Module (an InputRef inside) next to an array, with a spec for each
  rep = NamedSharding(mesh, P())
  m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  back, y = nnx.jit(lambda m, x: (m, m(x)), out_shardings=(rep, rep), graph=graph)(
    m, jnp.ones((4, 2))
  )
  assert back is m
  assert y.sharding.spec == P()


@pytest.mark.parametrize("n", [2, 3])
def test_shard_map_out_specs_tuple(graph, mesh, n):
  m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  specs = (P("data"), P(), P("data"))[:n]  # the second output is replicated, not split

  def body(m, x):
    y = m(x)
    return (y, jax.lax.psum(jnp.sum(y), "data"), x)[:n]

  f = nnx.shard_map(body, mesh=mesh, in_specs=(P(), P("data")), out_specs=specs, graph=graph)
  x = jnp.ones((4, 2))
  outs = f(m, x)
  assert [o.shape for o in outs] == [(4, 3), (), (4, 2)][:n]
  assert jnp.allclose(outs[0], m(x))
  assert jnp.allclose(outs[1], jnp.sum(m(x)))


@pytest.mark.parametrize("n", [2, 3])
def test_vmap_and_pmap_out_axes_tuple(graph, n):
  m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  x = jnp.ones((2, 5, 2))
  axes = (0, 1, 0)[:n]

  def body(m, x):
    y = m(x)
    return (y, y, jnp.sum(y))[:n]

  v = nnx.vmap(body, in_axes=(None, 0), out_axes=axes, graph=graph)(m, x)
  assert [o.shape for o in v] == [(2, 5, 3), (5, 2, 3), (2,)][:n]
  p = nnx.pmap(body, in_axes=(None, 0), out_axes=axes, graph=graph)(m, x)
  assert [o.shape for o in p] == [(2, 5, 3), (5, 2, 3), (2,)][:n]
  for a, b in zip(v, p):
    assert jnp.allclose(a, b)
