"""Fully convolutional VQGAN tokenizer: encoder, vector quantizer, decoder.

One class serves our own tokenizers and the published families we import (MaskGIT's Flax VQGAN,
diffusers' VQModel as used by aMUSEd) through VQGANConfig switches; there is no attention, so any
image whose sides divide by f = 2^(len(channel_mult) - 1) encodes.

  encode(img_BxHxWx3) -> ids_Bxhxw        decode(ids_Bxhxw) -> img_BxHxWx3
"""
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from muse_jax.parallel import axes


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  """Shape and structure of a tokenizer.

  channel_mult: per level; there is a 2x down/upsampling between consecutive levels.
  num_res_blocks / decoder_res_blocks: residual blocks per level in encoder / decoder
    (diffusers' decoder has one more than its encoder).
  mid_res_blocks: residual blocks at the bottleneck, after the encoder and before the decoder.
  mid_attention: single-head self-attention over the bottleneck's positions after its first
    residual block (taming-transformers' / latent diffusion's VQGANs, diffusers' VQModel default);
    off in our presets: the paper's tokenizer has none, and attention makes a code depend on the
    whole image.
  decoder_base_channels / decoder_channel_mult: a wider decoder (decoder finetuning).
  downsample: "conv" (3x3 stride-2, padded (0, 1) on each spatial side, diffusers) or "avgpool".
  shortcut_on_output: MaskGIT's quirk: a channel-changing shortcut conv is applied to the block's
    output instead of its input. shortcut_kernel: 1 or 3.
  res_conv_bias / conv_in_bias: biases of the residual convs and the encoder's input conv.
  encoder_out_kernel: kernel of the encoder's last conv (MaskGIT 1, diffusers 3).
  quant_conv: 1x1 convs before and after the quantizer (diffusers).
  quantizer: "vq" (a learned codebook of codebook_size x latent_dim, VectorQuantizer) or "fsq"
    (finite scalar quantization, Mentzer et al. 2023: each of the latent_dim = len(fsq_levels)
    channels bounded and rounded to fsq_levels[i] values; codebook_size = prod(fsq_levels); no
    codebook, no codebook or entropy loss).
  norm: "group" (GroupNorm with norm_groups groups: statistics over the whole feature map, as in
    VQGAN, MaskGIT and diffusers) or "layer" (LayerNorm over the channels of each position: every
    output depends on its receptive field alone, so a plain patch encodes to the same code in any
    scene and at any image size).
  pixel_range: (lo, hi) of images at the model's input and output.
  """
  base_channels: int = 128
  channel_mult: tuple = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  decoder_res_blocks: int | None = None
  mid_res_blocks: int = 2
  mid_attention: bool = False
  decoder_base_channels: int | None = None
  decoder_channel_mult: tuple | None = None
  latent_dim: int = 256
  codebook_size: int = 8192
  norm_groups: int = 32
  norm: str = "group"
  norm_eps: float = 1e-6
  downsample: str = "conv"
  shortcut_on_output: bool = False
  shortcut_kernel: int = 1
  res_conv_bias: bool = True
  conv_in_bias: bool = True
  encoder_out_kernel: int = 1
  quant_conv: bool = False
  l2_normalize_codes: bool = False
  commitment_beta: float = 0.25
  entropy_loss_weight: float = 0.0
  entropy_temperature: float = 0.01
  quantizer: str = "vq"
  fsq_levels: tuple = ()
  pixel_range: tuple = (-1.0, 1.0)
  dtype: str = "float32"

  def __post_init__(self):
    if self.downsample not in ("conv", "avgpool"):
      raise ValueError(f"vqgan.downsample={self.downsample!r}; expected 'conv' or 'avgpool'")
    if self.norm not in ("group", "layer"):
      raise ValueError(f"vqgan.norm={self.norm!r}; expected 'group' or 'layer'")
    if self.mid_attention and self.mid_res_blocks < 1:
      raise ValueError("vqgan.mid_attention sits after the first bottleneck residual block; it "
                       f"needs mid_res_blocks >= 1, got {self.mid_res_blocks}")
    if self.shortcut_kernel not in (1, 3):
      raise ValueError(f"vqgan.shortcut_kernel must be 1 or 3, got {self.shortcut_kernel}")
    for c in self.encoder_channels + self.decoder_channels:
      if self.norm == "group" and c % self.norm_groups:
        raise ValueError(f"vqgan channel count {c} is not divisible by norm_groups="
                         f"{self.norm_groups}")
    if self.quantizer not in ("vq", "fsq"):
      raise ValueError(f"vqgan.quantizer={self.quantizer!r}; expected 'vq' or 'fsq'")
    if self.quantizer == "fsq":
      levels = tuple(self.fsq_levels)
      if not levels or min(levels) < 2:
        raise ValueError(f"vqgan.fsq_levels={levels}: FSQ needs one level count >= 2 per latent "
                         "channel, e.g. (8, 8, 8, 8) for 4096 codes")
      if len(levels) != self.latent_dim or math.prod(levels) != self.codebook_size:
        raise ValueError(f"vqgan.fsq_levels={levels} gives {len(levels)} channels and "
                         f"{math.prod(levels)} codes; set latent_dim={len(levels)} and "
                         f"codebook_size={math.prod(levels)} (now {self.latent_dim} and "
                         f"{self.codebook_size})")
    dm = self.decoder_channel_mult
    if dm is not None and len(dm) != len(self.channel_mult):
      raise ValueError(f"vqgan.decoder_channel_mult {dm} must have as many levels as "
                       f"channel_mult {self.channel_mult}")

  @property
  def factor(self) -> int:
    return 2 ** (len(self.channel_mult) - 1)

  @property
  def encoder_channels(self) -> tuple:
    return tuple(self.base_channels * m for m in self.channel_mult)

  @property
  def decoder_channels(self) -> tuple:
    base = self.decoder_base_channels or self.base_channels
    return tuple(base * m for m in (self.decoder_channel_mult or self.channel_mult))

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


