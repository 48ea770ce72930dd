"""Input pipelines: every source kind built on the fly with bad records mixed in."""
import io
import json
import os
import tarfile

import numpy as np
import PIL.Image
import pytest

from muse_jax.data import pipeline, preencoded, preprocess, sources, text
from muse_jax.train import loop
from tests import helpers

RES = 32


def _png(h, w, value=128, fmt="PNG") -> bytes:
  buf = io.BytesIO()
  rng = np.random.default_rng(value)
  PIL.Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
  return buf.getvalue()


GOOD = 12
BAD = {  # name -> (bytes, caption, expected skip reason)
    "zero.png": (b"", "zero bytes", "empty_file"),
    "text.png": (b"this is not an image", "not an image", "not_an_image"),
    "trunc.jpg": (_png(48, 48, 7, "JPEG")[:300], "truncated jpeg", "corrupt_image"),
    "small.png": (_png(16, 20, 8), "too small", "too_small"),
    "nocap.png": (_png(40, 40, 9), None, "missing_caption"),
    "blank.png": (_png(40, 40, 10), "   ", "empty_caption"),
}


def _records():
  recs = [(f"img{i}.png", _png(40 + i, 36 + 2 * i, i), f"caption number {i}")
          for i in range(GOOD)]
  recs += [(name, data, cap) for name, (data, cap, _) in BAD.items()]
  return recs


def _write_folder(root, fmt):
  os.makedirs(root, exist_ok=True)
  for name, data, _ in _records():
    with open(os.path.join(root, name), "wb") as f:
      f.write(data)
  rows = [(name, cap) for name, _, cap in _records()] + [("gone.png", "file is missing")]
  if fmt == "jsonl":
    with open(os.path.join(root, "captions.jsonl"), "w") as f:
      for name, cap in rows:
        f.write(json.dumps({"file": name, "caption": cap}) + "\n")
  else:
    with open(os.path.join(root, "captions.csv"), "w") as f:
      f.write("file,caption\n")
      for name, cap in rows:
        f.write(f"{name},{cap if cap is not None else ''}\n")


def _write_shards(root):
  os.makedirs(root, exist_ok=True)
  recs = _records()
  for s in range(2):
    with tarfile.open(os.path.join(root, f"{s:05d}.tar"), "w") as tar:
      for name, data, cap in recs[s::2]:
        key = os.path.splitext(name)[0]
        ext = os.path.splitext(name)[1]
        members = [(key + ext, data)]
        if cap is not None:
          members.append((key + ".txt", cap.encode()))
          members.append((key + ".json", json.dumps({"caption": cap}).encode()))
        for mname, mdata in members:
          info = tarfile.TarInfo(mname)
          info.size = len(mdata)
          tar.addfile(info, io.BytesIO(mdata))


def _word_tokenizer(path, max_length=6):
  import tokenizers
  from tokenizers import models, pre_tokenizers, processors
  words = ["[PAD]", "[UNK]", "[SEP]", "caption", "number", "file", "is", "missing"] + [
      str(i) for i in range(20)]
  tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, "[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="$A [SEP]",
                                                     special_tokens=[("[SEP]", 2)])
  tok.save(str(path))
  return text.CaptionTokenizer(str(path), max_length)


def _drain(source, tokenizer, batch=4, batches=4, **kw):
  counter = preprocess.SkipCounter(repr(source), give_up_after=len(source))
  proc = preprocess.ImageTextProcessor(preprocess.ImageConfig(resolution=RES, **kw), tokenizer,
                                       counter)
  it = pipeline.make_iterator(source, batch, seed=0, process_index=0, process_count=1,
                              transform=proc, counter=counter, num_threads=2)
  out = [next(it) for _ in range(batches)]
  return out, counter


