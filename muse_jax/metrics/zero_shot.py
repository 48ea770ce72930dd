"""Zero-shot evaluation against captioned reference images: the paper's COCO FID-30K and CLIP
score (Muse Table 1), and Fig. 8's CLIP-against-FID curve over guidance, temperature and the
guidance schedule.

  refs = reference_source("tfds:coco_captions", split="validation")   # or a captioned folder
  captions, images_u8, skipped = read_references(refs, 30_000, resolution=256)
  points = zero_shot(sample, captions, images_u8, settings, out_dir, fid_scorer, clip_scorer)

`sample(prompts, seed, guidance, temperature, schedule)` -> images [B, H, W, 3] in [0, 1] (any
size: the Inception network resizes to 299). The captions are sampled `batch_size` at a time; each
batch's Inception features and CLIP scores are written to OUT/partial/ (atomically, by rename)
as soon as it is done, and a re-run skips the batches already there, so a preempted 30k-image
evaluation resumes where it stopped. Batch i is sampled with seed + i, so a resumed run equals an
uninterrupted one.
"""
import json
import os

import numpy as np
import PIL.Image
import tqdm

from muse_jax.data import preprocess, sources
from muse_jax.metrics import fid


def reference_source(spec: str, split: str = "validation", data_dir: str | None = None):
  """'tfds:NAME' (a prepared TFDS dataset, e.g. tfds:coco_captions, one caption per image chosen
  by index) or a folder of images with captions.jsonl / captions.csv (the folder source)."""
  if spec.startswith("tfds:"):
    return sources.TfdsSource(spec[len("tfds:"):], split, data_dir)
  return sources.FolderSource(spec)


def square_image(im: PIL.Image.Image, resolution: int) -> np.ndarray:
  """Centre-cropped to a square and resized (bicubic) to resolution: [R, R, 3] uint8."""
  im = im.convert("RGB")
  side = min(im.size)
  left, top = (im.width - side) // 2, (im.height - side) // 2
  im = im.crop((left, top, left + side, top + side))
  return np.asarray(im.resize((resolution, resolution), PIL.Image.BICUBIC), np.uint8)


def read_references(source, num: int, resolution: int) -> tuple:
  """(captions, images [N, R, R, 3] uint8, skipped {reason: count}) of the first `num` records
  with a readable image and a non-empty caption; the others are skipped and counted (any
  reason preprocess.decode_image gives counts as unreadable_image)."""
  captions, images = [], []
  skipped = {"no_caption": 0, "unreadable_image": 0}
  for i in range(len(source)):
    if len(images) == num:
      break
    rec = source[i]
    caption = rec.get("caption")
    if not isinstance(caption, str) or not caption.strip():
      skipped["no_caption"] += 1
      continue
    try:
      images.append(square_image(preprocess.decode_image(rec), resolution))
    except preprocess.SkipRecord:
      skipped["unreadable_image"] += 1
      continue
    captions.append(caption.strip())
  if not images:
    raise ValueError(f"{source!r} holds no usable (image, caption) record; skipped {skipped}")
  return captions, np.stack(images), skipped


def _atomic_save(path: str, **arrays) -> None:
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def setting_name(s: dict) -> str:
  return f"g{s['guidance']:g}_t{s['temperature']:g}_{s['schedule']}"


