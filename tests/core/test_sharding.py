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
