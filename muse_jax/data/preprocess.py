"""Per-example preprocessing of image–caption records, and the accounting of skipped records.

A record from any source is a dict with "image" (uint8 HxWx3 array) or "image_bytes" (encoded
file contents), "caption" (str or None) and "key" (where it came from). Bad records (corrupt,
truncated or zero-byte images, non-image files, missing or empty captions, images smaller than the
crop) are dropped and counted by reason; a source where nothing is usable raises DataError.
"""
import collections
import dataclasses
import io
import threading
import warnings

import numpy as np
import PIL.Image

SKIP_REASONS = ("empty_file", "not_an_image", "corrupt_image", "too_small", "missing_caption",
                "empty_caption", "missing_file", "corrupt_record")


class DataError(RuntimeError):
  """A dataset that cannot produce any usable example."""


class SkipRecord(Exception):
  """Raised by sources and preprocessing for a record to drop; `reason` is one of SKIP_REASONS."""

  def __init__(self, reason: str, key: str = "", detail: str = ""):
    assert reason in SKIP_REASONS, reason
    super().__init__(f"{reason}: {key} {detail}".strip())
    self.reason, self.key = reason, key


class SkipCounter:
  """Thread-safe counts of skipped records by reason; raises DataError once `give_up_after`
  records in a row were unusable (nothing in the source works)."""

  def __init__(self, source_name: str, give_up_after: int):
    self.source_name = source_name
    self.give_up_after = max(1, int(give_up_after))
    self.counts = collections.Counter()
    self.ok = 0
    self._consecutive = 0
    self._lock = threading.Lock()
    self.examples = {}

  def record_ok(self):
    with self._lock:
      self.ok += 1
      self._consecutive = 0

  def record_skip(self, err: SkipRecord):
    with self._lock:
      self.counts[err.reason] += 1
      self.examples.setdefault(err.reason, str(err))
      self._consecutive += 1
      if self._consecutive >= self.give_up_after and self.ok == 0:
        raise DataError(
            f"no usable example in the first {self._consecutive} records of {self.source_name}: "
            f"skipped {dict(self.counts)}; e.g. {self.examples}")

  def total(self) -> int:
    with self._lock:
      return sum(self.counts.values())

  def snapshot(self) -> dict:
    with self._lock:
      return {f"skipped/{r}": self.counts.get(r, 0) for r in SKIP_REASONS} | {
          "skipped/total": sum(self.counts.values())}


@dataclasses.dataclass(frozen=True)
class ImageConfig:
  """resolution: output side. crop: "center" | "random". flip: random horizontal flip (off by
  default: captions say left and right). value_range: (lo, hi) of output pixels."""
  resolution: int = 256
  crop: str = "center"
  flip: bool = False
  value_range: tuple = (-1.0, 1.0)

  def __post_init__(self):
    if self.crop not in ("center", "random"):
      raise ValueError(f"data.crop={self.crop!r}; expected 'center' or 'random'")
    if self.resolution < 8:
      raise ValueError(f"data.resolution must be >= 8, got {self.resolution}")

  @property
  def needs_rng(self) -> bool:
    return self.crop == "random" or self.flip


def decode_image(record: dict) -> PIL.Image.Image:
  key = str(record.get("key", ""))
  if "skip" in record:
    raise SkipRecord(record["skip"][0], key, record["skip"][1])
  if "image" in record and record["image"] is not None:
    arr = np.asarray(record["image"])
    if arr.ndim == 3 and arr.shape[-1] == 1:
      arr = arr[..., 0]
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
      raise SkipRecord("not_an_image", key, f"array {arr.shape} {arr.dtype}")
    return PIL.Image.fromarray(arr).convert("RGB")
  data = record.get("image_bytes")
  if data is None:
    raise SkipRecord("missing_file", key)
  if len(data) == 0:
    raise SkipRecord("empty_file", key)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
      img = PIL.Image.open(io.BytesIO(data))
      img.load()
  except PIL.UnidentifiedImageError as e:
    raise SkipRecord("not_an_image", key, str(e)) from None
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError,
          PIL.Image.DecompressionBombWarning) as e:
    raise SkipRecord("corrupt_image", key, str(e)) from None
  return img.convert("RGB")


def resize_and_crop(img: PIL.Image.Image, cfg: ImageConfig, rng=None, key: str = "") -> np.ndarray:
  """Shorter side to cfg.resolution (never upsampling: smaller images are skipped), then a
  centre or random square crop, optional flip; returns uint8 HxWx3."""
  w, h = img.size
  r = cfg.resolution
  if min(w, h) < r:
    raise SkipRecord("too_small", key, f"{w}x{h} < {r}")
  scale = r / min(w, h)
  nw, nh = max(r, round(w * scale)), max(r, round(h * scale))
  if (nw, nh) != (w, h):
    img = img.resize((nw, nh), PIL.Image.BICUBIC, reducing_gap=3.0)
  if cfg.crop == "random":
    x0, y0 = int(rng.integers(0, nw - r + 1)), int(rng.integers(0, nh - r + 1))
  else:
    x0, y0 = (nw - r) // 2, (nh - r) // 2
  arr = np.asarray(img.crop((x0, y0, x0 + r, y0 + r)))
  if cfg.flip and rng.random() < 0.5:
    arr = arr[:, ::-1]
  return arr


def to_range(arr_u8: np.ndarray, value_range) -> np.ndarray:
  lo, hi = value_range
  return (arr_u8.astype(np.float32) / 255.0 * (hi - lo) + lo).astype(np.float32)


def clean_caption(record: dict) -> str:
  caption = record.get("caption")
  key = str(record.get("key", ""))
  if caption is None:
    raise SkipRecord("missing_caption", key)
  if isinstance(caption, bytes):
    caption = caption.decode("utf-8", errors="replace")
  caption = " ".join(str(caption).split())
  if not caption:
    raise SkipRecord("empty_caption", key)
  return caption


class ImageTextProcessor:
  """record -> {"image": float32 HxWx3 in value_range, "txt_ids", "txt_mask"} or None if skipped.

  Usable with grain's map (cfg.needs_rng False) or random_map (rng: np.random.Generator)."""

  def __init__(self, cfg: ImageConfig, tokenizer, counter: SkipCounter, keep_caption=False):
    self.cfg, self.tokenizer, self.counter = cfg, tokenizer, counter
    self.keep_caption = keep_caption   # also return the cleaned caption str (muse-encode)

  def __call__(self, record: dict, rng=None):
    try:
      caption = clean_caption(record)
      img = decode_image(record)
      pixels = resize_and_crop(img, self.cfg, rng, str(record.get("key", "")))
    except SkipRecord as e:
      self.counter.record_skip(e)
      return None
    out = {"image": to_range(pixels, self.cfg.value_range)}
    if self.tokenizer is not None:
      out["txt_ids"], out["txt_mask"] = self.tokenizer(caption)
    if self.keep_caption:
      out["caption"] = caption
    self.counter.record_ok()
    return out
