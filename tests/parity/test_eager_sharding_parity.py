"""Differential tests against flax.nnx 0.12.8: eager sharding of a new Variable under a mesh.

A sharding name the mesh does not have (after ``logical_axis_rules``) raises in both libraries;
with eager sharding off the names stay metadata; valid names place the value the same way.
"""

import contextlib
import warnings

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

import pynnx

fnnx = pytest.importorskip("flax.nnx")
LIBS = pytest.mark.parametrize("lib", [fnnx, pynnx], ids=["flax", "pynnx"])
AXIS_TYPES = pytest.mark.parametrize(
  "axis_type",
  [jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto],
  ids=["explicit", "auto"],
)


def mesh_of(axis_type):
  return jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)


def make(lib, names, rules=(), **metadata):
  """A (4, 8) Param with ``sharding_names=names`` created under ``logical_axis_rules(rules)``."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # Flax: `sharding_names` is deprecated
    ctx = lib.logical_axis_rules(list(rules)) if rules else contextlib.nullcontext()
    with ctx:
      return lib.Param(jnp.ones((4, 8)), sharding_names=names, **metadata)


BAD = [
  ("plain", ("data", "nope"), (), "no axis 'nope'"),
  ("tuple entry", (("data", "nope"), None), (), "no axis 'nope'"),
  ("logical without a rule", ("batch", "embed"), [("embed", "model")], "no axis 'batch'"),
  ("rule to a missing axis", (None, "embed"), [("embed", "nope")], r"\('embed', 'data'\)"),
  ("two missing", ("embed", "mlp"), (), "no axes 'embed', 'mlp'"),
]


@AXIS_TYPES
@LIBS
@pytest.mark.parametrize("names,rules", [b[1:3] for b in BAD], ids=[b[0] for b in BAD])
def test_a_name_the_mesh_lacks_raises_a_value_error(lib, names, rules, axis_type):
  with jax.set_mesh(mesh_of(axis_type)), pytest.raises(ValueError):
    make(lib, names, rules)


@pytest.mark.parametrize("names,rules,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_mesh_axis_error_message(names, rules, match):
  with jax.set_mesh(mesh_of(jax.sharding.AxisType.Explicit)):
    with pytest.raises(pynnx.MeshAxisError, match=match) as info:
      make(pynnx, names, rules)
  message = str(info.value)
  assert "nnx.Param(..., out_sharding=" in message and "its axes are ('data', 'model')" in message
  assert "eager_sharding=False" in message


def test_mesh_axis_error_names_the_rules_result():
  with jax.set_mesh(mesh_of(jax.sharding.AxisType.Explicit)):
    with pytest.raises(pynnx.MeshAxisError, match=r"after the axis rules: \(None, 'nope'\)"):
      make(pynnx, (None, "embed"), [("embed", "nope")])


@LIBS
def test_mesh_metadata_entry_is_checked_too(lib):
  with pytest.raises(ValueError):
    make(lib, ("data", "nope"), mesh=mesh_of(jax.sharding.AxisType.Explicit))


@LIBS
def test_inside_jax_jit_under_a_mesh(lib):
  @jax.jit
  def f(x):
    return lib.Param(x, sharding_names=("data", "nope"))[...]

  with jax.set_mesh(mesh_of(jax.sharding.AxisType.Explicit)), pytest.raises(ValueError):
    f(jnp.ones((4, 8)))


def test_eager_sharding_off_keeps_names_as_metadata():
  def snippet(lib):
    with jax.set_mesh(mesh_of(jax.sharding.AxisType.Explicit)):
      local = make(lib, ("data", "nope"), eager_sharding=False)
      with lib.use_eager_sharding(False):
        ambient = make(lib, ("data", "nope"))
    return [(v.get_metadata("out_sharding"), v[...].sharding.spec) for v in (local, ambient)]

  assert snippet(fnnx) == snippet(pynnx) == [(("data", "nope"), P(None, None))] * 2


@AXIS_TYPES
def test_valid_names_are_placed_the_same_way(axis_type):
  def snippet(lib):
    with jax.set_mesh(mesh_of(axis_type)):
      direct = make(lib, ("data", "model"))
      ruled = make(lib, (None, "embed"), [("embed", "model")])
    return [v[...].sharding.spec for v in (direct, ruled)]

  assert snippet(fnnx) == snippet(pynnx) == [P("data", "model"), P(None, "model")]
