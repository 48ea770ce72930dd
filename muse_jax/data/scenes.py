"""Built-in procedural image-caption data: a few coloured shapes on a plain grey background.

The project's embedded default data set: it needs no download, renders at any resolution >= 16,
and its captions are generated from known attributes, so generated images can be scored against
their prompts (`parse_caption` a prompt, compare with what a detector finds or with `render`).

A scene is a fixed mid-grey background with 1..max_objects objects (MAX_OBJECTS = 1 by default).
Each object has a colour (COLOURS), a shape (SHAPES), a position (POSITIONS: the left/right/top/
bottom/center cells of a 3x3 grid; objects of one scene are in distinct cells, so "a red circle to
the left of a blue square" is always true) and a size (SIZES). Bounding boxes never overlap. The
background is one fixed grey on purpose: no caption mentions it, so a varying background would
only be unexplained variance for a tiny demo model, and mid-grey keeps all eight colours, white
and black included, at high contrast.

The world is sized to what a CPU demo can learn in minutes (benchmarks/RESULTS.md, "A world sized
to the demo" and "Object sizes for the demo"): objects are 28% and 40% of the image side, so at
the demo's 32 px base resolution an object spans 2-3 tokens of a factor-4 tokenizer and its shape
survives tokenization (an object inside one 16-px token of the earlier f16 demo came back as a
blob, shape at chance; at 22% of the side, 7 px, the demo tokenizer gave small crosses back as
blobs and small triangles at 34%, where at 28% it keeps 46% and 86%: benchmarks/scene_sizes.py);
the four shapes differ in silhouette at that size (a star and a ring at 7 px did not). One
object per scene by default: two objects of these sizes fit only with fewer free layouts, and
every extra object multiplies what "all attributes" must get right; `max_objects=2` keeps the
two-object captions and relations (scored >= 98% from 64 px up, tests/test_alignment.py).

Held-out compositions: HELD_OUT (colour, shape) pairs never occur in split="train" (each colour and
each shape still appears there with other partners); split="eval" draws only scenes with at least
one held-out pair; split="eval_seen" draws seen pairs like "train" but from another random stream
(the same composition can occur in both; the same jittered layout practically never does).

Layout (object centres, in fractions of the image side) does not depend on the resolution: the same
(seed, split, index) gives the same scene at 32 and at 256 pixels. Objects are drawn as coverage
masks at 4x and box-filtered down (Image.reduce: each pixel's exact area coverage, 16 samples),
only over their own boxes, so the cost grows with the objects' area, not the image's. LANCZOS
from 4x cost 0.5 ms per large object at 256 px (20x reduce's cost) and rings, leaking off-palette
colours around edges; a coverage mask needs no sharpening.

Measured `SceneSource.__getitem__` (one core of a 2-core CPU host, mean over 2000 items,
max_objects=2): about 0.2 ms at 32 px, 0.2 ms at 64 px and 0.7 ms at 256 px;
reproduce with `JAX_PLATFORMS=cpu python -m muse_jax.data.scenes bench`. `python -m
muse_jax.data.scenes export` writes scenes as a captioned image folder (README's folder recipe).
"""
import math
import re
import time

import numpy as np
from PIL import Image, ImageDraw

from muse_jax import errors

COLOURS = {                      # name -> RGB; every pair at least ~95 apart, and ~90 from grey
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 225, 40),
    "green": (35, 165, 60),
    "blue": (40, 80, 220),
    "purple": (150, 55, 200),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = {                    # name -> centre of its cell of a 3x3 grid, (x, y) in [0, 1]
    "left": (1 / 6, 1 / 2),
    "right": (5 / 6, 1 / 2),
    "top": (1 / 2, 1 / 6),
    "bottom": (1 / 2, 5 / 6),
    "center": (1 / 2, 1 / 2),
}
SIZES = {"small": 0.14, "large": 0.20}    # name -> half the side of the object's box, in image sides
BACKGROUNDS = {"grey": (128, 128, 128)}
BACKGROUND = "grey"

# Six held-out pairs, each shape with one or two partners and six distinct colours; orange and
# black are never held out, so every colour and every shape still occurs in training.
HELD_OUT = frozenset({("blue", "circle"), ("purple", "circle"), ("green", "square"),
                      ("red", "triangle"), ("white", "triangle"), ("yellow", "cross")})
ALL_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)
SEEN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELD_OUT)
SPLITS = {"train": 0, "eval": 1, "eval_seen": 2}

