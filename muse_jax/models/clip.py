"""CLIP (ViT image tower + causal text tower) in flax.linen, for the CLIP score metric.

Matches Hugging Face's CLIPModel.get_image_features / get_text_features (and so OpenAI's CLIP):

  image: patch conv (no bias) + class token + learned positions, pre-LayerNorm ("pre_layrnorm"),
    pre-LN blocks x + attn(LN1(x)), x + mlp(LN2(x)), post-LayerNorm of the class token, then the
    visual projection (no bias).
  text: token + learned positions, the same blocks under a causal mask combined with the padding
    mask, a final LayerNorm, the state at the EOS token, then the text projection (no bias).

The embeddings come back unnormalised; `clip_score` takes the clipped cosine similarity.

Numerics: params float32; matmuls in `CLIPConfig.dtype` (float32 or bfloat16); LayerNorms, residual
stream, activations (quick_gelu) and softmax in float32; the returned embeddings are float32.
On TPU a float32 run multiplies in bfloat16 passes unless `jax.default_matmul_precision("highest")`
is set. Layers run under nn.scan (params stacked on a leading "layers" axis).

Images enter as NHWC float pixels ALREADY resized to image_size x image_size and normalised with
CLIP's mean / std (`preprocess_images` does this from [0, 1] images).

`load(path)` reads a local Hugging Face CLIPModel snapshot folder (config.json, model.safetensors or
a sharded index, tokenizer.json) and returns (CLIPConfig, params, ClipTokenizer).
"""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from muse_jax.convert import hf_text
from muse_jax.models import layers, t5
from muse_jax.parallel import axes

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# Hugging Face activation names used by CLIP configs. OpenAI's CLIP uses quick_gelu; some
# re-trainings (e.g. LAION's) use the exact GELU.
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    **t5.ACTIVATIONS,
}
DTYPES = ("float32", "bfloat16")

# Until transformers PR #24773, CLIP configs carried eos_token_id = 2 (a wrong id); transformers
# keeps pooling those at argmax(input_ids) (the EOS is the largest id of the BPE vocabulary), and
# all others at the first position of eos_token_id. We apply the same rule.
LEGACY_EOS_TOKEN_ID = 2


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"unsupported CLIP hidden_act {name!r}; supported: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def _positive(cfg, kind, names):
  for f in names:
    if getattr(cfg, f) <= 0:
      raise ValueError(f"CLIP {kind} config {f} must be positive, got {getattr(cfg, f)}")
  if cfg.hidden_size % cfg.num_attention_heads:
    raise ValueError(f"CLIP {kind} config hidden_size={cfg.hidden_size} must be divisible by "
                     f"num_attention_heads={cfg.num_attention_heads}")
  activation(cfg.hidden_act)


