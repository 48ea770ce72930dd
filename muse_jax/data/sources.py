"""Random-access image–caption sources (grain RandomAccessDataSource protocol).

Each returns records {"image" | "image_bytes", "caption", "key"}; a record that cannot be read
carries "skip": (reason, detail) instead, so one bad file never stops the pipeline.
  FolderSource      a folder of images + captions file (JSONL {"file", "caption"} or CSV file,caption)
  WebDatasetSource  img2dataset tar shards (key.jpg|png|jpeg|webp + key.txt [+ key.json])
  TfdsSource        a prepared TFDS dataset (array_record) under TFDS_DATA_DIR, read without TF
"""
import csv
import glob
import json
import os
import tarfile
import threading

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class FolderSource:
  """Images under `root` listed in a captions file (path relative to root, or absolute)."""

  def __init__(self, root: str, captions_file: str | None = None):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"image folder {root} does not exist")
    if captions_file is None:
      for name in ("captions.jsonl", "captions.csv"):
        if os.path.exists(os.path.join(root, name)):
          captions_file = os.path.join(root, name)
          break
      else:
        raise FileNotFoundError(f"no captions.jsonl or captions.csv in {root}; pass "
                                f"data.captions_file")
    self.root, self.captions_file = root, captions_file
    self._items = []
    bad_lines = 0
    if captions_file.endswith(".jsonl"):
      with open(captions_file, encoding="utf-8") as f:
        for line in f:
          if not line.strip():
            continue
          try:
            rec = json.loads(line)
            self._items.append((str(rec["file"]), rec.get("caption")))
          except (json.JSONDecodeError, KeyError, TypeError):
            bad_lines += 1
    elif captions_file.endswith(".csv"):
      with open(captions_file, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "file" not in reader.fieldnames:
          raise ValueError(f"{captions_file} must have a header with columns file,caption; got "
                           f"{reader.fieldnames}")
        for row in reader:
          if row.get("file"):
            self._items.append((row["file"], row.get("caption")))
          else:
            bad_lines += 1
    else:
      raise ValueError(f"captions file {captions_file} must end in .jsonl or .csv")
    self.bad_lines = bad_lines
    if not self._items:
      raise ValueError(f"captions file {captions_file} lists no images")

  def __len__(self):
    return len(self._items)

  def __getitem__(self, index):
    file, caption = self._items[int(index)]
    path = file if os.path.isabs(file) else os.path.join(self.root, file)
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError as e:
      return {"key": path, "caption": caption, "skip": ("missing_file", str(e))}
    return {"key": path, "caption": caption, "image_bytes": data}

  def __repr__(self):
    return f"FolderSource({self.root}, {len(self)} images)"


class WebDatasetSource:
  """Random access into img2dataset tar shards. The shards' headers are scanned once at start
  (no data is read) to index each sample's image and caption members by byte offset."""

  def __init__(self, pattern: str):
    shards = sorted(glob.glob(pattern))
    if not shards:
      raise FileNotFoundError(f"no tar shards match {pattern}")
    self.pattern, self.shards = pattern, shards
    self._samples = []        # (shard index, key, image (offset, size, ext) | None, txt, json)
    for si, shard in enumerate(shards):
      groups = {}
      try:
        with tarfile.open(shard, "r:") as tar:
          for m in tar:
            if not m.isfile():
              continue
            base = os.path.basename(m.name)
            stem, ext = os.path.splitext(base)
            key = os.path.join(os.path.dirname(m.name), stem)
            groups.setdefault(key, {})[ext.lower()] = (m.offset_data, m.size)
      except (tarfile.TarError, OSError):
        pass                 # a truncated shard keeps the samples indexed before the damage
      for key, members in groups.items():
        img = next(((members[e][0], members[e][1], e) for e in IMAGE_EXTS if e in members), None)
        if img is None and not any(e in members for e in (".txt", ".json")):
          continue
        self._samples.append((si, key, img, members.get(".txt"), members.get(".json")))
    if not self._samples:
      raise ValueError(f"the tar shards matching {pattern} contain no samples")
    self._local = threading.local()

  def _read(self, si, offset, size) -> bytes:
    files = getattr(self._local, "files", None)
    if files is None:
      files = self._local.files = {}
    f = files.get(si)
    if f is None:
      f = files[si] = open(self.shards[si], "rb")
    f.seek(offset)
    return f.read(size)

  def __len__(self):
    return len(self._samples)

  def __getitem__(self, index):
    si, key, img, txt, meta = self._samples[int(index)]
    full_key = f"{self.shards[si]}:{key}"
    caption = None
    if txt is not None:
      caption = self._read(si, *txt).decode("utf-8", errors="replace")
    elif meta is not None:
      try:
        caption = json.loads(self._read(si, *meta)).get("caption")
      except (json.JSONDecodeError, AttributeError):
        caption = None
    if img is None:
      return {"key": full_key, "caption": caption, "skip": ("missing_file", "no image member")}
    data = self._read(si, img[0], img[1])
    if len(data) < img[1]:
      return {"key": full_key, "caption": caption, "skip": ("corrupt_image", "truncated shard")}
    return {"key": full_key, "caption": caption, "image_bytes": data}

  def __repr__(self):
    return f"WebDatasetSource({self.pattern}, {len(self.shards)} shards, {len(self)} samples)"


def _tfds_dir(name: str, data_dir: str | None) -> str:
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
      "~/tensorflow_datasets")
  how = (f"prepare it once (TensorFlow needed only for that): pip install tensorflow "
         f"tensorflow-datasets && tfds build {name.split('/')[0]} --data_dir={data_dir} "
         f"--file_format=array_record")
  base = os.path.join(data_dir, *name.split("/"))
  if not os.path.isdir(base):
    raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared under {data_dir} "
                            f"(TFDS_DATA_DIR); {how}")
  if os.path.exists(os.path.join(base, "dataset_info.json")):
    return base
  versions = sorted((d for d in os.listdir(base)
                     if os.path.exists(os.path.join(base, d, "dataset_info.json"))),
                    key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()))
  if not versions:
    raise FileNotFoundError(f"TFDS dataset {name!r} under {base} has no prepared version; {how}")
  return os.path.join(base, versions[-1])


