"""Text -> images: text encoder -> base decode -> (optional) super-res decode -> VQ decoder.

  pipe = Pipeline(PipelinePaths(base="/ckpt/base", tokenizer="/ckpt/vq_f16",
                              superres="/ckpt/superres", tokenizer_hi="/ckpt/vq_f8"))
  out = pipe.generate(["a red cube left of a blue ball"], SampleConfig(num_images=4, seed=0))
  out.images_BxHxWx3   # numpy float32 in [0, 1], prompt-major (prompt p, image k at p * 4 + k)

Every checkpoint and tokenizer is checked against the others when the pipeline is built (stage
names, text width, codebooks, token grids), so a mismatched set fails at once with a message
naming both sides. Sampling is one jitted function (base decode, super-res decode and the VQ
decoder inside it) over a (data, fsdp, tensor) mesh of all devices, `mesh` as in a training
config (default: all data-parallel): the base and super-res params are placed by their logical
axes under the training rules (parallel/axes.py: embeddings over fsdp, heads and MLP over
tensor), as is the text encoder, so a model too big for one chip samples over several; the
tokenizers' params are replicated. Every param is an explicit jit argument, never closed over.
The batch is split over the data and fsdp axes and the images are gathered to the host
(`process_allgather` with several processes; each process passes the same prompts).

Editing (muse_jax/editing.py) calls the same jitted function with partly known initial tokens.
The same (prompts, settings, seed) gives the same images; rows are decoded together, so the batch's
composition (number of prompts, num_images, device count) is part of what the seed determines.
"""
import dataclasses
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from muse_jax import checkpoint, decoding, errors
from muse_jax import tokenizer as tokenizer_lib
from muse_jax.models import text_encoder as text_encoder_lib
from muse_jax.models.superres import SuperResConfig, SuperResTransformer
from muse_jax.models.transformer import MaskedTransformer, TransformerConfig
from muse_jax.models.vqgan import VQGAN, VQGANConfig
from muse_jax.parallel import axes, mesh as mesh_lib


PipelineError = errors.PipelineError   # a user mistake (errors.py): reported without a traceback


@dataclasses.dataclass(frozen=True)
class PipelinePaths:
  """Where the parts are. base / superres: training workdirs (or their checkpoints/STEP folders,
  or muse-ema exports). tokenizer: muse-convert folder or vqgan workdir for the base tokens;
  tokenizer_hi: the same for the super-res tokens (needed with superres). text_encoder: the text
  encoder's snapshot folder (Hugging Face or muse-convert), in place of the text_encoder.path the
  base checkpoint records (a T5 run whose config never set it, or a snapshot that moved); it must
  be the encoder the stages were trained on (kind and width are checked)."""
  base: str
  tokenizer: str
  superres: Optional[str] = None
  tokenizer_hi: Optional[str] = None
  text_encoder: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """How to sample. base / superres: decoding settings of each stage (guidance_scale > 0 turns on
  classifier-free guidance; Muse raises it linearly over the steps: guidance_schedule "linear")."""
  num_images: int = 1
  seed: int = 0
  base: decoding.DecodeConfig = decoding.DecodeConfig(
      num_steps=decoding.DEFAULT_NUM_STEPS["base"], guidance_scale=4.0)
  superres: decoding.DecodeConfig = decoding.DecodeConfig(
      num_steps=decoding.DEFAULT_NUM_STEPS["superres"], guidance_scale=4.0)

  def __post_init__(self):
    if not isinstance(self.num_images, (int, np.integer)) or self.num_images < 1:
      raise PipelineError(f"num_images must be a positive integer, got {self.num_images!r}")
    if not isinstance(self.seed, (int, np.integer)):
      raise PipelineError(f"seed must be an integer, got {self.seed!r}")


@dataclasses.dataclass
class Samples:
  """Host-side results, one row per image (prompt-major). tokens_hi_BxM is None without
  super-res; images are at the super-res tokenizer's resolution when there is one."""
  images_BxHxWx3: np.ndarray
  tokens_lo_BxN: np.ndarray
  tokens_hi_BxM: Optional[np.ndarray]
  prompts: list


