"""Prompt alignment from the image alone, for the built-in scene data set (muse_jax/data/scenes.py).

`detect(image)` finds the objects an image shows: pixels that differ from the background (the
median colour of the image's border) are segmented into 8-connected components (numpy only, no
scipy); each component large enough to be an object gets
  colour   = the palette colour (scenes.COLOURS) nearest to the median of its core pixels,
  position = the 3x3-grid cell of its box centre (a corner cell is named e.g. "top left"),
  size     = "large" when the side of its box (geometric mean of width and height) is above the
             midpoint of the two scene sizes, else "small",
  shape    = the scenes.SHAPES shape whose mask, drawn by the scene renderer's own code into the
             component's box, has the highest IoU with the component's mask.
Segmentation runs on a 3x3 box-filtered copy, so mild noise and blur of generated images at
64-256 px do not break objects apart or invent specks; components under MIN_AREA of the image
are dropped.

`score(image, prompt)` matches the prompt's objects (scenes.parse_caption) to the detected ones
(the assignment with the most agreeing attributes) and reports, per attribute, whether each
stated one is right; "count" is whether as many objects were found as the prompt names, "all"
whether everything holds at once (every object found with all its stated attributes and
relations, no extra objects). `alignment(images, prompts)` averages these over a set.
"""
import functools
import itertools
import math

import numpy as np
from PIL import Image, ImageDraw

from muse_jax.data import scenes

ATTRIBUTES = ("colour", "shape", "position", "size")
MIN_AREA = 0.003          # fraction of the image: the smallest scene object (small star) is ~0.01
_FG_THRESHOLD = 48.0      # RGB distance from the background; palette colours are >= ~90 away
_SIZE_SPLIT = scenes.SIZES["small"] + scenes.SIZES["large"]   # box side between 2*small, 2*large
_MAX_MATCHED = 8         # only the largest detections are matched to the prompt's objects
_SS = 4                  # supersampling of shape templates
_TEMPLATE_SIDE = 64       # shapes are drawn at this size (x4 supersampled) and resized to a box
_CELL_NAMES = {(0, 1): "left", (2, 1): "right", (1, 0): "top", (1, 2): "bottom", (1, 1): "center"}
_ROW_NAMES, _COL_NAMES = ("top", "middle", "bottom"), ("left", "middle", "right")
_PALETTE_NAMES = tuple(scenes.COLOURS)
_PALETTE = np.array([scenes.COLOURS[c] for c in _PALETTE_NAMES], np.float32)


def _as_float255(image) -> np.ndarray:
  img = np.asarray(image)
  if img.ndim != 3 or img.shape[-1] != 3:
    raise ValueError(f"alignment expects an [H, W, 3] image, got shape {img.shape}")
  if img.dtype == np.uint8:
    return img.astype(np.float32)
  img = img.astype(np.float32)
  if img.size and (img.min() < -0.01 or img.max() > 1.01):
    raise ValueError(f"a float image must hold values in [0, 1], got [{img.min():.3g}, "
                     f"{img.max():.3g}]; pass uint8 for 0..255")
  return np.clip(img, 0.0, 1.0) * 255.0


def _box_filter3(x_HxWxC: np.ndarray) -> np.ndarray:
  p = np.pad(x_HxWxC, ((1, 1), (1, 1), (0, 0)), mode="edge")
  h, w = x_HxWxC.shape[:2]
  return sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def label_components(mask_HxW: np.ndarray) -> tuple:
  """8-connected components of a boolean mask: (labels_HxW int32 with 0 = background and
  1..n the components in raster order of their first pixel, n)."""
  mask = np.asarray(mask_HxW, bool)
  h, w = mask.shape
  big = h * w
  lab = np.where(mask, np.arange(big).reshape(h, w), big)
  while True:    # min-label propagation over the 8 neighbours, then pointer jumping
    p = np.pad(lab, 1, constant_values=big)
    new = lab
    for di in range(3):
      for dj in range(3):
        new = np.minimum(new, p[di:di + h, dj:dj + w])
    new = np.where(mask, new, big)
    flat = np.append(new.ravel(), big)
    for _ in range(4):
      flat = flat[flat]
    new = flat[:-1].reshape(h, w)
    if np.array_equal(new, lab):
      break
    lab = new
  roots, labels = np.unique(lab[mask], return_inverse=True)
  out = np.zeros((h, w), np.int32)
  out[mask] = labels.ravel() + 1
  return out, len(roots)


