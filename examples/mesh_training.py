"""Data + tensor parallel training on a 2x4 device mesh (8 virtual CPU devices).

A wide MLP classifies scikit-learn's 8x8 digits. The mesh has a ``data`` axis (2 ways: the
batch is split) and a ``model`` axis (4 ways: the hidden layers are split Megatron-style,
the first kernel of each pair by columns, the second by rows). pynnx only records the
layout: ``nnx.with_partitioning`` puts logical axis names on each Param, and everything
else is JAX's ``jit`` with shardings.

- **Sharded init**: ``nnx.eval_shape`` gives an abstract model, ``nnx.get_named_sharding``
  turns its metadata into shardings, and ``nnx.jit(..., out_shardings=...)`` creates every
  Param directly on the devices that own it.
- **Training**: an ordinary ``nnx.jit`` train step; XLA inserts the collectives.
- **Checks**: after every step, every Param and every optimizer moment still has the
  sharding it was created with (the script stops with an error otherwise).

Run:  python examples/mesh_training.py [--steps 200]

On a CPU-only machine the script asks XLA for 8 host devices; it must set that before JAX
is imported, which it does at the top.
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()

import argparse  # noqa: E402  (after setting XLA_FLAGS, before JAX starts)
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import pynnx as nnx  # noqa: E402

INIT = nnx.initializers.lecun_normal()


def column_parallel(din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
  """Kernel split by output columns over `model`; the bias too."""
  return nnx.Linear(
    din,
    dout,
    kernel_init=nnx.with_partitioning(INIT, (None, "model")),
    bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("model",)),
    rngs=rngs,
  )


def row_parallel(din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
  """Kernel split by input rows over `model`; the output (and bias) replicated."""
  return nnx.Linear(din, dout, kernel_init=nnx.with_partitioning(INIT, ("model", None)), rngs=rngs)


class WideMLP(nnx.Module):
  def __init__(self, din: int, hidden: int, classes: int, *, rngs: nnx.Rngs):
    self.up1 = column_parallel(din, hidden, rngs)
    self.down1 = row_parallel(hidden, hidden // 4, rngs)
    self.up2 = column_parallel(hidden // 4, hidden, rngs)
    self.down2 = row_parallel(hidden, classes, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = nnx.relu(self.down1(nnx.relu(self.up1(x))))
    return self.down2(nnx.relu(self.up2(h)))


def loss_fn(model: WideMLP, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


@nnx.jit(donate_argnames=("model", "optimizer"))
def train_step(model: WideMLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
  optimizer.update(model, grads)
  return loss, jnp.mean(jnp.argmax(logits, -1) == y)


@nnx.jit
def accuracy(model: WideMLP, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(model(x), -1) == y)


def layout(tree) -> dict[str, tuple[jax.sharding.Sharding, int]]:
  """{path: (sharding, ndim)} of every array in a Module or an Optimizer."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): (leaf.sharding, leaf.ndim) for path, leaf in flat}


def check_layout(name: str, expected: dict, tree, step: int) -> None:
  """Raises if any array of ``tree`` is laid out differently than ``expected``."""
  for path, (sharding, ndim) in layout(tree).items():
    if ndim == 0:
      continue  # scalars (step counters) start on one device and end up replicated: fine
    want = expected[path][0]
    if not sharding.is_equivalent_to(want, ndim):
      raise RuntimeError(
        f"after step {step}: {name}{path} is laid out as {sharding}, expected {want}"
      )


def train(
  steps: int = 200, hidden: int = 512, batch_size: int = 128, seed: int = 0, progress=True
) -> dict:
  if len(jax.devices()) < 8:
    raise RuntimeError(
      f"this example needs 8 devices, JAX sees {len(jax.devices())}: set "
      "XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX is imported"
    )
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)

  # Sharded init: the abstract model carries the layout; no full copy is ever materialized.
  make = lambda: WideMLP(64, hidden, 10, rngs=nnx.Rngs(seed))  # noqa: E731
  abstract = nnx.eval_shape(make)
  model = nnx.jit(make, out_shardings=nnx.get_named_sharding(abstract, mesh))()
  optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
  expected_model, expected_opt = layout(model), layout(optimizer)
  print("parameter layout on the 2x4 (data, model) mesh:")
  for path, leaf in jax.tree_util.tree_flatten_with_path(model)[0]:
    shard = leaf.sharding.shard_shape(leaf.shape)
    name = jax.tree_util.keystr(path).removesuffix(".value")
    print(f"  model{name:<13s} {leaf.shape!s:<10s} {leaf.sharding.spec!s:<18s} -> shards {shard}")

  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  x_train, x_test, y_train, y_test = train_test_split(
    x, digits.target.astype(np.int32), test_size=0.2, random_state=seed, stratify=digits.target
  )
  batch = NamedSharding(mesh, P("data"))  # the batch is split over the data axis
  order = np.random.default_rng(seed)
  history = []
  bar = tqdm(range(1, steps + 1), desc="mesh training", unit="step", disable=not progress)
  for step in bar:
    idx = order.choice(len(x_train), batch_size, replace=False)
    xb, yb = jax.device_put((x_train[idx], y_train[idx]), batch)
    loss, acc = train_step(model, optimizer, xb, yb)
    check_layout("model", expected_model, model, step)  # still sharded as created
    check_layout("optimizer", expected_opt, optimizer, step)
    history.append(float(loss))
    bar.set_postfix(loss=f"{history[-1]:.3f}", acc=f"{float(acc):.2f}")

  replicated = NamedSharding(mesh, P())
  test_acc = float(accuracy(model, *jax.device_put((x_test, y_test), replicated)))
  return {"losses": history, "test_accuracy": test_acc, "model": model, "mesh": mesh}


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--hidden", type=int, default=512)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  result = train(args.steps, args.hidden, args.batch_size, args.seed, not args.no_progress)
  print(
    f"loss {result['losses'][0]:.3f} -> {result['losses'][-1]:.3f}; test accuracy "
    f"{result['test_accuracy']:.2%}; every Param and optimizer moment kept its sharding "
    f"through {args.steps} steps ({time.perf_counter() - start:.1f} s)"
  )
  return result


if __name__ == "__main__":
  main()
