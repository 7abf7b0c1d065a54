"""An Equinox encoder inside a pynnx model: bridged, trained by pynnx, exported back.

An ``eqx.nn.MLP`` encodes 2-D points (two interleaved spirals); ``nnx.bridge.from_equinox``
turns it into a pynnx Module whose arrays are ``nnx.Param``s, so it nests inside a pynnx
classifier next to an ``nnx.Linear`` head and trains with ``nnx.jit``, ``nnx.value_and_grad``
and ``nnx.Optimizer`` (optax SGD with momentum). ``nnx.bridge.to_equinox`` then gives back a
plain ``eqx.nn.MLP`` with the trained weights, whose outputs equal the bridged encoder's.

Run:  python examples/equinox_interop.py [--steps 300] [--seed 0]

The data is generated (no download); the run is seeded and deterministic.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import pynnx as nnx


def spirals(n: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``n`` points on each of two interleaved spirals, labels 0 and 1."""
  t_key, noise_key = jax.random.split(key)
  t = jax.random.uniform(t_key, (n,), minval=0.5, maxval=3.0 * jnp.pi)
  arm = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], axis=-1) / (3.0 * jnp.pi)
  x = jnp.concatenate([arm, -arm]) + 0.02 * jax.random.normal(noise_key, (2 * n, 2))
  y = jnp.concatenate([jnp.zeros(n, jnp.int32), jnp.ones(n, jnp.int32)])
  return x, y


class Classifier(nnx.Module):
  """A bridged Equinox encoder (one example at a time) followed by a pynnx head."""

  def __init__(self, encoder: eqx.nn.MLP, num_classes: int, *, rngs: nnx.Rngs):
    self.encoder = nnx.bridge.from_equinox(encoder)
    self.head = nnx.Linear(encoder.out_size, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    features = jax.vmap(self.encoder)(x)  # Equinox layers work on unbatched inputs
    return self.head(jax.nn.relu(features))


@nnx.jit
def train_step(model: Classifier, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
  def loss_fn(model):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def accuracy(model: Classifier, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(model(x), axis=-1) == y)


def train(steps: int, seed: int, width: int = 32) -> dict:
  data_key, model_key = jax.random.split(jax.random.key(seed))
  x, y = spirals(256, data_key)
  encoder = eqx.nn.MLP(2, width, width, depth=2, activation=jnp.tanh, key=model_key)
  model = Classifier(encoder, 2, rngs=nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
  losses = [float(train_step(model, optimizer, x, y)) for _ in range(steps)]
  trained = nnx.bridge.to_equinox(model.encoder)  # a plain eqx.nn.MLP again
  max_diff = float(jnp.max(jnp.abs(jax.vmap(trained)(x) - jax.vmap(model.encoder)(x))))
  changed = not bool(eqx.tree_equal(trained, encoder))
  return {
    "losses": losses,
    "accuracy": float(accuracy(model, x, y)),
    "encoder": trained,
    "export_max_diff": max_diff,
    "weights_changed": changed,
  }


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  start = time.perf_counter()
  result = train(args.steps, args.seed)
  print(
    f"loss {result['losses'][0]:.3f} -> {result['losses'][-1]:.3f}, train accuracy "
    f"{result['accuracy']:.1%} after {args.steps} steps ({time.perf_counter() - start:.1f} s); "
    f"exported {type(result['encoder']).__name__}: max output difference "
    f"{result['export_max_diff']:.2e}"
  )
  np.testing.assert_allclose(result["export_max_diff"], 0.0, atol=1e-6)
  return result


if __name__ == "__main__":
  main()
