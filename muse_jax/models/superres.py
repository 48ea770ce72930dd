"""The Muse super-resolution model: high-res token ids given low-res token ids and text states.

The low-res ids (lo_grid x lo_grid, learned 2D positions) pass through self-attention layers; their
outputs, concatenated along the sequence with the projected text states, are the context that the
masked high-res ids (hi_grid x hi_grid, [MASK] = codebook_size) cross-attend to in every layer of
the high-res stack (self-attention, cross-attention, MLP). Dropping the text (all-False text mask)
leaves the low-res part of the context: the unconditional branch for classifier-free guidance.

With `lo_grid_add` (not in the paper) each high-res position also adds a projection of the
low-res stream's output at the low-res cell it lies in (nearest upsampling), so the model need not
learn from data which low-res token sits under which high-res one; the cross-attention stays.

A decoder encodes the context once (`encode_context`) and calls `logits_from_context` at every
step; `__call__` is the composition of the two.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from muse_jax.models import layers
from muse_jax.models.transformer import (OutputHead, TextProjection, TokenEmbedding,
                                         TransformerConfig, pad_to_multiple)
from muse_jax.parallel import axes


@dataclasses.dataclass(frozen=True)
class SuperResConfig:
  """Shape and numerics of the super-res transformer (built from config.model)."""
  codebook_size: int = 8192     # high-res tokenizer codebook: the output vocabulary
  lo_codebook_size: int = 8192  # low-res (base) tokenizer codebook
  lo_grid_size: int = 16        # low-res ids form a lo_grid_size x lo_grid_size grid
  hi_grid_size: int = 64
  text_dim: int = 4096          # width of the text encoder's states
  hidden_size: int = 576
  lo_num_layers: int = 16       # self-attention layers over the low-res ids
  hi_num_layers: int = 32       # self + cross-attention layers over the high-res ids
  num_heads: int = 8
  mlp_dim: int = 2304
  vocab_pad_multiple: int = 128
  remat: str = "none"           # layers.REMAT_POLICIES: none, dots, dots_no_batch, full
  dtype: str = "float32"        # compute dtype; params stay float32
  lo_grid_add: bool = False     # add the low-res output under each high-res position (above)
  # High-res self-attention: "full" (every token attends to all hi_seq_len) or "multi_axis"
  # (the paper's "multi-axis Transformer layers": attention within attn_block x attn_block
  # blocks, then across a dilated attn_grid x attn_grid grid; layers.WindowAttention).
  hi_attention: str = "full"
  attn_block: int = 8
  attn_grid: int = 8

  def __post_init__(self):
    for f in ("codebook_size", "lo_codebook_size", "lo_grid_size", "hi_grid_size", "text_dim",
              "hidden_size", "lo_num_layers", "hi_num_layers", "num_heads", "mlp_dim",
              "vocab_pad_multiple"):
      if getattr(self, f) <= 0:
        raise ValueError(f"model.{f} must be positive, got {getattr(self, f)}")
    if self.hi_grid_size <= self.lo_grid_size:
      raise ValueError(f"model.hi_grid_size={self.hi_grid_size} must be larger than "
                       f"model.lo_grid_size={self.lo_grid_size}: super-res maps a low-res token "
                       f"grid to a finer one")
    if self.lo_grid_add and self.hi_grid_size % self.lo_grid_size:
      raise ValueError(f"model.lo_grid_add needs model.hi_grid_size={self.hi_grid_size} to be a "
                       f"multiple of model.lo_grid_size={self.lo_grid_size} (each high-res "
                       f"position lies in one low-res cell)")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"model.hidden_size={self.hidden_size} must be divisible by "
                       f"model.num_heads={self.num_heads}")
    if self.hi_attention not in ("full", "multi_axis"):
      raise ValueError(f"model.hi_attention must be 'full' or 'multi_axis', got "
                       f"{self.hi_attention!r}")
    if self.hi_attention == "multi_axis":
      for f in ("attn_block", "attn_grid"):
        size = getattr(self, f)
        if size <= 0 or self.hi_grid_size % size:
          raise ValueError(f"model.{f}={size} must divide model.hi_grid_size="
                           f"{self.hi_grid_size}: multi-axis attention splits the "
                           f"{self.hi_grid_size}x{self.hi_grid_size} high-res grid into "
                           f"{f[5:]}s of {size}x{size} tokens")
    layers.remat_policy(self.remat)   # an unknown name fails here, at config time
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

  @property
  def mask_id(self) -> int:
    """The high-res [MASK] id: one past the high-res codebook."""
    return self.codebook_size

  @property
  def lo_seq_len(self) -> int:
    return self.lo_grid_size * self.lo_grid_size

  @property
  def hi_seq_len(self) -> int:
    return self.hi_grid_size * self.hi_grid_size

  @property
  def output_vocab(self) -> int:
    return pad_to_multiple(self.codebook_size, self.vocab_pad_multiple)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def _stream(self, codebook_size: int, grid_size: int, num_layers: int) -> TransformerConfig:
    return TransformerConfig(
        codebook_size=codebook_size, grid_size=grid_size, text_dim=self.text_dim,
        hidden_size=self.hidden_size, num_layers=num_layers, num_heads=self.num_heads,
        mlp_dim=self.mlp_dim, vocab_pad_multiple=self.vocab_pad_multiple, remat=self.remat,
        dtype=self.dtype)

  @property
  def lo_stream(self) -> TransformerConfig:
    """The low-res stream's shapes, for the base model's embedding module."""
    return self._stream(self.lo_codebook_size, self.lo_grid_size, self.lo_num_layers)

  @property
  def hi_stream(self) -> TransformerConfig:
    """The high-res stream's shapes, for the base model's embedding, text and output modules."""
    return self._stream(self.codebook_size, self.hi_grid_size, self.hi_num_layers)


class SuperResTransformer(nn.Module):
  """Muse super-res model.

  tokens_hi_BxM: high-res ids with masked positions set to cfg.mask_id (M = hi_grid_size^2).
  tokens_lo_BxN: low-res ids in [0, lo_codebook_size) (N = lo_grid_size^2), all known.
  txt_BxTxC / txt_mask_BxT: text encoder states and their valid positions (all False = no text).
  Returns logits_BxMxV, float32 (V = output_vocab; padded entries get -inf-like logits).
  """
  cfg: SuperResConfig

  def setup(self):
    c = self.cfg
    dt = c.compute_dtype
    self.lo_embed = TokenEmbedding(c.lo_stream)
    self.lo_blocks = layers.BlockStack(c.lo_num_layers, c.num_heads, c.head_dim, c.mlp_dim,
                                       cross_attention=False, remat=c.remat, dtype=dt)
    self.lo_ln_final = layers.layer_norm(dt)
    self.text_proj = TextProjection(c.hi_stream)
    self.hi_embed = TokenEmbedding(c.hi_stream)
    if c.lo_grid_add:
      self.lo_to_hi = layers.dense(c.hidden_size, (axes.EMBED, axes.MLP), dt, name="lo_to_hi")
    multi_axis = ((c.hi_grid_size, c.attn_block, c.attn_grid)
                  if c.hi_attention == "multi_axis" else ())
    self.hi_blocks = layers.BlockStack(c.hi_num_layers, c.num_heads, c.head_dim, c.mlp_dim,
                                       cross_attention=True, remat=c.remat, dtype=dt,
                                       multi_axis=multi_axis)
    self.ln_final = layers.layer_norm(dt)
    self.head = OutputHead(c.hi_stream)

  def encode_context(self, tokens_lo_BxN, txt_BxTxC, txt_mask_BxT):
    """-> (ctx_BxSxD, ctx_mask_BxS), S = N + T: the low-res stream's outputs (always valid) then
    the projected text states (valid where txt_mask_BxT)."""
    b, n = tokens_lo_BxN.shape
    if n != self.cfg.lo_seq_len:
      raise ValueError(f"tokens_lo has {n} positions but model.lo_grid_size="
                       f"{self.cfg.lo_grid_size} expects {self.cfg.lo_seq_len}")
    lo_BxNxD = self.lo_embed(tokens_lo_BxN)
    lo_BxNxD = self.lo_ln_final(self.lo_blocks(lo_BxNxD))
    txt_BxTxD = self.text_proj(txt_BxTxC)
    ctx_BxSxD = jnp.concatenate([lo_BxNxD, txt_BxTxD.astype(lo_BxNxD.dtype)], axis=1)
    ctx_BxSxD = nn.with_logical_constraint(ctx_BxSxD, (axes.BATCH, axes.LENGTH, axes.EMBED))
    ctx_mask_BxS = jnp.concatenate([jnp.ones((b, n), jnp.bool_), txt_mask_BxT.astype(jnp.bool_)],
                                   axis=1)
    return ctx_BxSxD, ctx_mask_BxS

  def logits_from_context(self, tokens_hi_BxM, ctx_BxSxD, ctx_mask_BxS):
    """High-res ids and an encoded context -> logits_BxMxV (float32)."""
    m = tokens_hi_BxM.shape[1]
    if m != self.cfg.hi_seq_len:
      raise ValueError(f"tokens_hi has {m} positions but model.hi_grid_size="
                       f"{self.cfg.hi_grid_size} expects {self.cfg.hi_seq_len}")
    x_BxMxD = self.hi_embed(tokens_hi_BxM)
    c = self.cfg
    if c.lo_grid_add:      # the first lo_seq_len context entries are the low-res stream's outputs
      b, g, r = x_BxMxD.shape[0], c.lo_grid_size, c.hi_grid_size // c.lo_grid_size
      lo_BxgxgxD = ctx_BxSxD[:, :c.lo_seq_len].reshape(b, g, g, -1)
      up_BxMxD = jnp.repeat(jnp.repeat(lo_BxgxgxD, r, axis=1), r, axis=2).reshape(b, m, -1)
      x_BxMxD = x_BxMxD + self.lo_to_hi(up_BxMxD).astype(x_BxMxD.dtype)
    x_BxMxD = self.hi_blocks(x_BxMxD, ctx_BxSxD, ctx_mask_BxS)
    return self.head(self.ln_final(x_BxMxD))

  def __call__(self, tokens_hi_BxM, tokens_lo_BxN, txt_BxTxC, txt_mask_BxT):
    ctx_BxSxD, ctx_mask_BxS = self.encode_context(tokens_lo_BxN, txt_BxTxC, txt_mask_BxT)
    return self.logits_from_context(tokens_hi_BxM, ctx_BxSxD, ctx_mask_BxS)
