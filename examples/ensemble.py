"""A deep ensemble for 1-D regression with uncertainty, trained as one vmapped model.

Eight small MLPs are built at once by ``nnx.vmap`` over the constructor (``nnx.split_rngs``
gives each its own initialization), so every Param has a leading "member" axis. Each member
trains on its own bootstrap resample of the data; the spread of their predictions is the
ensemble's uncertainty, which grows away from the training data (see the plot).

The model also holds input-normalization statistics that all members share (not stacked).
Mapping "Params on axis 0, everything else broadcast" is written two ways:

- ``--mode graph``: ``nnx.StateAxes({nnx.Param: 0, ...: None})`` as ``in_axes`` (graph mode);
- ``--mode tree``: ``nnx.split`` the model into Params and the rest, vmap the Params on axis
  0 and broadcast the rest, and ``nnx.merge`` them inside.

Both train the same numbers. The script writes ``<out>/ensemble_uncertainty.png``.

Run:  python examples/ensemble.py [--steps 1500] [--members 8] [--mode graph|tree]
"""

from __future__ import annotations

import argparse
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from tqdm.auto import tqdm

import pynnx as nnx

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "out"


def make_data(seed: int, n: int = 160) -> tuple[np.ndarray, np.ndarray]:
  """Noisy samples of a wave on two intervals with a gap between them."""
  rng = np.random.default_rng(seed)
  x = np.concatenate([rng.uniform(-3.0, -0.8, n // 2), rng.uniform(0.8, 3.0, n // 2)])
  y = np.sin(2.0 * x) + 0.3 * x + rng.normal(0.0, 0.1, n)
  return x[:, None].astype(np.float32), y[:, None].astype(np.float32)


class MLP(nnx.Module):
  def __init__(self, hidden: int, *, rngs: nnx.Rngs):
    self.layers = nnx.Sequential(
      nnx.Linear(1, hidden, rngs=rngs),
      nnx.tanh,
      nnx.Linear(hidden, hidden, rngs=rngs),
      nnx.tanh,
      nnx.Linear(hidden, 1, rngs=rngs),
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.layers(x)


def make_members(members: int, hidden: int, rngs: nnx.Rngs) -> MLP:
  """``members`` MLPs as one stack, each with its own initialization.

  Built outside ``Ensemble.__init__``: a vmapped constructor call nested inside another
  Module's constructor currently fails at freeze time for typed layers (a pynnx bug).
  """

  @nnx.split_rngs(splits=members)
  @nnx.vmap(in_axes=0, out_axes=0)
  def make(rngs: nnx.Rngs) -> MLP:
    return MLP(hidden, rngs=rngs)

  return make(rngs)


class Ensemble(nnx.Module):
  """``members`` MLPs stacked on axis 0, plus normalization statistics shared by all."""

  def __init__(self, members: MLP, x: np.ndarray):
    self.members = members  # a stack from make_members
    self.x_mean = nnx.Variable(jnp.asarray(x.mean(0)))
    self.x_std = nnx.Variable(jnp.asarray(x.std(0)))

  def member(self, x: jax.Array) -> jax.Array:
    """One member's prediction (call under a vmap that maps ``members``)."""
    return self.members((x - self.x_mean[...]) / self.x_std[...])


# Params mapped on the member axis, every other Variable (the shared statistics) broadcast.
MEMBER_AXES = nnx.StateAxes({nnx.Param: 0, ...: None})


def member_loss(model: Ensemble, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean((model.member(x) - y) ** 2)


# --- graph mode: StateAxes ----------------------------------------------------------------


def predict_graph(model: Ensemble, x: jax.Array) -> jax.Array:
  return nnx.vmap(lambda m, x: m.member(x), in_axes=(MEMBER_AXES, None))(model, x)


def loss_graph(model: Ensemble, xs: jax.Array, ys: jax.Array) -> jax.Array:
  # xs, ys: one bootstrap resample per member (mapped on axis 0, like the Params)
  return nnx.vmap(member_loss, in_axes=(MEMBER_AXES, 0, 0))(model, xs, ys).sum()


# --- tree mode: split / merge ---------------------------------------------------------------


def predict_tree(model: Ensemble, x: jax.Array) -> jax.Array:
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  forward = lambda p, r, x: nnx.merge(graphdef, p, r).member(x)  # noqa: E731
  return nnx.vmap(forward, in_axes=(0, None, None))(params, rest, x)


def loss_tree(model: Ensemble, xs: jax.Array, ys: jax.Array) -> jax.Array:
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  loss = lambda p, r, x, y: member_loss(nnx.merge(graphdef, p, r), x, y)  # noqa: E731
  return nnx.vmap(loss, in_axes=(0, None, 0, 0))(params, rest, xs, ys).sum()


MODES = {"graph": (loss_graph, predict_graph), "tree": (loss_tree, predict_tree)}


def make_train_step(mode: str):
  loss_fn, _ = MODES[mode]

  @nnx.jit
  def train_step(model: Ensemble, optimizer: nnx.Optimizer, xs: jax.Array, ys: jax.Array):
    # The summed loss separates per member, so each member's Params get their own gradient.
    loss, grads = nnx.value_and_grad(loss_fn)(model, xs, ys)
    optimizer.update(model, grads)
    return loss / xs.shape[0]

  return train_step


def plot(x, y, grid, mean, std, path: pathlib.Path, members: int, mode: str) -> None:
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.fill_between(grid, mean - 2 * std, mean + 2 * std, alpha=0.25, label="mean ± 2 std")
  ax.plot(grid, mean, label=f"ensemble mean ({members} members)")
  ax.scatter(x, y, s=8, color="black", label="training data")
  ax.set(xlabel="x", ylabel="y", title=f"deep ensemble uncertainty (pynnx, {mode} mode)")
  ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def train(
  steps: int = 1500,
  members: int = 8,
  hidden: int = 32,
  mode: str = "graph",
  learning_rate: float = 1e-2,
  seed: int = 0,
  out: pathlib.Path = DEFAULT_OUT,
  progress: bool = True,
) -> dict:
  x, y = make_data(seed)
  model = Ensemble(make_members(members, hidden, nnx.Rngs(seed)), x)
  optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)
  boot = np.random.default_rng(seed).integers(0, len(x), (members, len(x)))  # bootstrap
  xs, ys = jnp.asarray(x[boot]), jnp.asarray(y[boot])
  train_step = make_train_step(mode)
  losses = []
  bar = tqdm(range(steps), desc=f"ensemble ({mode})", unit="step", disable=not progress)
  for step in bar:
    losses.append(float(train_step(model, optimizer, xs, ys)))
    if step % 100 == 0:
      bar.set_postfix(loss=f"{losses[-1]:.4f}")

  grid = np.linspace(-5.0, 5.0, 201, dtype=np.float32)
  predict = nnx.jit(MODES[mode][1])
  preds = np.asarray(predict(model, jnp.asarray(grid[:, None])))[..., 0]  # (members, grid)
  mean, std = preds.mean(0), preds.std(0)
  inside = (np.abs(grid) > 0.8) & (np.abs(grid) < 3.0)
  out.mkdir(parents=True, exist_ok=True)
  plot_path = out / "ensemble_uncertainty.png"
  plot(x[:, 0], y[:, 0], grid, mean, std, plot_path, members, mode)
  return {
    "losses": losses,
    "model": model,
    "predictions": preds,
    "std_on_data": float(std[inside].mean()),
    "std_off_data": float(std[~inside].mean()),
    "plot": plot_path,
  }


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--members", type=int, default=8)
  parser.add_argument("--hidden", type=int, default=32)
  parser.add_argument("--mode", choices=sorted(MODES), default="graph")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  result = train(
    steps=args.steps,
    members=args.members,
    hidden=args.hidden,
    mode=args.mode,
    seed=args.seed,
    out=args.out,
    progress=not args.no_progress,
  )
  print(
    f"final loss {result['losses'][-1]:.4f} ({time.perf_counter() - start:.1f} s); "
    f"ensemble std near the data {result['std_on_data']:.3f}, "
    f"away from it {result['std_off_data']:.3f}; plot: {result['plot']}"
  )
  return result


if __name__ == "__main__":
  main()
