r"""muse-eval: quality report of a tokenizer or a text-to-image generator -> report.json, report.md.

  muse-eval --checkpoint /ckpt/vq_f16 --data scenes --num-images 256 --resolution 256 --out /tmp/ev
  muse-eval --checkpoint /runs/base --tokenizer /ckpt/vq_f16 [--superres /runs/sr \
      --tokenizer-hi /ckpt/vq_f8] --num-images 64 --guidance 0 2 4 --temperature 1 \
      [--fid-weights pt_inception-2015-12-05-6726825d.pth] --out /tmp/ev

Tokenizer (a muse-convert folder, or a `vqgan` / `decoder_finetune` workdir): reconstruction PSNR
and SSIM (muse_jax/metrics/recon.py) and codebook usage (distinct codes used, and the perplexity
of their histogram) over --num-images images of --data ("scenes": the built-in data set's
eval_seen split; or a folder of images). On the scenes, also the prompt alignment of the
reconstructions against their captions: the ceiling of any generator that uses this tokenizer.

Generator (a `base` workdir + --tokenizer, via muse_jax.pipeline; or any `sample(prompts, seed,
guidance, temperature) -> [B, H, W, 3] in [0, 1]` callable through `evaluate_generator`): for
every (guidance, temperature) of the sweep, prompt alignment (muse_jax/metrics/alignment.py) on
scene prompts of the held-out ("eval": unseen colour-shape pairs) and "eval_seen" splits
separately, and FID against the scenes rendered from the same prompts when --fid-weights is
given. sweep.png plots alignment against FID (or against guidance without FID).
"""
import argparse
import dataclasses
import glob
import json
import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

from muse_jax import paths
from muse_jax.data import scenes
from muse_jax.metrics import alignment

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class UsageError(ValueError):
  """A command-line mistake; reported without a traceback."""


# ------------------------------------------------------------------------------------------------
# Data.