@pytest.mark.parametrize("kind", ["jsonl", "csv", "webdataset"])
def test_image_sources_skip_and_count_bad_records(tmp_path, kind):
  if kind == "webdataset":
    _write_shards(tmp_path)
    source = sources.WebDatasetSource(str(tmp_path / "*.tar"))
  else:
    _write_folder(tmp_path, kind)
    source = sources.FolderSource(str(tmp_path))
  tokenizer = _word_tokenizer(tmp_path / "tok.json")
  # One epoch is 19 records (18 for webdataset: no sample without its file); 6 batches of 4
  # read them all at least once.
  batches, counter = _drain(source, tokenizer, batch=4, batches=6)
  for b in batches:
    assert b["image"].shape == (4, RES, RES, 3) and b["image"].dtype == np.float32
    assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
    assert b["txt_ids"].shape == (4, 6) and b["txt_mask"].dtype == bool
    assert b["txt_mask"][:, 0].all()
  snap = counter.snapshot()
  for _, _, reason in BAD.values():
    if kind == "csv" and reason == "missing_caption":
      reason = "empty_caption"          # CSV has no way to say "no caption" but an empty field
    assert snap[f"skipped/{reason}"] >= 1, (reason, snap)
  if kind != "webdataset":
    assert snap["skipped/missing_file"] >= 1
  assert tokenizer.truncated == 0


def test_caption_truncation_is_counted_not_fatal(tmp_path):
  tok = _word_tokenizer(tmp_path / "tok.json", max_length=4)
  ids, mask = tok("caption number 1 2 3 4 5")
  assert mask.all() and ids[-1] == 2         # keeps [SEP]
  ids, mask = tok("")
  assert mask.tolist() == [True, False, False, False]
  assert tok.truncated == 1


def test_everything_bad_is_an_error_naming_the_source(tmp_path):
  os.makedirs(tmp_path / "bad")
  with open(tmp_path / "bad" / "captions.jsonl", "w") as f:
    for i in range(5):
      (tmp_path / "bad" / f"{i}.png").write_bytes(b"")
      f.write(json.dumps({"file": f"{i}.png", "caption": "x"}) + "\n")
  source = sources.FolderSource(str(tmp_path / "bad"))
  with pytest.raises(preprocess.DataError, match=r"no usable example.*FolderSource.*empty_file"):
    _drain(source, None, batch=2, batches=1)


class _IndexSource:
  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"index": np.int64(i)}


