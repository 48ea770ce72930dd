r"""How fast the demo tokenizer's autoencoder learns the built-in scenes (issue 4), on the local CPU.

  JAX_PLATFORMS=cpu python benchmarks/tokenizer_learning.py                      # VQGAN, quantizer
  JAX_PLATFORMS=cpu python benchmarks/tokenizer_learning.py --no-quantizer       # encoder-decoder
  JAX_PLATFORMS=cpu python benchmarks/tokenizer_learning.py --arch=plain         # control
  JAX_PLATFORMS=cpu python benchmarks/tokenizer_learning.py --set=channel_mult=1,2,2,4 --loss=l2

Trains for --steps Adam steps on fresh scenes (never repeated) and prints, every --every steps,
the PSNR on 64 held-back scenes next to the PSNR of an all-grey image (the scenes' background: a
model that has not learnt the objects scores about that) and the seconds taken. Architectures:
  vqgan  the project's tokenizer (muse_jax.models.vqgan) with configs/vqgan.py:size=demo's model
         section and --set overrides; --no-quantizer feeds the encoder's output straight to the
         decoder (how fast the autoencoder alone learns).
  plain  the naive control: 4 stride-2 4x4 convs down (f16), a 1x1 conv to --latent channels,
         4 transposed convs up, ReLU, no normalisation, no residual blocks.
The discriminator and perceptual loss are off: this measures the reconstruction path only.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import vqgan as vqgan_config
from muse_jax.data import scenes
from muse_jax.metrics import recon
from muse_jax.models.vqgan import VQGAN
from muse_jax.tasks.vqgan import model_config


class PlainAE(nn.Module):
  """The control: stride-2 convs down to f16 and transposed convs up; x_BxHxWx3 -> same."""
  channels: int
  latent: int

  @nn.compact
  def __call__(self, x):
    c = self.channels
    for ch in (c, c, 2 * c, 2 * c):
      x = nn.relu(nn.Conv(ch, (4, 4), strides=2)(x))
    x = nn.Conv(self.latent, (1, 1))(x)
    for ch in (2 * c, 2 * c, c, c):
      x = nn.relu(nn.ConvTranspose(ch, (4, 4), strides=(2, 2))(x))
    return nn.Conv(3, (3, 3))(x)


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--arch", default="vqgan", choices=("vqgan", "plain"))
  p.add_argument("--no-quantizer", action="store_true", help="vqgan: skip the quantizer")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--every", type=int, default=100)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--loss", default="l1", choices=("l1", "l2"))
  p.add_argument("--resolution", type=int, default=64)
  p.add_argument("--channels", type=int, default=32, help="plain: base channels")
  p.add_argument("--latent", type=int, default=32, help="plain: latent channels")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="vqgan: model field override, e.g. --set=channel_mult=1,2,2,4")
  return p.parse_args()


def vqgan_model(items):
  fields = vqgan_config.get_config("size=demo").model.to_dict()
  for item in items:
    key, _, value = item.partition("=")
    if key not in fields:
      raise SystemExit(f"--set {item!r}: the model section has no field {key!r}")
    old = fields[key]
    if isinstance(old, (tuple, list)):
      fields[key] = tuple(type(old[0])(v) for v in value.split(","))
    elif isinstance(old, bool):
      fields[key] = value.lower() in ("1", "true", "yes")
    else:
      fields[key] = type(old)(value) if old is not None else int(value)
  return VQGAN(model_config(fields))


def main():
  args = parse_args()
  src = scenes.SceneSource(1_000_000, resolution=args.resolution)
  to_model = lambda rows: np.stack([r["image"] for r in rows]).astype(np.float32) / 127.5 - 1
  test = to_model([src[900_000 + i] for i in range(64)])
  grey = np.full_like(test, 128 / 127.5 - 1)
  unit = lambda x: (jnp.clip(x, -1, 1) + 1) / 2
  grey_psnr = float(recon.psnr(unit(grey), unit(test)).mean())

  if args.arch == "plain":
    model = PlainAE(args.channels, args.latent)
    params = model.init(jax.random.key(0), test[:1])
    forward = lambda p, x: (model.apply(p, x), 0.0)
  else:
    model = vqgan_model(args.set)
    params = nn.unbox(model.init(jax.random.key(0), test[:1]))

    def forward(p, x):
      if args.no_quantizer:
        z = model.apply(p, x, method=lambda m, x: m._latent(x))       # pylint: disable=protected-access
        return model.apply(p, z, method=lambda m, z: m._pixels(z)), 0.0  # pylint: disable=protected-access
      rec, _, stats = model.apply(p, x)
      return rec, stats["vq_loss"]

  def loss_fn(p, x):
    rec, vq = forward(p, x)
    err = rec - x
    return (jnp.mean(err * err) if args.loss == "l2" else jnp.mean(jnp.abs(err))) + vq

  tx = optax.adam(args.lr)
  opt = tx.init(params)

  @jax.jit
  def step(p, o, x):
    loss, g = jax.value_and_grad(loss_fn)(p, x)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  psnr = jax.jit(lambda p, x: recon.psnr(unit(forward(p, x)[0]), unit(x)).mean())
  print(f"arch {args.arch}{' (no quantizer)' if args.no_quantizer else ''}, {args.loss}, lr "
        f"{args.lr}, batch {args.batch}, {args.resolution} px; all-grey PSNR {grey_psnr:.2f} dB")
  t0 = time.perf_counter()
  for i in range(args.steps):
    batch = to_model([src[i * args.batch + j] for j in range(args.batch)])
    params, opt, loss = step(params, opt, batch)
    if (i + 1) % args.every == 0:
      p = float(psnr(params, test))
      print(f"step {i + 1:5d}  loss {float(loss):.4f}  PSNR {p:.2f} dB ({p - grey_psnr:+.2f} vs "
            f"grey)  {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
  main()
