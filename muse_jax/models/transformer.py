"""The Muse base model: a masked transformer over image tokens conditioned on text states."""
import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from muse_jax.models import layers
from muse_jax.parallel import axes


def pad_to_multiple(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Shape and numerics of a masked token transformer (built from config.model)."""
  codebook_size: int = 8192
  grid_size: int = 16           # image tokens form a grid_size x grid_size grid
  text_dim: int = 4096          # width of the text encoder's states
  hidden_size: int = 2048
  num_layers: int = 48
  num_heads: int = 16
  mlp_dim: int = 8192
  vocab_pad_multiple: int = 128
  remat: str = "none"           # layers.REMAT_POLICIES: none, dots, dots_no_batch, full
  dtype: str = "float32"        # compute dtype; params stay float32

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"model.hidden_size={self.hidden_size} must be divisible by "
                       f"model.num_heads={self.num_heads}")
    for f in ("codebook_size", "grid_size", "text_dim", "hidden_size", "num_layers", "num_heads",
              "mlp_dim", "vocab_pad_multiple"):
      if getattr(self, f) <= 0:
        raise ValueError(f"model.{f} must be positive, got {getattr(self, f)}")
    layers.remat_policy(self.remat)   # an unknown name fails here, at config time
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

  @property
  def mask_id(self) -> int:
    """The [MASK] token id: one past the codebook."""
    return self.codebook_size

  @property
  def input_vocab(self) -> int:
    """Embedding rows: codebook + [MASK], padded so a sharded vocab axis divides."""
    return pad_to_multiple(self.codebook_size + 1, self.vocab_pad_multiple)

  @property
  def output_vocab(self) -> int:
    return pad_to_multiple(self.codebook_size, self.vocab_pad_multiple)

  @property
  def seq_len(self) -> int:
    return self.grid_size * self.grid_size

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


class TokenEmbedding(nn.Module):
  """tokens_BxN (ids in [0, codebook] incl. [MASK]) -> embeddings_BxNxD plus learned 2D positions
  (a row and a column table, summed)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens_BxN):
    c = self.cfg
    table = self.param("token_embedding",
                       nn.with_logical_partitioning(nn.initializers.normal(layers.INIT_STD),
                                                    (axes.VOCAB, axes.EMBED)),
                       (c.input_vocab, c.hidden_size), jnp.float32)
    x_BxNxD = jnp.take(table.astype(c.compute_dtype), tokens_BxN, axis=0)
    pos_init = nn.with_logical_partitioning(nn.initializers.normal(layers.INIT_STD),
                                            (axes.LENGTH, axes.EMBED))
    row_GxD = self.param("pos_row", pos_init, (c.grid_size, c.hidden_size), jnp.float32)
    col_GxD = self.param("pos_col", pos_init, (c.grid_size, c.hidden_size), jnp.float32)
    pos_NxD = (row_GxD[:, None, :] + col_GxD[None, :, :]).reshape(c.seq_len, c.hidden_size)
    return x_BxNxD + pos_NxD.astype(c.compute_dtype)[None]


class TextProjection(nn.Module):
  """txt_BxTxC (encoder states) -> ctx_BxTxD, the transformer's width, layer-normed."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, txt_BxTxC):
    dt = self.cfg.compute_dtype
    ctx = layers.dense(self.cfg.hidden_size, (axes.TEXT_EMBED, axes.EMBED), dt,
                       name="proj")(txt_BxTxC.astype(dt))
    return layers.layer_norm(dt, "ln")(ctx)


class OutputHead(nn.Module):
  """x_BxNxD -> logits_BxNxV (float32) over the codebook; padded vocab entries get -inf-like logits."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x_BxNxD):
    c = self.cfg
    dt = c.compute_dtype
    h = layers.dense(c.hidden_size, (axes.EMBED, axes.MLP), dt, name="dense")(x_BxNxD)
    h = layers.layer_norm(dt, "ln", axis=axes.MLP)(nn.gelu(h))
    logits = layers.dense(c.output_vocab, (axes.MLP, axes.VOCAB), dt, name="logits")(h)
    logits = logits.astype(jnp.float32)
    if c.output_vocab != c.codebook_size:
      valid_V = jnp.arange(c.output_vocab) < c.codebook_size
      logits = jnp.where(valid_V, logits, jnp.finfo(jnp.float32).min)
    return nn.with_logical_constraint(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))


@flax.struct.dataclass
class TextCache:
  """What the image stream needs from the text, computed once per decode by
  `MaskedTransformer.encode_context`: the text mask and every layer's cross-attention keys and
  values, stacked on the layer axis (L layers, H heads of width E)."""
  txt_mask_BxT: jax.Array
  keys_LxBxTxHxE: jax.Array
  values_LxBxTxHxE: jax.Array

  @property
  def batch_size(self) -> int:
    return self.txt_mask_BxT.shape[0]


class MaskedTransformer(nn.Module):
  """Muse base model.

  tokens_BxN: image token ids with masked positions set to cfg.mask_id (N = grid_size^2).
  txt_BxTxC: text encoder states; txt_mask_BxT: valid text positions (all False = no text, the
  unconditional branch for classifier-free guidance). Returns logits_BxNxV, float32.

  For decoding, where the text is fixed over many steps, `encode_context` projects it and computes
  every layer's cross-attention keys/values once (a TextCache) and `logits_from_cache` runs the
  image stream against them; their composition equals `__call__`. Call them through
  `model.apply({"params": params}, ..., method="encode_context")`.
  """
  cfg: TransformerConfig

  def setup(self):
    c = self.cfg
    self.embed = TokenEmbedding(c)
    self.text_proj = TextProjection(c)
    self.blocks = layers.BlockStack(c.num_layers, c.num_heads, c.hidden_size // c.num_heads,
                                    c.mlp_dim, cross_attention=True, remat=c.remat,
                                    dtype=c.compute_dtype)
    self.ln_final = layers.layer_norm(c.compute_dtype)
    self.head = OutputHead(c)

  def __call__(self, tokens_BxN, txt_BxTxC, txt_mask_BxT):
    x_BxNxD = self.embed(tokens_BxN)
    x_BxNxD = self.blocks(x_BxNxD, self.text_proj(txt_BxTxC), txt_mask_BxT)
    return self.head(self.ln_final(x_BxNxD))

  def encode_context(self, txt_BxTxC, txt_mask_BxT) -> TextCache:
    """txt_BxTxC, txt_mask_BxT -> TextCache (keys/values in the compute dtype)."""
    keys, values = self.blocks(None, self.text_proj(txt_BxTxC), context_kv_only=True)
    return TextCache(txt_mask_BxT=txt_mask_BxT.astype(bool), keys_LxBxTxHxE=keys,
                     values_LxBxTxHxE=values)

  def logits_from_cache(self, tokens_BxN, cache: TextCache):
    """tokens_BxN and a TextCache of the same batch size -> logits_BxNxV, float32."""
    if cache.batch_size != tokens_BxN.shape[0]:
      raise ValueError(f"text cache holds {cache.batch_size} examples but tokens have "
                       f"{tokens_BxN.shape[0]}; encode the text of every row being decoded")
    x_BxNxD = self.embed(tokens_BxN)
    x_BxNxD = self.blocks(x_BxNxD, None, cache.txt_mask_BxT,
                          (cache.keys_LxBxTxHxE, cache.values_LxBxTxHxE))
    return self.head(self.ln_final(x_BxNxD))