@functools.lru_cache(maxsize=None)
def _canonical_shape(shape: str) -> Image.Image:
  """A coverage mask of `shape` cropped to its tight box, drawn by the scene renderer's code."""
  s = _TEMPLATE_SIDE * _SS
  canvas = Image.new("L", (s + 8, s + 8), 0)
  scenes._draw_shape(ImageDraw.Draw(canvas), shape, s / 2 + 4, s / 2 + 4, s / 2)  # noqa: SLF001
  return canvas.crop(canvas.getbbox())


def _template(shape: str, size_hw: tuple, box: tuple) -> np.ndarray:
  """Coverage in [0, 1] over a size_hw region of `shape` whose tight box is `box` = (x0, y0, x1,
  y1) in (fractional) region pixels."""
  h, w = size_hw
  x0, y0, x1, y1 = (round(v * _SS) for v in box)
  canvas = Image.new("L", (w * _SS, h * _SS), 0)
  canvas.paste(_canonical_shape(shape).resize((max(x1 - x0, 1), max(y1 - y0, 1)), Image.BOX),
               (x0, y0))
  return np.asarray(canvas.reduce(_SS), np.float32) / 255.0


def _soft_iou(a, b) -> float:
  return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-6))


def _best_shape(coverage_HxW: np.ndarray, box: tuple) -> tuple:
  """(shape, soft IoU) of the scene shape that best explains a coverage map whose half-covered
  pixels span `box`; small boxes also try edges 0.5 px in or out (pixel quantisation)."""
  x0, y0, x1, y1 = box
  small = min(x1 - x0, y1 - y0) < 24
  grows = (-0.5, 0.0, 0.5) if small else (0.0,)
  best = {}
  for shape in scenes.SHAPES:
    best[shape] = max(
        _soft_iou(coverage_HxW, _template(shape, coverage_HxW.shape,
                                          (x0 - gx, y0 - gy, x1 + gx, y1 + gy)))
        for gx in grows for gy in grows)
  shape = max(best, key=best.get)
  return shape, best[shape]


def _position_name(cx: float, cy: float) -> str:
  col, row = min(max(int(3 * cx), 0), 2), min(max(int(3 * cy), 0), 2)
  return _CELL_NAMES.get((col, row), f"{_ROW_NAMES[row]} {_COL_NAMES[col]}")


def detect(image) -> list:
  """Objects in a scene image ([H, W, 3] uint8, or float in [0, 1]), largest first.

  Each is {"colour", "shape", "position", "size", "center": (x, y) in [0, 1] (box centre),
  "bbox": (x0, y0, x1, y1) pixels with x1/y1 exclusive, "area": fraction of the image,
  "shape_iou": IoU of the best shape}.
  """
  img = _as_float255(image)
  h, w = img.shape[:2]
  border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
  background = np.median(border, axis=0)
  dist = np.linalg.norm(_box_filter3(img) - background, axis=-1)
  labels, n = label_components(dist > _FG_THRESHOLD)
  if n == 0:
    return []
  areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
  raw_dist = np.linalg.norm(img - background, axis=-1)
  objects = []
  for k in np.argsort(-areas):
    if areas[k] < MIN_AREA * h * w:
      continue
    comp = labels == k + 1
    core = comp & (raw_dist >= np.percentile(raw_dist[comp], 50))
    pixels = img[core] if core.sum() >= 3 else img[comp]
    median = np.median(pixels, axis=0)
    colour = _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE - median, axis=-1)))]
    # Refined mask: pixels at least half-covered by the object's own colour (the renderer blends
    # colour over background by coverage), near the component and not in another one.
    ys, xs = np.nonzero(comp)
    y0, y1 = max(ys.min() - 2, 0), min(ys.max() + 3, h)
    x0, x1 = max(xs.min() - 2, 0), min(xs.max() + 3, w)
    direction = median - background
    coverage = ((img[y0:y1, x0:x1] - background) @ direction) / max(direction @ direction, 1.0)
    coverage = np.clip(coverage, 0.0, 1.0) * np.isin(labels[y0:y1, x0:x1], (0, k + 1))
    half = coverage >= 0.5
    if half.sum() < 3:
      half = comp[y0:y1, x0:x1]
    ys, xs = np.nonzero(half)
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    shape, iou = _best_shape(coverage, box)
    x0, y0, x1, y1 = x0 + box[0], y0 + box[1], x0 + box[2], y0 + box[3]
    cx, cy = (x0 + x1) / 2 / w, (y0 + y1) / 2 / h
    side = math.sqrt((x1 - x0) / w * (y1 - y0) / h)
    objects.append({"colour": colour, "shape": shape, "position": _position_name(cx, cy),
                    "size": "large" if side > _SIZE_SPLIT else "small", "center": (cx, cy),
                    "bbox": (int(x0), int(y0), int(x1), int(y1)),
                    "area": float(areas[k] / (h * w)), "shape_iou": iou})
  return objects


