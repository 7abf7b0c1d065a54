"""A character-level Transformer language model trained on Python's own help texts.

The corpus is ``pydoc_data.topics`` (the text behind ``help("if")`` and friends), which
ships with every CPython: no download. The model is a pre-norm decoder-only Transformer:

- the blocks are built as one *stack* with ``nnx.vmap`` over the constructor, each block
  getting its own initialization and its own dropout stream via ``nnx.split_rngs``;
- the forward pass runs the stack with ``nnx.scan`` (the block is compiled once, not once
  per layer) and ``nnx.remat`` (activations are recomputed in the backward pass);
- dropout counters are Variables, so every step draws fresh masks per block.

The script prints validation loss, a text sample from the trained model, and writes the
loss curves to ``<out>/char_transformer_loss.png``.

Run:  python examples/char_transformer.py [--steps 300] [--blocks 2] [--dim 128]
"""

from __future__ import annotations

import argparse
import pathlib
import time
from collections.abc import Sequence
from pydoc_data.topics import topics

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


# --- data ---------------------------------------------------------------------------------


class Corpus:
  """The help topics as one string, encoded to integer ids (one per distinct character)."""

  def __init__(self, val_fraction: float = 0.1):
    text = "\n".join(topics[name] for name in sorted(topics))
    self.chars = sorted(set(text))
    self.index = {c: i for i, c in enumerate(self.chars)}
    ids = np.array([self.index[c] for c in text], dtype=np.int32)
    cut = int(len(ids) * (1 - val_fraction))
    self.train, self.val = ids[:cut], ids[cut:]

  @property
  def vocab_size(self) -> int:
    return len(self.chars)

  def encode(self, text: str) -> np.ndarray:
    return np.array([self.index[c] for c in text], dtype=np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    return "".join(self.chars[i] for i in ids)

  def batch(self, split: str, rng: np.random.Generator, size: int, length: int) -> np.ndarray:
    """``size`` random windows of ``length + 1`` ids (inputs and next-character targets)."""
    ids = self.train if split == "train" else self.val
    starts = rng.integers(0, len(ids) - length - 1, size)
    return np.stack([ids[s : s + length + 1] for s in starts])


# --- model --------------------------------------------------------------------------------


class Block(nnx.Module):
  """Pre-norm Transformer block: causal self-attention and an MLP, each residual."""

  def __init__(self, dim: int, heads: int, dropout: float, *, rngs: nnx.Rngs):
    self.attn_norm = nnx.LayerNorm(dim, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(heads, dim, decode=False, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(dim, rngs=rngs)
    self.up = nnx.Linear(dim, 4 * dim, rngs=rngs)
    self.down = nnx.Linear(4 * dim, dim, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
    h = h + self.drop(self.attn(self.attn_norm(h), mask=mask))
    return h + self.drop(self.down(nnx.gelu(self.up(self.mlp_norm(h)))))


def make_blocks(count: int, dim: int, heads: int, dropout: float, rngs: nnx.Rngs) -> Block:
  """`count` Blocks as one stack: every Variable gets a leading axis of size `count`.

  One vmapped constructor call builds them all; split_rngs gives each block its own init key
  and its own dropout stream.
  """

  @nnx.split_rngs(splits=count)
  @nnx.vmap(in_axes=0, out_axes=0)
  def build(rngs: nnx.Rngs) -> Block:
    return Block(dim, heads, dropout, rngs=rngs)

  return build(rngs)


class CharTransformer(nnx.Module):
  def __init__(
    self,
    tokens: nnx.Embed,
    positions: nnx.Embed,
    blocks: Block,
    norm: nnx.LayerNorm,
    head: nnx.Linear,
  ):
    self.context = positions.num_embeddings
    self.tokens = tokens
    self.positions = positions
    self.blocks = blocks
    self.norm = norm
    self.head = head

  @classmethod
  def create(
    cls,
    vocab: int,
    context: int,
    dim: int,
    heads: int,
    blocks: int,
    dropout: float,
    *,
    rngs: nnx.Rngs,
  ) -> CharTransformer:
    # The stack is built outside the constructor: a vmapped constructor call nested inside
    # another Module's constructor currently fails at freeze time for typed layers (a pynnx
    # bug), so the parts are built here and handed to __init__.
    tokens = nnx.Embed(vocab, dim, rngs=rngs)
    positions = nnx.Embed(context, dim, rngs=rngs)
    stack = make_blocks(blocks, dim, heads, dropout, rngs)
    norm = nnx.LayerNorm(dim, rngs=rngs)
    return cls(tokens, positions, stack, norm, nnx.Linear(dim, vocab, rngs=rngs))

  def __call__(self, ids: jax.Array) -> jax.Array:
    length = ids.shape[-1]
    h = self.tokens(ids) + self.positions(jnp.arange(length))
    mask = nnx.make_causal_mask(ids)

    # scan runs the stacked blocks one after another (carry: the hidden state); remat
    # recomputes each block's activations in the backward pass instead of storing them.
    @nnx.scan(in_axes=(nnx.Carry, 0, None), out_axes=nnx.Carry)
    @nnx.remat
    def run(h: jax.Array, block: Block, mask: jax.Array) -> jax.Array:
      return block(h, mask)

    h = run(h, self.blocks, mask)
    return self.head(self.norm(h))


def loss_fn(model: CharTransformer, batch: jax.Array) -> jax.Array:
  logits = model(batch[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


@nnx.jit(donate_argnames=("model", "optimizer"))
def train_step(model: CharTransformer, optimizer: nnx.Optimizer, batch: jax.Array) -> jax.Array:
  loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def eval_loss(model: CharTransformer, batch: jax.Array) -> jax.Array:
  return loss_fn(model, batch)


@nnx.jit
def next_char(model: CharTransformer, window: jax.Array, key: jax.Array, temperature: float):
  """Samples the character after the last valid one of each window (left-padded)."""
  logits = model(window)[:, -1] / temperature
  return jax.random.categorical(key, logits)


def sample(
  model: CharTransformer, corpus: Corpus, prompt: str, length: int, seed: int, temperature=0.8
) -> str:
  model.eval()  # no dropout while sampling
  ids = list(corpus.encode(prompt))
  key = jax.random.key(seed)
  for _ in range(length):
    window = ids[-model.context :]
    window = [0] * (model.context - len(window)) + window  # one compiled shape
    key, sub = jax.random.split(key)
    ids.append(int(next_char(model, jnp.array([window]), sub, temperature)[0]))
  model.train()
  return corpus.decode(ids)


def plot(history: dict[str, list], path: pathlib.Path) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(*zip(*history["train"], strict=True), label="train (per step)", alpha=0.5)
  ax.plot(*zip(*history["val"], strict=True), "o-", label="validation")
  ax.set(xlabel="step", ylabel="cross-entropy (nats/char)", title="char Transformer (pynnx)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def train(
  steps: int = 300,
  blocks: int = 2,
  dim: int = 128,
  heads: int = 4,
  context: int = 64,
  batch_size: int = 32,
  dropout: float = 0.1,
  learning_rate: float = 3e-3,
  eval_every: int = 50,
  sample_length: int = 200,
  seed: int = 0,
  out: pathlib.Path = DEFAULT_OUT,
  progress: bool = True,
) -> dict:
  corpus = Corpus()
  model = CharTransformer.create(
    corpus.vocab_size,
    context,
    dim,
    heads,
    blocks,
    dropout,
    rngs=nnx.Rngs(params=seed, dropout=seed + 1),
  )
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(100, steps // 5), steps)
  optimizer = nnx.Optimizer(
    model, optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule)), wrt=nnx.Param
  )
  data_rng = np.random.default_rng(seed)
  val_batches = [corpus.batch("val", data_rng, batch_size, context) for _ in range(4)]
  history: dict[str, list] = {"train": [], "val": []}

  def validate(step: int) -> float:
    model.eval()
    value = float(np.mean([eval_loss(model, b) for b in val_batches]))
    model.train()
    history["val"].append((step, value))
    return value

  validate(0)
  bar = tqdm(range(1, steps + 1), desc="char transformer", unit="step", disable=not progress)
  for step in bar:
    loss = train_step(model, optimizer, corpus.batch("train", data_rng, batch_size, context))
    history["train"].append((step, float(loss)))
    if step % eval_every == 0 or step == steps:
      bar.set_postfix(loss=f"{float(loss):.3f}", val=f"{validate(step):.3f}")

  text = sample(model, corpus, "The ", sample_length, seed)
  out.mkdir(parents=True, exist_ok=True)
  plot_path = out / "char_transformer_loss.png"
  plot(history, plot_path)
  return {
    "history": history,
    "sample": text,
    "plot": plot_path,
    "val_loss": history["val"][-1][1],
    "model": model,
    "vocab_size": corpus.vocab_size,
  }


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--blocks", type=int, default=2)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--context", type=int, default=64)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--eval-every", type=int, default=50)
  parser.add_argument("--sample-length", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  result = train(
    steps=args.steps,
    blocks=args.blocks,
    dim=args.dim,
    heads=args.heads,
    context=args.context,
    batch_size=args.batch_size,
    eval_every=args.eval_every,
    sample_length=args.sample_length,
    seed=args.seed,
    out=args.out,
    progress=not args.no_progress,
  )
  first, last = result["history"]["val"][0][1], result["val_loss"]
  print(
    f"validation loss {first:.3f} -> {last:.3f} nats/char ({time.perf_counter() - start:.1f} s)"
  )
  print("sample:\n" + result["sample"])
  print(f"loss curves: {result['plot']}")
  return result


if __name__ == "__main__":
  main()
