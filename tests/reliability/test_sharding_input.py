"""Sharding input: mesh axes and logical rules place values; a missing mesh is an error.

(A name that is not an axis of the current mesh is kept as metadata only, a documented
difference from Flax, which raises: see docs/migrating.md, "Eager sharding".)
"""

import jax
import pytest

import pynnx as nnx


@pytest.fixture
def mesh():
  return jax.make_mesh((2, 4), ("data", "model"))


def _linear(nnx, names):
  init = nnx.with_partitioning(nnx.initializers.lecun_normal(), names)
  return nnx.Linear(4, 8, kernel_init=init, rngs=nnx.Rngs(0))


def test_known_axes_and_logical_rules_place_the_value(mesh):
  with jax.set_mesh(mesh):
    layer = _linear(nnx, ("data", "model"))
    assert layer.kernel[...].sharding.spec == jax.sharding.PartitionSpec("data", "model")
    with nnx.logical_axis_rules([("embed", "data"), ("mlp", "model")]):
      layer = _linear(nnx, ("embed", "mlp"))
    assert layer.kernel[...].sharding.spec == jax.sharding.PartitionSpec("data", "model")


def test_unknown_names_without_eager_sharding_stay_metadata(mesh):
  with jax.set_mesh(mesh), nnx.use_eager_sharding(False):
    layer = _linear(nnx, ("embed", "mlp"))
  assert layer.kernel.get_metadata("out_sharding") == ("embed", "mlp")
  assert nnx.get_partition_spec(nnx.state(layer))["kernel"][...] == jax.sharding.PartitionSpec(
    "embed", "mlp"
  )


@pytest.mark.no_typecheck("passes mistyped arguments on purpose")
def test_get_named_sharding_needs_a_mesh():
  state = nnx.state(_linear(nnx, ("data", "model")))
  with pytest.raises(nnx.ArgumentTypeError, match=r"needs a jax.sharding.Mesh, got NoneType"):
    nnx.get_named_sharding(state, None)