def _relation_holds(rel: str, a: dict, b: dict) -> bool:
  (ax, ay), (bx, by) = a["center"], b["center"]
  ca, cb, ra, rb = int(3 * ax), int(3 * bx), int(3 * ay), int(3 * by)
  if rel == "left of":
    return ca < cb
  if rel == "right of":
    return ca > cb
  if rel == "above":
    return ra < rb
  return ra > rb       # "below"


def _checks(expected: list, found: list, assignment) -> list:
  """Per expected object: {attribute: bool} for the attributes the prompt states."""
  out = []
  for i, obj in enumerate(expected):
    j = assignment[i]
    det = found[j] if j is not None else None
    c = {}
    for attr in ("colour", "shape", "size"):
      if obj.get(attr) is not None:
        c[attr] = det is not None and det[attr] == obj[attr]
    pos_ok = []
    if obj.get("position") is not None:
      pos_ok.append(det is not None and det["position"] == obj["position"])
    if obj.get("relation") is not None:
      rel, other = obj["relation"]
      k = assignment[other] if other < len(assignment) else None
      pos_ok.append(det is not None and k is not None and _relation_holds(rel, det, found[k]))
    if pos_ok:
      c["position"] = all(pos_ok)
    out.append(c)
  return out


def score(image, prompt: str, objects=None) -> dict:
  """How well one image shows its prompt.

  Returns {"colour"|"shape"|"position"|"size": [bool per prompt object that states it],
  "count": bool, "all": bool, "expected": parsed prompt objects, "found": detected objects}.
  `objects`: the detections if already computed (detect(image)).
  """
  expected = scenes.parse_caption(prompt)
  if not expected:
    raise ValueError(f"prompt {prompt!r} names no scene object (one of {scenes.SHAPES})")
  found = detect(image) if objects is None else objects
  slots = list(range(min(len(found), _MAX_MATCHED))) + [None] * len(expected)
  best, best_key = None, None
  for perm in set(itertools.permutations(slots, len(expected))):
    checks = _checks(expected, found, perm)
    key = (sum(all(c.values()) for c in checks), sum(sum(c.values()) for c in checks),
           sum(p is not None for p in perm))
    if best_key is None or key > best_key:
      best, best_key = checks, key
  result = {a: [c[a] for c in best if a in c] for a in ATTRIBUTES}
  result["count"] = len(found) == len(expected)
  result["all"] = result["count"] and all(all(c.values()) for c in best)
  result["expected"], result["found"] = expected, found
  return result


def alignment(images, prompts) -> dict:
  """Mean alignment of images with their prompts: {"colour", "shape", "position", "size":
  fraction of stated attributes right (None when no prompt states it), "count": fraction of
  images with the right number of objects, "all": fraction with everything right at once,
  "num_images": N}."""
  prompts = list(prompts)
  if len(images) != len(prompts):
    raise ValueError(f"alignment got {len(images)} images for {len(prompts)} prompts")
  if not prompts:
    raise ValueError("alignment needs at least one image")
  hits = {a: [] for a in ATTRIBUTES}
  counts, alls = [], []
  for image, prompt in zip(images, prompts):
    s = score(image, prompt)
    for a in ATTRIBUTES:
      hits[a].extend(s[a])
    counts.append(s["count"])
    alls.append(s["all"])
  out = {a: (float(np.mean(v)) if v else None) for a, v in hits.items()}
  out.update(count=float(np.mean(counts)), all=float(np.mean(alls)), num_images=len(prompts))
  return out