def _fields(cls, hf: dict) -> dict:
  """The config.json entries that name our fields (absent ones keep our defaults, which are
  transformers' defaults)."""
  return {f.name: hf[f.name] for f in dataclasses.fields(cls) if f.name in hf}


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """The ViT image tower; defaults are openai/clip-vit-base-patch32 (= transformers' defaults)."""
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int = 224
  patch_size: int = 32
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5

  def __post_init__(self):
    _positive(self, "vision", ("hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads", "num_channels", "image_size", "patch_size"))
    if self.image_size % self.patch_size:
      raise ValueError(f"CLIP vision image_size={self.image_size} must be a multiple of "
                       f"patch_size={self.patch_size}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def num_positions(self) -> int:
    return (self.image_size // self.patch_size) ** 2 + 1   # patches + the class token

  @classmethod
  def from_hf(cls, hf: dict) -> "CLIPVisionConfig":
    """From the "vision_config" dict of a CLIP config.json."""
    return cls(**_fields(cls, hf))


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """The causal text tower; defaults are openai/clip-vit-base-patch32 (= transformers' defaults)."""
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  # Pooling rule (see LEGACY_EOS_TOKEN_ID). OpenAI's config.json files say 2, which pools at the
  # argmax; with CLIP's tokenizer that is the same position as the first 49407.
  eos_token_id: int = 49407

  def __post_init__(self):
    _positive(self, "text", ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                             "num_attention_heads", "max_position_embeddings"))

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_hf(cls, hf: dict) -> "CLIPTextConfig":
    """From the "text_config" dict of a CLIP config.json."""
    fields = _fields(cls, hf)
    if isinstance(fields.get("eos_token_id"), (list, tuple)):
      raise ValueError(f"CLIP text eos_token_id must be one id, got {fields['eos_token_id']}")
    return cls(**fields)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Both towers, the shared projection width and the compute dtype (params stay float32)."""
  vision: CLIPVisionConfig = CLIPVisionConfig()
  text: CLIPTextConfig = CLIPTextConfig()
  projection_dim: int = 512
  dtype: str = "float32"

  def __post_init__(self):
    if self.projection_dim <= 0:
      raise ValueError(f"CLIP projection_dim must be positive, got {self.projection_dim}")
    if self.dtype not in DTYPES:
      raise ValueError(f"CLIP dtype must be one of {DTYPES}, got {self.dtype!r}")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @classmethod
  def from_hf(cls, hf: dict, dtype: str = "float32") -> "CLIPConfig":
    """From a Hugging Face CLIPModel config.json dict."""
    if hf.get("model_type", "clip") != "clip":
      raise ValueError(f"config.json has model_type {hf.get('model_type')!r}, expected 'clip'")
    return cls(vision=CLIPVisionConfig.from_hf(hf.get("vision_config") or {}),
               text=CLIPTextConfig.from_hf(hf.get("text_config") or {}),
               projection_dim=hf.get("projection_dim", 512), dtype=dtype)


VIT_B_32 = CLIPConfig()   # openai/clip-vit-base-patch32
VIT_L_14 = CLIPConfig(    # openai/clip-vit-large-patch14
    vision=CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                            num_attention_heads=16, patch_size=14),
    text=CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12),
    projection_dim=768)


# ------------------------------------------------------------------------------------------------
# Modules.

def _layer_norm(eps, name):
  """LayerNorm in float32 (input and output), as the residual stream."""
  return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED,)))


class ClipAttention(nn.Module):
  """Self-attention x_BxTxD, mask_BxQxK (bool, None: all) -> y_BxTxD; q/k/v/out with biases.

  (layers.MultiHeadAttention takes only a per-key mask; the text tower needs a causal one.)"""
  num_heads: int
  head_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxQxK=None):
    d = x_BxTxD.shape[-1]
    feats, qkv_axes = (self.num_heads, self.head_dim), (axes.EMBED, axes.HEADS, axes.HEAD_DIM)
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (
        layers.dense(feats, qkv_axes, self.dtype, name=n)(x_BxTxD)
        for n in ("query", "key", "value"))
    # HF scales the projected query (bias included) by head_dim**-0.5, as here.
    q_BxTxHxK = q_BxTxHxK * jnp.asarray(self.head_dim ** -0.5, self.dtype)
    logits_BxHxQxK = jnp.einsum("bqhk,bshk->bhqs", q_BxTxHxK, k_BxTxHxK,
                                preferred_element_type=jnp.float32)
    if mask_BxQxK is not None:
      logits_BxHxQxK = jnp.where(mask_BxQxK[:, None], logits_BxHxQxK, jnp.finfo(jnp.float32).min)
    probs_BxHxQxK = jax.nn.softmax(logits_BxHxQxK, axis=-1).astype(self.dtype)
    out_BxTxHxK = jnp.einsum("bhqs,bshk->bqhk", probs_BxHxQxK, v_BxTxHxK)
    return layers.dense(d, (axes.HEADS, axes.HEAD_DIM, axes.EMBED), self.dtype, in_dims=2,
                        name="out")(out_BxTxHxK).astype(jnp.float32)


class ClipBlock(nn.Module):
  """Pre-LN block: x_BxTxD, mask_BxQxK -> (x_BxTxD, None) (scannable)."""
  num_heads: int
  head_dim: int
  intermediate_size: int
  hidden_act: str
  layer_norm_eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD, mask_BxQxK):
    d = x_BxTxD.shape[-1]
    h = _layer_norm(self.layer_norm_eps, "ln1")(x_BxTxD)
    x_BxTxD = x_BxTxD + ClipAttention(self.num_heads, self.head_dim, self.dtype, name="attn")(
        h, mask_BxQxK)
    h = _layer_norm(self.layer_norm_eps, "ln2")(x_BxTxD)
    h = layers.dense(self.intermediate_size, (axes.EMBED, axes.MLP), self.dtype, name="fc1")(h)
    h = activation(self.hidden_act)(h.astype(jnp.float32)).astype(self.dtype)
    h = layers.dense(d, (axes.MLP, axes.EMBED), self.dtype, name="fc2")(h)
    return x_BxTxD + h.astype(jnp.float32), None


def _encoder(c, dtype, x_BxTxD, mask_BxQxK, name):
  stack = nn.scan(ClipBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                  in_axes=nn.broadcast, length=c.num_hidden_layers,
                  metadata_params={nn.PARTITION_NAME: axes.LAYERS})
  x_BxTxD, _ = stack(c.num_attention_heads, c.head_dim, c.intermediate_size, c.hidden_act,
                     c.layer_norm_eps, dtype, name=name)(x_BxTxD, mask_BxQxK)
  return x_BxTxD


def _embedding(module, name, names, shape):
  init = nn.initializers.normal(layers.INIT_STD)
  return module.param(name, nn.with_logical_partitioning(init, names), shape, jnp.float32)


class ClipVision(nn.Module):
  """pixels_BxHxWxC (normalised, H = W = image_size) -> pooled_BxD (post-LN class token)."""
  cfg: CLIPVisionConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels_BxHxWxC):
    c = self.cfg
    b, hh, ww, ch = pixels_BxHxWxC.shape
    if (hh, ww, ch) != (c.image_size, c.image_size, c.num_channels):
      raise ValueError(f"CLIP image tower takes {c.image_size}x{c.image_size}x{c.num_channels} "
                       f"pixels, got {hh}x{ww}x{ch}; see preprocess_images")
    p, g = c.patch_size, c.image_size // c.patch_size
    # A stride-p conv with a p x p kernel is a matmul over non-overlapping patches; patches are
    # taken row-major over the grid as torch's flatten(2) does.
    patches = pixels_BxHxWxC.reshape(b, g, p, g, p, ch).transpose(0, 1, 3, 2, 4, 5)
    patches_BxNxPxPxC = patches.reshape(b, g * g, p, p, ch)
    x_BxNxD = layers.dense(c.hidden_size, (None, None, None, axes.EMBED), self.dtype, in_dims=3,
                           use_bias=False, name="patch_embed")(patches_BxNxPxPxC)
    cls_D = _embedding(self, "class_embed", (axes.EMBED,), (c.hidden_size,))
    pos_TxD = _embedding(self, "pos_embed", (axes.LENGTH, axes.EMBED),
                         (c.num_positions, c.hidden_size))
    x_BxTxD = jnp.concatenate(
        [jnp.broadcast_to(cls_D, (b, 1, c.hidden_size)), x_BxNxD.astype(jnp.float32)], axis=1)
    x_BxTxD = _layer_norm(c.layer_norm_eps, "pre_norm")(x_BxTxD + pos_TxD)
    x_BxTxD = _encoder(c, self.dtype, x_BxTxD, None, "layers")
    return _layer_norm(c.layer_norm_eps, "post_norm")(x_BxTxD[:, 0])


class ClipText(nn.Module):
  """ids_BxT (int32), mask_BxT (bool, valid tokens) -> pooled_BxD (final-LN state at the EOS)."""
  cfg: CLIPTextConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, ids_BxT, mask_BxT):
    c = self.cfg
    t = ids_BxT.shape[1]
    if t > c.max_position_embeddings:
      raise ValueError(f"text length {t} exceeds CLIP's position table "
                       f"({c.max_position_embeddings})")
    tok_VxD = _embedding(self, "token_embed", (axes.VOCAB, axes.EMBED),
                         (c.vocab_size, c.hidden_size))
    pos_PxD = _embedding(self, "pos_embed", (axes.TEXT_LENGTH, axes.EMBED),
                         (c.max_position_embeddings, c.hidden_size))
    x_BxTxD = jnp.take(tok_VxD, ids_BxT, axis=0) + pos_PxD[:t]
    causal_TxT = jnp.tril(jnp.ones((t, t), bool))
    mask_BxQxK = causal_TxT[None] & mask_BxT.astype(bool)[:, None, :]
    x_BxTxD = _encoder(c, self.dtype, x_BxTxD, mask_BxQxK, "layers")
    x_BxTxD = _layer_norm(c.layer_norm_eps, "final_norm")(x_BxTxD)
    if c.eos_token_id == LEGACY_EOS_TOKEN_ID:
      eos_B = jnp.argmax(ids_BxT, axis=-1)
    else:   # the first EOS (the pad token may be the EOS too); 0 when a row has none, as in HF
      eos_B = jnp.argmax(ids_BxT == c.eos_token_id, axis=-1)
    return jnp.take_along_axis(x_BxTxD, eos_B[:, None, None], axis=1)[:, 0]


class CLIP(nn.Module):
  """encode_image(pixels_BxHxWxC) -> B x projection_dim; encode_text(ids_BxT, mask_BxT) -> same.

  Both unnormalised (as get_image_features / get_text_features). __call__ runs both (for init)."""
  cfg: CLIPConfig

  def setup(self):
    c, dt = self.cfg, self.cfg.compute_dtype
    self.vision = ClipVision(c.vision, dt)
    self.text = ClipText(c.text, dt)
    self.visual_projection = layers.dense(c.projection_dim, (axes.EMBED, None), dt,
                                          use_bias=False)
    self.text_projection = layers.dense(c.projection_dim, (axes.EMBED, None), dt, use_bias=False)

  def encode_image(self, pixels_BxHxWxC):
    return self.visual_projection(self.vision(pixels_BxHxWxC)).astype(jnp.float32)

  def encode_text(self, ids_BxT, mask_BxT):
    return self.text_projection(self.text(ids_BxT, mask_BxT)).astype(jnp.float32)

  def __call__(self, pixels_BxHxWxC, ids_BxT, mask_BxT):
    return self.encode_image(pixels_BxHxWxC), self.encode_text(ids_BxT, mask_BxT)


def init_inputs(cfg: CLIPConfig, batch: int = 1):
  """Dummy (pixels, ids, mask) of the shapes CLIP.init needs."""
  v, t = cfg.vision, cfg.text
  return (jnp.zeros((batch, v.image_size, v.image_size, v.num_channels), jnp.float32),
          jnp.zeros((batch, t.max_position_embeddings), jnp.int32),
          jnp.ones((batch, t.max_position_embeddings), bool))


def abstract_params(cfg: CLIPConfig) -> dict:
  """The params tree as ShapeDtypeStructs (no memory), unboxed."""
  init = lambda: nn.unbox(CLIP(cfg).init(jax.random.PRNGKey(0), *init_inputs(cfg))["params"])
  return jax.eval_shape(init)


def clip_score(image_emb_BxP, text_emb_BxP):
  """Per-pair cosine similarity clipped at 0: torchmetrics' CLIPScore / 100 (its 100 * max(cos, 0))."""
  a = jnp.asarray(image_emb_BxP, jnp.float32)
  b = jnp.asarray(text_emb_BxP, jnp.float32)
  a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
  b = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
  return jnp.maximum(jnp.sum(a * b, axis=-1), 0.0)


def preprocess_images(images_BxHxWx3, image_size: int = 224):
  """[0, 1] float images -> CLIP pixels: bicubic resize of the shortest side to image_size, a
  centre crop to image_size x image_size, then (x - MEAN) / STD.

  Sizes follow CLIPImageProcessor (long side int(size * long / short), crop offset
  (side - size) // 2). The resampling is jax.image.resize's antialiased Keys cubic, not PIL's on
  uint8, so pixels differ from the HF processor's by small amounts (not bit-exact).
  """
  x = jnp.asarray(images_BxHxWx3, jnp.float32)
  b, h, w, ch = x.shape
  if ch != 3:
    raise ValueError(f"preprocess_images takes RGB images B x H x W x 3, got {x.shape}")
  short, long = min(h, w), max(h, w)
  new_long = int(image_size * long / short)
  nh, nw = (image_size, new_long) if h <= w else (new_long, image_size)
  if (nh, nw) != (h, w):
    x = jax.image.resize(x, (b, nh, nw, ch), method="bicubic", antialias=True)
  top, left = (nh - image_size) // 2, (nw - image_size) // 2
  x = jnp.clip(x[:, top:top + image_size, left:left + image_size], 0.0, 1.0)
  return (x - jnp.asarray(MEAN)) / jnp.asarray(STD)


# ------------------------------------------------------------------------------------------------
# Tokenizer.

class ClipTokenizer:
  """CLIP BPE from a tokenizer.json -> (ids_BxT int32, mask_BxT bool), T = max_length.

  As transformers' CLIPTokenizer(padding="max_length", truncation=True, max_length=T): the text
  is cut to T - 2 tokens so that <|startoftext|> ... <|endoftext|> always fits, and rows are padded
  on the right with the pad token (<|endoftext|> for OpenAI's CLIP, so padded rows repeat the EOS
  id; the mask marks them invalid).
  """

  def __init__(self, folder: str, max_length: int = 77):
    file = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(file):
      raise FileNotFoundError(f"{folder} has no tokenizer.json (a CLIP fast tokenizer)")
    if max_length < 2:
      raise ValueError(f"CLIP max_length must be at least 2 (BOS and EOS), got {max_length}")
    self.max_length = max_length
    self.tokenizer = tokenizers.Tokenizer.from_file(file)
    self.pad_token = _special_token(folder, "pad_token", "<|endoftext|>")
    self.pad_id = self.tokenizer.token_to_id(self.pad_token)
    if self.pad_id is None:
      raise ValueError(f"{folder}: pad token {self.pad_token!r} is not in tokenizer.json's vocab")
    # Truncation in `tokenizers` leaves room for the post-processor's BOS / EOS, as HF's does.
    self.tokenizer.enable_truncation(max_length, strategy="longest_first", direction="right")
    self.tokenizer.enable_padding(direction="right", pad_id=self.pad_id, pad_token=self.pad_token,
                                  length=max_length)

  def __call__(self, texts):
    encs = self.tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encs], np.int32).reshape(len(encs), self.max_length)
    mask = np.array([e.attention_mask for e in encs], bool).reshape(len(encs), self.max_length)
    return ids, mask