MIN_RESOLUTION = 16
MAX_OBJECTS = 1      # objects per scene by default (the module docstring says why)
_JITTER = 0.07       # max offset of an object's centre from its cell centre (cells are 1/3 wide)
_MARGIN = 0.01       # min distance from an object's box to the image border
_GAP = 0.04          # min distance between the boxes of two objects
_SUPERSAMPLE = 4

# ---------------------------------------------------------------------------------------------
# Captions. A template writes one phrase per object (joined) or, for two objects, a relation.
# ---------------------------------------------------------------------------------------------
_POS_ON = {"left": "on the left", "right": "on the right", "top": "at the top",
           "bottom": "at the bottom", "center": "in the center"}
_POS_PART = {"left": "in the left part of the image", "right": "in the right part of the image",
             "top": "in the top part of the image", "bottom": "in the bottom part of the image",
             "center": "in the central part of the image"}
_POS_TERSE = {"left": "left side", "right": "right side", "top": "top", "bottom": "bottom",
              "center": "center"}
_POS_NEAR = {"left": "near the left edge", "right": "near the right edge", "top": "near the top",
             "bottom": "near the bottom", "center": "in the middle"}
_SIZE_ALT = {"small": "little", "large": "big"}

# name -> (prefix, object phrase, joiner); "{a}" is "a" or "an" for the word that follows it.
_TEMPLATES = {
    "full": ("", "{a} {size} {colour} {shape} {pos_on}", " and "),
    "no_size": ("", "{a} {colour} {shape} {pos_on}", " and "),
    "part": ("", "{a} {size} {colour} {shape} {pos_part}", " and "),
    "terse": ("", "{colour} {shape}, {pos_terse}", "; "),
    "there_is": ("there is ", "{a} {size} {colour} {shape} {pos_on}", " and "),
    "plain": ("", "{a} {colour} {shape}", " and "),
    "sized": ("a picture of ", "{a} {size_alt} {colour} {shape}", " and "),
    "near": ("an image with ", "{a} {colour} {shape} {pos_near}", " and "),
    "relation": None,          # two objects: "a red circle to the left of a blue square"
    "relation_sized": None,    # "a large red circle to the left of a small blue square"
}
TEMPLATES = tuple(_TEMPLATES)  # prompt_for(..., template=i) uses TEMPLATES[i]
_RELATION_TEMPLATES = ("relation", "relation_sized")


def _article(text: str) -> str:
  return ("an " if text[0] in "aeiou" else "a ") + text


def _column(position: str) -> int:
  return {"left": 0, "right": 2}.get(position, 1)


def _row(position: str) -> int:
  return {"top": 0, "bottom": 2}.get(position, 1)


def relation(position_a: str, position_b: str) -> str:
  """How object a lies relative to object b: "left of", "right of", "above" or "below"."""
  if position_a == position_b:
    raise ValueError(f"two objects at the same position {position_a!r} have no relation")
  ca, cb = _column(position_a), _column(position_b)
  if ca != cb:
    return "left of" if ca < cb else "right of"
  return "above" if _row(position_a) < _row(position_b) else "below"


_RELATION_PHRASE = {"left of": "to the left of", "right of": "to the right of",
                    "above": "above", "below": "below"}


def _require(obj: dict, key: str, template: str, i: int):
  if obj.get(key) is None:
    raise ValueError(f"caption template {template!r} needs a {key} for object {i}, got {obj}")
  return obj[key]


