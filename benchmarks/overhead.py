"""Per-call overhead of pynnx.jit against raw jax.jit, eqx.filter_jit and flax.nnx.jit.

Three workloads on an MLP of L layers (L in --layers): a forward pass, a train step
(value_and_grad + optax sgd) and a state-mutating forward (a BatchStat counter and a
dropout rng draw per layer). Every implementation runs the same arithmetic on the same
arrays; calls are interleaved in rounds so machine noise hits all of them alike. Prints the
median µs/call and the ratio to raw jax.jit (the median over rounds of the ratio within each
round), plus first-call (trace + compile) times.

    python benchmarks/overhead.py --layers 2 16 128 --rounds 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import pynnx

WIDTH = 32
BATCH = 8


# --- pynnx model -------------------------------------------------------------------------


class PBlock(pynnx.Module):
  def __init__(self, rngs: pynnx.Rngs, stateful: bool):
    self.w = pynnx.Param(jax.random.normal(rngs.params(), (WIDTH, WIDTH)) * 0.1)
    self.b = pynnx.Param(jnp.zeros((WIDTH,)))
    self.stateful = stateful
    if stateful:
      self.seen = pynnx.BatchStat(jnp.zeros((), jnp.float32))
      self.rng = rngs.dropout.fork()

  def __call__(self, x):
    y = jnp.tanh(x @ self.w[...] + self.b[...])
    if self.stateful:
      self.seen[...] = self.seen[...] + 1.0
      keep = jax.random.bernoulli(self.rng(), 0.9, y.shape)
      y = jnp.where(keep, y / 0.9, 0.0)
    return y


class PMLP(pynnx.Module):
  def __init__(self, layers: int, stateful: bool, seed: int = 0):
    rngs = pynnx.Rngs(params=seed, dropout=seed + 1)
    self.blocks = [PBlock(rngs, stateful) for _ in range(layers)]

  def __call__(self, x):
    for b in self.blocks:
      x = b(x)
    return x


# --- raw JAX over the same arrays ----------------------------------------------------------


def raw_forward(params, x):
  for w, b in params:
    x = jnp.tanh(x @ w + b)
  return x


def raw_stateful(params, seen, keys, counts, x):
  new_seen, new_counts = [], []
  for (w, b), s, k, c in zip(params, seen, keys, counts):
    y = jnp.tanh(x @ w + b)
    keep = jax.random.bernoulli(jax.random.fold_in(k, c), 0.9, y.shape)
    x = jnp.where(keep, y / 0.9, 0.0)
    new_seen.append(s + 1.0)
    new_counts.append(c + 1)
  return x, new_seen, new_counts


def _median_us(fn: Callable[[], Any], n: int) -> float:
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e6


def build(layers: int):
  """Returns {workload: {impl: (first_call_fn, call_fn)}}."""
  x = jnp.ones((BATCH, WIDTH))
  y = jnp.zeros((BATCH, WIDTH))
  tx = optax.sgd(1e-3)
  out: dict[str, dict[str, Callable[[], Any]]] = {"forward": {}, "train": {}, "stateful": {}}

  # pynnx tree mode
  pm = PMLP(layers, stateful=False)
  pfwd = pynnx.jit(lambda m, x: m(x))
  out["forward"]["pynnx"] = lambda: pfwd(pm, x)
  popt = pynnx.Optimizer(pm, tx, wrt=pynnx.Param)

  @pynnx.jit
  def ptrain(m, opt, x, y):
    loss, g = pynnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(m)
    opt.update(m, g)
    return loss

  out["train"]["pynnx"] = lambda: ptrain(pm, popt, x, y)
  ps = PMLP(layers, stateful=True)
  out["stateful"]["pynnx"] = lambda: pfwd(ps, x)

  # pynnx graph mode (opt-in): same models, graph=True
  gm = PMLP(layers, stateful=False)
  gfwd = pynnx.jit(lambda m, x: m(x), graph=True)
  out["forward"]["pynnx graph"] = lambda: gfwd(gm, x)
  gopt = pynnx.Optimizer(gm, tx, wrt=pynnx.Param)

  @pynnx.jit(graph=True)
  def gtrain(m, opt, x, y):
    loss, g = pynnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2), graph=True)(m)
    opt.update(m, g)
    return loss

  out["train"]["pynnx graph"] = lambda: gtrain(gm, gopt, x, y)
  gs = PMLP(layers, stateful=True)
  out["stateful"]["pynnx graph"] = lambda: gfwd(gs, x)

  # raw jax.jit over the same arrays
  params = [(b.w[...], b.b[...]) for b in pm.blocks]
  rfwd = jax.jit(raw_forward)
  out["forward"]["jax.jit"] = lambda: rfwd(params, x)
  opt_state = [tx.init(params)]

  @jax.jit
  def rtrain(params, opt_state, x, y):
    loss, g = jax.value_and_grad(lambda p: jnp.mean((raw_forward(p, x) - y) ** 2))(params)
    updates, opt_state = tx.update(g, opt_state, params)
    return loss, optax.apply_updates(params, updates), opt_state

  state = {"p": params, "o": opt_state[0]}

  def rtrain_call():
    loss, state["p"], state["o"] = rtrain(state["p"], state["o"], x, y)
    return loss

  out["train"]["jax.jit"] = rtrain_call
  rs = {
    "p": [(b.w[...], b.b[...]) for b in ps.blocks],
    "s": [b.seen[...] for b in ps.blocks],
    "k": [b.rng.key[...] for b in ps.blocks],
    "c": [b.rng.count[...] for b in ps.blocks],
  }
  rstate = jax.jit(raw_stateful)

  def rstate_call():
    y_, rs["s"], rs["c"] = rstate(rs["p"], rs["s"], rs["k"], rs["c"], x)
    return y_

  out["stateful"]["jax.jit"] = rstate_call

  try:
    import equinox as eqx

    efwd = eqx.filter_jit(lambda m, x: m(x))
    out["forward"]["eqx.filter_jit"] = lambda: efwd(pm, x)
  except ImportError:
    pass

  try:
    from flax import nnx as fnnx

    class FBlock(fnnx.Module):
      def __init__(self, rngs, stateful):
        self.w = fnnx.Param(jax.random.normal(rngs.params(), (WIDTH, WIDTH)) * 0.1)
        self.b = fnnx.Param(jnp.zeros((WIDTH,)))
        self.stateful = stateful
        if stateful:
          self.seen = fnnx.BatchStat(jnp.zeros((), jnp.float32))
          self.rng = rngs.dropout.fork()

      def __call__(self, x):
        y = jnp.tanh(x @ self.w[...] + self.b[...])
        if self.stateful:
          self.seen[...] = self.seen[...] + 1.0
          keep = jax.random.bernoulli(self.rng(), 0.9, y.shape)
          y = jnp.where(keep, y / 0.9, 0.0)
        return y

    class FMLP(fnnx.Module):
      def __init__(self, layers, stateful):
        rngs = fnnx.Rngs(params=0, dropout=1)
        self.blocks = fnnx.List([FBlock(rngs, stateful) for _ in range(layers)])

      def __call__(self, x):
        for b in self.blocks:
          x = b(x)
        return x

    for graph in (False, True):
      tag = "flax graph" if graph else "flax tree"
      fm = FMLP(layers, False)
      ffwd = fnnx.jit(lambda m, x: m(x), graph=graph)
      out["forward"][tag] = (lambda f, m: lambda: f(m, x))(ffwd, fm)
      fs = FMLP(layers, True)
      if graph:  # flax tree mode cannot mutate state inside jit
        out["stateful"][tag] = (lambda f, m: lambda: f(m, x))(ffwd, fs)
      fopt = fnnx.Optimizer(fm, tx, wrt=fnnx.Param)

      def make_train(graph=graph):
        @fnnx.jit(graph=graph)
        def ftrain(m, opt, x, y):
          loss, g = fnnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2), graph=graph)(m)
          opt.update(m, g)
          return loss

        return ftrain

      ft = make_train()
      if graph:
        out["train"][tag] = (lambda f, m, o: lambda: f(m, o, x, y))(ft, fm, fopt)
  except ImportError:
    pass
  return out


def plot(results: dict, path: str) -> None:
  """Bar chart of the ratio to jax.jit per workload and depth (one panel per workload)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  workloads = list(next(iter(results.values())))
  fig, axes = plt.subplots(1, len(workloads), figsize=(4.5 * len(workloads), 3.6), squeeze=False)
  everything = sorted(
    {n for by_w in results.values() for w in by_w.values() for n in w}, key=_order
  )
  colors = {name: f"C{i}" for i, name in enumerate(everything)}  # one colour per implementation
  for ax, workload in zip(axes[0], workloads):
    impls = sorted({n for by_w in results.values() for n in by_w[workload]}, key=_order)
    depths = list(results)
    width = 0.8 / len(impls)
    for i, name in enumerate(impls):
      ratios = [results[d][workload].get(name, (float("nan"), 0.0))[1] for d in depths]
      ax.bar(
        [j + i * width for j in range(len(depths))], ratios, width, label=name, color=colors[name]
      )
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(depths))], [f"L={d}" for d in depths])
    ax.set(title=workload, ylabel="time per call / jax.jit", yscale="log")
  handles = [plt.Rectangle((0, 0), 1, 1, color=colors[n]) for n in everything]
  fig.legend(handles, everything, loc="upper center", ncol=len(everything), fontsize=8)
  fig.tight_layout(rect=(0, 0, 1, 0.9))
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _order(name: str) -> tuple[int, str]:
  return (0 if name == "jax.jit" else 1 if name.startswith("pynnx") else 2, name)


