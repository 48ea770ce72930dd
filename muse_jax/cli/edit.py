r"""muse-edit: inpainting, outpainting and mask-free editing of an image with a prompt.

  muse-edit inpaint --checkpoint /ckpt/base --tokenizer /ckpt/vq_f16 \
      [--superres /ckpt/superres --tokenizer-hi /ckpt/vq_f8] \
      --image photo.png --mask mask.png --prompt "a yellow cross" --out /tmp/edit
  muse-edit outpaint ... --image photo.png --keep 64,64,192,192 --prompt "..." --out /tmp/edit
  muse-edit maskfree ... --image photo.png --prompt "a blue circle" --iterations 100 --out /tmp/edit

The image must be square at the pipeline's output resolution (the super-res tokenizer's when
--superres is given). The mask is a grayscale/RGB PNG of the image's size: white (> 127) marks the
pixels to repaint; every token whose patch touches them is regenerated, the others are kept
exactly. outpaint takes --keep x0,y0,x1,y1 (pixels, x1/y1 exclusive: the part to keep) or a
--mask. With --superres, inpainting is multi-scale (base tokens first, then the high-res ones).
Writes OUT/00000.png ... (one per --num-images), OUT/grid.png, OUT/settings.json and
OUT/tokens.npz (original and edited token ids, and the regenerated regions).
"""
import argparse
import sys

import numpy as np
import PIL.Image

from muse_jax import editing, errors, paths
from muse_jax.cli import sample as sample_cli
from muse_jax.cli.sample import UsageError


def read_image(path: str, mode: str = "RGB") -> np.ndarray:
  try:
    with PIL.Image.open(path) as im:
      return np.asarray(im.convert(mode))
  except (OSError, ValueError, PIL.UnidentifiedImageError) as e:
    raise UsageError(f"cannot read image {path}: {e}") from e


def parse_box(text: str):
  try:
    box = [int(v) for v in text.split(",")]
  except ValueError:
    box = []
  if len(box) != 4:
    raise UsageError(f"--keep {text!r} must be four integers x0,y0,x1,y1 (pixels)")
  return box


def edit(args) -> int:
  if len(args.prompt) != 1:
    raise UsageError(f"muse-edit takes one --prompt, got {len(args.prompt)}")
  if args.negative_prompt and len(args.negative_prompt) != 1:
    raise UsageError("muse-edit takes at most one --negative-prompt")
  sample_cli.check_prompts(args)
  prompt = args.prompt[0]
  negative = args.negative_prompt[0] if args.negative_prompt else None
  image = read_image(args.image).astype(np.float32) / 255.0
  mask = None
  if getattr(args, "mask", None):
    mask = read_image(args.mask, "L") > 127
    if mask.shape != image.shape[:2]:
      raise UsageError(f"mask {args.mask} is {mask.shape[1]}x{mask.shape[0]} pixels but image "
                       f"{args.image} is {image.shape[1]}x{image.shape[0]}: they must match")
  if args.command == "inpaint" and mask is None:
    raise UsageError("inpaint needs --mask (white = the region to repaint)")
  keep = parse_box(args.keep) if getattr(args, "keep", None) else None
  if args.command == "outpaint" and (keep is None) == (mask is None):
    raise UsageError("outpaint needs exactly one of --keep x0,y0,x1,y1 or --mask")
  if args.command == "maskfree":
    try:
      mf = editing.MaskFreeConfig(num_iterations=args.iterations, fraction=args.fraction,
                                  guidance_scale=args.guidance, top_k=args.top_k,
                                  temperature=args.temperature)
    except ValueError as e:
      raise UsageError(str(e)) from e
  else:
    cfg = sample_cli.sample_config(args)
  pipe = sample_cli.build_pipeline(args)
  editing.check_image(pipe, image)
  if args.command == "inpaint":
    result = editing.inpaint(pipe, image, mask, prompt, cfg, negative)
  elif args.command == "outpaint":
    result = editing.outpaint(pipe, image, prompt, keep_box=keep, mask_HxW=mask, cfg=cfg,
                              negative_prompt=negative)
  else:
    result = editing.maskfree_edit(pipe, image, prompt, mf, args.num_images, args.seed, negative)
  settings = {k: v for k, v in vars(args).items() if k != "out"}
  settings.update(resolution=pipe.resolution, base_resolution=pipe.lo_resolution,
                  regenerated_base_tokens=int(result.region_lo_N.sum()),
                  regenerated_hi_tokens=None if result.region_hi_M is None
                  else int(result.region_hi_M.sum()))
  if args.command != "maskfree":
    settings.update(sample_cli.settings_of(args, pipe, cfg))
  names = sample_cli.write_outputs(args.out, result.samples.images_BxHxWx3, args.num_images,
                                   settings)
  s = result.samples
  arrays = dict(original_lo=result.original_lo_N, edited_lo=s.tokens_lo_BxN,
                region_lo=result.region_lo_N)
  if s.tokens_hi_BxM is not None:
    arrays.update(original_hi=result.original_hi_M, edited_hi=s.tokens_hi_BxM,
                  region_hi=result.region_hi_M)
  np.savez(f"{args.out}/tokens.npz", **arrays)
  print(f"muse-edit {args.command}: wrote {len(names)} images of {pipe.resolution}px, grid.png, "
        f"settings.json and tokens.npz to {args.out}")
  return 0


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="muse-edit", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  for name, help_ in (("inpaint", "repaint the masked region"),
                      ("outpaint", "extend the image beyond a kept box"),
                      ("maskfree", "edit the whole image toward the prompt, no mask")):
    s = sub.add_parser(name, help=help_)
    sample_cli.add_model_args(s)
    sample_cli.add_decode_args(s)
    s.add_argument("--image", required=True)
    if name != "maskfree":
      s.add_argument("--mask", help="PNG of the image's size; white = regenerate")
    if name == "outpaint":
      s.add_argument("--keep", help="x0,y0,x1,y1: the box of the image to keep (pixels)")
    if name == "maskfree":
      d = editing.MaskFreeConfig()
      s.add_argument("--iterations", type=int, default=d.num_iterations)
      s.add_argument("--fraction", type=float, default=d.fraction,
                     help="share of the tokens resampled per iteration")
      s.add_argument("--top-k", type=int, default=d.top_k)
  return p


def main(argv=None) -> int:
  args = paths.resolve_args(parser().parse_args(argv), sample_cli.PATH_ARGS)
  return errors.report(f"muse-edit {args.command}", edit, args)


def run_main():
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  run_main()
