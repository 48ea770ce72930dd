"""A deterministic synthetic source of (low-res ids, high-res ids, text states) for stage superres.

Stands in for pre-encoded pairs in tests. The high-res ids and the text states come from
`synthetic.SyntheticTokenSource` (class grids with resampled positions, class text plus noise); the
low-res ids are the high-res grid subsampled at the nearest cell (mod the low-res codebook), so
they carry part of the high-res answer, as a real low-res tokenization does.
"""
import numpy as np

from muse_jax.data import synthetic


class SyntheticPairSource:
  """grain RandomAccessDataSource of {"tokens_lo": [N] int32, "tokens": [M] int32,
  "txt": [T, C] float32, "txt_mask": [T] bool}; N = lo_grid^2, M = hi_grid^2."""

  def __init__(self, num_examples: int, lo_grid_size: int, hi_grid_size: int, codebook_size: int,
               lo_codebook_size: int, text_length: int, text_dim: int, seed: int = 0):
    if hi_grid_size <= lo_grid_size:
      raise ValueError(f"synthetic pairs need hi_grid_size > lo_grid_size, got {hi_grid_size} "
                       f"and {lo_grid_size}")
    self._hi = synthetic.SyntheticTokenSource(
        num_examples=num_examples, seq_len=hi_grid_size * hi_grid_size,
        codebook_size=codebook_size, text_length=text_length, text_dim=text_dim, seed=seed)
    self.lo_grid_size, self.lo_codebook_size = lo_grid_size, lo_codebook_size
    cells = (np.arange(lo_grid_size) * hi_grid_size) // lo_grid_size
    self._lo_index = (cells[:, None] * hi_grid_size + cells[None, :]).reshape(-1)

  def __len__(self) -> int:
    return len(self._hi)

  def __getitem__(self, index: int) -> dict:
    ex = self._hi[index]
    tokens_lo = ex["tokens"][self._lo_index] % self.lo_codebook_size
    return {"tokens_lo": tokens_lo.astype(np.int32), "tokens": ex["tokens"], "txt": ex["txt"],
            "txt_mask": ex["txt_mask"]}

  def __repr__(self):
    return (f"SyntheticPairSource({self._hi!r}, lo_grid={self.lo_grid_size}, "
            f"lo_codebook={self.lo_codebook_size})")