def load_images(data: str, num_images: int, resolution: int, seed: int = 0) -> np.ndarray:
  """[N, R, R, 3] float32 in [0, 1]: the scenes eval_seen split, or a folder's images (sorted,
  centre-cropped to a square and resized)."""
  if data == "scenes":
    return load_scenes(num_images, resolution, seed)[0]
  if not os.path.isdir(data):
    raise UsageError(f"--data {data!r} is neither 'scenes' nor a folder of images")
  files = sorted(f for f in glob.glob(os.path.join(data, "**", "*"), recursive=True)
                 if f.lower().endswith(IMAGE_EXTENSIONS))[:num_images]
  if not files:
    raise UsageError(f"--data folder {data} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
  out = []
  for f in files:
    try:
      with Image.open(f) as im:
        im = im.convert("RGB")
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((resolution, resolution),
                                                                  Image.BICUBIC)
        out.append(np.asarray(im, np.float32) / 255.0)
    except OSError as e:
      raise UsageError(f"image {f} cannot be read ({e})") from e
  return np.stack(out)


def load_scenes(num_images: int, resolution: int, seed: int = 0) -> tuple:
  """(images [N, R, R, 3] float32 in [0, 1], captions) of the scenes' eval_seen split."""
  source = scenes.SceneSource(num_images, resolution, seed=seed, split="eval_seen")
  recs = [source[i] for i in range(num_images)]
  return (np.stack([r["image"] for r in recs]).astype(np.float32) / 255.0,
          [r["caption"] for r in recs])


# ------------------------------------------------------------------------------------------------
# Tokenizer.

def evaluate_tokenizer(path: str, images_NxRxRx3: np.ndarray, batch_size: int,
                       captions=None) -> dict:
  """PSNR, SSIM and code usage of encode -> decode; with the images' scene captions, also the
  prompt alignment of the reconstructions: the most any generator using this tokenizer can
  score on those prompts."""
  import jax
  from muse_jax.cli import encode as encode_cli
  from muse_jax.metrics import recon
  tok = encode_cli.Tokenizer(path, encode_cli._local_mesh())  # noqa: SLF001
  batch = math.ceil(batch_size / tok.shards) * tok.shards
  res = images_NxRxRx3.shape[1]
  psnrs, ssims, ids, recons = [], [], [], []
  for s in range(0, len(images_NxRxRx3), batch):
    x = images_NxRxRx3[s:s + batch]
    codes = tok.encode(x, res, batch)
    side = math.isqrt(codes.shape[1])
    y = tok.decode(codes.reshape(len(x), side, side), batch)
    psnrs.append(np.asarray(recon.psnr(jax.numpy.asarray(x), jax.numpy.asarray(y))))
    ssims.append(np.asarray(recon.ssim(jax.numpy.asarray(x), jax.numpy.asarray(y))))
    ids.append(codes.ravel())
    recons.append(np.clip(y, 0.0, 1.0))
  ids = np.concatenate(ids)
  hist = np.bincount(ids, minlength=tok.cfg.codebook_size) / len(ids)
  nz = hist[hist > 0]
  report = {"kind": "tokenizer", "checkpoint": path, "num_images": int(len(images_NxRxRx3)),
            "resolution": int(res), "psnr": float(np.concatenate(psnrs).mean()),
            "ssim": float(np.concatenate(ssims).mean()),
            "codebook_size": int(tok.cfg.codebook_size), "codes_used": int((hist > 0).sum()),
            "codebook_usage": float((hist > 0).mean()),
            "code_perplexity": float(np.exp(-(nz * np.log(nz)).sum()))}
  if captions is not None:
    report["recon_alignment"] = alignment.alignment(np.concatenate(recons), captions)
    report.update(background_codes(images_NxRxRx3, ids.reshape(len(images_NxRxRx3), -1)))
  return report


def background_codes(images_NxRxRx3: np.ndarray, ids_NxT: np.ndarray) -> dict:
  """How many codes the tokenizer spends on token patches of plain scene background (every pixel
  within 2/255 of the grey), and their entropy in bits. Each such patch decodes to the same grey,
  so every bit here is noise the base model is trained to predict from the caption: a tokenizer
  for these scenes should spend ~0 bits on them."""
  n, res = images_NxRxRx3.shape[:2]
  side = math.isqrt(ids_NxT.shape[1])
  f = res // side
  grey = np.asarray(scenes.BACKGROUNDS[scenes.BACKGROUND], np.float32) / 255.0
  patches = images_NxRxRx3.reshape(n, side, f, side, f, 3).transpose(0, 1, 3, 2, 4, 5)
  plain = np.all(np.abs(patches - grey) < 2 / 255, axis=(3, 4, 5)).reshape(n, -1)
  _, counts = np.unique(ids_NxT[plain], return_counts=True)
  p = counts / max(counts.sum(), 1)
  return {"background_token_fraction": float(plain.mean()),
          "background_codes": int(len(counts)),
          "background_code_entropy_bits": float(-(p * np.log2(p)).sum()) if len(p) else 0.0}


# ------------------------------------------------------------------------------------------------
# Generator.

def scene_prompts(split: str, num: int, seed: int = 0, resolution: int = 64) -> tuple:
  """(prompts, ground-truth images uint8) of `num` scenes of a split; captions that state every
  attribute a detector can check, in several phrasings."""
  source = scenes.SceneSource(num, resolution, seed=seed, split=split,
                              templates=("full", "part", "there_is", "relation_sized"))
  recs = [source[i] for i in range(num)]
  return [r["caption"] for r in recs], np.stack([r["image"] for r in recs])


def evaluate_generator(sample, num_prompts: int, guidances, temperatures, seed: int = 0,
                       fid_scorer=None, reference_resolution: int = 64) -> dict:
  """Sweep of alignment (and FID with a scorer) over guidance x temperature.

  sample(prompts: list[str], seed: int, guidance: float, temperature: float) -> images
  [B, H, W, 3] float in [0, 1].
  """
  splits = {s: scene_prompts(s, num_prompts, seed, reference_resolution)
            for s in ("eval", "eval_seen")}
  reference_stats = None
  if fid_scorer is not None:
    refs = np.concatenate([imgs for _, imgs in splits.values()]).astype(np.float32) / 255.0
    reference_stats = fid_scorer.statistics(refs)
  sweep = []
  for g in guidances:
    for t in temperatures:
      point = {"guidance": float(g), "temperature": float(t)}
      generated = []
      for split, (prompts, _) in splits.items():
        images = np.asarray(sample(list(prompts), seed, float(g), float(t)), np.float32)
        if images.shape[0] != len(prompts) or images.ndim != 4 or images.shape[-1] != 3:
          raise ValueError(f"sample() returned shape {images.shape} for {len(prompts)} prompts; "
                           f"expected [B, H, W, 3]")
        point[f"alignment_{split}"] = alignment.alignment(images, prompts)
        generated.append(images)
      if fid_scorer is not None:
        from muse_jax.metrics import fid
        point["fid"] = fid.frechet_distance(*fid_scorer.statistics(np.concatenate(generated)),
                                            *reference_stats)
      sweep.append(point)
  return {"kind": "generator", "num_prompts_per_split": int(num_prompts), "seed": int(seed),
          "sweep": sweep}


def pipeline_sampler(base: str, tokenizer: str, superres=None, tokenizer_hi=None):
  """sample(prompts, seed, guidance, temperature) over muse_jax.pipeline.Pipeline (one image
  per prompt; guidance and temperature set for the base and the super-res decode)."""
  from muse_jax import pipeline
  pipe = pipeline.Pipeline.from_paths(pipeline.PipelinePaths(
      base=base, tokenizer=tokenizer, superres=superres, tokenizer_hi=tokenizer_hi))
  default = pipeline.SampleConfig()

  def sample(prompts, seed, guidance, temperature):
    cfg = pipeline.SampleConfig(
        num_images=1, seed=seed,
        base=dataclasses.replace(default.base, guidance_scale=guidance, temperature=temperature),
        superres=dataclasses.replace(default.superres, guidance_scale=guidance,
                                     temperature=temperature))
    return pipe.generate(prompts, cfg).images_BxHxWx3

  return sample


# ------------------------------------------------------------------------------------------------
# Plot and reports.

def plot_sweep(sweep: list, path: str, size=(480, 360)) -> None:
  """Alignment ("all" attributes, held-out and seen) against FID, or against guidance without
  FID, as a PNG drawn with PIL."""
  use_fid = all("fid" in p for p in sweep)
  xs = [p["fid"] if use_fid else p["guidance"] for p in sweep]
  w, h = size
  left, right, top, bottom = 60, 20, 30, 50
  img = Image.new("RGB", size, "white")
  d = ImageDraw.Draw(img)
  x_lo, x_hi = min(xs), max(xs)
  if x_hi - x_lo < 1e-9:
    x_lo, x_hi = x_lo - 1, x_hi + 1
  px = lambda x: left + (x - x_lo) / (x_hi - x_lo) * (w - left - right)
  py = lambda y: h - bottom - y * (h - top - bottom)
  d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
  for y in (0.0, 0.5, 1.0):
    d.line([(left - 4, py(y)), (left, py(y))], fill="black")
    d.text((left - 30, py(y) - 6), f"{y:.1f}", fill="black")
  for x in (x_lo, x_hi):
    d.text((px(x) - 10, h - bottom + 6), f"{x:.3g}", fill="black")
  d.text((w // 2 - 40, h - 22), "FID" if use_fid else "guidance scale", fill="black")
  d.text((8, 8), "alignment (all attributes): red = held-out, blue = seen", fill="black")
  for split, colour, r in (("eval", (200, 30, 30), 6), ("eval_seen", (30, 60, 200), 3)):
    pts = sorted((px(x), py(p[f"alignment_{split}"]["all"])) for x, p in zip(xs, sweep))
    if len(pts) > 1:
      d.line(pts, fill=colour, width=2)
    for x, y in pts:
      d.ellipse([x - r, y - r, x + r, y + r], fill=colour)   # seen drawn smaller, on top
  img.save(path)


def _markdown(report: dict) -> str:
  lines = [f"# muse-eval: {report['kind']}", ""]
  if report["kind"] == "tokenizer":
    lines += ["| metric | value |", "| --- | --- |"]
    for k in ("checkpoint", "num_images", "resolution", "psnr", "ssim", "codes_used",
              "codebook_size", "codebook_usage", "code_perplexity", "background_token_fraction",
              "background_codes", "background_code_entropy_bits"):
      if k not in report:
        continue
      v = report[k]
      lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    if "recon_alignment" in report:
      a = report["recon_alignment"]
      lines += ["", "Prompt alignment of the reconstructions (the ceiling of a generator using "
                "this tokenizer):", "",
                "| all | colour | shape | position | size | count |", "| --- " * 6 + "|",
                "| " + " | ".join(f"{a[k]:.3f}" if a[k] is not None else "-" for k in
                                  ("all", "colour", "shape", "position", "size", "count")) + " |"]
    return "\n".join(lines) + "\n"
  lines += [f"{report['num_prompts_per_split']} prompts per split, seed {report['seed']}.", "",
            "| guidance | temperature | split | all | colour | shape | position | size | count "
            "| FID |", "| --- " * 10 + "|"]
  for p in report["sweep"]:
    for split in ("eval", "eval_seen"):
      a = p[f"alignment_{split}"]
      cells = [f"{a[k]:.3f}" if a[k] is not None else "-" for k in
               ("all", "colour", "shape", "position", "size", "count")]
      fid_cell = f"{p['fid']:.2f}" if "fid" in p else "-"
      lines.append(f"| {p['guidance']:g} | {p['temperature']:g} | "
                   f"{'held-out' if split == 'eval' else 'seen'} | " + " | ".join(cells)
                   + f" | {fid_cell} |")
  lines += ["", "![sweep](sweep.png)"]
  return "\n".join(lines) + "\n"


def write_report(report: dict, out: str) -> None:
  os.makedirs(out, exist_ok=True)
  if report["kind"] == "generator":
    plot_sweep(report["sweep"], os.path.join(out, "sweep.png"))
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(_markdown(report))


# ------------------------------------------------------------------------------------------------
# CLI.

def _checkpoint_kind(path: str) -> str:
  from muse_jax import checkpoint
  from muse_jax.convert import vq
  if not os.path.exists(path):
    raise UsageError(f"--checkpoint {path} does not exist")
  if os.path.isfile(os.path.join(path, vq.CONFIG_FILE)):
    return "tokenizer"
  try:
    stage = checkpoint.load_config(path).get("stage")
  except (checkpoint.CheckpointError, OSError, ValueError) as e:
    raise UsageError(f"--checkpoint {path} is neither a muse-convert tokenizer folder nor a "
                     f"training workdir: {e}") from e
  if stage in ("vqgan", "decoder_finetune"):
    return "tokenizer"
  if stage == "base":
    return "generator"
  raise UsageError(f"--checkpoint {path} is a {stage!r} checkpoint; muse-eval takes a tokenizer "
                   f"or a base generator (pass the super-res run with --superres)")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="muse-eval", description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="tokenizer folder/workdir or base workdir")
  p.add_argument("--out", required=True, help="folder for report.json, report.md, sweep.png")
  p.add_argument("--data", default="scenes", help="tokenizer: 'scenes' or a folder of images")
  p.add_argument("--num-images", type=int, default=64,
                 help="tokenizer: images; generator: prompts per split")
  p.add_argument("--resolution", type=int, default=256, help="tokenizer: image size")
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--tokenizer", help="generator: its tokenizer")
  p.add_argument("--superres", help="generator: super-res workdir")
  p.add_argument("--tokenizer-hi", help="generator: the super-res tokenizer")
  p.add_argument("--guidance", type=float, nargs="+", default=[0.0, 2.0, 4.0])
  p.add_argument("--temperature", type=float, nargs="+", default=[1.0])
  p.add_argument("--fid-weights", help="pt_inception-2015-12-05-6726825d.pth (or .safetensors)")
  return p


def main(argv=None) -> int:
  args = paths.resolve_args(parser().parse_args(argv), (
      "checkpoint", "out", "tokenizer", "superres", "tokenizer_hi", "fid_weights"))
  if args.data != "scenes":
    args.data = paths.resolve(args.data)
  try:
    if args.num_images < 2:
      raise UsageError(f"--num-images must be >= 2, got {args.num_images}")
    kind = _checkpoint_kind(args.checkpoint)
    if kind == "tokenizer":
      captions = None
      if args.data == "scenes":
        images, captions = load_scenes(args.num_images, args.resolution, args.seed)
      else:
        images = load_images(args.data, args.num_images, args.resolution, args.seed)
      report = evaluate_tokenizer(args.checkpoint, images, args.batch_size, captions)
    else:
      if not args.tokenizer:
        raise UsageError("a generator checkpoint needs --tokenizer (muse-convert folder or "
                         "vqgan workdir)")
      scorer = None
      if args.fid_weights:
        from muse_jax.metrics import fid
        scorer = fid.FIDScorer(args.fid_weights, args.batch_size)
      sample = pipeline_sampler(args.checkpoint, args.tokenizer, args.superres,
                                args.tokenizer_hi)
      report = evaluate_generator(sample, args.num_images, args.guidance, args.temperature,
                                  args.seed, scorer)
      report["checkpoint"] = args.checkpoint
    write_report(report, args.out)
  except Exception as e:  # noqa: BLE001  user mistakes are reported, bugs re-raised
    if not (isinstance(e, (UsageError, FileNotFoundError, ImportError))
            or type(e).__name__ in ("PipelineError", "CheckpointError")):
      raise
    print(f"muse-eval: error: {e}", file=sys.stderr)
    return 1
  print(f"muse-eval: wrote {os.path.join(args.out, 'report.json')} and report.md")
  return 0


def run_main():
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  run_main()
