"""The pre-encoded format: VQ token ids and text states in array_record shards.

At scale the tokenizer and the text encoder run once over a dataset (`muse-encode`) and the base
and super-res stages train from their outputs. One record = one example, msgpack-serialised:
  "tokens":    uint16 [N]        token ids of the base (f16) tokenizer
  "tokens_hi": uint16 [M]        optional: ids of the super-res (f8) tokenizer, for stage superres
  "txt":       float16 [L, C]    text states of the L valid (non-padding) caption tokens
  "caption":   str               optional, for inspection
Text states are stored unpadded and padded back to data.text_length on read, with their mask.
"""
import glob
import os

import flax.serialization
import numpy as np
from array_record.python import array_record_module



class PreEncodedWriter:
  """Appends examples to one array_record shard; use as a context manager."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.path = path
    self._tmp = path + ".tmp"
    self._writer = array_record_module.ArrayRecordWriter(self._tmp, "group_size:1")
    self.count = 0

  def write(self, tokens, txt=None, txt_mask=None, tokens_hi=None, caption: str | None = None):
    """txt None: an image-only record (the first pass of muse-encode, which keeps the caption
    for the text pass); training reads only records with text states."""
    rec = {"tokens": np.asarray(tokens, np.uint16)}
    if txt is not None:
      txt = np.asarray(txt)
      if txt_mask is not None:
        txt = txt[np.asarray(txt_mask, bool)]
      rec["txt"] = txt.astype(np.float16)
    if tokens_hi is not None:
      rec["tokens_hi"] = np.asarray(tokens_hi, np.uint16)
    if caption is not None:
      rec["caption"] = caption
    self._writer.write(flax.serialization.msgpack_serialize(rec))
    self.count += 1

  def close(self):
    """Finishes the shard; it appears under its final name only when complete."""
    self._writer.close()
    os.replace(self._tmp, self.path)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *_):
    if exc_type is None:
      self.close()
    else:
      self._writer.close()
      os.remove(self._tmp)


class PreEncodedSource:
  """grain data source over pre-encoded shards -> {"tokens" int32 [N], "txt" float32 [T, C],
  "txt_mask" bool [T]} (+ "tokens_hi"; + "caption" str with keep_caption, where the shard has
  one); a record that does not decode is a skipped record."""

  def __init__(self, pattern: str, text_length: int, keep_caption: bool = False):
    self.paths = sorted(glob.glob(pattern))
    if not self.paths:
      raise FileNotFoundError(f"no pre-encoded shards match {pattern}; write them with "
                              f"`muse-encode`")
    import grain
    self._src = grain.sources.ArrayRecordDataSource(self.paths)
    self.pattern, self.text_length = pattern, int(text_length)
    self.keep_caption = keep_caption    # training batches hold arrays only; sample grids read it

  def __len__(self):
    return len(self._src)

  def __getitem__(self, index):
    key = f"{self.pattern}[{int(index)}]"
    try:
      rec = flax.serialization.msgpack_restore(self._src[int(index)])
      tokens = np.asarray(rec["tokens"], np.int32)
      txt = np.asarray(rec["txt"], np.float32)
    except Exception as e:  # noqa: BLE001  any undecodable record is skipped, not fatal
      return {"key": key, "skip": ("corrupt_record", repr(e)[:200])}
    n = min(len(txt), self.text_length)
    out_txt = np.zeros((self.text_length, txt.shape[-1]), np.float32)
    out_txt[:n] = txt[:n]
    mask = np.arange(self.text_length) < n
    out = {"tokens": tokens, "txt": out_txt, "txt_mask": mask}
    if "tokens_hi" in rec:
      out["tokens_hi"] = np.asarray(rec["tokens_hi"], np.int32)
    if self.keep_caption and "caption" in rec:
      out["caption"] = str(rec["caption"])
    return out

  def check(self, fields: dict, codebook_size: int, limit: int = 64) -> None:
    """Raises ValueError naming the field when the first decodable record does not fit the
    model: fields = {"tokens": N, "tokens_hi": M, "txt": C} (expected lengths / width)."""
    for index in range(min(len(self), limit)):
      rec = self[index]
      if "skip" in rec:
        continue
      for name, want in fields.items():
        if name not in rec:
          raise ValueError(f"{self.pattern}: records have no {name!r}; this stage needs it "
                           f"(muse-encode images --tokenizer-hi writes tokens_hi)")
        got = rec[name].shape[-1]
        if got != want:
          what = "text state width" if name == "txt" else f"number of {name} ids"
          raise ValueError(f"{self.pattern}: {what} is {got} but the model expects {want}; the "
                           f"shards were encoded for another tokenizer, text encoder or grid")
        if name != "txt" and rec[name].size and rec[name].max() >= codebook_size:
          raise ValueError(f"{self.pattern}: {name} holds id {rec[name].max()} but the model has "
                           f"codebook_size={codebook_size}")
      return

  def __repr__(self):
    return f"PreEncodedSource({self.pattern}, {len(self)} examples)"