def prompt_for(attributes, template=0) -> str:
  """Caption of a scene's attributes ({"objects": [...]} or the list of objects) in one template.

  template: an index into TEMPLATES or its name. 0 ("full") states every attribute.
  """
  objects = attributes["objects"] if isinstance(attributes, dict) else list(attributes)
  name = TEMPLATES[template] if isinstance(template, (int, np.integer)) else template
  if name not in _TEMPLATES:
    raise ValueError(f"unknown caption template {template!r}; expected an index < "
                     f"{len(TEMPLATES)} or one of {TEMPLATES}")
  if not objects:
    raise ValueError("a caption needs at least one object")
  if name in _RELATION_TEMPLATES and len(objects) != 2:
    raise ValueError(f"caption template {name!r} needs exactly 2 objects, got {len(objects)}")
  words = []
  for i, obj in enumerate(objects):
    w = {"colour": _require(obj, "colour", name, i), "shape": _require(obj, "shape", name, i)}
    if name in ("full", "part", "there_is", "sized", "relation_sized"):
      w["size"] = _require(obj, "size", name, i)
      w["size_alt"] = _SIZE_ALT[w["size"]]
    if name in ("full", "no_size", "part", "terse", "there_is", "near", "relation",
                "relation_sized"):
      w["position"] = _require(obj, "position", name, i)
    words.append(w)
  if name in _RELATION_TEMPLATES:
    a, b = words
    sized = name == "relation_sized"
    describe = lambda w: _article((w["size"] + " " if sized else "") + f"{w['colour']} {w['shape']}")
    rel = _RELATION_PHRASE[relation(a["position"], b["position"])]
    return f"{describe(a)} {rel} {describe(b)}"
  prefix, phrase, joiner = _TEMPLATES[name]
  parts = []
  for w in words:
    pos = w.get("position")
    fields = dict(w, pos_on=_POS_ON.get(pos), pos_part=_POS_PART.get(pos),
                  pos_terse=_POS_TERSE.get(pos), pos_near=_POS_NEAR.get(pos))
    text = phrase.replace("{a} ", "").format(**fields)
    parts.append(_article(text) if phrase.startswith("{a} ") else text)
  return prefix + joiner.join(parts)


# ---------------------------------------------------------------------------------------------
# Parsing: captions of any template above, and similar hand-written prompts.
# ---------------------------------------------------------------------------------------------
_POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom",
                   "center": "center", "centre": "center", "middle": "center",
                   "central": "center"}
_SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "large": "large",
               "big": "large"}
_SHAPE_WORDS = {s: s for s in SHAPES}
_SHAPE_WORDS.update({s + "s": s for s in SHAPES}, crosses="cross")
_ARTICLES = ("a", "an", "the")


def parse_caption(caption: str) -> list:
  """The objects a caption describes, in order of mention.

  Each is {"colour": name or None, "shape": name} plus "size" and "position" where the caption
  states them, and "relation": (one of "left of", "right of", "above", "below", index of the
  other object) for "a red circle to the left of a blue square". An object is a shape word with
  the colour/size words right before it; its position is in the words up to the next object.
  """
  if not isinstance(caption, str):
    raise TypeError(f"parse_caption expects a str caption, got {type(caption).__name__}")
  words = re.findall(r"[a-z]+", caption.lower())
  shape_at = [i for i, w in enumerate(words) if w in _SHAPE_WORDS]
  objects, starts = [], []
  for k, i in enumerate(shape_at):
    obj = {"colour": None, "shape": _SHAPE_WORDS[words[i]]}
    j = i - 1
    floor = shape_at[k - 1] if k else -1
    while j > floor and (words[j] in COLOURS or words[j] in _SIZE_WORDS):
      if words[j] in COLOURS and obj["colour"] is None:
        obj["colour"] = words[j]
      elif words[j] in _SIZE_WORDS and "size" not in obj:
        obj["size"] = _SIZE_WORDS[words[j]]
      j -= 1
    objects.append(obj)
    starts.append(j + 1)
  for k, (obj, i) in enumerate(zip(objects, shape_at)):
    end = starts[k + 1] if k + 1 < len(objects) else len(words)
    tail = words[i + 1:end]
    for t, w in enumerate(tail):
      rel = None
      if w in ("left", "right") and t + 1 < len(tail) and tail[t + 1] == "of":
        if k + 1 < len(objects) and all(x in _ARTICLES for x in tail[t + 2:]):
          rel = f"{w} of"
      elif w in ("above", "below", "under", "over") and k + 1 < len(objects):
        rel = {"under": "below", "over": "above"}.get(w, w)
      if rel is not None:
        obj["relation"] = (rel, k + 1)
        break
      if w in _POSITION_WORDS and "position" not in obj:
        obj["position"] = _POSITION_WORDS[w]
  return objects


# ---------------------------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------------------------
def _canonical_positions(objects: list) -> list:
  """Each object's position: as stated, implied by a relation, else the first free cell."""
  positions = [o.get("position") for o in objects]
  if len(objects) == 2 and positions == [None, None] and objects[0].get("relation"):
    positions = {"left of": ["left", "right"], "right of": ["right", "left"],
                 "above": ["top", "bottom"], "below": ["bottom", "top"]}[objects[0]["relation"][0]]
  taken = [p for p in positions if p is not None]
  for p in taken:
    if p not in POSITIONS:
      raise ValueError(f"unknown position {p!r}; expected one of {tuple(POSITIONS)}")
    if taken.count(p) > 1:
      raise ValueError(f"two objects at position {p!r}; objects need distinct positions")
  order = ["center"] if len(objects) == 1 else ["left", "right", "top", "bottom", "center"]
  free = [p for p in order + list(POSITIONS) if p not in taken]
  return [p if p is not None else free.pop(0) for p in positions]


