r"""How much of an object's shape a tokenizer keeps, by object size (issue 15: choosing SIZES).

  JAX_PLATFORMS=cpu python benchmarks/scene_sizes.py --tokenizer=/tmp/muse_demo/vq \
      [--resolution=32] [--sizes 0.11,0.17 0.14,0.20] [--num=400]

For each (small, large) pair of half-sides (muse_jax/data/scenes.py SIZES, in image sides), --num
one-object scenes (the four shapes and two sizes in turn, random colours and positions, centres
jittered as the scene source does) are rendered at --resolution, encoded and decoded by the
tokenizer, and read back by the alignment scorer (muse_jax/metrics/alignment.py, its size split
moved to the pair's midpoint). Printed per size and shape: the fraction whose reconstruction is
read with the right shape and size (the ground truth itself scores 1.00 in every cell), i.e. the
ceiling a generator drawing through this tokenizer has. About 20 s per pair on 2 CPU cores.
benchmarks/RESULTS.md, "Object sizes for the demo", has the table.
"""
import argparse
import collections
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from muse_jax.data import scenes  # noqa: E402
from muse_jax.metrics import alignment  # noqa: E402
from muse_jax.tokenizer import Tokenizer, local_mesh  # noqa: E402


def scenes_of_sizes(num: int, resolution: int, rng: np.random.Generator):
  """num one-object scenes cycling through shapes and sizes (with the current scenes.SIZES)."""
  objects, images = [], []
  for i in range(num):
    size = ("small", "large")[(i // len(scenes.SHAPES)) % 2]
    position = tuple(scenes.POSITIONS)[int(rng.integers(len(scenes.POSITIONS)))]
    center = scenes.jittered_center(position, size, rng)
    obj = {"colour": tuple(scenes.COLOURS)[int(rng.integers(len(scenes.COLOURS)))],
           "shape": scenes.SHAPES[i % len(scenes.SHAPES)], "size": size, "position": position,
           "center": center}
    objects.append(obj)
    images.append(scenes.render([obj], resolution))
  return objects, np.stack(images)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--tokenizer", required=True)
  p.add_argument("--resolution", type=int, default=32)
  p.add_argument("--sizes", nargs="+", default=["0.11,0.17", "0.13,0.19", "0.14,0.20",
                                                "0.15,0.21"])
  p.add_argument("--num", type=int, default=400)
  args = p.parse_args()
  tok = Tokenizer(args.tokenizer, local_mesh())
  saved = dict(scenes.SIZES), alignment._SIZE_SPLIT  # noqa: SLF001
  cells = [f"{z} {s}" for z in ("small", "large") for s in scenes.SHAPES]
  print(f"| half-sides (small, large) | {' | '.join(cells)} | mean |")
  print("| --- " * (len(cells) + 2) + "|")
  try:
    for pair in args.sizes:
      small, large = map(float, pair.split(","))
      scenes.SIZES.update(small=small, large=large)
      alignment._SIZE_SPLIT = small + large  # noqa: SLF001
      objects, images = scenes_of_sizes(args.num, args.resolution, np.random.default_rng(0))
      ids = np.asarray(tok.encode(images.astype(np.float32) / 255.0, args.resolution, 64))
      g = int(round(ids.shape[1] ** 0.5))
      recon = np.asarray(tok.decode(ids.reshape(-1, g, g), 64))
      right, total = collections.Counter(), collections.Counter()
      for image, obj in zip(recon, objects):
        found = alignment.detect(image)
        key = f"{obj['size']} {obj['shape']}"
        total[key] += 1
        right[key] += bool(found) and (found[0]["shape"], found[0]["size"]) == (obj["shape"],
                                                                               obj["size"])
      acc = [right[c] / max(total[c], 1) for c in cells]
      print(f"| {small:.2f}, {large:.2f} | {' | '.join(f'{a:.2f}' for a in acc)} | "
            f"{np.mean(acc):.2f} |", flush=True)
  finally:
    scenes.SIZES.clear()
    scenes.SIZES.update(saved[0])
    alignment._SIZE_SPLIT = saved[1]  # noqa: SLF001


if __name__ == "__main__":
  main()