def _special_token(folder, name, default):
  """A special token's text from tokenizer_config.json, else special_tokens_map.json, else default."""
  for file in ("tokenizer_config.json", "special_tokens_map.json"):
    path = os.path.join(folder, file)
    if os.path.exists(path):
      with open(path) as f:
        value = json.load(f).get(name)
      if isinstance(value, dict):   # AddedToken serialisation
        value = value.get("content")
      if value:
        return value
  return default


# ------------------------------------------------------------------------------------------------
# Hugging Face CLIPModel snapshots.

def key_map(cfg: CLIPConfig) -> dict:
  """Our CLIP params path -> hf_text.Source (or per-layer Sources, stacked on axis 0)."""
  same = lambda w: w
  transpose = lambda w: w.T

  def in_heads(h, k):       # torch Linear [H*K, D] -> our [D, H, K]
    return lambda w: w.T.reshape(w.shape[1], h, k)

  def out_heads(h, k):      # torch Linear [D, H*K] -> our [H, K, D]
    return lambda w: w.T.reshape(h, k, w.shape[0])

  def ln(ours, theirs, d):
    return {ours + ("scale",): hf_text.Source((f"{theirs}.weight",), (d,), same),
            ours + ("bias",): hf_text.Source((f"{theirs}.bias",), (d,), same)}

  def tower(c, ours, theirs):
    d, h, k, f = c.hidden_size, c.num_attention_heads, c.head_dim, c.intermediate_size
    per_layer = {}
    for name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
      per_layer[("attn", name, "kernel")] = (f"self_attn.{proj}.weight", (d, d), in_heads(h, k))
      per_layer[("attn", name, "bias")] = (f"self_attn.{proj}.bias", (d,),
                                           lambda b, h=h, k=k: b.reshape(h, k))
    per_layer[("attn", "out", "kernel")] = ("self_attn.out_proj.weight", (d, d), out_heads(h, k))
    per_layer[("attn", "out", "bias")] = ("self_attn.out_proj.bias", (d,), same)
    per_layer[("fc1", "kernel")] = ("mlp.fc1.weight", (f, d), transpose)
    per_layer[("fc1", "bias")] = ("mlp.fc1.bias", (f,), same)
    per_layer[("fc2", "kernel")] = ("mlp.fc2.weight", (d, f), transpose)
    per_layer[("fc2", "bias")] = ("mlp.fc2.bias", (d,), same)
    for n in ("1", "2"):
      per_layer[(f"ln{n}", "scale")] = (f"layer_norm{n}.weight", (d,), same)
      per_layer[(f"ln{n}", "bias")] = (f"layer_norm{n}.bias", (d,), same)
    return {(ours, "layers") + path: [hf_text.Source((f"{theirs}.encoder.layers.{i}.{key}",), shape, fn)
                                      for i in range(c.num_hidden_layers)]
            for path, (key, shape, fn) in per_layer.items()}

  v, t, p = cfg.vision, cfg.text, cfg.projection_dim
  e = "vision_model.embeddings"
  table = {
      ("vision", "patch_embed", "kernel"): hf_text.Source(
          (f"{e}.patch_embedding.weight",),
          (v.hidden_size, v.num_channels, v.patch_size, v.patch_size),
          lambda w: w.transpose(2, 3, 1, 0)),      # torch conv [O, I, kh, kw] -> [kh, kw, I, O]
      ("vision", "class_embed"): hf_text.Source((f"{e}.class_embedding",), (v.hidden_size,)),
      ("vision", "pos_embed"): hf_text.Source((f"{e}.position_embedding.weight",),
                                      (v.num_positions, v.hidden_size)),
      ("text", "token_embed"): hf_text.Source(("text_model.embeddings.token_embedding.weight",),
                                      (t.vocab_size, t.hidden_size)),
      ("text", "pos_embed"): hf_text.Source(("text_model.embeddings.position_embedding.weight",),
                                    (t.max_position_embeddings, t.hidden_size)),
      ("visual_projection", "kernel"): hf_text.Source(("visual_projection.weight",), (p, v.hidden_size),
                                              transpose),
      ("text_projection", "kernel"): hf_text.Source(("text_projection.weight",), (p, t.hidden_size),
                                            transpose),
  }
  table.update(ln(("vision", "pre_norm"), "vision_model.pre_layrnorm", v.hidden_size))
  table.update(ln(("vision", "post_norm"), "vision_model.post_layernorm", v.hidden_size))
  table.update(ln(("text", "final_norm"), "text_model.final_layer_norm", t.hidden_size))
  table.update(tower(v, "vision", "vision_model"))
  table.update(tower(t, "text", "text_model"))
  return table


def ignored(key: str) -> bool:
  """Checkpoint keys CLIP embeddings do not use: the logit temperature and position-id buffers."""
  return key == "logit_scale" or key.endswith("embeddings.position_ids")


def load(path: str, dtype: str = "float32"):
  """A local Hugging Face CLIPModel folder -> (CLIPConfig, params (numpy float32), ClipTokenizer).

  Missing, unexpected or mis-shaped keys raise one ValueError naming each key (headers are
  checked before any tensor is read)."""
  snapshot = hf_text.Snapshot(path)
  cfg = CLIPConfig.from_hf(snapshot.config, dtype=dtype)
  params = hf_text.convert(snapshot, key_map(cfg), ignored)
  # The key map must build exactly the module's tree; a mismatch here is a bug in this file.
  want = jax.tree_util.tree_map(lambda s: s.shape, abstract_params(cfg))
  got = jax.tree_util.tree_map(lambda a: a.shape, params)
  if want != got:
    raise AssertionError(f"CLIP key map builds {got}, the module wants {want}")
  return cfg, params, ClipTokenizer(path, cfg.text.max_position_embeddings)