def _conv(features, kernel, cfg, use_bias=True, strides=1, padding="SAME", name=None):
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=padding,
                 use_bias=use_bias, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                 kernel_init=nn.with_logical_partitioning(
                     nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                     (None, None, axes.CONV_IN, axes.CONV_OUT)),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.CONV_OUT,)),
                 name=name)


def _norm(cfg, name=None):
  if cfg.norm == "layer":
    return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                        name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones,
                                                                (axes.CONV_OUT,)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                               (axes.CONV_OUT,)))
  return nn.GroupNorm(num_groups=cfg.norm_groups, epsilon=cfg.norm_eps, dtype=cfg.compute_dtype,
                      param_dtype=jnp.float32, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones,
                                                              (axes.CONV_OUT,)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                             (axes.CONV_OUT,)))


class ResBlock(nn.Module):
  """GroupNorm-swish-conv x2 with a residual; x_BxHxWxC -> y_BxHxWxF."""
  features: int
  cfg: Any

  @nn.compact
  def __call__(self, x):
    c = self.cfg
    h = _conv(self.features, 3, c, c.res_conv_bias, name="conv1")(nn.swish(_norm(c, "norm1")(x)))
    h = _conv(self.features, 3, c, c.res_conv_bias, name="conv2")(nn.swish(_norm(c, "norm2")(h)))
    residual = x
    if x.shape[-1] != self.features:
      src = h if c.shortcut_on_output else x
      residual = _conv(self.features, c.shortcut_kernel, c, c.res_conv_bias, name="shortcut")(src)
    return h + residual


