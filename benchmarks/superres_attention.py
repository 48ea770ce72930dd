r"""Super-res train step with full vs multi-axis high-res self-attention, on this host's CPU.

  JAX_PLATFORMS=cpu python benchmarks/superres_attention.py [--hi_grid=32] [--steps=5]

One process, one device: the configs/superres.py tiny preset widened to a grid where attention
matters (hidden 128, 4 heads, 2 high-res layers, hi_grid x hi_grid high-res tokens, 8x8 low-res,
batch 8, synthetic pairs), compiled twice, `model.hi_attention` "full" then "multi_axis"
(attn_block 8, attn_grid hi_grid / 8); prints each median step time, their ratio and the
float32 matmul peak measured in the same run (so hosts compare). Figures: benchmarks/RESULTS.md
"Multi-axis attention".
"""
import argparse
import os
import statistics
import time

import jax
import numpy as np

from configs import common, superres as superres_config
from muse_jax.train import loop
from train_step import matmul_peak, timed_step


def build(hi_grid: int, attention: str):
  config = common.override(superres_config.get_config("size=tiny"), {
      "model.hi_grid_size": hi_grid, "model.lo_grid_size": 8, "model.hidden_size": 128,
      "model.num_heads": 4, "model.mlp_dim": 512, "model.hi_num_layers": 2,
      "model.lo_num_layers": 1, "model.hi_attention": attention, "model.attn_block": 8,
      "model.attn_grid": hi_grid // 8, "train.batch_size": 8, "mesh.data": 1})
  setup = loop.Setup(config, devices=[jax.devices()[0]])
  t0 = time.perf_counter()
  compiled = setup.lower_train_step().compile()
  compile_s = time.perf_counter() - t0
  source = setup.task.make_source()
  transform = setup.task.make_transform(None)
  rows = [source[i] for i in range(setup.global_batch)]
  rows = [transform(r) for r in rows] if transform is not None else rows
  batch = {k: jax.device_put(np.stack([r[k] for r in rows]), setup.batch_shardings[k])
           for k in setup.batch_abstract}
  return setup, compiled, batch, compile_s


def time_steps(setup, compiled, batch, steps: int) -> list:
  rng = jax.random.key(0)
  state = setup.init_state(rng)
  state, _ = compiled(state, batch, rng, None)        # warm-up
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    state, _, dt, _ = timed_step(compiled, state, batch, rng)
    times.append(dt)
  return times


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--hi_grid", type=int, default=32)
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args()
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, "
        f"{len(os.sched_getaffinity(0))} cores in affinity mask")
  peak = max(matmul_peak(n, np.float32, 3) for n in (1024, 2048))
  print(f"float32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
  medians = {}
  for attention in ("full", "multi_axis"):
    setup, compiled, batch, compile_s = build(args.hi_grid, attention)
    times = time_steps(setup, compiled, batch, args.steps)
    medians[attention] = statistics.median(times)
    print(f"{attention:10s} hi grid {args.hi_grid}x{args.hi_grid} ({args.hi_grid ** 2} tokens): "
          f"compile {compile_s:.1f} s, step median {medians[attention] * 1e3:.1f} ms (min "
          f"{min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}; {args.steps} steps); "
          f"{loop.memory_report(compiled)}")
  print(f"multi_axis / full step time: {medians['multi_axis'] / medians['full']:.3f}")


if __name__ == "__main__":
  main()