def table(results: dict) -> str:
  """A markdown table: median µs/call and the ratio to jax.jit."""
  lines = [
    "| layers | workload | implementation | µs/call | ratio to jax.jit |",
    "|---|---|---|---|---|",
  ]
  for layers, by_workload in results.items():
    for workload, by_impl in by_workload.items():
      for name in sorted(by_impl, key=_order):
        med, ratio = by_impl[name]
        lines.append(f"| {layers} | {workload} | {name} | {med:.1f} | {ratio:.2f} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, nargs="+", default=[2, 16, 128])
  parser.add_argument("--rounds", type=int, default=20)
  parser.add_argument("--calls", type=int, default=50)
  parser.add_argument("--plot", help="write a PNG bar chart of the ratios here")
  parser.add_argument("--table", help="write the results as a markdown table here")
  args = parser.parse_args()
  header = (
    f"jax {jax.__version__} on {jax.devices()[0].platform}; median µs/call (ratio to jax.jit)"
  )
  print(header)
  results: dict[int, dict[str, dict[str, tuple[float, float]]]] = {}
  for layers in args.layers:
    table_ = build(layers)
    results[layers] = {}
    for workload, impls in table_.items():
      first = {}
      for name, fn in impls.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first[name] = (time.perf_counter() - t0) * 1e3
      samples: dict[str, list[float]] = {name: [] for name in impls}
      order = list(impls.items())
      for r in range(args.rounds):  # interleaved rounds, each starting at a different one
        k = r % len(order)
        for name, fn in order[k:] + order[:k]:
          samples[name].append(_median_us(fn, args.calls))
      cells = []
      results[layers][workload] = {}
      for name in impls:
        med = statistics.median(samples[name])
        # the ratio is taken within each round (the same machine state for every
        # implementation), then the median over rounds: slow drifts of the machine cancel
        ratio = statistics.median(s / b for s, b in zip(samples[name], samples["jax.jit"]))
        results[layers][workload][name] = (med, ratio)
        cells.append(f"{name}: {med:8.1f} µs ({ratio:4.2f}x)")
      print(f"L={layers:<4d} {workload:<9s} " + " | ".join(cells))
      print(f"{'':6s}first call ms: " + " | ".join(f"{n}: {t:7.1f}" for n, t in first.items()))
  if args.table:
    with open(args.table, "w") as f:
      f.write(f"`{header}`, {args.rounds} rounds of {args.calls} calls\n\n" + table(results))
    print(f"table: {args.table}")
  if args.plot:
    plot(results, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
  main()