class MidAttention(nn.Module):
  """x + out(softmax(q k^T / sqrt(C)) v), q, k, v, out dense over the channels of the normed
  positions: x_BxHxWxC -> x_BxHxWxC. Logits and softmax in float32."""
  cfg: Any

  @nn.compact
  def __call__(self, x):
    c, (b, h, w, ch) = self.cfg, x.shape
    dense = lambda name: nn.Dense(
        ch, dtype=c.compute_dtype, param_dtype=jnp.float32, name=name,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
            (axes.CONV_IN, axes.CONV_OUT)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.CONV_OUT,)))
    y_BxNxC = _norm(c, "norm")(x).reshape(b, h * w, ch)
    q, k, v = dense("q")(y_BxNxC), dense("k")(y_BxNxC), dense("v")(y_BxNxC)
    logits_BxNxN = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32)
    weights_BxNxN = jax.nn.softmax(logits_BxNxN / jnp.sqrt(jnp.float32(ch)), axis=-1)
    out_BxNxC = dense("out")(jnp.einsum("bqk,bkc->bqc", weights_BxNxN.astype(v.dtype), v))
    return x + out_BxNxC.reshape(b, h, w, ch).astype(x.dtype)


def _mid_block(x, cfg, channels: int):
  """The bottleneck's residual blocks, with MidAttention after the first (cfg.mid_attention)."""
  for j in range(cfg.mid_res_blocks):
    x = ResBlock(channels, cfg, name=f"mid_res_{j}")(x)
    if j == 0 and cfg.mid_attention:
      x = MidAttention(cfg, name="mid_attn")(x)
  return x


class Downsample(nn.Module):
  """2x spatial reduction: x_BxHxWxC -> x_Bx(H/2)x(W/2)xC."""
  cfg: Any

  @nn.compact
  def __call__(self, x):
    if self.cfg.downsample == "avgpool":
      return nn.avg_pool(x, (2, 2), (2, 2))
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(x.shape[-1], 3, self.cfg, strides=2, padding="VALID", name="conv")(x)


class Upsample(nn.Module):
  """Nearest 2x then a 3x3 conv: x_BxHxWxC -> x_Bx2Hx2WxC."""
  cfg: Any

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(x.shape[-1], 3, self.cfg, name="conv")(x)


class Encoder(nn.Module):
  """img_BxHxWx3 (in cfg.pixel_range) -> z_Bx(H/f)x(W/f)xD."""
  cfg: VQGANConfig

  @nn.compact
  def __call__(self, img):
    c = self.cfg
    chans = c.encoder_channels
    x = _conv(chans[0], 3, c, c.conv_in_bias, name="conv_in")(img.astype(c.compute_dtype))
    for level, ch in enumerate(chans):
      for j in range(c.num_res_blocks):
        x = ResBlock(ch, c, name=f"down_{level}_res_{j}")(x)
      if level < len(chans) - 1:
        x = Downsample(c, name=f"down_{level}_sample")(x)
    x = _mid_block(x, c, chans[-1])
    x = nn.swish(_norm(c, "norm_out")(x))
    return _conv(c.latent_dim, c.encoder_out_kernel, c, name="conv_out")(x)


class Decoder(nn.Module):
  """z_BxhxwxD -> img_Bx(h f)x(w f)x3."""
  cfg: VQGANConfig

  @nn.compact
  def __call__(self, z):
    c = self.cfg
    chans = c.decoder_channels
    blocks = c.decoder_res_blocks if c.decoder_res_blocks is not None else c.num_res_blocks
    x = _conv(chans[-1], 3, c, name="conv_in")(z.astype(c.compute_dtype))
    x = _mid_block(x, c, chans[-1])
    for level in reversed(range(len(chans))):
      for j in range(blocks):
        x = ResBlock(chans[level], c, name=f"up_{level}_res_{j}")(x)
      if level > 0:
        x = Upsample(c, name=f"up_{level}_sample")(x)
    x = nn.swish(_norm(c, "norm_out")(x))
    return _conv(3, 3, c, name="conv_out")(x).astype(jnp.float32)


