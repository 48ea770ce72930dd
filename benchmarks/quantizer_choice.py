r"""Which quantizer the paper tokenizers (f16-256, f8-512) should train with (issue 19), from a
short run of each candidate at reduced width on natural photographs, on the local CPU.

  pip install scikit-image==0.26.0    # its bundled photographs are the data (no download)
  JAX_PLATFORMS=cpu python benchmarks/quantizer_choice.py                   # every candidate
  JAX_PLATFORMS=cpu python benchmarks/quantizer_choice.py --candidates=vq,fsq --steps=200

The model is configs/vqgan.py:size=f16-256's model section (f16, channel multipliers
(1, 1, 2, 2, 4), 2 residual blocks per level, 8192 codes) with base channels --width (128 in the
preset) and the quantizer of each candidate:
  vq          plain VQ, commitment 0.25, latent 256 (the paper presets before this benchmark)
  vq_entropy  VQ + MaskGIT's entropy loss (weight 0.1, temperature 0.01), latent 256
  vq_l2       VQ on l2-normalised 32-d codes (ViT-VQGAN's factorised, normalised lookup)
  fsq         FSQ levels (8, 8, 8, 4, 4): 8192 codes on a fixed grid, latent 5 (the presets'
              quantizer since this benchmark)
Each trains --steps Adam steps (lr --lr, the reconstruction path only: L1 + the quantizer's own
losses; the paper presets start the adversarial loss at step 20k and the perceptual loss needs
weight files) on random crops of 14 photographs (scale 1/4..1, flips), and is evaluated every
--every steps on --eval_crops fixed crops of 4 photographs it never sees (chelsea, rocket,
camera, gravel): codebook usage (codes used / 8192), perplexity of the code histogram (2^bits
actually used; at most the number of evaluated tokens), and PSNR. The same seed, data order and
initialisation of the shared layers for every candidate. Prints the host's float32 matmul peak
so times compare across machines.
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
import PIL.Image

from configs import vqgan as vqgan_config
from muse_jax.metrics import recon
from muse_jax.models.vqgan import VQGAN
from muse_jax.tasks.vqgan import model_config

CANDIDATES = {
    "vq": dict(quantizer="vq", latent_dim=256, fsq_levels=()),
    "vq_entropy": dict(quantizer="vq", latent_dim=256, fsq_levels=(), entropy_loss_weight=0.1,
                       entropy_temperature=0.01),
    "vq_l2": dict(quantizer="vq", latent_dim=32, fsq_levels=(), l2_normalize_codes=True),
    "fsq": dict(quantizer="fsq", latent_dim=5, fsq_levels=(8, 8, 8, 4, 4)),
}
TRAIN = ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina",
         "colorwheel", "stereo_motorcycle", "brick", "grass", "moon", "coins", "clock", "cell",
         "page")
HELD_OUT = ("chelsea", "rocket", "camera", "gravel")


def photos(names):
  """skimage.data's bundled photographs as uint8 RGB arrays (grey ones repeated to 3 channels)."""
  try:
    from skimage import data  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SystemExit("quantizer_choice.py reads scikit-image's bundled photographs: "
                     "pip install scikit-image==0.26.0") from None
  out = []
  for name in names:
    imgs = getattr(data, name)()
    for img in (imgs[:2] if isinstance(imgs, tuple) else (imgs,)):   # stereo pair: both views
      img = np.asarray(img)
      img = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]
      out.append(img.astype(np.uint8))
  return out


def crop(rng, img, size):
  """A random crop of `size` px from `img` scaled by 1/4..1 (never below `size`), maybe flipped."""
  h, w = img.shape[:2]
  scale = rng.uniform(max(0.25, size / min(h, w)), 1.0)
  hs, ws = max(size, round(h * scale)), max(size, round(w * scale))
  small = np.asarray(PIL.Image.fromarray(img).resize((ws, hs), PIL.Image.BICUBIC))
  y, x = rng.integers(0, hs - size + 1), rng.integers(0, ws - size + 1)
  out = small[y:y + size, x:x + size]
  return out[:, ::-1] if rng.random() < 0.5 else out


def batches(imgs, size, count, seed):
  rng = np.random.default_rng(seed)
  return np.stack([crop(rng, imgs[rng.integers(len(imgs))], size)
                   for _ in range(count)]).astype(np.float32) / 127.5 - 1


def matmul_peak():
  n = 2048
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(5):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best / 1e9


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
  p.add_argument("--candidates", default=",".join(CANDIDATES))
  p.add_argument("--width", type=int, default=16, help="base channels (128 in f16-256)")
  p.add_argument("--resolution", type=int, default=128)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--every", type=int, default=100)
  p.add_argument("--lr", type=float, default=3e-4)
  p.add_argument("--eval_crops", type=int, default=256)
  return p.parse_args()


def run(name, args, train_imgs, test):
  fields = vqgan_config.get_config("size=f16-256").model.to_dict()
  fields.update(base_channels=args.width, norm_groups=min(32, args.width // 2),
                dtype="float32", **CANDIDATES[name])
  model = VQGAN(model_config(fields))
  params = nn.unbox(model.init(jax.random.key(0), test[:1]))
  tx = optax.adam(args.lr, b1=0.9, b2=0.99)
  opt = tx.init(params)

  def loss_fn(p, x):
    rec, _, stats = model.apply(p, x)
    return jnp.mean(jnp.abs(rec - x)) + stats["vq_loss"]

  @jax.jit
  def step(p, o, x):
    loss, g = jax.value_and_grad(loss_fn)(p, x)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  @jax.jit
  def evaluate(p, x):
    rec, ids, _ = model.apply(p, x)
    unit = lambda v: (jnp.clip(v, -1, 1) + 1) / 2
    return recon.psnr(unit(rec), unit(x)).mean(), ids

  def report(i, t0):
    psnrs, ids = zip(*(evaluate(params, test[j:j + 32]) for j in range(0, len(test), 32)))
    counts = np.bincount(np.concatenate([np.asarray(v).ravel() for v in ids]),
                         minlength=model.cfg.codebook_size)
    p = counts[counts > 0] / counts.sum()
    print(f"{name:11s} step {i:5d}  usage {np.mean(counts > 0):6.1%}  perplexity "
          f"{np.exp(-np.sum(p * np.log(p))):7.1f}  PSNR {float(np.mean(psnrs)):.2f} dB  "
          f"{time.perf_counter() - t0:5.0f} s", flush=True)

  t0 = time.perf_counter()
  report(0, t0)
  for i in range(args.steps):
    params, opt, _ = step(params, opt, batches(train_imgs, args.resolution, args.batch, seed=i))
    if (i + 1) % args.every == 0:
      report(i + 1, t0)


def main():
  args = parse_args()
  names = args.candidates.split(",")
  for name in names:
    if name not in CANDIDATES:
      raise SystemExit(f"--candidates: unknown {name!r}; expected some of {sorted(CANDIDATES)}")
  train_imgs, test_imgs = photos(TRAIN), photos(HELD_OUT)
  test = batches(test_imgs, args.resolution, args.eval_crops, seed=10_000_000)
  tokens = args.eval_crops * (args.resolution // 16) ** 2
  print(f"f16-256 model at base channels {args.width}, {args.resolution} px, batch {args.batch}, "
        f"Adam lr {args.lr}; {len(train_imgs)} training / {len(test_imgs)} held-out photographs, "
        f"{tokens} evaluated tokens; float32 matmul peak {matmul_peak():.0f} GFLOP/s")
  for name in names:
    run(name, args, train_imgs, test)


if __name__ == "__main__":
  main()
