import jax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import pynnx as nnx

INIT = nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model"))


@pytest.mark.parametrize(
  "make",
  [
    lambda: nnx.Linear(2, 4, kernel_init=INIT, rngs=nnx.Rngs(0)),
    lambda: nnx.LinearGeneral(
      2,
      (2, 4),
      kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, None, "model")),
      rngs=nnx.Rngs(0),
    ),
  ],
)
def test_with_partitioning_records_names_and_get_partition_spec(make):
  layer = make()
  specs = nnx.get_partition_spec(nnx.state(layer))
  assert specs["kernel"][...][-1] == "model"
  assert specs["bias"][...] == P()


def test_get_named_sharding_and_device_put():
  mesh = jax.sharding.Mesh(jax.devices()[:2], ("model",))
  layer = nnx.Linear(2, 4, kernel_init=INIT, rngs=nnx.Rngs(0))
  shardings = nnx.get_named_sharding(nnx.state(layer), mesh)
  assert shardings["kernel"][...] == NamedSharding(mesh, P(None, "model"))
  placed = jax.device_put(nnx.state(layer), shardings)
  assert placed["kernel"][...].sharding == NamedSharding(mesh, P(None, "model"))


def test_with_metadata_and_vmap_partition_name():
  init = nnx.with_metadata(nnx.initializers.zeros, out_sharding=("model",), note="x")
  p = nnx.Param(init(jax.random.key(0), (3,)))
  assert p.get_metadata("note") == "x"

  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make(key):
    return nnx.Param(init(key, (3,)))

  stacked = make(jax.random.split(jax.random.key(0), 2))
  assert stacked.get_metadata("out_sharding") == ("layers", "model")
  assert stacked[...].shape == (2, 3)


def test_eval_shape_uses_sharding_metadata_under_a_mesh():
  mesh = jax.sharding.Mesh(jax.devices()[:2], ("model",))
  with jax.set_mesh(mesh):
    abstract = nnx.eval_shape(lambda: nnx.Linear(2, 4, kernel_init=INIT, rngs=nnx.Rngs(0)))
  assert abstract.kernel[...].sharding.spec == P(None, "model")
  assert isinstance(abstract.kernel[...], jax.ShapeDtypeStruct)


def test_partition_specs_follow_logical_axis_rules_and_sharding_rules():
  import jax.numpy as jnp

  p = nnx.Param(jnp.ones((2, 4)), out_sharding=("embed", "mlp"))
  local = nnx.Param(jnp.ones((2, 4)), out_sharding=("embed", "mlp"), sharding_rules=(("mlp", "x"),))
  assert nnx.get_partition_spec(p).value == P("embed", "mlp")  # no rules: the names as given
  assert nnx.get_partition_spec(local).value == P("embed", "x")
  mesh = jax.make_mesh((2, 4), ("data", "model"))
  with nnx.logical_axis_rules([("embed", None), ("mlp", "model")]):
    assert nnx.get_partition_spec(p).value == P(None, "model")
    assert nnx.get_named_sharding(p, mesh).value.spec == P(None, "model")
    with pytest.raises(nnx.AxisSpecError, match="Inconsistent logical axis rules for 'mlp'"):
      nnx.get_partition_spec(local)  # Flax raises a ValueError too
  with nnx.logical_axis_rules([("embed", None), ("mlp", "x")]):
    assert nnx.get_partition_spec(local).value == P(None, "x")  # agreeing rules are fine
