r"""muse-sample: prompts -> PNG images with the base model (and super-res, when given).

  muse-sample --checkpoint /ckpt/base --tokenizer /ckpt/vq_f16 \
      [--superres /ckpt/superres --tokenizer-hi /ckpt/vq_f8] \
      --prompt "a red circle to the left of a blue square" --prompt "a green triangle" \
      [--negative-prompt "yellow"] --num-images 4 --guidance 4 --seed 0 --out /tmp/samples

--checkpoint / --superres: training workdirs (their latest checkpoint; EMA params when saved).
--tokenizer / --tokenizer-hi: muse-convert folders or tokenizer training workdirs. Writes
OUT/PPP_KK.png (prompt PPP, image KK), OUT/grid.png (one row per prompt) and OUT/settings.json
(every setting used, the resolved paths and the output files). Classifier-free guidance rises
linearly from 0 to --guidance over the steps (Muse); --guidance 0 turns it off.
"""
import argparse
import dataclasses
import json
import os
import sys

import numpy as np
import PIL.Image

from muse_jax import checkpoint, decoding
from muse_jax.cli import encode as encode_cli
from muse_jax.pipeline import Pipeline, PipelineError, PipelinePaths, SampleConfig, image_grid


class UsageError(ValueError):
  """A command-line mistake; reported without a traceback."""


ERRORS = (UsageError, PipelineError, encode_cli.UsageError, checkpoint.CheckpointError,
          FileNotFoundError, ImportError)


def add_model_args(p: argparse.ArgumentParser):
  p.add_argument("--checkpoint", required=True, help="base model workdir (stage 'base')")
  p.add_argument("--tokenizer", required=True, help="tokenizer of the base tokens")
  p.add_argument("--superres", help="super-res workdir (stage 'superres')")
  p.add_argument("--tokenizer-hi", help="tokenizer of the super-res tokens (with --superres)")


def add_decode_args(p: argparse.ArgumentParser, guidance: float = 4.0):
  p.add_argument("--prompt", action="append", required=True, help="repeatable")
  p.add_argument("--negative-prompt", action="append",
                 help="one for all prompts, or one per prompt (needs --guidance > 0)")
  p.add_argument("--num-images", type=int, default=1, help="images per prompt")
  p.add_argument("--steps", type=int, default=decoding.DEFAULT_NUM_STEPS["base"])
  p.add_argument("--superres-steps", type=int, default=decoding.DEFAULT_NUM_STEPS["superres"])
  p.add_argument("--guidance", type=float, default=guidance,
                 help="classifier-free guidance scale at the last step (0: off)")
  p.add_argument("--guidance-schedule", default="linear", choices=decoding.GUIDANCE_SCHEDULES)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--choice-temperature", type=float, default=4.5)
  p.add_argument("--schedule", default="cosine")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True, help="output folder")


def check_prompts(args):
  for flag, values in (("--prompt", args.prompt), ("--negative-prompt", args.negative_prompt)):
    for v in values or []:
      if not v.strip():
        raise UsageError(f"empty {flag}: every {flag} must contain some text")


def build_pipeline(args) -> Pipeline:
  if bool(args.superres) != bool(args.tokenizer_hi):
    raise UsageError("--superres and --tokenizer-hi go together: the super-res model's tokens "
                     "need the high-res tokenizer to become pixels")
  return Pipeline.from_paths(PipelinePaths(base=args.checkpoint, tokenizer=args.tokenizer,
                                           superres=args.superres,
                                           tokenizer_hi=args.tokenizer_hi))


def sample_config(args) -> SampleConfig:
  try:
    common = dict(temperature=args.temperature, choice_temperature=args.choice_temperature,
                  guidance_scale=args.guidance, guidance_schedule=args.guidance_schedule,
                  schedule=args.schedule)
    return SampleConfig(num_images=args.num_images, seed=args.seed,
                        base=decoding.DecodeConfig(num_steps=args.steps, **common),
                        superres=decoding.DecodeConfig(num_steps=args.superres_steps, **common))
  except ValueError as e:
    raise UsageError(str(e)) from e


def write_outputs(out: str, images_BxHxWx3, cols: int, settings: dict, names=None) -> list:
  """One PNG per image, grid.png (`cols` per row) and settings.json; returns the PNG names."""
  os.makedirs(out, exist_ok=True)
  names = names or [f"{i:05d}.png" for i in range(len(images_BxHxWx3))]
  u8 = (np.clip(images_BxHxWx3, 0, 1) * 255).round().astype(np.uint8)
  for name, im in zip(names, u8):
    PIL.Image.fromarray(im).save(os.path.join(out, name))
  grid_u8 = (image_grid(images_BxHxWx3, cols) * 255).round().astype(np.uint8)
  PIL.Image.fromarray(grid_u8).save(os.path.join(out, "grid.png"))
  with open(os.path.join(out, "settings.json"), "w") as f:
    json.dump(dict(settings, files=names, grid="grid.png"), f, indent=1)
  return names


def settings_of(args, pipe: Pipeline, cfg: SampleConfig) -> dict:
  s = {k: v for k, v in vars(args).items() if k not in ("out", "func")}
  s.update(resolution=pipe.resolution, base_resolution=pipe.lo_resolution,
           text_encoder=dataclasses.asdict(pipe.text_cfg), base_decode=dataclasses.asdict(cfg.base),
           superres_decode=dataclasses.asdict(cfg.superres) if pipe.has_superres else None,
           num_images=cfg.num_images, seed=cfg.seed)
  return s


def sample(args) -> int:
  check_prompts(args)
  cfg = sample_config(args)
  pipe = build_pipeline(args)
  samples = pipe.generate(args.prompt, cfg, args.negative_prompt)
  n = cfg.num_images
  names = [f"{p:03d}_{k:02d}.png" for p in range(len(args.prompt)) for k in range(n)]
  write_outputs(args.out, samples.images_BxHxWx3, n, settings_of(args, pipe, cfg), names)
  print(f"muse-sample: wrote {len(names)} images of {pipe.resolution}px, grid.png and "
        f"settings.json to {args.out}")
  return 0


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="muse-sample", description=__doc__.split("\n")[0])
  add_model_args(p)
  add_decode_args(p)
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  try:
    return sample(args)
  except ERRORS as e:
    print(f"muse-sample: error: {e}", file=sys.stderr)
    return 1


def run_main():
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  run_main()
