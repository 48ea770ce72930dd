"""The T5 encoder (original ReLU T5 and v1.1 / FLAN gated-GELU, any size up to XXL) in flax.linen.

Matches Hugging Face's T5EncoderModel: token embedding (no scaling), pre-norm blocks with T5's RMS
layer norm (no mean, no bias), attention without 1/sqrt(d) scaling plus a bucketed relative
position bias that is computed once (HF stores it in the first layer) and shared by every layer,
ReLU or gated MLPs without biases, and a final RMS norm.

Numerics: params float32; matmuls in `T5Config.dtype` (float32 or bfloat16); norms, residual
stream, attention logits and softmax in float32; the returned states are float32. On TPU a float32
run multiplies in bfloat16 passes unless `jax.default_matmul_precision("highest")` is set.

Layers run under nn.scan (params stacked on a leading "layers" axis), so XXL compiles one block.
"""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.models import layers
from muse_jax.parallel import axes

# Activation names as Hugging Face configs spell them.
ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "silu": nn.silu,
    "swish": nn.silu,
}


def activation(name: str):
  """A Hugging Face activation name -> the function."""
  if name not in ACTIVATIONS:
    raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shape and numerics of a T5 encoder; field names follow Hugging Face's config.json."""
  vocab_size: int = 32128
  d_model: int = 4096
  d_kv: int = 64
  d_ff: int = 10240
  num_layers: int = 24
  num_heads: int = 64
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  feed_forward_proj: str = "gated-gelu"   # "relu" (original T5) or "gated-gelu" (v1.1, FLAN)
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"                  # compute dtype; params stay float32

  def __post_init__(self):
    for f in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
              "relative_attention_num_buckets", "relative_attention_max_distance"):
      if getattr(self, f) <= 0:
        raise ValueError(f"T5 config {f} must be positive, got {getattr(self, f)}")
    if self.relative_attention_num_buckets < 4:
      raise ValueError("T5 config relative_attention_num_buckets must be >= 4, got "
                       f"{self.relative_attention_num_buckets}")
    parts = self.feed_forward_proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
      raise ValueError(f"T5 config feed_forward_proj must be '<act>' or 'gated-<act>', got "
                       f"{self.feed_forward_proj!r}")
    activation(self.activation)
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"T5 dtype must be float32 or bfloat16, got {self.dtype!r}")

  @property
  def gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def activation(self) -> str:
    # As in transformers: "gated-gelu" means the tanh approximation (gelu_new).
    if self.feed_forward_proj == "gated-gelu":
      return "gelu_new"
    return self.feed_forward_proj.split("-")[-1]

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @classmethod
  def from_hf(cls, hf: dict, dtype: str = "float32") -> "T5Config":
    """From a Hugging Face T5 config.json dict (encoder fields only)."""
    if hf.get("model_type", "t5") not in ("t5", "mt5"):
      raise ValueError(f"config.json has model_type {hf.get('model_type')!r}, expected 't5' or "
                       "'mt5' (umT5's per-layer position biases are not supported)")
    names = [f.name for f in dataclasses.fields(cls) if f.name != "dtype"]
    missing = [n for n in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
               if n not in hf]
    if missing:
      raise ValueError(f"T5 config.json lacks {missing}")
    return cls(**{n: hf[n] for n in names if n in hf}, dtype=dtype)