def box_of(center, size: str, resolution: int) -> tuple:
  """Pixel box (x0, y0, x1, y1), x1/y1 exclusive, of an object with this centre and size."""
  r = SIZES[size]
  cx, cy = center
  lo = lambda v: min(max(int(math.floor(v * resolution)), 0), resolution)
  hi = lambda v: min(max(int(math.ceil(v * resolution)), 0), resolution)
  return (lo(cx - r), lo(cy - r), hi(cx + r), hi(cy + r))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float):
  """Fills (255) a shape whose box is [x-r, x+r] x [y-r, y+r] on a coverage mask."""
  if shape == "circle":
    draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
  elif shape == "square":
    draw.polygon([(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)], fill=255)
  elif shape == "triangle":
    draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=255)
  elif shape == "cross":
    t = 0.34 * r
    draw.polygon([(x - t, y - r), (x + t, y - r), (x + t, y - t), (x + r, y - t), (x + r, y + t),
                  (x + t, y + t), (x + t, y + r), (x - t, y + r), (x - t, y + t), (x - r, y + t),
                  (x - r, y - t), (x - t, y - t)], fill=255)
  else:
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(attributes, resolution: int) -> np.ndarray:
  """uint8 [resolution, resolution, 3] image of a scene's attributes.

  attributes: {"objects": [...], "background": ...} as in SceneSource records, or a list of
  objects as parse_caption returns. Missing "center" is the position's cell centre, missing
  "position" is taken from a relation or the first free cell, missing "size" is "large".
  """
  if isinstance(resolution, bool) or int(resolution) != resolution or resolution < MIN_RESOLUTION:
    raise ValueError(f"scene resolution must be an int >= {MIN_RESOLUTION}, got {resolution!r}")
  resolution = int(resolution)
  if isinstance(attributes, dict):
    objects, background = attributes["objects"], attributes.get("background", BACKGROUND)
  else:
    objects, background = list(attributes), BACKGROUND
  if background not in BACKGROUNDS:
    raise ValueError(f"unknown background {background!r}; expected one of {tuple(BACKGROUNDS)}")
  image = np.empty((resolution, resolution, 3), np.uint8)
  image[...] = BACKGROUNDS[background]
  positions = _canonical_positions(objects)
  s = _SUPERSAMPLE
  for i, (obj, position) in enumerate(zip(objects, positions)):
    colour = obj.get("colour")
    if colour not in COLOURS:
      raise ValueError(f"object {i} has colour {colour!r}; expected one of {tuple(COLOURS)}")
    size = obj.get("size") or "large"
    if size not in SIZES:
      raise ValueError(f"object {i} has size {size!r}; expected one of {tuple(SIZES)}")
    cx, cy = obj.get("center") or POSITIONS[position]
    x0, y0, x1, y1 = box_of((cx, cy), size, resolution)
    x0, y0 = max(x0 - 2, 0), max(y0 - 2, 0)              # room for the antialiased edge
    x1, y1 = min(x1 + 2, resolution), min(y1 + 2, resolution)
    if x1 <= x0 or y1 <= y0:
      continue
    mask = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    _draw_shape(ImageDraw.Draw(mask), obj.get("shape"), (cx * resolution - x0) * s,
                (cy * resolution - y0) * s, SIZES[size] * resolution * s)
    alpha = np.asarray(mask.reduce(s), np.float32)[..., None]
    patch = image[y0:y1, x0:x1].astype(np.float32)
    patch += (alpha / 255.0) * (np.asarray(COLOURS[colour], np.float32) - patch)
    image[y0:y1, x0:x1] = np.rint(patch).astype(np.uint8)
  return image


# ---------------------------------------------------------------------------------------------
# The data source.
# ---------------------------------------------------------------------------------------------
def _boxes_apart(a, b) -> bool:
  (ax, ay, ar), (bx, by, br) = a, b
  return abs(ax - bx) >= ar + br + _GAP or abs(ay - by) >= ar + br + _GAP