class TfdsSource:
  """A prepared TFDS dataset read through tfds' array_record data source, with no TensorFlow.

  name: "coco_captions" or "name/config[/version]". caption_key: a feature path such as
  "captions/text" (a list picks one caption per index); image_key: the image feature."""

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None,
               image_key: str = "image", caption_key: str = "captions/text"):
    import tensorflow_datasets as tfds
    path = _tfds_dir(name, data_dir)
    builder = tfds.builder_from_directory(path)
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if file_format != "array_record":
      raise ValueError(f"TFDS dataset at {path} is stored as {builder.info.file_format}; random "
                       f"access needs --file_format=array_record when it is built")
    self.name, self.split = name, split
    self._ds = builder.as_data_source(split=split)
    self.image_key, self.caption_key = image_key, caption_key.split("/")

  def __len__(self):
    return len(self._ds)

  def __getitem__(self, index):
    index = int(index)
    key = f"{self.name}/{self.split}[{index}]"
    try:
      ex = self._ds[index]
    except Exception as e:  # decoding errors of one stored record  # noqa: BLE001
      return {"key": key, "caption": None, "skip": ("corrupt_image", repr(e)[:200])}
    caption = ex
    for k in self.caption_key:
      caption = caption.get(k) if isinstance(caption, dict) else None
    if isinstance(caption, (list, tuple, np.ndarray)):
      caption = caption[index % len(caption)] if len(caption) else None
    if isinstance(caption, bytes):
      caption = caption.decode("utf-8", errors="replace")
    return {"key": key, "caption": caption, "image": np.asarray(ex[self.image_key], np.uint8)}

  def __repr__(self):
    return f"TfdsSource({self.name}, split={self.split}, {len(self)} examples)"


def image_text_source(d):
  """The image–caption source named by data config `d` (d.source)."""
  if d.source == "scenes":
    from muse_jax.data import scenes
    return scenes.SceneSource(d.num_examples, resolution=d.scene_resolution, seed=d.seed,
                              split=d.split)
  if d.source == "folder":
    return FolderSource(d.path, d.captions_file or None)
  if d.source == "webdataset":
    return WebDatasetSource(d.path)
  if d.source == "tfds":
    return TfdsSource(d.path, d.split, d.tfds_data_dir or None, d.image_key, d.caption_key)
  raise ValueError(f"data.source={d.source!r}; image stages read 'scenes' (built-in), 'folder', "
                   f"'webdataset' or 'tfds'")
