"""Train, checkpoint with orbax, restore into an abstract model, resume — bit for bit.

Two runs of the same training job (the digits MLP, with BatchNorm and Dropout):

1. **uninterrupted**: ``--steps`` steps in one go;
2. **interrupted**: ``--stop-at`` steps, then the model and optimizer state are saved with
   ``pynnx.checkpoint`` (orbax-checkpoint underneath) and every object is thrown away, as if
   the process had died. A new "process" builds an *abstract* model with ``nnx.eval_shape``
   (no arrays allocated), restores the checkpoint into it, rebuilds the optimizer around it,
   restores the optimizer state and trains the remaining steps.

Everything that influences training is state in pynnx — Params, BatchNorm statistics, the
dropout rng counter, the optimizer's step and moments — so the resumed loss curve equals the
uninterrupted one exactly. The script checks that, prints the comparison and writes both
curves to ``<out>/checkpoint_resume.png``.

Run:  python examples/checkpoint_resume.py [--steps 400] [--stop-at 150] [--ckpt-dir DIR]
Needs the ``examples`` and ``checkpoint`` extras.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import tempfile
from collections.abc import Sequence

import jax
import matplotlib
import numpy as np
import optax
from sklearn.datasets import load_digits
from tqdm.auto import tqdm

import pynnx as nnx
from pynnx import checkpoint

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "out"
BATCH = 64


class MLP(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 128, rngs=rngs)
    self.norm = nnx.BatchNorm(128, rngs=rngs)
    self.drop = nnx.Dropout(0.2, rngs=rngs)
    self.out = nnx.Linear(128, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(self.drop(nnx.relu(self.norm(self.hidden(x)))))


def new_model(seed: int) -> MLP:
  return MLP(rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def new_optimizer(model: MLP) -> nnx.Optimizer:
  return nnx.Optimizer(model, optax.adamw(3e-3, weight_decay=1e-4), wrt=nnx.Param)


@nnx.jit(donate_argnames=("model", "optimizer"))
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


def batch(data: tuple[np.ndarray, np.ndarray], step: int, seed: int):
  """The batch of a given step: a pure function of (seed, step), so a resumed run sees the
  same data as an uninterrupted one without saving a data-loader state."""
  x, y = data
  idx = np.random.default_rng([seed, step]).choice(len(x), BATCH, replace=False)
  return x[idx], y[idx]


def run(model, optimizer, data, start: int, stop: int, seed: int, desc: str, progress: bool):
  losses = []
  for step in tqdm(range(start, stop), desc=desc, unit="step", disable=not progress):
    losses.append(float(train_step(model, optimizer, *batch(data, step, seed))))
  return losses


def train(
  steps: int = 400,
  stop_at: int = 150,
  seed: int = 0,
  ckpt_dir: pathlib.Path | None = None,
  out: pathlib.Path = DEFAULT_OUT,
  progress: bool = True,
) -> dict:
  if not 0 < stop_at < steps:
    raise SystemExit(f"--stop-at must be between 1 and --steps - 1, got {stop_at}")
  digits = load_digits()
  data = ((digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32))

  # 1. One uninterrupted run.
  model = new_model(seed)
  optimizer = new_optimizer(model)
  reference = run(model, optimizer, data, 0, steps, seed, "uninterrupted", progress)

  # 2. The interrupted run: train, save, drop everything.
  owns_dir = ckpt_dir is None
  ckpt_dir = pathlib.Path(tempfile.mkdtemp(prefix="pynnx_ckpt_") if owns_dir else ckpt_dir)
  try:
    model = new_model(seed)
    optimizer = new_optimizer(model)
    first = run(model, optimizer, data, 0, stop_at, seed, "before the save", progress)
    step_dir = ckpt_dir.absolute() / f"step_{stop_at}"
    checkpoint.save(step_dir / "model", model, force=True)
    checkpoint.save(step_dir / "optimizer", nnx.state(optimizer), force=True)
    del model, optimizer  # the "process" ends here

    # ... and a new one starts: an abstract model (shapes only), filled from the checkpoint.
    abstract = nnx.eval_shape(lambda: new_model(seed))
    model = checkpoint.restore(step_dir / "model", abstract)
    optimizer = new_optimizer(model)
    nnx.update(optimizer, checkpoint.restore(step_dir / "optimizer", nnx.state(optimizer)))
    resumed_at = int(optimizer.step[...])
    second = run(model, optimizer, data, resumed_at, steps, seed, "after the restore", progress)
  finally:
    if owns_dir:
      shutil.rmtree(ckpt_dir, ignore_errors=True)

  resumed = first + second
  max_diff = float(np.max(np.abs(np.array(resumed) - np.array(reference))))
  out.mkdir(parents=True, exist_ok=True)
  plot_path = out / "checkpoint_resume.png"
  plot(reference, resumed, stop_at, plot_path)
  return {
    "reference": reference,
    "resumed": resumed,
    "resumed_at": resumed_at,
    "max_abs_difference": max_diff,
    "plot": plot_path,
  }


def plot(reference: list[float], resumed: list[float], stop_at: int, path: pathlib.Path):
  fig, ax = plt.subplots(figsize=(6, 4))
  steps = np.arange(1, len(reference) + 1)
  ax.plot(steps, reference, lw=3, alpha=0.4, label="uninterrupted")
  ax.plot(steps, resumed, lw=1, label="saved, restored and resumed")
  ax.axvline(stop_at + 0.5, color="gray", ls="--", label=f"checkpoint at step {stop_at}")
  ax.set(xlabel="step", ylabel="training loss", yscale="log", title="resume from checkpoint")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--stop-at", type=int, default=150)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--ckpt-dir", type=pathlib.Path, default=None, help="keep checkpoints here (default: temp)"
  )
  parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  args = parser.parse_args(argv)
  result = train(args.steps, args.stop_at, args.seed, args.ckpt_dir, args.out, not args.no_progress)
  same = result["max_abs_difference"] == 0.0
  print(
    f"resumed at step {result['resumed_at']}; final loss {result['resumed'][-1]:.4f} "
    f"(uninterrupted: {result['reference'][-1]:.4f}); largest per-step loss difference "
    f"{result['max_abs_difference']:.2e} -> {'identical' if same else 'DIFFERENT'} curves; "
    f"plot: {result['plot']}"
  )
  if not same:
    raise SystemExit("the resumed run diverged from the uninterrupted one")
  return result


if __name__ == "__main__":
  main()
