"""Masked-token stages (base, super-res) trained from raw image–caption data: the frozen
tokenizer(s) and the frozen text encoder run on the training mesh at every step.

  --config.data.source=scenes|folder|webdataset|tfds --config.data.tokenizer=VQ_WORKDIR
  (super-res also --config.data.tokenizer_hi=VQ_F8_WORKDIR; the same path twice is allowed)

Host side, each record becomes {"image": [R, R, 3] in [0, 1], "txt_ids", "txt_mask"} (R =
the largest target resolution; decode, resize, crop and bad-record counting as in every image
stage). On the devices, one jitted function turns a global batch of those into what the stage's
train step reads: token ids per target (the image resized to the target's resolution first) and
text states, with the frozen params as explicit, placed arguments (never closed over: a T5-XXL
would be baked into the executable as a constant). Frozen params are not part of the train state,
so checkpoints stay the trained model's alone; a resumed run reloads them from their paths.

Pre-encoded shards (`muse-encode`, data.source=preencoded) are the fast path when the same
examples are seen many times; this path pays a tokenizer and text-encoder forward pass per
example per step, needs no encoding pass first, and sees random crops afresh every epoch.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax import tokenizer as tokenizer_lib
from muse_jax.data import preprocess, sources
from muse_jax.data.text import CaptionTokenizer
from muse_jax.models import text_encoder as text_encoder_lib
from muse_jax.models import vqgan
from muse_jax.parallel import axes

RAW_SOURCES = ("scenes", "folder", "webdataset", "tfds")


@dataclasses.dataclass(frozen=True)
class Target:
  """One token-id input of the stage: which batch key, from which tokenizer, at which image side,
  and what the model expects of it."""
  key: str               # batch key the ids go to ("tokens", "tokens_lo")
  path_field: str        # config field holding the tokenizer path ("tokenizer", "tokenizer_hi")
  resolution_field: str  # config field holding the image side ("resolution", "resolution_hi")
  grid_size: int         # model's token grid side
  codebook_size: int     # model's vocabulary of real codes
  grid_field: str        # model config field named in errors


def encoder_for(config, targets, text_length: int, text_dim: int, stage: str):
  """The stage's OnlineEncoder when config.data.source is a raw image source, else None."""
  if config.data.source not in RAW_SOURCES:
    return None
  return OnlineEncoder(config, targets, text_length, text_dim, stage)