def _stage_config(path: str, stage: str, role: str) -> dict:
  try:
    config = checkpoint.load_config(path)
  except (OSError, ValueError) as e:        # CheckpointError is a ValueError (errors.py)
    raise PipelineError(f"{role} checkpoint {path} cannot be read: {e}") from e
  got = config.get("stage")
  if got != stage:
    raise PipelineError(f"{role} checkpoint {path} is of stage {got!r}; expected a {stage!r} "
                        f"checkpoint (train it with configs/{stage}.py)")
  return config


def superres_logits_fn(model: SuperResTransformer, params, tokens_lo_BxN, txt_BxTxC,
                       txt_mask_BxT, negative_txt_BxTxC=None, negative_txt_mask_BxT=None, *,
                       guidance: bool = True) -> decoding.LogitsFn:
  """A decoding.LogitsFn for the super-res model: the context (low-res stream + projected text) is
  encoded once (decoding.guided_logits_fn); with guidance both halves of the doubled batch keep
  the low-res tokens."""
  b = tokens_lo_BxN.shape[0]

  def encode(txt_BxTxC, txt_mask_BxT):
    copies = txt_BxTxC.shape[0] // b      # 2 with guidance: [text; negative or no text]
    return model.apply({"params": params}, jnp.concatenate([tokens_lo_BxN] * copies),
                       txt_BxTxC, txt_mask_BxT, method="encode_context")

  def logits(tokens_BxM, context):
    return model.apply({"params": params}, tokens_BxM, *context, method="logits_from_context")

  return decoding.guided_logits_fn(encode, logits, txt_BxTxC, txt_mask_BxT, negative_txt_BxTxC,
                                   negative_txt_mask_BxT, codebook_size=model.cfg.codebook_size,
                                   guidance=guidance)


@dataclasses.dataclass(frozen=True)
class Cascade:
  """The sampling program from configs alone, no weights: what Pipeline runs on loaded params
  and what muse-fit compiles for a TPU topology. vq_cfg: the output tokenizer (the high-res one
  with super-res); text_length: tokens per prompt of the text states."""
  base_cfg: TransformerConfig
  sr_cfg: Optional[SuperResConfig]
  vq_cfg: VQGANConfig
  text_length: int

  def __post_init__(self):
    """The stages must fit together (Pipeline checks the same, naming the checkpoints first)."""
    last = self.sr_cfg or self.base_cfg
    if self.vq_cfg.codebook_size != last.codebook_size:
      raise ValueError(f"the output tokenizer has {self.vq_cfg.codebook_size} codes but the last "
                       f"stage predicts {last.codebook_size}")
    s, b = self.sr_cfg, self.base_cfg
    if s is not None and (s.lo_grid_size != b.grid_size or s.lo_codebook_size != b.codebook_size):
      raise ValueError(f"the super-res config reads a {s.lo_grid_size}x{s.lo_grid_size} grid of "
                       f"{s.lo_codebook_size} codes but the base makes {b.grid_size}x"
                       f"{b.grid_size} of {b.codebook_size}")
    if s is not None and s.text_dim != b.text_dim:
      raise ValueError(f"super-res text width {s.text_dim} != base {b.text_dim}")

  @property
  def output_grid(self) -> int:
    return self.sr_cfg.hi_grid_size if self.sr_cfg is not None else self.base_cfg.grid_size

  def abstract_boxed(self):
    """(base, super-res or None) boxed abstract params: shapes and logical axes."""
    ids = lambda n: jax.ShapeDtypeStruct((1, n), jnp.int32)
    text = (jax.ShapeDtypeStruct((1, self.text_length, self.base_cfg.text_dim), jnp.float32),
            jax.ShapeDtypeStruct((1, self.text_length), jnp.bool_))
    init = lambda model, *args: jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
    base = init(MaskedTransformer(self.base_cfg), ids(self.base_cfg.seq_len), *text)
    sr = None
    if self.sr_cfg is not None:
      sr = init(SuperResTransformer(self.sr_cfg), ids(self.sr_cfg.hi_seq_len),
                ids(self.sr_cfg.lo_seq_len), *text)
    return base, sr

  @staticmethod
  def param_shardings(boxed_pair, mesh, rules):
    """abstract_boxed()'s (base, super-res or None) -> their shardings by their logical axes
    under `rules`."""
    return tuple(None if boxed is None else mesh_lib.tree_shardings(mesh, rules, boxed)
                 for boxed in boxed_pair)

  def decode_images(self, vq_params, tokens_BxK):
    """Traceable: output-tokenizer ids (flat grid) -> images in [0, 1], float32."""
    model, (lo, hi), g = VQGAN(self.vq_cfg), self.vq_cfg.pixel_range, self.output_grid
    img = model.apply({"params": vq_params}, tokens_BxK.reshape(-1, g, g), method=model.decode)
    return jnp.clip((img.astype(jnp.float32) - lo) / (hi - lo), 0.0, 1.0)

  def sample_fn(self, base_dc: decoding.DecodeConfig, sr_dc: Optional[decoding.DecodeConfig],
                negative: bool):
    """Traceable sample(base_params, sr_params, vq_params, rng, txt, txt_mask, neg_txt,
    neg_mask, init_lo_BxN, init_hi_BxM) -> (images, tokens_lo, tokens_hi): base decode,
    super-res decode, VQ decode (Pipeline.shard_jit's signature)."""
    base_model = MaskedTransformer(self.base_cfg)
    sr_model = SuperResTransformer(self.sr_cfg) if self.sr_cfg is not None else None

    def sample(base_params, sr_params, vq_params, rng, txt, txt_mask, neg_txt, neg_mask,
               init_lo_BxN, init_hi_BxM):
      base_rng, sr_rng = jax.random.split(rng)
      neg = (neg_txt, neg_mask) if negative else (None, None)
      fn = decoding.transformer_logits_fn(base_model, base_params, txt, txt_mask, *neg,
                                          guidance=base_dc.guidance_scale > 0)
      tokens_lo = decoding.decode(fn, init_lo_BxN, base_rng, base_dc, self.base_cfg.mask_id)
      tokens_hi = None
      if sr_model is not None:
        fn = superres_logits_fn(sr_model, sr_params, tokens_lo, txt, txt_mask, *neg,
                                guidance=sr_dc.guidance_scale > 0)
        tokens_hi = decoding.decode(fn, init_hi_BxM, sr_rng, sr_dc, self.sr_cfg.mask_id)
      img = self.decode_images(vq_params, tokens_lo if tokens_hi is None else tokens_hi)
      return img, tokens_lo, tokens_hi

    return sample