def test_two_hosts_read_disjoint_rows_that_cover_the_data():
  n, batch = 64, 8
  seen = {}
  for p in range(2):
    it = pipeline.make_iterator(_IndexSource(n), batch, seed=3, process_index=p, process_count=2)
    seen[p] = [next(it)["index"] for _ in range(n // batch)]
  single = pipeline.make_iterator(_IndexSource(n), batch, seed=3, process_index=0,
                                  process_count=1)
  for b in range(n // batch):
    glob_b = next(single)["index"]
    np.testing.assert_array_equal(np.concatenate([seen[0][b], seen[1][b]]), glob_b)
  a, b = np.concatenate(seen[0]), np.concatenate(seen[1])
  assert not set(a) & set(b)
  assert sorted(np.concatenate([a, b])) == list(range(n))


def test_iterator_is_deterministic_and_resumes_exactly():
  it = pipeline.make_iterator(_IndexSource(50), 4, seed=1, process_index=0, process_count=1)
  first = [next(it)["index"] for _ in range(5)]
  state = it.get_state()
  rest = [next(it)["index"] for _ in range(20)]       # crosses an epoch boundary
  again = pipeline.make_iterator(_IndexSource(50), 4, seed=1, process_index=0, process_count=1)
  np.testing.assert_array_equal(next(again)["index"], first[0])
  resumed = pipeline.make_iterator(_IndexSource(50), 4, seed=1, process_index=0,
                                   process_count=1)
  resumed.set_state(state)
  np.testing.assert_array_equal(np.stack([next(resumed)["index"] for _ in range(20)]),
                                np.stack(rest))
  other = pipeline.make_iterator(_IndexSource(50), 4, seed=2, process_index=0, process_count=1)
  assert not np.array_equal(next(other)["index"], first[0])


def test_random_crop_and_flip_are_deterministic(tmp_path):
  _write_folder(tmp_path, "jsonl")
  a, _ = _drain(sources.FolderSource(str(tmp_path)), None, crop="random", flip=True)
  b, _ = _drain(sources.FolderSource(str(tmp_path)), None, crop="random", flip=True)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_tfds_source_without_tensorflow(tmp_path):
  import tensorflow_datasets as tfds

  class TinyCaptions(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(6):       # images go in already encoded: encoding would need TensorFlow
        yield i, {"image": io.BytesIO(_png(40, 48, i)),
                  "captions": {"text": [f"caption number {i}", f"caption {i}"]}}

  TinyCaptions(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  source = sources.TfdsSource("tiny_captions", "train", data_dir=str(tmp_path))
  assert len(source) == 6
  rec = source[1]
  assert rec["image"].shape == (40, 48, 3) and rec["caption"].startswith("caption")
  batches, counter = _drain(source, None, batch=2, batches=3)
  assert batches[0]["image"].shape == (2, RES, RES, 3) and counter.total() == 0
  with pytest.raises(FileNotFoundError, match=r"not prepared.*tfds build coco_captions"):
    sources.TfdsSource("coco_captions", data_dir=str(tmp_path))


def _write_preencoded(path, n, seq_len, text_dim, codebook, corrupt=0):
  rng = np.random.default_rng(0)
  with preencoded.PreEncodedWriter(path) as w:
    for i in range(n):
      length = int(rng.integers(1, 6))
      w.write(rng.integers(0, codebook, seq_len), rng.standard_normal((8, text_dim)),
              txt_mask=np.arange(8) < length, caption=f"example {i}")
  if corrupt:
    from array_record.python import array_record_module
    bad = array_record_module.ArrayRecordWriter(path.replace(".ar", "-bad.ar"), "group_size:1")
    for _ in range(corrupt):
      bad.write(b"\x00not msgpack")
    bad.close()


def test_preencoded_roundtrip_and_corrupt_records(tmp_path):
  _write_preencoded(str(tmp_path / "shard-0.ar"), 10, 16, 4, 64, corrupt=2)
  source = preencoded.PreEncodedSource(str(tmp_path / "*.ar"), text_length=8)
  assert len(source) == 12
  counter = preprocess.SkipCounter(repr(source), give_up_after=len(source))
  it = pipeline.make_iterator(source, 4, seed=0, process_index=0, process_count=1,
                              counter=counter)
  batches = [next(it) for _ in range(6)]
  b = batches[0]
  assert b["tokens"].shape == (4, 16) and b["tokens"].dtype == np.int32
  assert b["txt"].shape == (4, 8, 4) and b["txt_mask"].shape == (4, 8)
  assert np.all(b["txt"][~b["txt_mask"]] == 0)
  assert counter.snapshot()["skipped/corrupt_record"] >= 2
  with pytest.raises(FileNotFoundError, match="muse-encode"):
    preencoded.PreEncodedSource(str(tmp_path / "nothing-*.ar"), 8)


def test_base_stage_trains_from_preencoded_shards(tmp_path):
  config = helpers.tiny_base(**{"train.num_steps": 3, "train.log_every": 1})
  c = config.model
  _write_preencoded(str(tmp_path / "data" / "train-0.ar"), 32, c.grid_size ** 2, c.text_dim,
                    c.codebook_size)
  config.data.source = "preencoded"
  config.data.path = str(tmp_path / "data" / "*.ar")
  assert loop.run(config, tmp_path / "work").final_step == 3
  losses = helpers.read_losses(tmp_path / "work")
  assert sorted(losses) == [1, 2, 3] and all(np.isfinite(v) for v in losses.values())