class OnlineEncoder:
  """Raw batches -> the stage's batch through frozen tokenizers and text encoder (see module)."""

  def __init__(self, config, targets, text_length: int, text_dim: int, stage: str):
    d = config.data
    self.data, self.targets, self.stage = d, tuple(targets), stage
    self.text_length, self.text_dim = int(text_length), int(text_dim)
    self.text_cfg = text_encoder_lib.TextEncoderConfig.from_config(config.text_encoder)
    if self.text_cfg.max_length != self.text_length:
      raise ValueError(f"text_encoder.max_length={self.text_cfg.max_length} differs from "
                       f"data.text_length={self.text_length}; training from raw captions "
                       f"tokenizes them to data.text_length, so set both to the same value")
    self.resolutions = {t.key: int(d[t.resolution_field]) for t in self.targets}
    self.image_cfg = preprocess.ImageConfig(resolution=max(self.resolutions.values()),
                                            crop=d.crop, flip=d.flip, value_range=(0.0, 1.0))
    self.params = self.text = self._models = self._encode = self._mesh = self._rules = None

  # Host side ----------------------------------------------------------------------------------
  def _check_paths(self):
    for t in self.targets:
      if not self.data[t.path_field]:
        raise ValueError(
            f"data.source={self.data.source!r} trains stage {self.stage!r} from raw images through "
            f"a frozen tokenizer, and data.{t.path_field} is empty: set it to a tokenizer training "
            f"workdir (stage vqgan / decoder_finetune) or a muse-convert folder, or train from "
            f"pre-encoded shards (data.source=preencoded, written by muse-encode)")

  def make_source(self):
    self._check_paths()
    return sources.image_text_source(self.data)

  def make_transform(self, counter):
    tokenizer = CaptionTokenizer(text_encoder_lib.snapshot_path(self.text_cfg),
                                 self.text_cfg.max_length)
    return preprocess.ImageTextProcessor(self.image_cfg, tokenizer, counter)

  def fixed_transform(self, counter):
    """Like make_transform, but the same every time (centre crop, no flip), with the caption and
    without its ids: for the fixed records of the sample grids (tasks/samples.py)."""
    cfg = dataclasses.replace(self.image_cfg, crop="center", flip=False)
    return preprocess.ImageTextProcessor(cfg, None, counter, keep_caption=True)

  def host_spec(self, batch_size: int) -> dict:
    """name -> (ShapeDtypeStruct, logical axes) of one global batch as the host assembles it."""
    r, t = self.image_cfg.resolution, self.text_length
    return {
        "image": (jax.ShapeDtypeStruct((batch_size, r, r, 3), jnp.float32),
                  (axes.BATCH, None, None, None)),
        "txt_ids": (jax.ShapeDtypeStruct((batch_size, t), jnp.int32),
                    (axes.BATCH, axes.TEXT_LENGTH)),
        "txt_mask": (jax.ShapeDtypeStruct((batch_size, t), jnp.bool_),
                     (axes.BATCH, axes.TEXT_LENGTH)),
    }

  # Devices ------------------------------------------------------------------------------------
  def load(self, mesh, rules, out_shardings: dict) -> None:
    """Reads the frozen models, checks that they fit the stage's model, places their params
    (tokenizers replicated, the text encoder sharded by its logical axes) and jits the encoding.
    Raises ValueError naming the mismatch before any training step."""
    self._check_paths()
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    models, vq_params = {}, {}
    for t in self.targets:
      path = self.data[t.path_field]
      try:
        cfg, params = tokenizer_lib.load_tokenizer(path)
      except tokenizer_lib.UsageError as e:
        raise ValueError(f"data.{t.path_field}: {e}") from e
      res = self.resolutions[t.key]
      if res % cfg.factor or res // cfg.factor != t.grid_size:
        raise ValueError(
            f"data.{t.path_field}={path} downsamples by {cfg.factor}, so data.{t.resolution_field}"
            f"={res} gives a {res / cfg.factor:g}x{res / cfg.factor:g} token grid, but "
            f"model.{t.grid_field}={t.grid_size}: set data.{t.resolution_field}="
            f"{t.grid_size * cfg.factor}")
      if cfg.codebook_size != t.codebook_size:
        raise ValueError(f"data.{t.path_field}={path} has {cfg.codebook_size} codes but the "
                         f"{self.stage} model's {t.key} vocabulary is {t.codebook_size}")
      models[t.key] = vqgan.VQGAN(cfg)
      vq_params[t.key] = jax.device_put(jax.tree.map(np.asarray, params), replicated)
    text = text_encoder_lib.load(self.text_cfg, mesh, rules)
    if text.width != self.text_dim:
      raise ValueError(f"text_encoder ({self.text_cfg.kind}, {text.cfg.path or 'bundled'}) gives "
                       f"{text.width}-d states but model.text_dim={self.text_dim}")
    text_fn = text_encoder_lib.encode_fn(text.model)
    resolutions = self.resolutions

    def encode(params, raw):
      out = {k: vqgan.encode_unit_images(m, params[k], raw["image"], resolutions[k])
             for k, m in models.items()}
      out["txt"] = text_fn(params["text"], raw["txt_ids"], raw["txt_mask"])
      out["txt_mask"] = raw["txt_mask"]
      return out

    self.params = {**vq_params, "text": text.params}
    self.text, self._models = text, models
    self._encode = jax.jit(encode, out_shardings=out_shardings)
    self._mesh, self._rules = mesh, rules

  def loaded_tokenizer(self, path_field: str):
    """(VQGAN, placed params) of the tokenizer load() read from data.<path_field>, or None when
    no target reads that field (the sample grids reuse them)."""
    for t in self.targets:
      if t.path_field == path_field and self._models is not None:
        return self._models[t.key], self.params[t.key]
    return None

  def __call__(self, raw: dict) -> dict:
    """A global raw batch (jax.Arrays) -> the stage's batch, on the devices."""
    with jax.set_mesh(self._mesh), nn.logical_axis_rules(self._rules):
      return self._encode(self.params, raw)