XXL = T5Config()  # T5 v1.1 / FLAN-T5 XXL encoder: 4.76B parameters incl. the embedding


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 bucket of (key position - query position): int32 [length, length].

  Half the buckets are for keys after the query; within each half, distances below a quarter of
  the buckets are exact and larger ones log-spaced up to max_distance (float32 maths as in HF).
  """
  rel_QxK = np.arange(length)[None, :] - np.arange(length)[:, None]
  half = num_buckets // 2
  out = (rel_QxK > 0).astype(np.int64) * half
  dist = np.abs(rel_QxK)
  max_exact = half // 2
  with np.errstate(divide="ignore"):
    log_f = (np.log(dist.astype(np.float32) / np.float32(max_exact))
             / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact))
  # Truncate the float part before adding max_exact, as HF does (adding first can round up).
  large = np.minimum(max_exact + np.where(dist < max_exact, 0, log_f).astype(np.int64), half - 1)
  return (out + np.where(dist < max_exact, dist, large)).astype(np.int32)


class RMSNorm(nn.Module):
  """T5 layer norm: x_...xD -> x / rms(x) * scale in float32 (no mean subtraction, no bias)."""
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,)),
                       (x.shape[-1],), jnp.float32)
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps) * scale


class T5SelfAttention(nn.Module):
  """x_BxTxD, position bias bias_HxTxT (float32), mask_BxT (valid keys) -> y_BxTxD.

  No 1/sqrt(d) scaling (T5 folds it into the initialisation)."""
  num_heads: int
  head_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD, bias_HxTxT, mask_BxT):
    d = x_BxTxD.shape[-1]
    qkv_axes = (axes.EMBED, axes.HEADS, axes.HEAD_DIM)
    feats = (self.num_heads, self.head_dim)
    proj = lambda name: layers.dense(feats, qkv_axes, self.dtype, name=name, use_bias=False)
    q_BxTxHxK = proj("query")(x_BxTxD)
    k_BxSxHxK = proj("key")(x_BxTxD)
    v_BxSxHxK = proj("value")(x_BxTxD)
    logits_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK,
                                preferred_element_type=jnp.float32) + bias_HxTxT[None]
    logits_BxHxTxS = jnp.where(mask_BxT[:, None, None, :], logits_BxHxTxS,
                               jnp.finfo(jnp.float32).min)
    probs_BxHxTxS = jax.nn.softmax(logits_BxHxTxS, axis=-1).astype(self.dtype)
    out_BxTxHxK = jnp.einsum("bhts,bshk->bthk", probs_BxHxTxS, v_BxSxHxK)
    return layers.dense(d, (axes.HEADS, axes.HEAD_DIM, axes.EMBED), self.dtype, in_dims=2,
                        name="out", use_bias=False)(out_BxTxHxK)


class T5Mlp(nn.Module):
  """x_BxTxD -> act(x wi) wo, or gated: (act(x wi_0) * (x wi_1)) wo; no biases. Same shape."""
  d_ff: int
  gated: bool
  activation: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD):
    d = x_BxTxD.shape[-1]
    act = activation(self.activation)
    up = lambda name: layers.dense(self.d_ff, (axes.EMBED, axes.MLP), self.dtype, name=name,
                                   use_bias=False)(x_BxTxD)
    if self.gated:
      h_BxTxF = act(up("wi_0")) * up("wi_1")
    else:
      h_BxTxF = act(up("wi"))
    h_BxTxF = nn.with_logical_constraint(h_BxTxF, (axes.BATCH, axes.TEXT_LENGTH, axes.MLP))
    return layers.dense(d, (axes.MLP, axes.EMBED), self.dtype, name="wo", use_bias=False)(h_BxTxF)


class T5Block(nn.Module):
  """Pre-norm self-attention + MLP. x_BxTxD (float32 residual stream), bias_HxTxT, mask_BxT ->
  (x_BxTxD, None) (scannable)."""
  cfg: T5Config

  @nn.compact
  def __call__(self, x_BxTxD, bias_HxTxT, mask_BxT):
    c, dt = self.cfg, self.cfg.compute_dtype
    act_axes = (axes.BATCH, axes.TEXT_LENGTH, axes.TEXT_EMBED)
    x_BxTxD = nn.with_logical_constraint(x_BxTxD, act_axes)
    h = RMSNorm(c.layer_norm_epsilon, name="attn_norm")(x_BxTxD).astype(dt)
    x_BxTxD = x_BxTxD + T5SelfAttention(c.num_heads, c.d_kv, dt, name="attn")(h, bias_HxTxT,
                                                                              mask_BxT)
    h = RMSNorm(c.layer_norm_epsilon, name="mlp_norm")(x_BxTxD).astype(dt)
    x_BxTxD = x_BxTxD + T5Mlp(c.d_ff, c.gated, c.activation, dt, name="mlp")(h)
    return nn.with_logical_constraint(x_BxTxD, act_axes), None


class T5Encoder(nn.Module):
  """ids_BxT (int32), mask_BxT (bool, valid tokens) -> states_BxTxD float32 (final-normed).

  Positions where mask is False are computed like Hugging Face does (they attend to the valid
  tokens) but are not attended to; callers zero or ignore them.
  """
  cfg: T5Config

  @nn.compact
  def __call__(self, ids_BxT, mask_BxT):
    c = self.cfg
    init = nn.initializers.normal(layers.INIT_STD)
    table_VxD = self.param("token_embed", nn.with_logical_partitioning(init, (axes.VOCAB, axes.EMBED)),
                           (c.vocab_size, c.d_model), jnp.float32)
    x_BxTxD = jnp.take(table_VxD, ids_BxT, axis=0)
    # One bias table for all layers (HF keeps it in layer 0 and passes it on). Buckets: unsharded.
    relpos_NxH = self.param("relpos_bias", nn.with_logical_partitioning(init, (None, axes.HEADS)),
                            (c.relative_attention_num_buckets, c.num_heads), jnp.float32)
    buckets_TxT = relative_position_buckets(ids_BxT.shape[1], c.relative_attention_num_buckets,
                                            c.relative_attention_max_distance)
    bias_HxTxT = jnp.transpose(jnp.take(relpos_NxH, buckets_TxT, axis=0), (2, 0, 1))
    stack = nn.scan(T5Block, variable_axes={"params": 0}, split_rngs={"params": True},
                    in_axes=(nn.broadcast, nn.broadcast), length=c.num_layers,
                    metadata_params={nn.PARTITION_NAME: axes.LAYERS})
    x_BxTxD, _ = stack(c, name="layers")(x_BxTxD, bias_HxTxT, mask_BxT)
    return RMSNorm(c.layer_norm_epsilon, name="final_norm")(x_BxTxD)
