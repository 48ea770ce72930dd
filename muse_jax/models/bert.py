"""A BERT encoder in flax.linen (post-norm, absolute positions), for the bundled MiniLM-L6 default.

Matches Hugging Face's BertModel last_hidden_state with token_type_ids = 0: word + position +
type embeddings, LayerNorm, then blocks of LN(x + attention(x)), LN(x + MLP(x)).

Numerics: params float32; matmuls in `BertConfig.dtype`; LayerNorms, residual stream and softmax
in float32; the returned states are float32.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from muse_jax.models import layers, t5
from muse_jax.parallel import axes


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Shape and numerics of a BERT encoder; defaults are MiniLM-L6-H384 (all-MiniLM-L6-v2)."""
  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  dtype: str = "float32"

  def __post_init__(self):
    for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "max_position_embeddings", "type_vocab_size"):
      if getattr(self, f) <= 0:
        raise ValueError(f"BERT config {f} must be positive, got {getattr(self, f)}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"BERT config hidden_size={self.hidden_size} must be divisible by "
                       f"num_attention_heads={self.num_attention_heads}")
    t5.activation(self.hidden_act)
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"BERT dtype must be float32 or bfloat16, got {self.dtype!r}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @classmethod
  def from_hf(cls, hf: dict, dtype: str = "float32") -> "BertConfig":
    """From a Hugging Face BERT config.json dict."""
    if hf.get("model_type", "bert") != "bert":
      raise ValueError(f"config.json has model_type {hf.get('model_type')!r}, expected 'bert'")
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError("only absolute position embeddings are supported, config.json has "
                       f"position_embedding_type={hf['position_embedding_type']!r}")
    names = [f.name for f in dataclasses.fields(cls) if f.name != "dtype"]
    return cls(**{n: hf[n] for n in names if n in hf}, dtype=dtype)


MINILM_L6 = BertConfig()


def _layer_norm(eps, name):
  """LayerNorm in float32 (input and output) with logical axes on scale and bias."""
  return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED,)))


class BertMlp(nn.Module):
  """x_BxTxD -> act(x wi + b) wo + b, same shape."""
  intermediate_size: int
  hidden_act: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD):
    d = x_BxTxD.shape[-1]
    h_BxTxF = layers.dense(self.intermediate_size, (axes.EMBED, axes.MLP), self.dtype,
                           name="wi")(x_BxTxD)
    h_BxTxF = t5.activation(self.hidden_act)(h_BxTxF.astype(jnp.float32)).astype(self.dtype)
    h_BxTxF = nn.with_logical_constraint(h_BxTxF, (axes.BATCH, axes.TEXT_LENGTH, axes.MLP))
    return layers.dense(d, (axes.MLP, axes.EMBED), self.dtype, name="wo")(h_BxTxF)


class BertBlock(nn.Module):
  """Post-norm block: x_BxTxD, mask_BxT -> (x_BxTxD, None) (scannable)."""
  cfg: BertConfig

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxT):
    c, dt = self.cfg, self.cfg.compute_dtype
    act_axes = (axes.BATCH, axes.TEXT_LENGTH, axes.TEXT_EMBED)
    x_BxTxD = nn.with_logical_constraint(x_BxTxD, act_axes)
    y = layers.MultiHeadAttention(c.num_attention_heads, c.head_dim, dt, name="attn")(
        x_BxTxD, x_BxTxD, mask_BxT)
    x_BxTxD = _layer_norm(c.layer_norm_eps, "attn_norm")(x_BxTxD + y)
    y = BertMlp(c.intermediate_size, c.hidden_act, dt, name="mlp")(x_BxTxD)
    x_BxTxD = _layer_norm(c.layer_norm_eps, "mlp_norm")(x_BxTxD + y)
    return nn.with_logical_constraint(x_BxTxD, act_axes), None


class BertEncoder(nn.Module):
  """ids_BxT (int32), mask_BxT (bool, valid tokens) -> states_BxTxD float32 (last hidden state)."""
  cfg: BertConfig

  @nn.compact
  def __call__(self, ids_BxT, mask_BxT):
    c = self.cfg
    t = ids_BxT.shape[1]
    if t > c.max_position_embeddings:
      raise ValueError(f"text length {t} exceeds the BERT position table "
                       f"({c.max_position_embeddings}); lower text_encoder.max_length")
    init = nn.initializers.normal(layers.INIT_STD)
    emb = lambda name, names, rows: self.param(
        name, nn.with_logical_partitioning(init, names), (rows, c.hidden_size), jnp.float32)
    word_VxD = emb("word_embed", (axes.VOCAB, axes.EMBED), c.vocab_size)
    pos_PxD = emb("pos_embed", (axes.TEXT_LENGTH, axes.EMBED), c.max_position_embeddings)
    type_YxD = emb("type_embed", (None, axes.EMBED), c.type_vocab_size)
    x_BxTxD = jnp.take(word_VxD, ids_BxT, axis=0) + type_YxD[0] + pos_PxD[:t]
    x_BxTxD = _layer_norm(c.layer_norm_eps, "embed_norm")(x_BxTxD)
    stack = nn.scan(BertBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                    in_axes=nn.broadcast, length=c.num_hidden_layers,
                    metadata_params={nn.PARTITION_NAME: axes.LAYERS})
    x_BxTxD, _ = stack(c, name="layers")(x_BxTxD, mask_BxT)
    return x_BxTxD
