"""Handwritten digits (scikit-learn's 8x8 ``load_digits``) with a pynnx MLP.

An MLP with ``nnx.Linear``, ``nnx.BatchNorm`` and ``nnx.Dropout`` is trained with
``nnx.Optimizer`` (optax Adam) inside one ``nnx.jit``-compiled train step; metrics are kept
with ``nnx.MultiMetric``. ``model.train()`` / ``model.eval()`` switch BatchNorm between batch
and running statistics and turn Dropout on and off. The script prints the final test
accuracy and writes the loss curves to ``<out>/digits_loss.png``.

Run:  python examples/digits.py [--epochs 30] [--out examples/out]

The dataset ships with scikit-learn (no download); the run is seeded and deterministic.
"""

from __future__ import annotations

import argparse
import pathlib
import time
from collections.abc import Sequence

import jax
import matplotlib
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

import pynnx as nnx

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "out"


class MLP(nnx.Module):
  """Linear -> BatchNorm -> relu -> Dropout blocks, then a linear classifier head."""

  def __init__(self, sizes: Sequence[int], num_classes: int, *, dropout: float, rngs: nnx.Rngs):
    self.blocks = [
      (
        nnx.Linear(n_in, n_out, rngs=rngs),
        nnx.BatchNorm(n_out, rngs=rngs),
        nnx.Dropout(dropout, rngs=rngs),
      )
      for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=False)
    ]
    self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for linear, norm, drop in self.blocks:
      x = drop(jax.nn.relu(norm(linear(x))))
    return self.head(x)


def loss_fn(model: MLP, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


@nnx.jit(donate_argnames=("model", "optimizer", "metrics"))
def train_step(
  model: MLP, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric, x: jax.Array, y: jax.Array
) -> jax.Array:
  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
  optimizer.update(model, grads)
  metrics.update(values=loss, logits=logits, labels=y)
  return loss


@nnx.jit
def eval_step(model: MLP, metrics: nnx.MultiMetric, x: jax.Array, y: jax.Array) -> None:
  loss, logits = loss_fn(model, x, y)
  metrics.update(values=loss, logits=logits, labels=y)


def load_data(seed: int) -> tuple[np.ndarray, ...]:
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)  # pixel intensities are 0..16
  y = digits.target.astype(np.int32)
  return tuple(train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y))


def plot(history: dict[str, list[float]], path: pathlib.Path) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  epochs = np.arange(1, len(history["train_loss"]) + 1)
  ax.plot(epochs, history["train_loss"], label="train")
  ax.plot(epochs, history["test_loss"], label="test")
  ax.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="digits MLP (pynnx)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def train(
  epochs: int = 30,
  batch_size: int = 64,
  learning_rate: float = 3e-3,
  seed: int = 0,
  out: pathlib.Path = DEFAULT_OUT,
  progress: bool = True,
) -> dict:
  """Trains the MLP; returns the final test accuracy, the history and the plot's path."""
  x_train, x_test, y_train, y_test = load_data(seed)
  model = MLP((64, 128, 64), 10, dropout=0.2, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
  optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)
  metrics = nnx.MultiMetric(loss=nnx.metrics.Average(), accuracy=nnx.metrics.Accuracy())
  order = np.random.default_rng(seed)
  steps = len(x_train) // batch_size  # full batches only: one compiled shape
  history: dict[str, list[float]] = {
    k: [] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
  }
  bar = tqdm(range(epochs), desc="digits", unit="epoch", disable=not progress)
  for _ in bar:
    model.train()
    perm = order.permutation(len(x_train))
    for i in range(steps):
      idx = perm[i * batch_size : (i + 1) * batch_size]
      train_step(model, optimizer, metrics, x_train[idx], y_train[idx])
    for name, value in metrics.compute().items():
      history[f"train_{name}"].append(float(value))
    metrics.reset()

    model.eval()
    eval_step(model, metrics, x_test, y_test)
    for name, value in metrics.compute().items():
      history[f"test_{name}"].append(float(value))
    metrics.reset()
    bar.set_postfix(
      loss=f"{history['train_loss'][-1]:.3f}", test_acc=f"{history['test_accuracy'][-1]:.3f}"
    )

  out.mkdir(parents=True, exist_ok=True)
  plot_path = out / "digits_loss.png"
  plot(history, plot_path)
  return {
    "test_accuracy": history["test_accuracy"][-1],
    "history": history,
    "plot": plot_path,
    "steps": int(optimizer.step[...]),
  }


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=DEFAULT_OUT,
    help="folder for digits_loss.png (created if missing)",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  result = train(epochs=args.epochs, seed=args.seed, out=args.out, progress=not args.no_progress)
  print(
    f"test accuracy: {result['test_accuracy']:.2%} after {args.epochs} epochs "
    f"({time.perf_counter() - start:.1f} s); loss curves: {result['plot']}"
  )
  return result


if __name__ == "__main__":
  main()
