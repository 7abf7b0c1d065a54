"""Filters: every kind of filter, their combinations and the errors of malformed ones."""

import jax.numpy as jnp
import pytest

import pynnx as nnx
from pynnx import filterlib

P = nnx.Param(jnp.zeros(()))
B = nnx.BatchStat(jnp.zeros(()))
K = nnx.RngKey(jnp.zeros(()), tag="dropout")
C = nnx.RngCount(jnp.zeros(()), tag="params")


def matches(f, path=("layer", "kernel"), x=P):
  return filterlib.to_predicate(f)(path, x)


def test_type_filter_and_subclasses():
  assert matches(nnx.Param) and not matches(nnx.Param, x=B)
  assert matches(nnx.Variable, x=B)
  assert matches(nnx.RngState, x=K) and matches(nnx.RngState, x=C)
  assert matches(nnx.OfType(nnx.Param))
  assert not matches(nnx.OfType(nnx.BatchStat))


def test_everything_and_nothing():
  for f in (..., True, nnx.Everything()):
    assert matches(f) and matches(f, x=B)
  for f in (None, False, nnx.Nothing()):
    assert not matches(f) and not matches(f, x=B)
  assert repr(nnx.Everything()) == "Everything()" and repr(nnx.Nothing()) == "Nothing()"


def test_tag_filters():
  assert matches("dropout", x=K) and not matches("dropout", x=C)
  assert matches(nnx.WithTag("params"), x=C)
  assert not matches("dropout", x=P)  # no tag at all


def test_path_contains():
  assert matches(nnx.PathContains("kernel"))
  assert not matches(nnx.PathContains("ker"))
  assert matches(nnx.PathContains("ker", exact=False))
  assert matches(nnx.PathContains(3), path=("layers", 3, "bias"))


def test_callable_filter():
  assert matches(lambda path, x: path[-1] == "kernel")
  assert not matches(lambda path, x: path[-1] == "bias")


def test_combinators():
  assert matches((nnx.BatchStat, nnx.Param))
  assert matches([nnx.BatchStat, "nope", nnx.Param])
  assert matches(nnx.Any(nnx.BatchStat, nnx.PathContains("kernel")), x=B)
  assert matches(nnx.All(nnx.Param, nnx.PathContains("kernel")))
  assert not matches(nnx.All(nnx.Param, nnx.PathContains("bias")))
  assert matches(nnx.Not(nnx.BatchStat))
  assert not matches(nnx.Not(nnx.Param))
  assert matches(nnx.All(nnx.RngState, nnx.Not("params")), x=K)
  assert not matches(nnx.All(nnx.RngState, nnx.Not("params")), x=C)


def test_filters_are_hashable_and_comparable():
  assert nnx.Any(nnx.Param, "a") == nnx.Any(nnx.Param, "a")
  assert nnx.All(nnx.Param) == nnx.All(nnx.Param)
  assert nnx.Not(nnx.Param) == nnx.Not(nnx.Param)
  assert nnx.Not(nnx.Param) != nnx.Not(nnx.BatchStat)
  assert len({nnx.Not(nnx.Param), nnx.Not(nnx.Param), nnx.PathContains("a")}) == 2
  assert repr(nnx.Not(nnx.Param)).startswith("Not(OfType(")
  assert repr(nnx.Any(nnx.Param)).startswith("Any(")
  assert repr(nnx.All(nnx.Param)).startswith("All(")


def test_to_predicate_returns_filter_objects_unchanged():
  f = nnx.PathContains("x")
  assert filterlib.to_predicate(f) is f
  assert isinstance(filterlib.to_predicate(nnx.Param), nnx.OfType)
  assert isinstance(filterlib.to_predicate("t"), nnx.WithTag)
  assert isinstance(filterlib.to_predicate((nnx.Param,)), nnx.Any)


def test_not_a_filter_raises():
  with pytest.raises(nnx.FilterError, match="3 is not a filter"):
    filterlib.to_predicate(3)
  with pytest.raises(ValueError, match="is not a filter"):
    filterlib.to_predicate(2.5)


def test_a_variable_is_not_a_filter_although_it_is_callable():
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  assert callable(model.kernel)  # Variables forward calls to their value, as in Flax
  with pytest.raises(nnx.FilterError, match=r"A Param Variable was given as a filter.*nnx\.Param"):
    nnx.state(model, model.kernel)


def test_ellipsis_must_be_last():
  with pytest.raises(
    nnx.FilterError, match=r"can only be the last filter, but it is filter 0 of 2"
  ):
    filterlib.filters_to_predicates((..., nnx.Param))
  with pytest.raises(nnx.FilterError, match="filter 1 of 3"):
    filterlib.filters_to_predicates((nnx.Param, True, nnx.BatchStat))
  assert len(filterlib.filters_to_predicates((nnx.Param, ...))) == 2


def test_filters_in_split():
  class M(nnx.Module):
    def __init__(self):
      self.kernel = nnx.Param(jnp.zeros(()))
      self.bias = nnx.Param(jnp.zeros(()))
      self.mean = nnx.BatchStat(jnp.zeros(()))

  m = M()
  _, kernels, rest = nnx.split(m, nnx.All(nnx.Param, nnx.PathContains("kernel")), ...)
  assert list(kernels) == ["kernel"] and list(rest) == ["bias", "mean"]
  _, not_params, params = nnx.split(m, nnx.Not(nnx.Param), nnx.Param)
  assert list(not_params) == ["mean"] and list(params) == ["bias", "kernel"]
  # the first matching filter wins
  _, a, b = nnx.split(m, nnx.Variable, nnx.Param)
  assert len(a) == 3 and len(b) == 0
