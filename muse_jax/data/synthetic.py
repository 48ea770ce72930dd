"""A deterministic synthetic pre-tokenized source: image token ids plus text states.

Stands in for encoded image-caption data in tests and benchmarks. Each example belongs to one of
`num_classes` classes; its text states are the class's fixed random states plus noise, and its
tokens are the class's fixed token grid with a fraction of positions resampled, so a model can
learn p(tokens | text). Random access and deterministic from (seed, index): a grain data source.
"""
import numpy as np


class SyntheticTokenSource:
  """grain RandomAccessDataSource of {"tokens": [N] int32, "txt": [T, C] float32, "txt_mask": [T] bool}."""

  def __init__(self, num_examples: int, seq_len: int, codebook_size: int, text_length: int,
               text_dim: int, num_classes: int = 16, noise: float = 0.1, seed: int = 0):
    if num_examples <= 0:
      raise ValueError(f"synthetic source needs num_examples > 0, got {num_examples}")
    self._n = num_examples
    self.seq_len, self.codebook_size = seq_len, codebook_size
    self.text_length, self.text_dim = text_length, text_dim
    self._noise, self._seed = noise, seed
    rng = np.random.default_rng(seed)
    self._class_tokens = rng.integers(0, codebook_size, (num_classes, seq_len), dtype=np.int32)
    self._class_txt = rng.standard_normal((num_classes, text_length, text_dim)).astype(np.float32)
    self._class_len = rng.integers(max(1, text_length // 4), text_length + 1, num_classes)

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    rng = np.random.default_rng((self._seed, 1, index))
    c = index % len(self._class_tokens)
    tokens = self._class_tokens[c].copy()
    resample = rng.random(self.seq_len) < self._noise
    tokens[resample] = rng.integers(0, self.codebook_size, int(resample.sum()), dtype=np.int32)
    length = int(self._class_len[c])
    txt = self._class_txt[c] + 0.1 * rng.standard_normal(self._class_txt[c].shape, np.float32)
    txt_mask = np.arange(self.text_length) < length
    txt[~txt_mask] = 0.0
    return {"tokens": tokens, "txt": txt, "txt_mask": txt_mask}

  def __repr__(self):
    return (f"SyntheticTokenSource(n={self._n}, seq_len={self.seq_len}, text=({self.text_length}, "
            f"{self.text_dim}), seed={self._seed})")
