"""Labelled image grids: each tile with its text (a prompt, a caption) written under it.

  grid_HxWx3 = labelled_grid(images_BxHxWx3, prompts)           # uint8, rows of ceil(sqrt(B))
  save_labelled_grid("/tmp/out/grid.png", images_BxHxWx3, prompts, cols=4)

One function draws every labelled grid of the project: the sample grids written while the base
and super-res stages train (muse_jax/tasks/samples.py), and the demo's report. Tiles smaller than
`min_tile` pixels are enlarged by an integer factor (nearest neighbour: the pixels stay visible)
so that a label has room; labels are wrapped to the tile's width in PIL's default font, at most
`max_lines` lines (a longer one ends in "...").
"""
import math
import os
from typing import Optional, Sequence

import numpy as np
from etils import epath
from PIL import Image, ImageDraw, ImageFont

PAD = 4                     # pixels between tiles and around the grid
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def _as_uint8(images_BxHxWx3) -> np.ndarray:
  images = np.asarray(images_BxHxWx3)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"labelled_grid takes images shaped [batch, height, width, 3], got "
                     f"{images.shape}")
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"labelled_grid takes float images in [0, 1] or uint8, got {images.dtype}")
  return (np.clip(np.nan_to_num(images.astype(np.float32)), 0.0, 1.0) * 255).round().astype(
      np.uint8)


def _wrap(draw: ImageDraw.ImageDraw, font, text: str, width: int, max_lines: int) -> list:
  """Greedy word wrap to `width` pixels; a word wider than a line is split between letters."""
  fits = lambda s: draw.textlength(s, font=font) <= width
  lines, line = [], ""
  for word in text.split():
    candidate = f"{line} {word}" if line else word
    if fits(candidate):
      line = candidate
      continue
    if line:
      lines.append(line)
    line = ""
    for ch in word:
      if not fits(line + ch) and line:
        lines.append(line)
        line = ""
      line += ch
  if line:
    lines.append(line)
  if len(lines) > max_lines:
    last = lines[max_lines - 1]
    while last and not fits(last + "..."):
      last = last[:-1]
    lines = lines[:max_lines - 1] + [last + "..."]
  return lines


def labelled_grid(images_BxHxWx3, labels: Sequence[str], cols: Optional[int] = None,
                  min_tile: int = 128, max_lines: int = 4) -> np.ndarray:
  """B images -> one uint8 [H', W', 3] grid image, image i's label written under it.

  images_BxHxWx3: float in [0, 1] (clipped) or uint8. labels: one str per image ("" for none).
  cols: tiles per row (default ceil(sqrt(B))). Tiles are enlarged by the smallest integer factor
  that makes them at least `min_tile` wide. Layout: PAD pixels around every cell; a cell is the
  tile and below it a text band as tall as the most lines any label needs (the same for all).
  """
  images = _as_uint8(images_BxHxWx3)
  labels = list(labels) if not isinstance(labels, str) else None
  if labels is None:
    raise ValueError("labelled_grid takes a list of labels, one per image, not a single str")
  b, h, w, _ = images.shape
  if len(labels) != b:
    raise ValueError(f"labelled_grid got {b} images but {len(labels)} labels; give one label "
                     f"per image")
  if b == 0:
    raise ValueError("labelled_grid needs at least one image")
  cols = int(cols or math.ceil(math.sqrt(b)))
  if cols < 1:
    raise ValueError(f"cols must be positive, got {cols}")
  rows = -(-b // cols)
  scale = max(1, -(-int(min_tile) // w))
  tw, th = w * scale, h * scale

  font = ImageFont.load_default()
  scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  wrapped = [_wrap(scratch, font, str(label), tw, max_lines) for label in labels]
  left, top, _, bottom = scratch.textbbox((0, 0), "Ag", font=font)
  line_h = bottom - min(top, 0) + 2
  band = max(len(lines) for lines in wrapped) * line_h + (PAD if any(wrapped) else 0)

  cell_w, cell_h = tw + PAD, th + band + PAD
  canvas = Image.new("RGB", (cols * cell_w + PAD, rows * cell_h + PAD), BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  for i, (image, lines) in enumerate(zip(images, wrapped)):
    r, c = divmod(i, cols)
    x, y = PAD + c * cell_w, PAD + r * cell_h
    tile = Image.fromarray(image)
    if scale > 1:
      tile = tile.resize((tw, th), Image.NEAREST)
    canvas.paste(tile, (x, y))
    for k, line in enumerate(lines):
      draw.text((x - left, y + th + PAD // 2 + k * line_h), line, fill=TEXT, font=font)
  return np.asarray(canvas)


def save_labelled_grid(path, images_BxHxWx3, labels: Sequence[str], cols: Optional[int] = None,
                       **kwargs) -> np.ndarray:
  """labelled_grid(...) written as a PNG at `path` (local or gs://; parent folders created).
  Returns the grid (uint8 [H', W', 3])."""
  grid = labelled_grid(images_BxHxWx3, labels, cols, **kwargs)
  path = epath.Path(os.fspath(path))
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    Image.fromarray(grid).save(f, "PNG")
  return grid