def jittered_center(position: str, size: str, rng: np.random.Generator) -> tuple:
  """An object's centre (x, y in [0, 1]): its position's cell centre moved by up to _JITTER
  each way, kept _MARGIN inside the border for an object of that size."""
  lo, hi = SIZES[size] + _MARGIN, 1 - SIZES[size] - _MARGIN
  jitter = rng.uniform(-_JITTER, _JITTER, 2)
  return tuple(float(np.clip(c + j, lo, hi)) for c, j in zip(POSITIONS[position], jitter))


def sample_attributes(rng: np.random.Generator, split: str = "train",
                      max_objects: int = MAX_OBJECTS) -> dict:
  """Random scene attributes (no pixel boxes) for a split; see the module docstring."""
  n = int(rng.integers(1, max_objects + 1))
  if split == "eval":
    slot = int(rng.integers(n))
    held = sorted(HELD_OUT)[int(rng.integers(len(HELD_OUT)))]
    others = [p for p in ALL_PAIRS if p != held]
    pairs = [others[int(k)] for k in rng.choice(len(others), n - 1, replace=False)]
    pairs.insert(slot, held)
  else:
    pairs = [SEEN_PAIRS[int(k)] for k in rng.choice(len(SEEN_PAIRS), n, replace=False)]
  names = list(POSITIONS)
  while True:    # layouts until the boxes are apart (2+ objects at these sizes can touch)
    positions = [names[int(k)] for k in rng.choice(len(names), n, replace=False)]
    sizes = [tuple(SIZES)[int(k)] for k in rng.integers(0, len(SIZES), n)]
    centers = [jittered_center(position, size, rng) for position, size in zip(positions, sizes)]
    circles = [(cx, cy, SIZES[z]) for (cx, cy), z in zip(centers, sizes)]
    if all(_boxes_apart(circles[a], circles[b]) for a in range(n) for b in range(a)):
      break
  objects = [{"colour": c, "shape": s, "position": p, "size": z, "center": xy}
             for (c, s), p, z, xy in zip(pairs, positions, sizes, centers)]
  return {"objects": objects, "background": BACKGROUND}


class SceneSource:
  """grain RandomAccessDataSource of {"image": [R, R, 3] uint8, "caption": str, "attributes": dict}.

  attributes = {"objects": [{"colour", "shape", "position", "size", "bbox": (x0, y0, x1, y1)
  pixels with x1/y1 exclusive, "center": (x, y) in [0, 1]}], "background": "grey"}. Every
  record is a pure function of (seed, split, index); the caption template is picked per index among
  `templates` (default: all of TEMPLATES; relation templates only for two-object scenes). Map
  records to arrays (e.g. tokenize the caption, drop attributes) before batching them with grain.
  """

  def __init__(self, num_examples: int, resolution: int = 256, seed: int = 0,
               split: str = "train", max_objects: int = MAX_OBJECTS, templates=None):
    if num_examples <= 0:
      raise ValueError(f"scene source needs num_examples > 0, got {num_examples}")
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution < MIN_RESOLUTION:
      raise ValueError(f"scene resolution must be an int >= {MIN_RESOLUTION}, got {resolution!r}")
    if split not in SPLITS:
      raise ValueError(f"unknown scene split {split!r}; expected one of {tuple(SPLITS)}")
    if not 1 <= max_objects <= len(POSITIONS):
      raise ValueError(f"max_objects must be in [1, {len(POSITIONS)}], got {max_objects}")
    templates = TEMPLATES if templates is None else tuple(
        TEMPLATES[t] if isinstance(t, int) else t for t in templates)
    unknown = [t for t in templates if t not in _TEMPLATES]
    if unknown or not templates:
      raise ValueError(f"unknown caption templates {unknown or templates}; expected names from "
                       f"{TEMPLATES}")
    if all(t in _RELATION_TEMPLATES for t in templates) and max_objects != 2:
      raise ValueError(f"templates {templates} only describe 2-object scenes; "
                       f"set max_objects=2 or add a per-object template")
    self._n, self.resolution, self._seed = int(num_examples), int(resolution), int(seed)
    self.split, self.max_objects, self.templates = split, int(max_objects), templates

  def __len__(self) -> int:
    return self._n

  def attributes(self, index: int) -> tuple:
    """(attributes without pixel boxes, template name) of one index; cheap, no drawing."""
    index = int(index)
    if not 0 <= index < self._n:
      raise IndexError(f"scene index {index} out of range [0, {self._n})")
    rng = np.random.default_rng((self._seed, SPLITS[self.split], index))
    while True:   # only all-relation template lists need a retry, for 1-object scenes
      attrs = sample_attributes(rng, self.split, self.max_objects)
      n = len(attrs["objects"])
      usable = [t for t in self.templates if n == 2 or t not in _RELATION_TEMPLATES]
      if usable:
        return attrs, usable[int(rng.integers(len(usable)))]

  def __getitem__(self, index: int) -> dict:
    attrs, template = self.attributes(index)
    for obj in attrs["objects"]:
      obj["bbox"] = box_of(obj["center"], obj["size"], self.resolution)
    return {"image": render(attrs, self.resolution), "caption": prompt_for(attrs, template),
            "attributes": attrs}

  def __repr__(self):
    return (f"SceneSource(n={self._n}, resolution={self.resolution}, seed={self._seed}, "
            f"split={self.split!r}, max_objects={self.max_objects})")


