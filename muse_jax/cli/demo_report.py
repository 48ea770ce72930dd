"""muse-demo's last stage: sample prompts through the trained cascade, score them from the images
alone (metrics.alignment), and write grids, report.md and report.json."""
import json
import os
import time

import numpy as np
import PIL.Image

from muse_jax import decoding, pipeline
from muse_jax.data import scenes
from muse_jax.metrics import alignment

SPLITS = {"held_out": "eval", "seen": "eval_seen"}   # report name -> scenes split


def prompts_for(split: str, n: int) -> list:
  """The first n captions of a scenes split (seed 1: not the training stream)."""
  source = scenes.SceneSource(n, resolution=16, seed=1, split=split)
  return [source[i]["caption"] for i in range(n)]


def sample_and_score(workdir: str, num_prompts: int, quick: bool):
  """Returns (seconds, {split name: {"alignment": scores, "prompts": [...]}}); writes
  samples/<split>.png grids."""
  t0 = time.perf_counter()
  pipe = pipeline.Pipeline.from_paths(pipeline.PipelinePaths(
      base=os.path.join(workdir, "base"), tokenizer=os.path.join(workdir, "vq"),
      superres=os.path.join(workdir, "superres"), tokenizer_hi=os.path.join(workdir, "vq")))
  cfg = pipeline.SampleConfig(
      num_images=1, seed=0,
      base=decoding.DecodeConfig(num_steps=4 if quick else 24, guidance_scale=4.0),
      superres=decoding.DecodeConfig(num_steps=2 if quick else 8, guidance_scale=4.0))
  out_dir = os.path.join(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  report = {}
  for name, split in SPLITS.items():
    prompts = prompts_for(split, num_prompts)
    samples = pipe.generate(prompts, cfg)
    grid = pipeline.image_grid(samples.images_BxHxWx3)
    PIL.Image.fromarray((grid * 255).round().astype(np.uint8)).save(
        os.path.join(out_dir, f"{name}.png"))
    report[name] = {"split": split, "alignment": alignment.alignment(samples.images_BxHxWx3,
                                                                     prompts),
                    "prompts": prompts}
  return time.perf_counter() - t0, report


def write(workdir: str, report: dict, times: dict, quick: bool) -> str:
  """report.json and report.md under workdir/samples; returns the markdown."""
  out_dir = os.path.join(workdir, "samples")
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump({"times_s": times, "quick": quick, **report}, f, indent=1)
  lines = [f"# muse-demo{' (quick)' if quick else ''}", "",
           "| stage | seconds |", "| --- | --- |"]
  lines += [f"| {k} | {v:.0f} |" for k, v in times.items()]
  lines += ["", "Prompt alignment recovered from the images alone (muse_jax/metrics/alignment.py):",
            "", "| prompts | n | colour | shape | position | size | count | all |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  fmt = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
  for name, r in report.items():
    a = r["alignment"]
    lines.append(f"| {name} ({r['split']}) | {a['num_images']} | " + " | ".join(
        fmt(a[k]) for k in ("colour", "shape", "position", "size", "count", "all")) + " |")
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
