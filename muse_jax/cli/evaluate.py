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

Links (--links, a base workdir + --tokenizer [+ --superres --tokenizer-hi]): where a prompt's
attributes are lost, link by link (muse_jax/metrics/links.py): ground truth, tokenizer
reconstructions, teacher-forced base denoising at each --rates (one forward pass, argmax, with
--teacher-guidance; 0 = conditional logits only) with masked-token accuracy on object and
background tokens, base-only samples, super-res from ground-truth base tokens and the cascade, on
the same --num-images prompts per split and --seed; sampling at one --guidance / --temperature
(default muse-sample's: guidance 4, temperature 1) -> links.json, report.md (one table) and
links.png (a few prompts across the links).

  muse-eval --links --checkpoint W/base --tokenizer W/vq --superres W/superres \
      --tokenizer-hi W/vq --num-images 96 --out /tmp/links
"""
import argparse
import dataclasses
import glob
import io
import json
import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

from muse_jax import errors, paths
from muse_jax.cli import sample as sample_cli
from muse_jax.errors import UsageError
from muse_jax.data import scenes
from muse_jax.metrics import alignment, clip_score, fid, zero_shot

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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
        out.append(_square(im, resolution))
    except OSError as e:
      raise UsageError(f"image {f} cannot be read ({e})") from e
  return np.stack(out)


def _square(im: Image.Image, resolution: int) -> np.ndarray:
  """An image centre-cropped to a square and resized to resolution: [R, R, 3] float32 in [0, 1]."""
  return zero_shot.square_image(im, resolution).astype(np.float32) / 255.0


def load_captioned_folder(data: str, num_images: int, resolution: int) -> tuple:
  """(images [N, R, R, 3] float32 in [0, 1], captions, counts) of the first num_images images of a
  folder's captions file (captions.jsonl / captions.csv, as the folder source reads it) whose
  caption names at least one object the alignment scorer knows (a shape word, with colour, size
  and position words where stated): the reconstructions are then scored against those captions.
  counts: how many listed records were skipped, by reason. A folder without a captions file gives
  (load_images(...), None, {})."""
  from muse_jax.data import sources
  try:
    folder = sources.FolderSource(data)
  except FileNotFoundError:
    return load_images(data, num_images, resolution), None, {}
  images, captions = [], []
  counts = {"unreadable_image": 0, "caption_not_scorable": 0, "bad_caption_line": folder.bad_lines}
  for i in range(len(folder)):
    if len(images) == num_images:
      break
    rec = folder[i]
    caption = rec.get("caption")
    if not isinstance(caption, str) or not scenes.parse_caption(caption):
      counts["caption_not_scorable"] += 1
      continue
    if "image_bytes" not in rec:
      counts["unreadable_image"] += 1
      continue
    try:
      with Image.open(io.BytesIO(rec["image_bytes"])) as im:
        images.append(_square(im, resolution))
    except OSError:
      counts["unreadable_image"] += 1
      continue
    captions.append(caption)
  if not images:
    raise UsageError(f"--data {data}: none of the {len(folder)} records of "
                     f"{folder.captions_file} has a readable image and a caption naming a shape "
                     f"the scorer knows ({', '.join(scenes.SHAPES)}); skipped: {counts}")
  return np.stack(images), captions, counts


def load_scenes(num_images: int, resolution: int, seed: int = 0) -> tuple:
  """(images [N, R, R, 3] float32 in [0, 1], captions) of the scenes' eval_seen split."""
  source = scenes.SceneSource(num_images, resolution, seed=seed, split="eval_seen")
  recs = [source[i] for i in range(num_images)]
  return (np.stack([r["image"] for r in recs]).astype(np.float32) / 255.0,
          [r["caption"] for r in recs])


# ------------------------------------------------------------------------------------------------
# Tokenizer.

def evaluate_tokenizer(path: str, images_NxRxRx3: np.ndarray, batch_size: int,
                       captions=None, scenes_background: bool = False) -> dict:
  """PSNR, SSIM and code usage of encode -> decode; with the images' captions (the built-in
  scenes', or a folder's the scorer can read), also the prompt alignment of the reconstructions:
  the most any generator using this tokenizer can score on those prompts. scenes_background: the
  images are built-in scenes, whose plain grey background tokens are counted too."""
  import jax
  from muse_jax import tokenizer as tokenizer_lib
  from muse_jax.metrics import recon
  tok = tokenizer_lib.Tokenizer(path, tokenizer_lib.local_mesh())
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
    report["ground_truth_alignment"] = alignment.alignment(images_NxRxRx3, captions)
  if scenes_background:
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
  from muse_jax.metrics import links   # the links report uses the same prompts
  prompts, (images,) = links.scene_prompts(split, num, seed, (resolution,))
  return prompts, images


SPLIT_LABELS = {"eval": "held-out", "eval_seen": "seen"}   # scene splits -> report labels


def evaluate_generator(sample, num_prompts: int, guidances, temperatures, seed: int = 0,
                       fid_scorer=None, reference_resolution: int = 64,
                       prompt_sets: dict | None = None, clip_scorer=None) -> dict:
  """Sweep of alignment (and FID with a scorer, CLIP score with a clip_scorer: the mean per
  split) over guidance x temperature.

  sample(prompts: list[str], seed: int, guidance: float, temperature: float) -> images
  [B, H, W, 3] float in [0, 1]. Prompts: `num_prompts` of each scene split (held-out and seen
  colour-shape pairs), or prompt_sets {name: [prompt, ...]} (e.g. a captioned folder's own
  held-out and seen pairs, from --prompts-file), which have no reference images for FID.
  """
  if prompt_sets is not None:
    if fid_scorer is not None:
      raise UsageError("FID compares with reference images, which --prompts-file has not; "
                       "drop --fid-weights or the prompts files")
    splits = {name: (list(prompts), None) for name, prompts in prompt_sets.items()}
  else:
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
        if clip_scorer is not None:
          point[f"clip_{split}"] = float(clip_scorer.scores(images, prompts).mean())
        generated.append(images)
      if fid_scorer is not None:
        point["fid"] = fid.frechet_distance(*fid_scorer.statistics(np.concatenate(generated)),
                                            *reference_stats)
      sweep.append(point)
  return {"kind": "generator", "splits": list(splits),
          "num_prompts": {name: len(prompts) for name, (prompts, _) in splits.items()},
          "seed": int(seed), "sweep": sweep}


def read_prompt_sets(files) -> dict:
  """{file stem: [prompt, ...]} from --prompts-file files (plain text, one prompt per line, or
  JSONL with "prompt", as muse-sample reads them); each prompt must name at least one object the
  alignment scorer knows, or it could not be scored."""
  from muse_jax.cli import sample as sample_cli
  sets = {}
  for path in files:
    name = os.path.splitext(os.path.basename(path))[0]
    if name in sets:
      raise UsageError(f"--prompts-file: two files are named {name!r}; each names a report row")
    try:
      prompts = [p for _, p in sample_cli.read_prompts_file(path)]
    except sample_cli.UsageError as e:
      raise UsageError(str(e)) from None
    bad = [p for p in prompts if not scenes.parse_caption(p)]
    if bad:
      raise UsageError(f"--prompts-file {path}: {len(bad)} prompt(s) name no shape the scorer "
                       f"knows ({', '.join(scenes.SHAPES)}), e.g. {bad[0]!r}")
    sets[name] = prompts
  return sets


def pipeline_sampler(pipe_paths, mesh=None):
  """sample(prompts, seed, guidance, temperature, schedule="linear") over a
  muse_jax.pipeline.Pipeline of `pipe_paths` (one image per prompt; the guidance scale, its
  schedule and the temperature set for the base and the super-res decode)."""
  from muse_jax import pipeline
  pipe = pipeline.Pipeline(pipe_paths, mesh=mesh)
  default = pipeline.SampleConfig()

  def sample(prompts, seed, guidance, temperature, schedule="linear"):
    settings = dict(guidance_scale=guidance, temperature=temperature, guidance_schedule=schedule)
    cfg = pipeline.SampleConfig(num_images=1, seed=seed,
                                base=dataclasses.replace(default.base, **settings),
                                superres=dataclasses.replace(default.superres, **settings))
    return pipe.generate(prompts, cfg).images_BxHxWx3

  return sample


def evaluate_links(pipe_paths, mesh=None, *, num_images: int, seed: int, guidance=None,
                   temperature=None, rates=None, teacher_guidance: float = 0.0):
  """muse_jax.metrics.links over a pipeline of `pipe_paths` (PipelinePaths) -> LinksResult. guidance /
  temperature: one value for both stages (None: muse-sample's defaults)."""
  from muse_jax import pipeline
  from muse_jax.metrics import links
  pipe = pipeline.Pipeline(pipe_paths, mesh=mesh)
  default, stages = links.LinksConfig(), {}
  for stage in ("base", "superres"):
    dc = getattr(default, stage)
    if guidance is not None:
      dc = dataclasses.replace(dc, guidance_scale=float(guidance))
    if temperature is not None:
      dc = dataclasses.replace(dc, temperature=float(temperature))
    stages[stage] = dc
  cfg = links.LinksConfig(num_images=num_images, seed=seed, teacher_guidance=teacher_guidance,
                          rates=tuple(rates or links.DEFAULT_RATES), **stages)
  return links.evaluate_links(pipe, cfg)


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
  splits = [k[len("alignment_"):] for k in sweep[0] if k.startswith("alignment_")]
  palette = [((200, 30, 30), "red"), ((30, 60, 200), "blue"), ((30, 150, 60), "green"),
             ((200, 120, 20), "orange")]
  styles = [(s, c, 6 - 3 * (i % 2), cname) for i, (s, (c, cname)) in
            enumerate(zip(splits, palette * len(splits)))]
  d.text((8, 8), "alignment (all attributes): " + ", ".join(
      f"{cname} = {SPLIT_LABELS.get(s, s)}" for s, _, _, cname in styles), fill="black")
  for split, colour, r, _ in styles:
    pts = sorted((px(x), py(p[f"alignment_{split}"]["all"])) for x, p in zip(xs, sweep))
    if len(pts) > 1:
      d.line(pts, fill=colour, width=2)
    for x, y in pts:
      d.ellipse([x - r, y - r, x + r, y + r], fill=colour)   # every other set drawn smaller
  img.save(path)


ALIGNMENT_COLUMNS = ("all", "colour", "shape", "position", "size", "count")


def _pair(values) -> str:
  """'held-out / seen' cell; '-' for a missing value."""
  return " / ".join("-" if v is None else f"{v:.3f}" for v in values)


def _links_markdown(report: dict) -> str:
  """One table: a row per link, each cell 'held-out / seen'."""
  tf, n = report["teacher_forcing"], report["num_prompts_per_split"]
  lines = [
      "# muse-eval: links", "",
      f"{n} prompts per split (held-out / seen (colour, shape) pairs in every cell), seed "
      f"{report['seed']}; every row scored at {report['scored_resolution']} px (lower "
      f"resolutions upsampled by nearest neighbour). Teacher-forced: the ground truth's base "
      f"tokens, a fraction masked, one forward pass (guidance {tf['guidance']:g}), argmax; "
      f"token accuracy over the masked tokens whose patch holds object pixels / only grey "
      f"background. Sampling: base {_decode_text(report['sampling']['base'])}"
      + (f", super-res {_decode_text(report['sampling']['superres'])}"
         if report["sampling"]["superres"] else "") + ".", "",
      "| link | " + " | ".join(ALIGNMENT_COLUMNS) + " | token acc. object | token acc. "
      "background | object share of masked |", "| --- " * 10 + "|"]
  for row in report["rows"]:
    cells = [_pair(row["alignment"][s][k] for s in ("eval", "eval_seen"))
             for k in ALIGNMENT_COLUMNS]
    tok = row.get("tokens")
    if tok:
      cells += [_pair(tok[s][k] for s in ("eval", "eval_seen"))
                for k in ("accuracy_object", "accuracy_background")]
      cells.append(_pair(tok[s]["masked_object"] / max(tok[s]["masked"], 1)
                         for s in ("eval", "eval_seen")))
    else:
      cells += ["-"] * 3
    lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
  lines += ["", "![links](links.png)"]
  return "\n".join(lines) + "\n"


def _decode_text(dc: dict) -> str:
  return (f"{dc['num_steps']} steps, guidance {dc['guidance_scale']:g} "
          f"({dc['guidance_schedule']}), temperature {dc['temperature']:g}")


def _markdown(report: dict) -> str:
  if report["kind"] == "links":
    return _links_markdown(report)
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
      keys = ("all", "colour", "shape", "position", "size", "count")
      lines += ["", "Prompt alignment (muse_jax/metrics/alignment.py) of the reconstructions, the "
                "ceiling of a generator using this tokenizer, and of the input images:", "",
                "| images | " + " | ".join(keys) + " |", "| --- " * 7 + "|"]
      for name, k in (("reconstructions", "recon_alignment"),
                      ("input images", "ground_truth_alignment")):
        a = report[k]
        lines.append(f"| {name} | " + " | ".join(f"{a[x]:.3f}" if a[x] is not None else "-"
                                                 for x in keys) + " |")
    if report.get("skipped"):
      lines += ["", "Records skipped: " + ", ".join(f"{k} {v}" for k, v in
                                                     report["skipped"].items())]
    return "\n".join(lines) + "\n"
  counts = ", ".join(f"{SPLIT_LABELS.get(s, s)} {n}" for s, n in report["num_prompts"].items())
  lines += [f"Prompts: {counts}; seed {report['seed']}.", "",
            "| guidance | temperature | split | all | colour | shape | position | size | count "
            "| CLIP | FID |", "| --- " * 11 + "|"]
  for p in report["sweep"]:
    for split in report["splits"]:
      a = p[f"alignment_{split}"]
      cells = [f"{a[k]:.3f}" if a[k] is not None else "-" for k in
               ("all", "colour", "shape", "position", "size", "count")]
      fid_cell = f"{p['fid']:.2f}" if "fid" in p else "-"
      clip_cell = f"{p[f'clip_{split}']:.4f}" if f"clip_{split}" in p else "-"
      lines.append(f"| {p['guidance']:g} | {p['temperature']:g} | "
                   f"{SPLIT_LABELS.get(split, split)} | " + " | ".join(cells)
                   + f" | {clip_cell} | {fid_cell} |")
  lines += ["", "![sweep](sweep.png)"]
  return "\n".join(lines) + "\n"


def write_links_report(result, out: str) -> None:
  """links.json, report.md and links.png (the grid: a few prompts across the links)."""
  from muse_jax import grids
  os.makedirs(out, exist_ok=True)
  grids.save_labelled_grid(os.path.join(out, "links.png"), result.grid_images_BxHxWx3,
                           result.grid_labels, cols=result.grid_cols)
  with open(os.path.join(out, "links.json"), "w") as f:
    json.dump(result.report, f, indent=2)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(_markdown(result.report))


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
  except (OSError, ValueError) as e:        # CheckpointError is a ValueError (errors.py)
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
  p.add_argument("--data", default="scenes",
                 help="tokenizer: 'scenes' or a folder of images (with a captions.jsonl / .csv "
                 "whose captions the scorer reads, also the reconstructions' prompt alignment)")
  p.add_argument("--num-images", type=int, default=64,
                 help="tokenizer: images; generator: prompts per split")
  p.add_argument("--resolution", type=int, default=256, help="tokenizer: image size; --references: the reference images' size")
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--tokenizer", help="generator: its tokenizer")
  p.add_argument("--superres", help="generator: super-res workdir")
  p.add_argument("--tokenizer-hi", help="generator: the super-res tokenizer")
  p.add_argument("--text-encoder-path",
                 help="generator: the text encoder's snapshot folder, in place of the path the "
                 "checkpoint records (a T5 run that did not set text_encoder.path)")
  p.add_argument("--mesh", default="data=-1",
                 help="generator: devices as AXIS=SIZE over data, fsdp, tensor (e.g. 'fsdp=-1' "
                 "shards the generators' params; default all data-parallel)")
  p.add_argument("--guidance", type=float, nargs="+",
                 help="generator: the sweep (default 0 2 4); --links: one value (default 4)")
  p.add_argument("--temperature", type=float, nargs="+",
                 help="generator: the sweep (default 1); --links: one value (default 1)")
  p.add_argument("--prompts-file", nargs="+", metavar="FILE",
                 help="generator: score these prompts instead of the built-in scenes' splits, "
                 "one report row per file (named by its stem, e.g. heldout.txt and seen.txt); "
                 "plain text, one prompt per line, or JSONL with \"prompt\"")
  p.add_argument("--fid-weights", help="pt_inception-2015-12-05-6726825d.pth (or .safetensors)")
  p.add_argument("--clip", metavar="DIR",
                 help="generator: a Hugging Face CLIPModel folder (config.json, safetensors, "
                 "tokenizer.json; e.g. openai/clip-vit-large-patch14): adds the CLIP score of "
                 "the samples against their prompts")
  p.add_argument("--references", metavar="SPEC",
                 help="generator: zero-shot FID / CLIP score against captioned reference images: "
                 "'tfds:coco_captions' (prepared under TFDS_DATA_DIR) or a folder of images with "
                 "captions.jsonl / .csv; --num-images of them (30000 for FID-30K), sampled "
                 "--batch-size at a time, resumable (OUT/partial); needs --fid-weights and/or "
                 "--clip; with several --guidance / --temperature / --guidance-schedule values it "
                 "draws Fig. 8 (CLIP against FID, fig8.png)")
  p.add_argument("--reference-split", default="validation", help="--references tfds: the split")
  p.add_argument("--guidance-schedule", nargs="+", default=None,
                 choices=("linear", "constant"),
                 help="--references: the guidance schedules to sweep (default linear)")
  p.add_argument("--links", action="store_true",
                 help="generator: alignment link by link (ground truth, tokenizer, teacher-"
                 "forced base, base samples, super-res, cascade) -> links.json, report.md")
  p.add_argument("--rates", type=float, nargs="+", default=None,
                 help="--links: masking rates of the teacher-forced rows (default 0.25 0.5 "
                 "0.75 1)")
  p.add_argument("--teacher-guidance", type=float, default=0.0,
                 help="--links: guidance of the teacher-forced pass (default 0: conditional)")
  return p


def _single(values, flag: str):
  if values is None:
    return None
  if len(values) != 1:
    raise UsageError(f"--links samples at one {flag}; got {len(values)} values {values}")
  return values[0]


def _run_links(args) -> None:
  if not args.tokenizer:
    raise UsageError("--links needs --tokenizer (the base tokenizer: muse-convert folder or "
                     "vqgan workdir)")
  if args.rates is not None and any(not 0.0 <= r <= 1.0 for r in args.rates):
    raise UsageError(f"--rates must lie in [0, 1], got {args.rates}")
  if args.teacher_guidance < 0:
    raise UsageError(f"--teacher-guidance must be >= 0, got {args.teacher_guidance}")
  result = evaluate_links(
      sample_cli.pipeline_paths(args), sample_cli.mesh_of(args), num_images=args.num_images,
      seed=args.seed,
      guidance=_single(args.guidance, "--guidance"),
      temperature=_single(args.temperature, "--temperature"), rates=args.rates,
      teacher_guidance=args.teacher_guidance)
  write_links_report(result, args.out)


def _clip_scorer(args):
  """The CLIP scorer of --clip, or None."""
  if not args.clip:
    return None
  try:
    return clip_score.CLIPScorer(args.clip, args.batch_size)
  except (ValueError, OSError) as e:
    raise UsageError(f"--clip {args.clip}: {e}") from e


def _run_zero_shot(args) -> None:
  if not (args.fid_weights or args.clip):
    raise UsageError("--references needs --fid-weights (FID), --clip (CLIP score) or both")
  if args.prompts_file or args.links:
    raise UsageError("--references takes its prompts from the reference captions; drop "
                     "--prompts-file / --links")
  try:
    source = zero_shot.reference_source(args.references, args.reference_split)
    captions, references, skipped = zero_shot.read_references(source, args.num_images,
                                                              args.resolution)
  except (ValueError, OSError) as e:
    raise UsageError(f"--references {args.references}: {e}") from e
  clip_scorer = _clip_scorer(args)
  fid_scorer = fid.FIDScorer(args.fid_weights, args.batch_size) if args.fid_weights else None
  sample = pipeline_sampler(sample_cli.pipeline_paths(args), sample_cli.mesh_of(args))
  settings = [{"guidance": float(g), "temperature": float(t), "schedule": sch}
              for sch in (args.guidance_schedule or ["linear"]) for g in (args.guidance or [4.0])
              for t in (args.temperature or [1.0])]
  points = zero_shot.zero_shot(sample, captions, references, settings, args.out, fid_scorer,
                               clip_scorer, args.batch_size, args.seed)
  lines = [f"# muse-eval: zero-shot on {args.references}", "",
           f"{len(captions)} captions and reference images at {args.resolution} px (skipped: "
           + ", ".join(f"{k} {v}" for k, v in skipped.items()) + f"); seed {args.seed}.", "",
           "| guidance | schedule | temperature | FID | CLIP score |", "| --- " * 5 + "|"]
  for p in points:
    lines.append(f"| {p['guidance']:g} | {p['schedule']} | {p['temperature']:g} | "
                 + (f"{p['fid']:.2f}" if "fid" in p else "-") + " | "
                 + (f"{p['clip']:.4f}" if "clip" in p else "-") + " |")
  if fid_scorer is not None and clip_scorer is not None and len(points) > 1:
    zero_shot.plot_clip_fid(points, os.path.join(args.out, "fig8.png"))
    lines += ["", "![CLIP score against FID](fig8.png)"]
  with open(os.path.join(args.out, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
  args = paths.resolve_args(parser().parse_args(argv), (
      "checkpoint", "out", "tokenizer", "superres", "tokenizer_hi", "text_encoder_path",
      "fid_weights", "clip"))
  if args.data != "scenes":
    args.data = paths.resolve(args.data)
  if args.references and not args.references.startswith("tfds:"):
    args.references = paths.resolve(args.references)
  if args.prompts_file:
    args.prompts_file = [paths.resolve(f) for f in args.prompts_file]
  return errors.report("muse-eval", evaluate, args)


def evaluate(args) -> int:
  """muse-eval on parsed, resolved flags."""
  if args.num_images < 2:
    raise UsageError(f"--num-images must be >= 2, got {args.num_images}")
  kind = _checkpoint_kind(args.checkpoint)
  if args.prompts_file and (kind != "generator" or args.links):
    raise UsageError("--prompts-file scores a generator's samples; it takes a base checkpoint "
                     "and no --links (the links compare with ground-truth images)")
  # Generator-only modes: (flag, run, what it writes).
  for flag, run, wrote in (("references", _run_zero_shot, "zero_shot.json and report.md"),
                           ("links", _run_links, "links.json, report.md and links.png")):
    if getattr(args, flag):
      if kind != "generator":
        raise UsageError(f"--{flag} takes a base checkpoint; --checkpoint {args.checkpoint} "
                         f"is a tokenizer")
      run(args)
      print(f"muse-eval: wrote {wrote} to {args.out}")
      return 0
  if kind == "tokenizer":
    skipped = {}
    if args.data == "scenes":
      images, captions = load_scenes(args.num_images, args.resolution, args.seed)
    else:
      images, captions, skipped = load_captioned_folder(args.data, args.num_images,
                                                        args.resolution)
    report = evaluate_tokenizer(args.checkpoint, images, args.batch_size, captions,
                                scenes_background=args.data == "scenes")
    if skipped:
      report["skipped"] = skipped
  else:
    if not args.tokenizer:
      raise UsageError("a generator checkpoint needs --tokenizer (muse-convert folder or "
                       "vqgan workdir)")
    clip_scorer = _clip_scorer(args)
    scorer = None
    if args.fid_weights:
      scorer = fid.FIDScorer(args.fid_weights, args.batch_size)
    sample = pipeline_sampler(sample_cli.pipeline_paths(args), sample_cli.mesh_of(args))
    prompt_sets = read_prompt_sets(args.prompts_file) if args.prompts_file else None
    report = evaluate_generator(sample, args.num_images, args.guidance or [0.0, 2.0, 4.0],
                                args.temperature or [1.0], args.seed, scorer,
                                prompt_sets=prompt_sets, clip_scorer=clip_scorer)
    report["checkpoint"] = args.checkpoint
  write_report(report, args.out)
  print(f"muse-eval: wrote {os.path.join(args.out, 'report.json')} and report.md")
  return 0


def run_main():
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  run_main()
