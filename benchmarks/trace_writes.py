"""Trace time of nnx.jit as the number of Variable writes inside grows (should be linear).

python benchmarks/trace_writes.py --writes 1250 2500 5000
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import pynnx


class Counter(pynnx.Module):
  def __init__(self):
    self.count = pynnx.BatchStat(jnp.zeros(()))


def trace_seconds(n: int) -> float:
  def step(c):
    for _ in range(n):
      c.count[...] = c.count[...] + 1.0
    return c.count[...]

  c = Counter()
  t0 = time.perf_counter()
  pynnx.jit(step).trace(c)
  return time.perf_counter() - t0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--writes", type=int, nargs="+", default=[1250, 2500, 5000])
  args = parser.parse_args()
  print(f"jax {jax.__version__}; seconds to trace n writes (and per-write µs)")
  for n in args.writes:
    s = trace_seconds(n)
    print(f"n={n:6d}: {s:7.3f} s  ({s / n * 1e6:6.1f} µs/write)")


if __name__ == "__main__":
  main()
