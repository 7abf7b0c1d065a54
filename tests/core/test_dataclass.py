import dataclasses

import jax
import jax.numpy as jnp
import pytest

import pynnx as nnx


@nnx.dataclass
class Affine(nnx.Module):
  w: nnx.Param
  scale: float = nnx.data(default=1.0)
  name: str = nnx.static(default="affine")
  offset: nnx.Data[float] = 0.5
  tag: nnx.Static[tuple] = ()

  def __call__(self, x):
    return x * self.w[...] * self.scale + self.offset


def test_dataclass_fields_follow_declarations():
  a = Affine(nnx.Param(jnp.ones(2)), scale=2.0)
  leaves = jax.tree.leaves(a)
  assert len(leaves) == 3  # w, scale and offset are data; name and tag static
  assert a.name == "affine" and a.tag == ()
  assert dataclasses.is_dataclass(a)
  # data fields are traced: no retrace when they change
  traces = []

  @jax.jit
  def f(a, x):
    traces.append(1)
    return a(x)

  f(a, jnp.ones(2))
  f(Affine(nnx.Param(jnp.ones(2)), scale=3.0), jnp.ones(2))
  assert len(traces) == 1


def test_dataclass_is_frozen_after_construction():
  a = Affine(nnx.Param(jnp.ones(2)))
  with pytest.raises(nnx.FrozenModuleError, match="Cannot set attribute 'scale'"):
    a.scale = 3.0


def test_register_data_type_and_is_data():
  class Blob:
    pass

  nnx.register_data_type(Blob)

  class Holder(nnx.Module):
    def __init__(self):
      self.blob = Blob()

  assert nnx.is_data(Blob()) and not nnx.is_data(3)
  assert "blob" in Holder()._pynnx_get_meta().data_keys
