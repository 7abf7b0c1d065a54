"""Differential tests: complete user programs (model + training loop + evaluation), written
the way Flax NNX 0.12.8 users write them, run on ``flax.nnx`` and on ``pynnx`` with only the
import changed. Each program returns losses, metrics, parameter values, shapes and key data
after a few steps; both libraries must agree (helpers in ``test_user_snippets.py``)."""

import jax
import jax.numpy as jnp
import optax
import pytest
from test_user_snippets import pure, run_both, same, x_

PROGRAMS = {}


def program(fn):
  PROGRAMS[fn.__name__] = fn
  return fn


def _tokens(shape, vocab, seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


# --- a small decoder-only language model --------------------------------------------------


def _lm(nnx, rate=0.1):
  class Block(nnx.Module):
    def __init__(self, dim, heads, *, rngs):
      self.norm1 = nnx.RMSNorm(dim, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(
        num_heads=heads,
        in_features=dim,
        dropout_rate=rate,
        decode=False,
        rngs=rngs,
        keep_rngs=rate > 0,
      )
      self.norm2 = nnx.RMSNorm(dim, rngs=rngs)
      self.up = nnx.Linear(dim, 2 * dim, rngs=rngs)
      self.down = nnx.Linear(2 * dim, dim, rngs=rngs)
      self.drop = nnx.Dropout(rate, rngs=rngs if rate > 0 else None)

    def __call__(self, x, mask=None, decode=None):
      h = self.attn(self.norm1(x), mask=mask, decode=decode)
      x = x + self.drop(h)
      h = self.down(nnx.gelu(self.up(self.norm2(x))))
      return x + self.drop(h)

  class LM(nnx.Module):
    def __init__(self, vocab, dim, heads, depth, *, rngs: nnx.Rngs):
      self.embed = nnx.Embed(vocab, dim, rngs=rngs)
      self.blocks = nnx.List([Block(dim, heads, rngs=rngs) for _ in range(depth)])
      self.norm = nnx.RMSNorm(dim, rngs=rngs)

    def __call__(self, tokens, decode=False):
      x = self.embed(tokens)
      mask = None if decode else nnx.make_causal_mask(tokens)
      for block in self.blocks:
        x = block(x, mask=mask, decode=decode)
      return self.embed.attend(self.norm(x))

  return LM


@program
def transformer_lm_train_and_generate(nnx):
  vocab, seq = 11, 6
  model = _lm(nnx)(vocab, 8, 2, 1, rngs=nnx.Rngs(0, dropout=1))
  optimizer = nnx.Optimizer(model, optax.adamw(1e-2, weight_decay=1e-4), wrt=nnx.Param)
  data = _tokens((3, 4, seq + 1), vocab)

  def loss_fn(model, batch):
    logits = model(batch[:, :-1])
    labels = batch[:, 1:]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @nnx.jit
  def train_step(model, optimizer, batch):
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
    optimizer.update(model, grads)
    return loss

  losses = []
  model.train()
  for batch in data:
    losses.append(train_step(model, optimizer, batch))
  model.eval()

  # greedy generation with a KV cache, one token at a time
  prompt = data[0, :2, :1]
  for block in model.blocks:
    block.attn.init_cache((2, seq, 8))

  @nnx.jit
  def decode_step(model, token):
    return model(token, decode=True)[:, -1].argmax(-1)

  generated = [prompt[:, 0]]
  token = prompt
  for _ in range(seq - 1):
    nxt = decode_step(model, token)
    generated.append(nxt)
    token = nxt[:, None]
  cache_index = model.blocks[0].attn.cache_index[...]
  return [
    losses,
    jnp.stack(generated, axis=1),
    cache_index,
    optimizer.step[...],
    pure(nnx, nnx.state(model, nnx.Param)),
    jax.random.key_data(model.blocks[0].drop.rngs.key[...]),
    model.blocks[0].drop.rngs.count[...],
  ]


@program
def transformer_lm_explicit_rngs_and_graph_false(nnx):
  vocab = 7
  # Flax's tree mode differentiates every leaf, so this model keeps no rng state
  model = _lm(nnx, rate=0.0)(vocab, 4, 1, 1, rngs=nnx.Rngs(3))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  tokens = _tokens((2, 5), vocab, seed=4)

  @nnx.jit(graph=False)
  def step(model, optimizer, tokens):
    def loss_fn(model):
      logits = model(tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    loss, grads = nnx.value_and_grad(loss_fn, graph=False)(model)
    optimizer.update(model, grads)
    return loss

  losses = [step(model, optimizer, tokens) for _ in range(3)]
  return [losses, pure(nnx, model)]


# --- a ResNet-ish CNN with BatchNorm and metrics ------------------------------------------


def _resnet(nnx):
  class ResBlock(nnx.Module):
    def __init__(self, ch, *, rngs):
      self.conv1 = nnx.Conv(ch, ch, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
      self.bn1 = nnx.BatchNorm(ch, momentum=0.9, rngs=rngs)
      self.conv2 = nnx.Conv(ch, ch, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
      self.bn2 = nnx.BatchNorm(ch, momentum=0.9, rngs=rngs)

    def __call__(self, x):
      h = nnx.relu(self.bn1(self.conv1(x)))
      h = self.bn2(self.conv2(h))
      return nnx.relu(x + h)

  class ResNet(nnx.Module):
    def __init__(self, classes, *, rngs):
      self.stem = nnx.Conv(1, 4, (3, 3), strides=(2, 2), rngs=rngs)
      self.blocks = nnx.Sequential(ResBlock(4, rngs=rngs), ResBlock(4, rngs=rngs))
      self.head = nnx.Linear(4, classes, rngs=rngs)

    def __call__(self, x):
      x = nnx.relu(self.stem(x))
      x = self.blocks(x)
      x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
      return self.head(x.mean(axis=(1, 2)))

  return ResNet


@program
def resnet_with_metrics(nnx):
  model = _resnet(nnx)(3, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)
  metrics = nnx.MultiMetric(
    accuracy=nnx.metrics.Accuracy(),
    loss=nnx.metrics.Average("loss"),
  )
  images = x_((3, 4, 8, 8, 1), seed=1)
  labels = _tokens((3, 4), 3, seed=2)

  def loss_fn(model, x, y):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

  @nnx.jit
  def train_step(model, optimizer, metrics, x, y):
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(model, x, y)
    metrics.update(loss=loss, logits=logits, labels=y)
    optimizer.update(model, grads)

  @nnx.jit
  def eval_step(model, metrics, x, y):
    loss, logits = loss_fn(model, x, y)
    metrics.update(loss=loss, logits=logits, labels=y)

  history = []
  for _epoch in range(2):
    model.train()
    for x, y in zip(images, labels):
      train_step(model, optimizer, metrics, x, y)
    history.append(metrics.compute())
    metrics.reset()
    model.eval()
    for x, y in zip(images, labels):
      eval_step(model, metrics, x, y)
    history.append(metrics.compute())
    metrics.reset()
  stats = nnx.state(model, nnx.BatchStat)
  return [
    history,
    pure(nnx, stats),
    pure(nnx, nnx.state(optimizer, nnx.OptState)),
    model.blocks.layers[0].bn1.use_running_average,
  ]


# --- a VAE with its own rng streams -------------------------------------------------------


def _vae(nnx):
  class Encoder(nnx.Module):
    def __init__(self, din, dlatent, *, rngs):
      self.hidden = nnx.Linear(din, 16, rngs=rngs)
      self.mean = nnx.Linear(16, dlatent, rngs=rngs)
      self.logvar = nnx.Linear(16, dlatent, rngs=rngs)

    def __call__(self, x):
      h = nnx.relu(self.hidden(x))
      return self.mean(h), self.logvar(h)

  class VAE(nnx.Module):
    def __init__(self, din, dlatent, *, rngs: nnx.Rngs):
      self.encoder = Encoder(din, dlatent, rngs=rngs)
      self.decoder = nnx.Sequential(
        nnx.Linear(dlatent, 16, rngs=rngs), nnx.relu, nnx.Linear(16, din, rngs=rngs)
      )
      self.dlatent = dlatent

    def __call__(self, x, rngs: nnx.Rngs):
      mean, logvar = self.encoder(x)
      eps = rngs.noise.normal(mean.shape)
      z = mean + jnp.exp(0.5 * logvar) * eps
      return self.decoder(z), mean, logvar

    def generate(self, rngs: nnx.Rngs, n):
      z = rngs.sample.normal((n, self.dlatent))
      return nnx.sigmoid(self.decoder(z))

  return VAE


@program
def vae_with_rngs_argument(nnx):
  model = _vae(nnx)(6, 2, rngs=nnx.Rngs(params=0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  rngs = nnx.Rngs(noise=1, sample=2)
  data = jax.nn.sigmoid(x_((4, 5, 6), seed=3))

  @nnx.jit
  def train_step(model, optimizer, rngs, x):
    def loss_fn(model, rngs):
      logits, mean, logvar = model(x, rngs)
      rec = optax.sigmoid_binary_cross_entropy(logits, x).sum(-1).mean()
      kl = 0.5 * jnp.mean(jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1))
      return rec + kl, (rec, kl)

    (loss, (rec, kl)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, rngs)
    optimizer.update(model, grads)
    return loss, rec, kl

  out = [train_step(model, optimizer, rngs, x) for x in data]
  samples = nnx.jit(lambda m, r: m.generate(r, 3))(model, rngs)
  return [
    out,
    samples,
    rngs.noise.count[...],
    rngs.sample.count[...],
    jax.random.key_data(rngs.noise()),
    pure(nnx, model),
  ]


# --- a GAN with two optimizers ------------------------------------------------------------


@program
def gan_two_optimizers(nnx):
  class Generator(nnx.Module):
    def __init__(self, dlatent, dout, *, rngs):
      self.l1 = nnx.Linear(dlatent, 8, rngs=rngs)
      self.bn = nnx.BatchNorm(8, rngs=rngs)
      self.l2 = nnx.Linear(8, dout, rngs=rngs)

    def __call__(self, z):
      return jnp.tanh(self.l2(nnx.leaky_relu(self.bn(self.l1(z)), 0.2)))

  class Discriminator(nnx.Module):
    def __init__(self, din, *, rngs):
      self.l1 = nnx.Linear(din, 8, rngs=rngs)
      self.drop = nnx.Dropout(0.3, rngs=rngs)
      self.l2 = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
      return self.l2(self.drop(nnx.leaky_relu(self.l1(x), 0.2)))[..., 0]

  rngs = nnx.Rngs(0, dropout=5)
  gen = Generator(3, 4, rngs=rngs)
  disc = Discriminator(4, rngs=rngs)
  g_opt = nnx.Optimizer(gen, optax.adam(2e-3, b1=0.5), wrt=nnx.Param)
  d_opt = nnx.Optimizer(disc, optax.adam(2e-3, b1=0.5), wrt=nnx.Param)
  real = jnp.tanh(x_((3, 6, 4), seed=7))
  noise = nnx.Rngs(latent=9)

  def bce(logits, target):
    return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)).mean()

  @nnx.jit
  def step(gen, disc, g_opt, d_opt, real, z):
    def d_loss(disc, gen):
      fake = jax.lax.stop_gradient(gen(z))
      return bce(disc(real), 1.0) + bce(disc(fake), 0.0)

    dl, dg = nnx.value_and_grad(d_loss)(disc, gen)
    d_opt.update(disc, dg)

    def g_loss(gen, disc):
      return bce(disc(gen(z)), 1.0)

    gl, gg = nnx.value_and_grad(g_loss)(gen, disc)
    g_opt.update(gen, gg)
    return dl, gl

  losses = []
  for batch in real:
    z = noise.latent.normal((batch.shape[0], 3))
    losses.append(step(gen, disc, g_opt, d_opt, batch, z))
  gen.eval()
  samples = gen(noise.latent.normal((2, 3)))
  return [
    losses,
    samples,
    g_opt.step[...],
    d_opt.step[...],
    pure(nnx, gen),
    pure(nnx, nnx.state(disc, nnx.Param)),
    disc.drop.rngs.count[...],
  ]


# --- a ViT, a mixture of experts, a diffusion UNet ---------------------------------------


@program
def vit_with_cls_token_and_schedule(nnx):
  class ViT(nnx.Module):
    def __init__(self, *, patch, dim, heads, classes, rngs):
      self.patch = nnx.Conv(
        3, dim, (patch, patch), strides=(patch, patch), padding="VALID", rngs=rngs
      )
      self.cls = nnx.Param(jnp.zeros((1, 1, dim)))
      self.pos = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, 5, dim)))
      self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(
        heads, dim, num_kv_heads=1, normalize_qk=True, decode=False, rngs=rngs
      )
      self.ln2 = nnx.LayerNorm(dim, use_bias=False, rngs=rngs)
      self.mlp = nnx.Sequential(
        nnx.Linear(dim, 2 * dim, rngs=rngs), nnx.gelu, nnx.Linear(2 * dim, dim, rngs=rngs)
      )
      self.head = nnx.Linear(dim, classes, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, img):
      x = self.patch(img)
      b = x.shape[0]
      x = x.reshape(b, -1, x.shape[-1])
      cls = jnp.broadcast_to(self.cls[...], (b, 1, x.shape[-1]))
      x = jnp.concatenate([cls, x], axis=1) + self.pos[...]
      x = x + self.attn(self.ln1(x))
      x = x + self.mlp(self.ln2(x))
      return self.head(x[:, 0])

  model = ViT(patch=4, dim=8, heads=2, classes=3, rngs=nnx.Rngs(0))
  sched = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 6)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched))
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  imgs = x_((2, 3, 8, 8, 3), 1)
  labels = jnp.array([[0, 1, 2], [2, 1, 0]])

  @nnx.jit
  def step(model, opt, x, y):
    def lf(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, g = nnx.value_and_grad(lf)(model)
    opt.update(model, g)
    return loss

  losses = [step(model, opt, x, y) for x, y in zip(imgs, labels)]
  return [losses, pure(nnx, model), opt.step[...]]


@program
def moe_with_vmapped_experts(nnx):
  class Expert(nnx.Module):
    def __init__(self, rngs):
      self.l = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
      return nnx.silu(self.l(x))

  class MoE(nnx.Module):
    def __init__(self, n, rngs):
      self.router = nnx.Linear(4, n, use_bias=False, rngs=rngs)

      @nnx.split_rngs(splits=n)
      @nnx.vmap(in_axes=0, out_axes=0)
      def make(rngs):
        return Expert(rngs)

      self.experts = make(rngs)

    def __call__(self, x):
      gates = jax.nn.softmax(self.router(x), axis=-1)
      top_w, top_i = jax.lax.top_k(gates, 2)

      @nnx.vmap(in_axes=(0, None), out_axes=0)
      def run_all(expert, x):
        return expert(x)

      outs = run_all(self.experts, x)  # (n, b, d)
      picked = jnp.take_along_axis(outs.transpose(1, 0, 2), top_i[..., None], axis=1)
      return (picked * top_w[..., None]).sum(1)

  model = MoE(4, nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  x = x_((5, 4))

  @nnx.jit
  def step(model, opt):
    loss, g = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
    opt.update(model, g)
    return loss

  return [[step(model, opt) for _ in range(2)], pure(nnx, model)]


@program
def unet_style_diffusion_step(nnx):
  class TimeEmbed(nnx.Module):
    def __init__(self, dim, rngs):
      self.l = nnx.Linear(dim, dim, rngs=rngs)
      self.dim = dim

    def __call__(self, t):
      half = self.dim // 2
      freqs = jnp.exp(-jnp.log(1000.0) * jnp.arange(half) / half)
      emb = t[:, None] * freqs[None]
      return self.l(jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], -1))

  class UNet(nnx.Module):
    def __init__(self, rngs):
      self.temb = TimeEmbed(4, rngs)
      self.down = nnx.Conv(1, 4, (3, 3), strides=2, rngs=rngs)
      self.gn = nnx.GroupNorm(4, num_groups=2, rngs=rngs)
      self.mid = nnx.Conv(4, 4, (3, 3), kernel_dilation=2, padding="CIRCULAR", rngs=rngs)
      self.up = nnx.ConvTranspose(4, 1, (3, 3), strides=(2, 2), rngs=rngs)

    def __call__(self, x, t):
      h = nnx.swish(self.gn(self.down(x)))
      h = h + self.temb(t)[:, None, None, :]
      h = nnx.swish(self.mid(h))
      return self.up(h)

  model = UNet(nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  rngs = nnx.Rngs(noise=3)
  x0 = x_((2, 8, 8, 1))

  @nnx.jit
  def step(model, opt, rngs, x0):
    t = rngs.noise.uniform((x0.shape[0],))
    eps = rngs.noise.normal(x0.shape)
    xt = jnp.sqrt(1 - t)[:, None, None, None] * x0 + jnp.sqrt(t)[:, None, None, None] * eps

    def lf(model):
      return jnp.mean((model(xt, t) - eps) ** 2)

    loss, g = nnx.value_and_grad(lf)(model)
    opt.update(model, g)
    return loss

  return [[step(model, opt, rngs, x0) for _ in range(2)], pure(nnx, model)]


# --- optax features users reach for --------------------------------------------------


@program
def adamw_weight_decay_mask_and_label_fn(nnx):
  model = nnx.Sequential(
    nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
    nnx.LayerNorm(4, rngs=nnx.Rngs(1)),
    nnx.Linear(4, 1, rngs=nnx.Rngs(2)),
  )

  def decay_mask(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)

  def labels(params):
    return jax.tree_util.tree_map_with_path(
      lambda path, p: (
        "no_decay" if "bias" in jax.tree_util.keystr(path) or p.ndim == 1 else "decay"
      ),
      params,
    )

  tx = optax.chain(
    optax.adamw(1e-2, weight_decay=0.5, mask=decay_mask),
    optax.multi_transform({"decay": optax.identity(), "no_decay": optax.scale(0.5)}, labels),
  )
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = x_((4, 3))

  @nnx.jit
  def step(model, opt):
    loss, g = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
    opt.update(model, g)
    return loss

  return [[step(model, opt) for _ in range(3)], pure(nnx, model)]


@program
def inject_hyperparams_lr_set_in_jit(nnx):
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = x_((4, 3))

  @nnx.jit
  def step(model, opt, lr):
    opt.opt_state.hyperparams["learning_rate"][...] = lr
    loss, g = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
    opt.update(model, g)
    return loss

  out = [step(model, opt, jnp.float32(lr)) for lr in (1e-2, 5e-3, 1e-3)]
  return [out, pure(nnx, model), opt.opt_state.hyperparams["learning_rate"][...]]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_program(name):
  f_out, p_out = run_both(PROGRAMS[name])
  same(f_out, p_out, rtol=1e-4, atol=1e-5)