class VectorQuantizer(nn.Module):
  """z_BxhxwxD -> (z_q straight-through, ids_Bxhxw, losses and codebook statistics).

  Distances in float32. Commitment loss beta * |z - sg(e)|^2 plus codebook loss |sg(z) - e|^2;
  optional l2-normalised codes and an entropy penalty (low per-position entropy, high
  codebook-average entropy)."""
  cfg: VQGANConfig

  def setup(self):
    c = self.cfg
    self.codebook = self.param(
        "codebook", nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_in", "uniform"), (axes.VOCAB, None)),
        (c.codebook_size, c.latent_dim), jnp.float32)

  def _codes(self):
    e = self.codebook
    return _l2norm(e) if self.cfg.l2_normalize_codes else e

  def lookup(self, ids):
    return jnp.take(self._codes(), ids, axis=0)

  def __call__(self, z):
    c = self.cfg
    z = z.astype(jnp.float32)
    if c.l2_normalize_codes:
      z = _l2norm(z)
    e = self._codes()
    d = (jnp.sum(z ** 2, -1, keepdims=True) - 2 * jnp.einsum("...d,kd->...k", z, e)
         + jnp.sum(e ** 2, -1))
    ids = jnp.argmin(d, axis=-1)
    z_q = jnp.take(e, ids, axis=0)
    commit = jnp.mean((z - jax.lax.stop_gradient(z_q)) ** 2)
    codebook = jnp.mean((jax.lax.stop_gradient(z) - z_q) ** 2)
    loss = c.commitment_beta * commit + codebook
    one_hot_mean = jnp.mean(jax.nn.one_hot(ids, c.codebook_size, dtype=jnp.float32),
                            axis=tuple(range(ids.ndim)))
    stats = {"vq_loss": loss, "commit_loss": commit,
             "codebook_usage": jnp.mean((one_hot_mean > 0).astype(jnp.float32)),
             "perplexity": jnp.exp(-jnp.sum(one_hot_mean * jnp.log(one_hot_mean + 1e-10)))}
    if c.entropy_loss_weight:
      probs = jax.nn.softmax(-d / c.entropy_temperature, axis=-1)
      per_sample = -jnp.mean(jnp.sum(probs * jnp.log(probs + 1e-10), -1))
      avg = jnp.mean(probs, axis=tuple(range(probs.ndim - 1)))
      codebook_entropy = -jnp.sum(avg * jnp.log(avg + 1e-10))
      stats["entropy_loss"] = per_sample - codebook_entropy
      loss = loss + c.entropy_loss_weight * stats["entropy_loss"]
      stats["vq_loss"] = loss
    z_st = z + jax.lax.stop_gradient(z_q - z)
    return z_st, ids, stats


class FiniteScalarQuantizer(nn.Module):
  """FSQ (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple"): z_BxhxwxD ->
  (z_q straight-through, ids_Bxhxw, statistics), D = len(fsq_levels).

  Channel i is bounded by tanh to [-(L_i - 1) / 2, (L_i - 1) / 2] (shifted by 1/2 for even L_i),
  rounded to an integer (straight-through gradient) and scaled to [-1, 1]; the id is the digits in
  the mixed radix fsq_levels. The grid is fixed: every code is reachable and none can die, so
  there is no codebook loss and no entropy loss. Latents that differ by less than a bin map to
  one code: on the built-in scenes, plain-background patches whose encodings vary slightly with
  the rest of the image share a handful of codes instead of spreading over the codebook."""
  cfg: VQGANConfig

  def _levels(self):
    levels = jnp.asarray(self.cfg.fsq_levels, jnp.float32)
    basis = jnp.asarray([math.prod(self.cfg.fsq_levels[:i]) for i in range(len(levels))],
                        jnp.int32)
    return levels, basis

  def lookup(self, ids):
    levels, basis = self._levels()
    digits = (ids[..., None] // basis) % levels.astype(jnp.int32)
    half = jnp.floor(levels / 2)
    return (digits.astype(jnp.float32) - half) / half

  def __call__(self, z):
    levels, basis = self._levels()
    z = z.astype(jnp.float32)
    half_l = (levels - 1) * (1 - 1e-3) / 2
    offset = jnp.where(levels % 2 == 1, 0.0, 0.5)
    bounded = jnp.tanh(z + jnp.tan(offset / half_l)) * half_l - offset   # the paper's shift
    q = jnp.round(bounded)
    rounded = bounded + jax.lax.stop_gradient(q - bounded)
    half = jnp.floor(levels / 2)
    ids = jnp.sum((q + half).astype(jnp.int32) * basis, axis=-1)
    one_hot_mean = jnp.mean(jax.nn.one_hot(ids, self.cfg.codebook_size, dtype=jnp.float32),
                            axis=tuple(range(ids.ndim)))
    zero = jnp.zeros((), jnp.float32)
    stats = {"vq_loss": zero, "commit_loss": zero,
             "codebook_usage": jnp.mean((one_hot_mean > 0).astype(jnp.float32)),
             "perplexity": jnp.exp(-jnp.sum(one_hot_mean * jnp.log(one_hot_mean + 1e-10)))}
    return rounded / half, ids, stats


def _l2norm(x):
  return x * jax.lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)