def export_folder(out_dir: str, num_examples: int, resolution: int, split: str = "train",
                  seed: int = 0, max_objects: int = MAX_OBJECTS) -> int:
  """Writes scenes as a captioned image folder (NNNNNN.png + captions.jsonl, the layout the
  folder source and muse-encode --source folder read), so that the folder recipe (README) can be
  tried on data with a known answer; returns the number of images written."""
  import json
  import os
  source = SceneSource(num_examples, resolution, seed=seed, split=split, max_objects=max_objects)
  os.makedirs(out_dir, exist_ok=True)
  width = max(6, len(str(num_examples - 1)))
  with open(os.path.join(out_dir, "captions.jsonl"), "w", encoding="utf-8") as f:
    for i in range(num_examples):
      rec = source[i]
      name = f"{i:0{width}d}.png"
      Image.fromarray(rec["image"]).save(os.path.join(out_dir, name))
      f.write(json.dumps({"file": name, "caption": rec["caption"]}) + "\n")
  return num_examples


def _bench() -> None:
  for res in (32, 64, 256):
    source = SceneSource(2000, resolution=res)
    source[0]
    start = time.perf_counter()
    for i in range(len(source)):
      source[i]
    ms = (time.perf_counter() - start) / len(source) * 1e3
    print(f"SceneSource.__getitem__ at {res:>3} px: {ms:.3f} ms")


def main(argv=None) -> int:
  """python -m muse_jax.data.scenes [bench]: time SceneSource.__getitem__;
  ... export --out DIR --num-examples N --resolution R [--split S]: a captioned image folder;
  ... prompts --split S --num N --out FILE: N captions of a split, one per line (muse-eval
  --prompts-file; split "eval": held-out colour-shape pairs, "eval_seen": seen ones)."""
  import argparse
  parser = argparse.ArgumentParser(prog="python -m muse_jax.data.scenes", description=(
      main.__doc__ or "").split("\n")[0])
  sub = parser.add_subparsers(dest="command")
  sub.add_parser("bench", help="time SceneSource.__getitem__ at 32, 64 and 256 px")
  exp = sub.add_parser("export", help="scenes -> a folder of PNGs with captions.jsonl")
  exp.add_argument("--out", required=True)
  exp.add_argument("--num-examples", type=int, required=True)
  exp.add_argument("--resolution", type=int, required=True)
  exp.add_argument("--split", default="train", choices=tuple(SPLITS))
  exp.add_argument("--seed", type=int, default=0)
  pr = sub.add_parser("prompts", help="captions of a split, one per line")
  pr.add_argument("--split", required=True, choices=tuple(SPLITS))
  pr.add_argument("--num", type=int, required=True)
  pr.add_argument("--seed", type=int, default=1)
  pr.add_argument("--out", required=True)
  args = parser.parse_args(argv)

  def run():
    if args.command == "export":
      n = export_folder(args.out, args.num_examples, args.resolution, args.split, args.seed)
      print(f"wrote {n} scenes of split {args.split!r} at {args.resolution} px to {args.out}")
    elif args.command == "prompts":
      source = SceneSource(args.num, MIN_RESOLUTION, seed=args.seed, split=args.split)
      with open(args.out, "w", encoding="utf-8") as f:
        f.writelines(source[i]["caption"] + "\n" for i in range(args.num))
      print(f"wrote {args.num} captions of split {args.split!r} to {args.out}")
    else:
      _bench()
    return 0

  return errors.report("python -m muse_jax.data.scenes", run, also=(ValueError, OSError))


if __name__ == "__main__":
  raise SystemExit(main())