class Pipeline:
  """Loaded, checked parts and the jitted samplers. Build with `Pipeline(PipelinePaths(...))`."""

  def __init__(self, paths: PipelinePaths, devices=None, mesh: Optional[dict] = None):
    """mesh: {"data": ., "fsdp": ., "tensor": .} sizes (one may be -1: the rest of the devices);
    None: all data-parallel (every device holds every param)."""
    if (paths.superres is None) != (paths.tokenizer_hi is None):
      raise PipelineError("super-resolution needs both a super-res checkpoint and the high-res "
                          "tokenizer (--superres with --tokenizer-hi); got only one")
    self.paths = paths
    devices = jax.devices() if devices is None else list(devices)
    mesh = {"data": -1, "fsdp": 1, "tensor": 1} if mesh is None else mesh
    try:
      self.mesh = mesh_lib.make_mesh({**{a: 1 for a in axes.MESH_AXES}, **mesh}, devices)
    except (ValueError, KeyError) as e:
      raise PipelineError(f"mesh {mesh}: {e}") from e
    self.rules = axes.DEFAULT_RULES
    self.num_shards = mesh_lib.batch_axis_size(self.mesh, self.rules)
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = mesh_lib.logical_sharding(self.mesh, self.rules, (axes.BATCH,))

    base_config = _stage_config(paths.base, "base", "base")
    self.base_cfg = TransformerConfig(**base_config["model"])
    self.text_cfg = self._text_config(base_config["text_encoder"])
    self.tokenizer = self._load_tokenizer(paths.tokenizer, "--tokenizer")
    self._check(self.tokenizer.cfg.codebook_size == self.base_cfg.codebook_size,
                f"tokenizer {paths.tokenizer} has {self.tokenizer.cfg.codebook_size} codes but "
                f"base checkpoint {paths.base} was trained on {self.base_cfg.codebook_size}")
    self.sr_cfg = self.tokenizer_hi = None
    if paths.superres is not None:
      sr_config = _stage_config(paths.superres, "superres", "super-res")
      self.sr_cfg = SuperResConfig(**sr_config["model"])
      c, b = self.sr_cfg, self.base_cfg
      self._check(c.lo_grid_size == b.grid_size and c.lo_codebook_size == b.codebook_size,
                  f"super-res checkpoint {paths.superres} reads a {c.lo_grid_size}x"
                  f"{c.lo_grid_size} grid of {c.lo_codebook_size} codes but base checkpoint "
                  f"{paths.base} makes {b.grid_size}x{b.grid_size} of {b.codebook_size}")
      self._check(c.text_dim == b.text_dim,
                  f"super-res checkpoint {paths.superres} takes text states of width "
                  f"{c.text_dim} but the base checkpoint's are {b.text_dim}")
      sr_text = dict(sr_config.get("text_encoder") or {})
      # With paths.text_encoder both stages read that snapshot: only the kinds must agree.
      for field in ("kind",) if paths.text_encoder else ("kind", "path"):
        self._check(sr_text.get(field, getattr(self.text_cfg, field)) ==
                    getattr(self.text_cfg, field),
                    f"super-res checkpoint {paths.superres} was trained with text_encoder."
                    f"{field}={sr_text.get(field)!r} but the base with "
                    f"{getattr(self.text_cfg, field)!r}; both stages need the same encoder")
      self.tokenizer_hi = self._load_tokenizer(paths.tokenizer_hi, "--tokenizer-hi")
      self._check(self.tokenizer_hi.cfg.codebook_size == c.codebook_size,
                  f"high-res tokenizer {paths.tokenizer_hi} has "
                  f"{self.tokenizer_hi.cfg.codebook_size} codes but super-res checkpoint "
                  f"{paths.superres} predicts {c.codebook_size}")
    try:
      self.text_encoder = text_encoder_lib.load(self.text_cfg, mesh=self.mesh)
    except (ValueError, OSError, ImportError) as e:
      raise PipelineError(f"the text encoder of base checkpoint {paths.base} (kind "
                          f"{self.text_cfg.kind!r}, path {self.text_cfg.path or 'bundled'!r}) "
                          f"cannot be loaded: {e}") from e
    self._check(self.text_encoder.width == self.base_cfg.text_dim,
                f"text encoder {self.text_cfg.kind!r} at {self.text_cfg.path or 'bundled'!r} "
                f"makes states of width {self.text_encoder.width} but base checkpoint "
                f"{paths.base} was trained on width model.text_dim={self.base_cfg.text_dim}: "
                f"not the encoder it was trained with")

    self.cascade = Cascade(self.base_cfg, self.sr_cfg, self.output_tokenizer.cfg,
                           self.text_cfg.max_length)
    base_abstract, sr_abstract = boxed = self.cascade.abstract_boxed()
    self.base_shardings, self.sr_shardings = Cascade.param_shardings(boxed, self.mesh, self.rules)
    self.base_params = self._place_params(paths.base, base_abstract, self.base_shardings)
    self.sr_params = None
    if self.has_superres:
      self.sr_params = self._place_params(paths.superres, sr_abstract, self.sr_shardings)
    self._samplers = {}

  def _place_params(self, path: str, boxed, shardings):
    """The params of the checkpoint at `path`, checked against the model its config describes
    (`boxed`, abstract) and placed by `shardings` one leaf at a time (each process supplies the
    slices its devices hold)."""
    host = checkpoint.load_params(path)
    try:
      checkpoint.check_same_shapes(nn.unbox(boxed), host, f"checkpoint {path}",
                                   "its params do not match the model its own config describes")
    except checkpoint.CheckpointError as e:
      raise PipelineError(str(e)) from e

    def place(x, sharding):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(place, host, shardings)

  def _text_config(self, recorded) -> text_encoder_lib.TextEncoderConfig:
    """The base checkpoint's text_encoder section, its path replaced by paths.text_encoder."""
    fields = dict(recorded)
    if self.paths.text_encoder:
      fields["path"] = self.paths.text_encoder
    if fields.get("kind") == "t5" and not fields.get("path"):
      raise PipelineError(
          f"base checkpoint {self.paths.base} was trained on T5 text states but records no "
          f"text_encoder.path; pass the T5 snapshot it was trained with (--text-encoder-path, "
          f"PipelinePaths.text_encoder)")
    try:
      return text_encoder_lib.TextEncoderConfig.from_config(fields)
    except ValueError as e:
      raise PipelineError(f"base checkpoint {self.paths.base}: {e}") from e

  @staticmethod
  def _check(ok: bool, message: str):
    if not ok:
      raise PipelineError(message)

  def _load_tokenizer(self, path: str, flag: str):
    try:
      return tokenizer_lib.Tokenizer(path, self.mesh)
    except (OSError, ValueError) as e:      # UsageError and CheckpointError are ValueErrors
      raise PipelineError(f"{flag} {path}: {e}") from e

  # Shapes -------------------------------------------------------------------------------------
  @property
  def has_superres(self) -> bool:
    return self.sr_cfg is not None

  @property
  def lo_resolution(self) -> int:
    """Image side the base tokens describe (base grid x base tokenizer factor)."""
    return self.base_cfg.grid_size * self.tokenizer.cfg.factor

  @property
  def resolution(self) -> int:
    """Side of the output images."""
    if self.has_superres:
      return self.sr_cfg.hi_grid_size * self.tokenizer_hi.cfg.factor
    return self.lo_resolution

  @property
  def output_tokenizer(self):
    return self.tokenizer_hi if self.has_superres else self.tokenizer

  @property
  def output_grid(self) -> int:
    return self.cascade.output_grid

  # Text ---------------------------------------------------------------------------------------
  def encode_text(self, prompts: Sequence[str], role: str = "prompt"):
    """prompts -> (states_BxTxC, mask_BxT) on the devices."""
    if isinstance(prompts, str):
      raise PipelineError(f"pass a list of {role}s, not a single string")
    for p in prompts:
      if not isinstance(p, str) or not p.strip():
        raise PipelineError(f"empty {role}: every {role} must contain some text, got {p!r}")
    states, mask = self.text_encoder.encode(list(prompts))
    return states, self.place(mask)

  def padded_batch(self, b: int) -> int:
    return -(-b // self.num_shards) * self.num_shards

  def place(self, x_BxK):
    """Host array (the same on every process) -> a global array with rows split over devices."""
    x = np.asarray(x_BxK)
    sharding = NamedSharding(self.mesh, P(self.batch_sharding.spec[0], *([None] * (x.ndim - 1))))
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  @staticmethod
  def to_host(x):
    """A global array -> numpy on every process."""
    if jax.process_count() > 1:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  # Sampling -----------------------------------------------------------------------------------
  def jitted(self, key, build):
    """The jitted function cached under `key`, built by build() on first use."""
    if key not in self._samplers:
      self._samplers[key] = build()
    return self._samplers[key]

  def vq_decode(self, vq_params, tokens_BxK):
    """Traceable: output-tokenizer ids (flat grid) -> images in [0, 1], float32."""
    return self.cascade.decode_images(vq_params, tokens_BxK)

  def shard_jit(self, fn):
    """jax.jit of fn(base_params, sr_params, vq_params, rng, txt, txt_mask, neg_txt, neg_mask,
    tokens_lo, tokens_hi) -> (images, tokens_lo, tokens_hi): the generators' params by their
    logical axes, the tokenizer's params and rng replicated, every batch argument and output
    split over the batch axes."""
    rep, bat = self.replicated, self.batch_sharding
    sr = self.sr_shardings if self.has_superres else rep
    return jax.jit(fn, in_shardings=(self.base_shardings, sr, rep, rep, bat, bat, bat, bat, bat,
                                     bat), out_shardings=(bat, bat, bat))

  def _sampler(self, base_dc: decoding.DecodeConfig, sr_dc: Optional[decoding.DecodeConfig],
               negative: bool):
    """The jitted sampler: base decode, super-res decode, VQ decode."""
    return self.jitted(("sample", base_dc, sr_dc, negative),
                       lambda: self.shard_jit(self.cascade.sample_fn(base_dc, sr_dc, negative)))

  def check_negative(self, guidance_scale: float, negative: bool, stage: str):
    if negative and guidance_scale <= 0:
      raise PipelineError(f"a negative prompt replaces the unconditional branch of classifier-"
                          f"free guidance; the {stage} guidance scale must be > 0, got "
                          f"{guidance_scale}")

  def prepare_text(self, prompts: Sequence[str], num_images: int,
                   negative_prompts: Optional[Sequence[str]] = None) -> dict:
    """Rows (prompt-major, each prompt num_images times), padded to a multiple of the devices,
    and their text states: {"rows", "b" (real rows), "bp" (padded), "txt", "txt_mask", "neg_txt",
    "neg_mask" (the prompt's own states, unused, when there is no negative prompt)}."""
    if isinstance(prompts, str):
      prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
      raise PipelineError("no prompts given; pass at least one")
    rows = [p for p in prompts for _ in range(num_images)]
    b = len(rows)
    bp = self.padded_batch(b)
    txt, txt_mask = self.encode_text(rows + [rows[-1]] * (bp - b))
    out = dict(rows=rows, b=b, bp=bp, txt=txt, txt_mask=txt_mask, neg_txt=txt, neg_mask=txt_mask)
    if negative_prompts is not None:
      negative_prompts = [negative_prompts] if isinstance(negative_prompts, str) else list(
          negative_prompts)
      if len(negative_prompts) == 1:
        negative_prompts = negative_prompts * len(prompts)
      if len(negative_prompts) != len(prompts):
        raise PipelineError(f"{len(negative_prompts)} negative prompts for {len(prompts)} "
                            f"prompts; give one, or one per prompt")
      neg_rows = [p for p in negative_prompts for _ in range(num_images)]
      out["neg_txt"], out["neg_mask"] = self.encode_text(
          neg_rows + [neg_rows[-1]] * (bp - b), "negative prompt")
    return out

  def execute(self, fn, seed: int, text: dict, init_lo_BxN=None, init_hi_BxM=None) -> Samples:
    """Runs a shard_jit function on prepared text and initial tokens (None: all masked)."""
    b, bp = text["b"], text["bp"]
    init_lo = self._init_tokens(init_lo_BxN, b, bp, self.base_cfg.seq_len, self.base_cfg.mask_id)
    init_hi = None
    if self.has_superres:
      init_hi = self._init_tokens(init_hi_BxM, b, bp, self.sr_cfg.hi_seq_len, self.sr_cfg.mask_id)
    elif init_hi_BxM is not None:
      raise PipelineError("high-res initial tokens need a super-res checkpoint")
    rng = jax.device_put(jax.random.key(seed), self.replicated)
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      img, tokens_lo, tokens_hi = fn(
          self.base_params, self.sr_params, self.output_tokenizer.params, rng, text["txt"],
          text["txt_mask"], text["neg_txt"], text["neg_mask"], self.place(init_lo),
          None if init_hi is None else self.place(init_hi))
    return Samples(images_BxHxWx3=self.to_host(img)[:b], tokens_lo_BxN=self.to_host(tokens_lo)[:b],
                   tokens_hi_BxM=None if tokens_hi is None else self.to_host(tokens_hi)[:b],
                   prompts=text["rows"])

  def generate(self, prompts: Sequence[str], cfg: SampleConfig = SampleConfig(),
               negative_prompts: Optional[Sequence[str]] = None, init_lo_BxN=None,
               init_hi_BxM=None) -> Samples:
    """Text -> images (Samples.images_BxHxWx3 in [0, 1]), one row per (prompt, image): prompts are repeated cfg.num_images times (prompt-major).
    init_lo_BxN / init_hi_BxM: per-row initial tokens (mask_id where to generate) for editing;
    None: all masked."""
    negative = negative_prompts is not None
    self.check_negative(cfg.base.guidance_scale, negative, "base")
    if self.has_superres:
      self.check_negative(cfg.superres.guidance_scale, negative, "super-res")
    text = self.prepare_text(prompts, cfg.num_images, negative_prompts)
    sampler = self._sampler(cfg.base, cfg.superres if self.has_superres else None, negative)
    return self.execute(sampler, cfg.seed, text, init_lo_BxN, init_hi_BxM)

  @staticmethod
  def _init_tokens(init, b, bp, n, mask_id):
    if init is None:
      return np.full((bp, n), mask_id, np.int32)
    init = np.asarray(init, np.int32)
    if init.shape != (b, n):
      raise PipelineError(f"initial tokens have shape {init.shape}; expected ({b}, {n}) (one "
                          f"row per image, the model's token grid)")
    if init.min() < 0 or init.max() > mask_id:
      raise PipelineError(f"initial tokens must be ids in [0, {mask_id}] ({mask_id} = [MASK])")
    return np.concatenate([init, np.repeat(init[-1:], bp - b, 0)])


def image_grid(images_BxHxWx3, cols: Optional[int] = None) -> np.ndarray:
  """Images in [0, 1] -> one float32 grid image in [0, 1] (rows of `cols`, default
  ceil(sqrt(B)); empty cells black)."""
  images = np.clip(np.asarray(images_BxHxWx3, np.float32), 0, 1)
  b, h, w, c = images.shape
  cols = cols or math.ceil(math.sqrt(b))
  rows = -(-b // cols)
  grid = np.zeros((rows * h, cols * w, c), np.float32)
  for i, im in enumerate(images):
    r, k = divmod(i, cols)
    grid[r * h:(r + 1) * h, k * w:(k + 1) * w] = im
  return grid


def lower_cascade(cascade: Cascade, text_model: nn.Module, mesh, rules, batch: int,
                  base_dc: decoding.DecodeConfig, sr_dc: Optional[decoding.DecodeConfig]):
  """The whole sampling program, text encoding included, lowered from shapes alone (muse-fit):
  (text encoder params, base params, super-res params, tokenizer params, rng, prompt ids, mask,
  initial tokens) -> (images, tokens_lo, tokens_hi) for `batch` prompts over `mesh`. The text
  encoder and generators' params are placed by their logical axes as Pipeline places them, the
  tokenizer's replicated, the batch split over the batch axes; every param stays resident, as in
  Pipeline, so the compiled memory is what sampling needs per chip."""
  t = cascade.text_length
  replicated = NamedSharding(mesh, P())
  batch_sharding = mesh_lib.logical_sharding(mesh, rules, (axes.BATCH,))

  def abstract(boxed, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nn.unbox(boxed), shardings)

  text_boxed = text_encoder_lib.abstract_params(text_model, t)
  text_shardings = mesh_lib.tree_shardings(mesh, rules, text_boxed)
  base_boxed, sr_boxed = boxed = cascade.abstract_boxed()
  base_shardings, sr_shardings = Cascade.param_shardings(boxed, mesh, rules)
  f = cascade.vq_cfg.factor     # the smallest image the tokenizer encodes: one token
  vq_boxed = jax.eval_shape(VQGAN(cascade.vq_cfg).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, f, f, 3), jnp.float32))["params"]
  vq = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                    nn.unbox(vq_boxed))
  # The key dtype taken outside the mesh: a compile-only mesh cannot run the key's creation.
  key = jax.ShapeDtypeStruct((), jax.eval_shape(jax.random.key, 0).dtype, sharding=replicated)
  rows = lambda shape, dtype: jax.ShapeDtypeStruct((batch, *shape), dtype,
                                                   sharding=batch_sharding)
  ids, mask = rows((t,), jnp.int32), rows((t,), jnp.bool_)
  init_lo = rows((cascade.base_cfg.seq_len,), jnp.int32)
  init_hi = rows((cascade.sr_cfg.hi_seq_len,), jnp.int32) if cascade.sr_cfg else None
  encode = text_encoder_lib.encode_fn(text_model)
  sample = cascade.sample_fn(base_dc, sr_dc, negative=False)

  def program(text_params, base_params, sr_params, vq_params, rng, ids_BxT, mask_BxT,
              init_lo_BxN, init_hi_BxM):
    txt = encode(text_params, ids_BxT, mask_BxT)
    return sample(base_params, sr_params, vq_params, rng, txt, mask_BxT, txt, mask_BxT,
                  init_lo_BxN, init_hi_BxM)

  # Unboxed outside the mesh context: there nn.unbox would add sharding constraints.
  args = (abstract(text_boxed, text_shardings), abstract(base_boxed, base_shardings),
          abstract(sr_boxed, sr_shardings) if sr_boxed is not None else None, vq, key, ids, mask,
          init_lo, init_hi)
  jitted = jax.jit(program, out_shardings=(batch_sharding,) * 3)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return jitted.lower(*args)