def zero_shot(sample, captions, references_u8, settings, out_dir: str, fid_scorer=None,
              clip_scorer=None, batch_size: int = 16, seed: int = 0,
              progress: bool = True) -> list:
  """One point per setting ({guidance, temperature, schedule}): {"fid", "clip" (mean), the
  setting, "num_images"}; FID needs fid_scorer, CLIP score clip_scorer (at least one)."""
  if fid_scorer is None and clip_scorer is None:
    raise ValueError("zero-shot evaluation needs an FID scorer, a CLIP scorer or both")
  partial = os.path.join(out_dir, "partial")
  os.makedirs(partial, exist_ok=True)
  reference_stats = None
  if fid_scorer is not None:
    ref_path = os.path.join(partial, "reference_features.npz")
    if not os.path.exists(ref_path):
      _atomic_save(ref_path, features=fid_scorer.features(references_u8 / np.float32(255)))
    reference_stats = fid.activation_statistics(np.load(ref_path)["features"])
  n = len(captions)
  starts = range(0, n, batch_size)
  points = []
  for s in settings:
    folder = os.path.join(partial, setting_name(s))
    os.makedirs(folder, exist_ok=True)
    features, clips = [], []
    bar = tqdm.tqdm(total=n, desc=f"muse-eval {setting_name(s)}", unit="img", disable=not progress)
    for i, start in enumerate(starts):
      path = os.path.join(folder, f"batch_{i:06d}.npz")
      prompts = captions[start:start + batch_size]
      if not os.path.exists(path):
        images = np.asarray(sample(prompts, seed + i, s["guidance"], s["temperature"],
                                   s["schedule"]), np.float32)
        if images.shape[0] != len(prompts) or images.ndim != 4 or images.shape[-1] != 3:
          raise ValueError(f"sample() returned shape {images.shape} for {len(prompts)} prompts")
        _atomic_save(path,
                     features=(fid_scorer.features(images) if fid_scorer is not None
                               else np.zeros((len(prompts), 0))),
                     clip=(clip_scorer.scores(images, prompts) if clip_scorer is not None
                           else np.zeros((0,), np.float32)))
      done = np.load(path)
      features.append(done["features"])
      clips.append(done["clip"])
      bar.update(len(prompts))
    bar.close()
    point = dict(s, num_images=n)
    if fid_scorer is not None:
      point["fid"] = fid.frechet_distance(*fid.activation_statistics(np.concatenate(features)),
                                          *reference_stats)
    if clip_scorer is not None:
      point["clip"] = float(np.concatenate(clips).mean())
    points.append(point)
  with open(os.path.join(out_dir, "zero_shot.json"), "w") as f:
    json.dump(points, f, indent=2)
  return points


def plot_clip_fid(points, path: str, size=(480, 360)) -> None:
  """Fig. 8: CLIP score (y) against FID (x), one marked line per guidance schedule (points in
  guidance order, labelled with it), as a PNG drawn with PIL."""
  from PIL import ImageDraw
  points = [p for p in points if "fid" in p and "clip" in p]
  if not points:
    raise ValueError("the CLIP-against-FID plot needs points with both FID and CLIP score")
  w, h = size
  left, right, top, bottom = 60, 20, 30, 50
  img = PIL.Image.new("RGB", size, "white")
  d = ImageDraw.Draw(img)
  xs, ys = [p["fid"] for p in points], [p["clip"] for p in points]
  span = lambda lo, hi: (lo - 1e-3, hi + 1e-3) if hi - lo < 1e-9 else (lo, hi)
  (x_lo, x_hi), (y_lo, y_hi) = span(min(xs), max(xs)), span(min(ys), max(ys))
  px = lambda x: left + (x - x_lo) / (x_hi - x_lo) * (w - left - right)
  py = lambda y: h - bottom - (y - y_lo) / (y_hi - y_lo) * (h - top - bottom)
  d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
  for x in (x_lo, x_hi):
    d.text((px(x) - 10, h - bottom + 6), f"{x:.3g}", fill="black")
  for y in (y_lo, y_hi):
    d.text((4, py(y) - 6), f"{y:.3f}", fill="black")
  d.text((w // 2 - 10, h - 22), "FID", fill="black")
  d.text((4, 8), "CLIP score", fill="black")
  colours = [(200, 30, 30), (30, 60, 200), (30, 150, 60), (200, 120, 20)]
  for k, schedule in enumerate(sorted({p["schedule"] for p in points})):
    series = sorted((p for p in points if p["schedule"] == schedule),
                    key=lambda p: (p["guidance"], p["temperature"]))
    c = colours[k % len(colours)]
    xy = [(px(p["fid"]), py(p["clip"])) for p in series]
    if len(xy) > 1:
      d.line(xy, fill=c, width=2)
    for (x, y), p in zip(xy, series):
      d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=c)
      d.text((x + 5, y - 12), f"{p['guidance']:g}", fill=c)
    d.text((w - right - 110, top + 14 * k), f"{schedule} guidance", fill=c)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img.save(path)
