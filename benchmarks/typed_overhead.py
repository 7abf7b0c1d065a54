"""Per-call cost of nnx.typed checks on a jitted call (they run at trace time only).

Times ``nnx.jit(f)(model, x)`` for the same two-layer model built from typed and untyped
classes (typed fields and a typed ``__call__``), plus an eager call of each for contrast.
Prints microseconds per call and the typed/untyped ratio; nothing is asserted.

Run:  python benchmarks/typed_overhead.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import timeit

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

import pynnx as nnx


class Plain(nnx.Module):
  def __init__(self, din: int, dout: int):
    self.kernel = nnx.Param(jnp.ones((din, dout)) / din)
    self.bias = nnx.Param(jnp.zeros((dout,)))

  def __call__(self, x):
    return x @ self.kernel + self.bias


@nnx.typed
class Typed(nnx.Module):
  kernel: nnx.Param[Float[Array, "din dout"]]
  bias: nnx.Param[Float[Array, " dout"]]

  def __init__(self, din: int, dout: int):
    self.kernel = nnx.Param(jnp.ones((din, dout)) / din)
    self.bias = nnx.Param(jnp.zeros((dout,)))

  @nnx.typed
  def __call__(self, x: Float[Array, "batch din"]) -> Float[Array, "batch dout"]:
    return x @ self.kernel + self.bias


class Pair(nnx.Module):
  def __init__(self, layer: type):
    self.first = layer(64, 64)
    self.second = layer(64, 8)

  def __call__(self, x):
    return self.second(jax.nn.relu(self.first(x)))


def per_call_us(fn, args, calls: int) -> float:
  jax.block_until_ready(fn(*args))  # compile / warm up
  best = min(timeit.repeat(lambda: jax.block_until_ready(fn(*args)), number=calls, repeat=5))
  return best / calls * 1e6


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--calls", type=int, default=2000)
  args = parser.parse_args(argv)
  x = jnp.ones((16, 64))
  forward = nnx.jit(lambda model, x: model(x))
  out = {}
  for name, layer in [("untyped", Plain), ("typed", Typed)]:
    model = Pair(layer)
    out[f"{name} jit"] = per_call_us(forward, (model, x), args.calls)
    out[f"{name} eager"] = per_call_us(model, (x,), max(args.calls // 10, 1))
  for key, value in out.items():
    print(f"{key:>14}: {value:8.1f} us/call")
  print(f"jit ratio typed/untyped:   {out['typed jit'] / out['untyped jit']:.3f}")
  print(f"eager ratio typed/untyped: {out['typed eager'] / out['untyped eager']:.3f}")
  return out


if __name__ == "__main__":
  main()
