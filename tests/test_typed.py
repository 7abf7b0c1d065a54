"""nnx.typed: jaxtyping annotations on Module fields and methods, checked in one memo."""

import jax
import jax.numpy as jnp
import jaxtyping
import pytest
from beartype import beartype
from jaxtyping import Array, Float, Int, jaxtyped

import pynnx as nnx


@nnx.typed
class Affine(nnx.Module):
  kernel: nnx.Param[Float[Array, "din dout"]]
  bias: nnx.Param[Float[Array, " dout"]] | None
  steps: nnx.BatchStat[Int[Array, ""]]
  name: str

  def __init__(self, din, dout, *, bias_size=None, use_bias=True, name="affine"):
    self.kernel = nnx.Param(jnp.ones((din, dout)))
    self.bias = nnx.Param(jnp.zeros((bias_size or dout,))) if use_bias else None
    self.steps = nnx.BatchStat(jnp.zeros((), jnp.int32))
    self.name = name

  @nnx.typed
  def __call__(self, x: Float[Array, "batch din"]) -> Float[Array, "batch dout"]:
    return x @ self.kernel + (0.0 if self.bias is None else self.bias[...])

  @nnx.typed
  def broken(self, x: Float[Array, "batch din"]) -> Float[Array, "batch dout"]:
    return x  # returns din features, not dout


def test_right_fields_pass():
  model = Affine(2, 3)
  assert model(jnp.ones((4, 2))).shape == (4, 3)
  assert Affine(2, 3, use_bias=False).bias is None  # `| None` allows None


def test_fields_share_one_dimension_memo():
  with pytest.raises(nnx.TypeCheckError, match=r"Affine\.bias .*dimension 'dout' is 4 here but 3"):
    Affine(2, 3, bias_size=4)


def test_failure_is_jaxtypings_error_and_a_type_error():
  with pytest.raises(jaxtyping.TypeCheckError):
    Affine(2, 3, bias_size=4)
  with pytest.raises(TypeError):
    Affine(2, 3, bias_size=4)


def test_non_array_field():
  with pytest.raises(nnx.TypeCheckError, match=r"Affine\.name should be str .*expected a str"):
    Affine(2, 3, name=3)


def test_dtype_is_checked():
  class IntKernel(Affine):
    def __init__(self):
      super().__init__(2, 3)
      self.kernel = nnx.Param(jnp.ones((2, 3), jnp.int32))

  with pytest.raises(nnx.TypeCheckError, match=r"IntKernel\.kernel.*dtype int32"):
    IntKernel()


def test_checks_run_after_the_outermost_constructor():
  class Parent(nnx.Module):
    def __init__(self):
      self.child = Affine(2, 3)
      # The parent may still fix its child before anything is checked.
      self.child.bias = nnx.Param(jnp.zeros((3,)))

  class BadParent(nnx.Module):
    def __init__(self):
      self.child = Affine(2, 3)
      self.child.bias = nnx.Param(jnp.zeros((5,)))

  Parent()
  with pytest.raises(nnx.TypeCheckError, match=r"Affine\.bias"):
    BadParent()


def test_method_arguments_see_field_dimensions():
  model = Affine(2, 3)
  with pytest.raises(nnx.TypeCheckError, match=r"__call__\(x=\).*'din' is 5 here but 2"):
    model(jnp.ones((4, 5)))


def test_return_value_is_checked():
  with pytest.raises(nnx.TypeCheckError, match=r"broken return value.*'dout' is 2 here but 3"):
    Affine(2, 3).broken(jnp.ones((4, 2)))


def test_in_and_out_of_jit():
  model = Affine(2, 3)
  forward = nnx.jit(lambda m, x: m(x))
  assert forward(model, jnp.ones((4, 2))).shape == (4, 3)
  with pytest.raises(nnx.TypeCheckError, match=r"'din' is 5 here but 2"):
    forward(model, jnp.ones((4, 5)))
  assert forward(model, jnp.ones((1, 2))).shape == (1, 3)


def test_grad_and_vmap_trace_through_checks():
  model = Affine(2, 3)
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((4, 2)))))(model)
  assert grads.kernel[...].shape == (2, 3)
  out = nnx.vmap(lambda m, x: m(x[None])[0], in_axes=(None, 0))(model, jnp.ones((5, 2)))
  assert out.shape == (5, 3)


def test_variable_where_an_array_is_expected_is_checked_by_value():
  @nnx.typed
  def matvec(w: Float[Array, "a b"], x: Float[Array, " b"]) -> Float[Array, " a"]:
    return w[...] @ x

  w = nnx.Param(jnp.ones((2, 3)))
  assert matvec(w, jnp.ones(3)).shape == (2,)
  with pytest.raises(
    nnx.TypeCheckError, match=r"matvec\(x=\).*'b' is 4 here but 3 in matvec\(w=\)"
  ):
    matvec(w, jnp.ones(4))


def test_wrong_variable_type():
  @nnx.typed
  class Holder(nnx.Module):
    w: nnx.Param[Float[Array, " n"]]

    def __init__(self):
      self.w = nnx.BatchStat(jnp.ones(2))

  with pytest.raises(nnx.TypeCheckError, match=r"Holder\.w should be Param.*expected a Param"):
    Holder()


