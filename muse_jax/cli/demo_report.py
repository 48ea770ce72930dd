"""muse-demo's last stage: sample prompts through the trained cascade, score them from the images
alone (metrics.alignment), and write grids, report.md and report.json."""
import json
import os
import time

import numpy as np

from muse_jax import decoding, pipeline
from muse_jax.data import scenes
from muse_jax.metrics import alignment

SPLITS = {"held_out": "eval", "seen": "eval_seen"}   # report name -> scenes split
GRID_TILES = 48     # tiles in each labelled grid (the report scores every prompt)


def prompts_for(split: str, n: int) -> list:
  """The first n captions of a scenes split (seed 1: not the training stream)."""
  source = scenes.SceneSource(n, resolution=16, seed=1, split=split)
  return [source[i]["caption"] for i in range(n)]


SEEDS = (0, 1)      # two sampling seeds: every prompt is drawn twice
BASE_DECODE = {"num_steps": 24, "guidance_scale": 4.0}
# Super-res without guidance, temperature 0.5: given the base tokens it has little to add from
# the caption, and guidance 4 made it repaint held-out pairs in their seen partners' colours and
# add specks (all +10 / +2 points held-out / seen over two seeds; benchmarks/RESULTS.md, "Object
# sizes for the demo"; benchmarks/demo_sampling_settings.py).
SUPERRES_DECODE = {"num_steps": 8, "guidance_scale": 0.0, "temperature": 0.5}


def matmul_peak_gflops(n: int = 1024, seconds: float = 1.0) -> float:
  """float32 matmul throughput of this host measured now (GFLOP/s), printed beside the demo's
  time so that runs on machines of different speeds can be compared (README)."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  calls, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    f(a).block_until_ready()
    calls += 1
  return 2 * n ** 3 * calls / (time.perf_counter() - t0) / 1e9


def sample_and_score(workdir: str, num_prompts: int, quick: bool):
  """Returns (seconds, {split name: {"alignment": scores over all seeds, "per_seed": [...],
  "prompts": [...]}}); writes samples/<split>.png grids (the first seed's images, each tile
  labelled with its prompt)."""
  from muse_jax import grids
  t0 = time.perf_counter()
  pipe = pipeline.Pipeline(pipeline.PipelinePaths(
      base=os.path.join(workdir, "base"), tokenizer=os.path.join(workdir, "vq"),
      superres=os.path.join(workdir, "superres"), tokenizer_hi=os.path.join(workdir, "vq")))
  out_dir = os.path.join(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  report = {}
  for name, split in SPLITS.items():
    prompts = prompts_for(split, num_prompts)
    images, per_seed = [], []
    for seed in SEEDS:
      cfg = pipeline.SampleConfig(
          num_images=1, seed=seed,
          base=decoding.DecodeConfig(**dict(BASE_DECODE, **({"num_steps": 4} if quick else {}))),
          superres=decoding.DecodeConfig(**dict(SUPERRES_DECODE,
                                                **({"num_steps": 2} if quick else {}))))
      samples = pipe.generate(prompts, cfg)
      images.append(samples.images_BxHxWx3)
      per_seed.append(alignment.alignment(samples.images_BxHxWx3, prompts))
    grids.save_labelled_grid(os.path.join(out_dir, f"{name}.png"), images[0][:GRID_TILES],
                             prompts[:GRID_TILES])
    report[name] = {"split": split, "seeds": list(SEEDS),
                    "alignment": alignment.alignment(np.concatenate(images), prompts * len(SEEDS)),
                    "per_seed": per_seed, "prompts": prompts}
  return time.perf_counter() - t0, report


def write(workdir: str, report: dict, times: dict, quick: bool, peak_gflops: float) -> str:
  """report.json and report.md under workdir/samples; returns the markdown."""
  out_dir = os.path.join(workdir, "samples")
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump({"times_s": times, "quick": quick, "matmul_peak_gflops": peak_gflops, **report},
              f, indent=1)
  lines = [f"# muse-demo{' (quick)' if quick else ''}", "",
           f"float32 matmul peak of this host, measured in this run: {peak_gflops:.0f} GFLOP/s "
           "(compare times across machines by it)", "",
           "| stage | seconds |", "| --- | --- |"]
  lines += [f"| {k} | {v:.0f} |" for k, v in times.items()]
  lines += ["", "Prompt alignment recovered from the images alone (muse_jax/metrics/alignment.py;"
            f" every prompt sampled with seeds {', '.join(map(str, SEEDS))}):",
            "", "| prompts | images | colour | shape | position | size | count | all |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  fmt = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
  keys = ("colour", "shape", "position", "size", "count", "all")
  for name, r in report.items():
    a = r["alignment"]
    lines.append(f"| {name} ({r['split']}) | {a['num_images']} | " + " | ".join(
        fmt(a[k]) for k in keys) + " |")
    for seed, s in zip(r["seeds"], r["per_seed"]):
      lines.append(f"| {name}, seed {seed} | {s['num_images']} | " + " | ".join(
          fmt(s[k]) for k in keys) + " |")
  lines += ["", "Grids: " + ", ".join(f"samples/{n}.png" for n in report), "",
            "Go further:",
            f"- `muse-sample --checkpoint {workdir}/base --tokenizer {workdir}/vq --superres "
            f"{workdir}/superres --tokenizer-hi {workdir}/vq --prompt \"a red circle on the left\""
            f" --out /tmp/samples`",
            f"- `muse-edit maskfree --checkpoint {workdir}/base --tokenizer {workdir}/vq --image "
            f"IMG.png --prompt \"...\" --out /tmp/edit`",
            "- train longer: `python -m muse_jax.main --config=configs/base.py:size=demo "
            f"--config.data.source=preencoded --config.data.path='{workdir}/enc/train-*' "
            f"--config.train.num_steps=10000 --workdir={workdir}/base_long`"]
  text = "\n".join(lines) + "\n"
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(text)
  print(text)
  return text
