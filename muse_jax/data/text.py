"""Caption tokenisation to fixed-length ids with a padding mask.

Two kinds of tokenizer files, as shipped with text encoders:
  tokenizer.json (Hugging Face `tokenizers`; BERT/MiniLM, T5 fast tokenizers)
  spiece.model   (sentencepiece; original T5 snapshots)
Over-long captions are truncated (keeping the end-of-sequence token) and counted, never an error.
"""
import os
import threading

import numpy as np


def _first_id(token_to_id, tokens, default):
  """The id of the first of `tokens` that the vocabulary has, else `default`."""
  for token in tokens:
    token_id = token_to_id(token)
    if token_id is not None:
      return token_id
  return default


class CaptionTokenizer:
  """caption str -> (ids [max_length] int32, mask [max_length] bool)."""

  def __init__(self, path: str, max_length: int):
    if max_length <= 1:
      raise ValueError(f"text max_length must be > 1, got {max_length}")
    if os.path.isdir(path):
      for name in ("tokenizer.json", "spiece.model"):
        if os.path.exists(os.path.join(path, name)):
          path = os.path.join(path, name)
          break
      else:
        raise FileNotFoundError(f"no tokenizer.json or spiece.model in {path}")
    if not os.path.exists(path):
      raise FileNotFoundError(f"tokenizer file {path} does not exist; expected a tokenizer.json "
                              f"or a sentencepiece .model file")
    self.path, self.max_length = path, int(max_length)
    self._lock = threading.Lock()
    self.truncated = 0
    if path.endswith(".json"):
      import tokenizers
      self._tok = tokenizers.Tokenizer.from_file(path)
      self._tok.no_truncation()
      self._tok.no_padding()
      self.pad_id = _first_id(self._tok.token_to_id, ("[PAD]", "<pad>"), default=0)
      self._encode = lambda s: self._tok.encode(s).ids
      # The post-processor appends [SEP] (BERT) or </s> (T5); truncation keeps it last.
      self._eos = _first_id(self._tok.token_to_id, ("[SEP]", "</s>"), default=None)
    elif path.endswith(".model"):
      import sentencepiece
      self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
      self.pad_id = max(self._sp.pad_id(), 0)
      self._eos = self._sp.eos_id() if self._sp.eos_id() >= 0 else None
      self._encode = lambda s: self._sp.encode(s) + ([self._eos] if self._eos is not None else [])
    else:
      raise ValueError(f"tokenizer file {path} is neither a tokenizer.json nor a .model file")

  def __call__(self, caption: str):
    if not isinstance(caption, str):
      raise TypeError(f"a caption must be a str, got {type(caption).__name__}: {caption!r:.80}")
    ids = list(self._encode(caption))
    if len(ids) > self.max_length:
      with self._lock:
        self.truncated += 1
      keep_eos = self._eos is not None and ids[-1] == self._eos
      ids = ids[: self.max_length - 1] + [ids[-1]] if keep_eos else ids[: self.max_length]
    out = np.full(self.max_length, self.pad_id, np.int32)
    out[: len(ids)] = ids
    mask = np.zeros(self.max_length, bool)
    mask[: len(ids)] = True
    return out, mask
