r"""Sampling settings of the cascade on a trained muse-demo workdir (issue 15): prompt alignment of
each variant, base and super-res decode settings set apart (muse-eval's sweep sets both stages
alike).

  JAX_PLATFORMS=cpu python benchmarks/demo_sampling_settings.py --workdir=/tmp/muse_demo \
      [--num-prompts=96] [--seed=0]

For each variant, the demo's prompts of the held-out ("eval") and seen ("eval_seen") splits are
sampled once (seed --seed) and scored from the images alone; ~1.5 min per variant on 2 CPU cores
at 96 prompts per split. benchmarks/RESULTS.md, "A world sized to the demo" and "Object sizes for
the demo", has the tables.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from muse_jax import decoding, pipeline  # noqa: E402  pylint: disable=g-import-not-at-top
from muse_jax.cli import demo_report  # noqa: E402
from muse_jax.metrics import alignment  # noqa: E402

BASE = demo_report.BASE_DECODE                        # muse-demo's base settings
SUPERRES = {"num_steps": 8, "guidance_scale": 4.0}   # the super-res settings before 2026-12-03
VARIANTS = (    # name, base changes, super-res changes
    ("guidance 4 in both stages", {}, {}),
    ("super-res temperature 0.5", {}, {"temperature": 0.5}),
    ("super-res 16 steps", {}, {"num_steps": 16}),
    ("super-res guidance 8", {}, {"guidance_scale": 8.0}),
    ("super-res guidance 2", {}, {"guidance_scale": 2.0}),
    ("super-res guidance 0", {}, {"guidance_scale": 0.0}),
    ("super-res guidance 0, temperature 0.5 (muse-demo's)", {}, demo_report.SUPERRES_DECODE),
    ("super-res choice temperature 1", {}, {"choice_temperature": 1.0}),
    ("base temperature 0.5", {"temperature": 0.5}, {}),
)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="/tmp/muse_demo")
  p.add_argument("--num-prompts", type=int, default=96)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  w = args.workdir
  pipe = pipeline.Pipeline(pipeline.PipelinePaths(
      base=f"{w}/base", tokenizer=f"{w}/vq", superres=f"{w}/superres", tokenizer_hi=f"{w}/vq"))
  prompts = {s: demo_report.prompts_for(s, args.num_prompts) for s in ("eval", "eval_seen")}
  print("| variant | held-out all / shape / size / count | seen all / shape / size / count | "
        "seconds |\n| --- | --- | --- | --- |")
  for name, base, superres in VARIANTS:
    t0 = time.perf_counter()
    cfg = pipeline.SampleConfig(num_images=1, seed=args.seed,
                                base=decoding.DecodeConfig(**{**BASE, **base}),
                                superres=decoding.DecodeConfig(**{**SUPERRES, **superres}))
    cells = []
    for split, ps in prompts.items():
      a = alignment.alignment(pipe.generate(ps, cfg).images_BxHxWx3, ps)
      cells.append(" / ".join(f"{a[k]:.0%}" for k in ("all", "shape", "size", "count")))
    print(f"| {name} | {' | '.join(cells)} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
  main()