class VQGAN(nn.Module):
  """Tokenizer. __call__(img) -> (reconstruction, ids, vq stats); encode / decode for inference."""
  cfg: VQGANConfig

  def setup(self):
    c = self.cfg
    self.encoder = Encoder(c)
    self.quantizer = FiniteScalarQuantizer(c) if c.quantizer == "fsq" else VectorQuantizer(c)
    self.decoder = Decoder(c)
    if c.quant_conv:
      self.quant_conv = _conv(c.latent_dim, 1, c, name="quant_conv")
      self.post_quant_conv = _conv(c.latent_dim, 1, c, name="post_quant_conv")

  def _check(self, img):
    f = self.cfg.factor
    if img.ndim != 4 or img.shape[-1] != 3 or img.shape[1] % f or img.shape[2] % f:
      raise ValueError(f"VQGAN expects images [B, H, W, 3] with H and W divisible by {f}; got "
                       f"{img.shape}")

  def _latent(self, img):
    self._check(img)
    z = self.encoder(img)
    return self.quant_conv(z) if self.cfg.quant_conv else z

  def _pixels(self, z_q):
    if self.cfg.quant_conv:
      z_q = self.post_quant_conv(z_q.astype(self.cfg.compute_dtype))
    return self.decoder(z_q)

  def __call__(self, img):
    z_q, ids, stats = self.quantizer(self._latent(img))
    return self._pixels(z_q), ids, stats

  def encode(self, img):
    """img_BxHxWx3 -> ids_Bx(H/f)x(W/f) int32."""
    return self.quantizer(self._latent(img))[1].astype(jnp.int32)

  def decode(self, ids):
    """ids_Bxhxw -> img_Bx(h f)x(w f)x3 float32 in cfg.pixel_range (not clipped)."""
    return self._pixels(self.quantizer.lookup(ids))


def encode_unit_images(model: VQGAN, params, img01_BxHxWx3, resolution: int):
  """Images in [0, 1] -> ids_BxN int32 (N = (resolution / f)^2), resized (linear, antialiased)
  to `resolution` first when their side differs; maps [0, 1] to the model's pixel_range. The
  jittable encoding step shared by muse-encode and training from raw images."""
  b = img01_BxHxWx3.shape[0]
  if img01_BxHxWx3.shape[1] != resolution:
    img01_BxHxWx3 = jax.image.resize(img01_BxHxWx3, (b, resolution, resolution, 3), "linear",
                                     antialias=True)
  lo, hi = model.cfg.pixel_range
  img = img01_BxHxWx3 * (hi - lo) + lo
  return model.apply({"params": params}, img, method=model.encode).reshape(b, -1)


def decode_unit_images(model: VQGAN, params, ids_BxN, grid_size: int):
  """ids_BxN (a flat grid_size x grid_size grid per row) -> images in [0, 1] float32 (clipped);
  the inverse of encode_unit_images, jittable (training-time sample grids)."""
  img = model.apply({"params": params}, ids_BxN.reshape(-1, grid_size, grid_size),
                    method=model.decode)
  lo, hi = model.cfg.pixel_range
  return jnp.clip((img.astype(jnp.float32) - lo) / (hi - lo), 0.0, 1.0)