def test_typed_rejects_other_classes():
  with pytest.raises(TypeError, match=r"nnx.typed decorates pynnx Modules.*jaxtyped"):
    nnx.typed(int)
  with pytest.raises(TypeError, match=r"nnx.typed decorates a Module class or a function"):
    nnx.typed(3)


def test_jaxtyped_with_beartype_on_functions_taking_modules():
  @jaxtyped(typechecker=beartype)
  def apply(model: Affine, x: Float[Array, "n d"]) -> Float[Array, "n e"]:
    return model(x)

  assert apply(Affine(2, 3), jnp.ones((4, 2))).shape == (4, 3)
  with pytest.raises(jaxtyping.TypeCheckError):
    apply(Affine(2, 3), jnp.ones(2))


def test_jaxtyped_with_beartype_and_variables():
  """The annotation that checks a Variable by value under jaxtyped + beartype."""

  @jaxtyped(typechecker=beartype)
  def matvec(w: Float[Array | nnx.Param, "a b"], x: Float[Array, " b"]) -> Float[Array, " a"]:
    return w[...] @ x

  assert matvec(nnx.Param(jnp.ones((2, 3))), jnp.ones(3)).shape == (2,)
  with pytest.raises(jaxtyping.TypeCheckError):
    matvec(nnx.Param(jnp.ones((2, 3))), jnp.ones(4))


def test_pynnx_nn_layers_are_typed():
  class BadBias(nnx.Linear):
    def __init__(self):
      super().__init__(2, 3, rngs=nnx.Rngs(0))
      self.bias = nnx.Param(jnp.zeros((4,)))

  with pytest.raises(nnx.TypeCheckError, match=r"BadBias\.bias .*'dout' is 4 here but 3"):
    BadBias()

  class BadScale(nnx.LayerNorm):
    def __init__(self):
      super().__init__(3, rngs=nnx.Rngs(0))
      self.bias = nnx.Param(jnp.zeros((2,)))

  with pytest.raises(nnx.TypeCheckError, match=r"BadScale\.bias .*'features' is 2 here but 3"):
    BadScale()
  conv = nnx.Conv(4, 6, (3, 3), feature_group_count=2, rngs=nnx.Rngs(0))
  assert conv.kernel.shape == (3, 3, 2, 6)
  for layer in [nnx.Linear, nnx.Conv, nnx.Embed, nnx.LayerNorm, nnx.RMSNorm, nnx.BatchNorm]:
    assert layer._pynnx_typed


def test_eval_shape_and_vmapped_constructor():
  abstract = nnx.eval_shape(lambda: Affine(2, 3))
  assert abstract.kernel.shape == (2, 3)

  @nnx.vmap(in_axes=0)
  def make(_):
    return Affine(2, 3)

  assert make(jnp.arange(4)).kernel.shape == (4, 2, 3)


def test_jit_cost_is_trace_time_only():
  calls = []

  @nnx.typed
  def f(x: Float[Array, " n"]) -> Float[Array, " n"]:
    calls.append(1)
    return x * 2

  g = jax.jit(f)
  g(jnp.ones(3))
  g(jnp.ones(3))
  assert len(calls) == 1


USER_MODULE = """
import jax.numpy as jnp
from jaxtyping import Array, Float

import pynnx as nnx


class Scale(nnx.Module):
  def __init__(self, n: int):
    self.w = nnx.Param(jnp.ones((n,)))

  def __call__(self, x: Float[Array, "b n"]) -> Float[Array, "b n"]:
    return x * self.w[...]


@nnx.typed
class TypedScale(Scale):
  w: nnx.Param[Float[Array, " n"]]

  @nnx.typed
  def __call__(self, x: Float[Array, "b n"]) -> Float[Array, "b n"]:
    return x * self.w[...]
"""


def test_jaxtyping_import_hook_on_pynnx_code(tmp_path, monkeypatch):
  """User code instrumented by jaxtyping's import hook (what the pytest plugin uses)."""
  (tmp_path / "hooked_user_code.py").write_text(USER_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  with jaxtyping.install_import_hook("hooked_user_code", "beartype.beartype"):
    import hooked_user_code as user
  try:
    assert user.Scale(3)(jnp.ones((2, 3))).shape == (2, 3)
    with pytest.raises(jaxtyping.TypeCheckError):
      user.Scale(3)(jnp.ones(3))  # rank 1: the hook's beartype check rejects it
    assert user.TypedScale(3)(jnp.ones((2, 3))).shape == (2, 3)
    with pytest.raises(nnx.TypeCheckError, match=r"'n' is 4 here but 3"):
      user.TypedScale(3)(jnp.ones((2, 4)))
    out = nnx.jit(lambda m, x: m(x))(user.TypedScale(3), jnp.ones((2, 3)))
    assert out.shape == (2, 3)
  finally:
    import sys

    sys.modules.pop("hooked_user_code", None)


def test_typed_dataclass_module():
  @nnx.typed
  @nnx.dataclass
  class Pair(nnx.Module):
    left: nnx.Param[Float[Array, "n d"]]
    right: Float[Array, "d m"]
    label: str = nnx.static(default="pair")

  ok = Pair(nnx.Param(jnp.ones((2, 3))), jnp.ones((3, 4)))
  assert ok.label == "pair"
  with pytest.raises(nnx.TypeCheckError, match=r"Pair\.right .*'d' is 5 here but 3 in Pair\.left"):
    Pair(nnx.Param(jnp.ones((2, 3))), jnp.ones((5, 4)))
