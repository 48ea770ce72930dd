r"""How sharp must a tokenizer's reconstructions be for the demo's prompt-alignment targets (issue 7)?

  JAX_PLATFORMS=cpu python benchmarks/alignment_blur.py [--num-images=64] [--resolution=64]

Blurs the ground-truth scenes (split eval_seen, the images muse-eval scores a tokenizer on) with a
Gaussian of growing sigma and prints, for each sigma, the PSNR against the sharp images and the
prompt alignment that muse_jax/metrics/alignment.py recovers from the blurred images. A tokenizer
whose reconstructions are at a given PSNR loses detail roughly like the blur of that PSNR, so the
table says which PSNR the demo tokenizer must reach before a generator on its tokens can meet the
targets (all attributes >= 90% seen, >= 75% held-out). Sigma is in pixels of a 64 px image
(scaled with --resolution). Seconds on a CPU.
"""
import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
from PIL import Image, ImageFilter

from muse_jax.cli.evaluate import load_scenes
from muse_jax.metrics import alignment


def psnr(a_NxHxWx3: np.ndarray, b_NxHxWx3: np.ndarray) -> float:
  """Mean over images of 10 log10(1 / MSE), images in [0, 1] (numpy: independent of the
  project's metric code)."""
  mse = ((a_NxHxWx3 - b_NxHxWx3) ** 2).mean(axis=(1, 2, 3))
  return float(np.mean(10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-images", type=int, default=64)
  parser.add_argument("--resolution", type=int, default=64)
  parser.add_argument("--sigmas", default="0,0.5,1,1.5,2,3")
  args = parser.parse_args(argv)
  images, captions = load_scenes(args.num_images, args.resolution)
  u8 = (images * 255).round().astype(np.uint8)
  print(f"{args.num_images} eval_seen scenes at {args.resolution} px")
  print("| blur sigma (64 px units) | PSNR dB | all | colour | shape | position | size | count |")
  print("|---|---|---|---|---|---|---|---|")
  for sigma in (float(s) for s in args.sigmas.split(",")):
    radius = sigma * args.resolution / 64
    blurred = u8 if radius == 0 else np.stack(
        [np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(radius))) for x in u8])
    blurred = blurred.astype(np.float32) / 255.0
    a = alignment.alignment(blurred, captions)
    db = "inf" if radius == 0 else f"{psnr(images, blurred):.1f}"
    cols = " | ".join(f"{100 * a[k]:.0f}%" for k in ("all", "colour", "shape", "position",
                                                      "size", "count"))
    print(f"| {sigma:g} | {db} | {cols} |", flush=True)


if __name__ == "__main__":
  main()
