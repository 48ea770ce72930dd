"""Image editing with the sampling pipeline (Muse section 2.7): other initial tokens, same decoder.

Inpainting / outpainting: the image is tokenized; every token whose f x f patch touches the region
to repaint (mask True; for outpainting, everything outside the box to keep) becomes [MASK], and
`decoding.decode` fills those under the prompt while the others stay exactly as they were. With a
super-res model this is the paper's multi-scale variant: the base tokens (image resized to the base
resolution) are inpainted first, then the high-res tokens of the region are decoded conditioned on
the inpainted base tokens, high-res tokens outside the region kept.

Mask-free editing: start from the image's tokens; for `num_iterations` iterations, a random
`fraction` of the positions (ceil(fraction * N) per row; 8% by default) is set to [MASK] and
resampled under the new prompt with classifier-free guidance (default 4) and top-k sampling
(default k = 3). Zero iterations returns the image's tokens; each iteration changes at most
ceil(fraction * N) tokens. With a super-res model the base tokens are edited first, then the
high-res tokens of the image the same way, conditioned on the edited base tokens (the paper uses
100 iterations).

Images are float32 HxWx3 in [0, 1] at the pipeline's output resolution (`Pipeline.resolution`);
masks are bool HxW.
"""
import dataclasses
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from muse_jax import decoding
from muse_jax.models.superres import SuperResTransformer
from muse_jax.models.transformer import MaskedTransformer
from muse_jax.pipeline import Pipeline, PipelineError, SampleConfig, Samples, superres_logits_fn


@dataclasses.dataclass(frozen=True)
class MaskFreeConfig:
  """Mask-free editing. num_iterations: resampling rounds (paper: 100). fraction: share of the
  positions resampled per round. guidance_scale: constant classifier-free guidance. top_k: tokens
  sampled among the k most likely. temperature: of that sampling (0: argmax)."""
  num_iterations: int = 100
  fraction: float = 0.08
  guidance_scale: float = 4.0
  top_k: int = 3
  temperature: float = 1.0

  def __post_init__(self):
    if not isinstance(self.num_iterations, (int, np.integer)) or self.num_iterations < 0:
      raise ValueError(f"mask-free num_iterations must be an integer >= 0, got "
                       f"{self.num_iterations!r}")
    if not 0.0 < self.fraction <= 1.0:
      raise ValueError(f"mask-free fraction must be in (0, 1], got {self.fraction!r}")
    if not isinstance(self.top_k, (int, np.integer)) or self.top_k < 1:
      raise ValueError(f"mask-free top_k must be a positive integer, got {self.top_k!r}")
    for f in ("guidance_scale", "temperature"):
      if not np.isfinite(getattr(self, f)) or getattr(self, f) < 0:
        raise ValueError(f"mask-free {f} must be finite and >= 0, got {getattr(self, f)!r}")

  def count(self, n: int) -> int:
    """Positions resampled per iteration out of n."""
    return min(n, math.ceil(self.fraction * n))


# Masks ------------------------------------------------------------------------------------------
def token_region(mask_HxW, grid: int) -> np.ndarray:
  """Pixel mask -> region_N (bool, row-major over grid x grid): True where the token's patch
  (H / grid pixels a side) holds any masked pixel."""
  mask_HxW = np.asarray(mask_HxW, bool)
  h, w = mask_HxW.shape
  if h % grid or w % grid:
    raise PipelineError(f"mask of {h}x{w} pixels does not split into a {grid}x{grid} token grid")
  ph, pw = h // grid, w // grid
  return mask_HxW.reshape(grid, ph, grid, pw).any(axis=(1, 3)).reshape(-1)


def keep_box_mask(height: int, width: int, box: Sequence[int]) -> np.ndarray:
  """Outpainting mask: True (regenerate) everywhere outside box = (x0, y0, x1, y1) in pixels,
  x1 / y1 exclusive."""
  x0, y0, x1, y1 = (int(v) for v in box)
  if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
    raise PipelineError(f"keep box {tuple(box)} must satisfy 0 <= x0 < x1 <= {width} and "
                        f"0 <= y0 < y1 <= {height} (pixels of the {width}x{height} image)")
  mask = np.ones((height, width), bool)
  mask[y0:y1, x0:x1] = False
  return mask


def check_image(pipe: Pipeline, image_HxWx3) -> np.ndarray:
  """The image as float32 in [0, 1], or PipelineError when its size does not fit the pipeline."""
  image = np.asarray(image_HxWx3, np.float32)
  if image.ndim != 3 or image.shape[2] != 3:
    raise PipelineError(f"image must be HxWx3 (RGB), got shape {image.shape}")
  h, w, _ = image.shape
  tok = pipe.output_tokenizer
  f, g = tok.cfg.factor, pipe.output_grid
  if h % f or w % f:
    raise PipelineError(f"image of {w}x{h} pixels: sides are not divisible by the tokenizer's "
                        f"downsampling factor {f} ({tok.path}); expected {pipe.resolution}x"
                        f"{pipe.resolution}")
  if h != w or h // f != g:
    raise PipelineError(f"image of {w}x{h} pixels gives a {w // f}x{h // f} token grid but the "
                        f"model expects {g}x{g}; resize it to {pipe.resolution}x"
                        f"{pipe.resolution}")
  return image


def check_mask(image_HxWx3, mask_HxW) -> np.ndarray:
  mask = np.asarray(mask_HxW)
  if mask.shape != image_HxWx3.shape[:2]:
    raise PipelineError(f"mask of shape {mask.shape[:2]} (HxW) does not match the image's "
                        f"{image_HxWx3.shape[:2]}; the mask must have the image's size")
  return mask.astype(bool)


def image_tokens(pipe: Pipeline, image_HxWx3):
  """(tokens_lo_N, tokens_hi_M or None): the image's base tokens (image resized to the base
  resolution) and, with super-res, its high-res tokens."""
  image = check_image(pipe, image_HxWx3)[None]
  shards = pipe.num_shards
  lo = pipe.tokenizer.encode(image, pipe.lo_resolution, shards)[0]
  hi = None
  if pipe.has_superres:
    hi = pipe.tokenizer_hi.encode(image, pipe.resolution, shards)[0]
  return lo.astype(np.int32), None if hi is None else hi.astype(np.int32)


# Inpainting / outpainting -----------------------------------------------------------------------
@dataclasses.dataclass
class EditResult:
  """samples: the edited images and tokens. original_lo_N / original_hi_M: the image's tokens.
  region_lo_N / region_hi_M: the token positions that were regenerated (True)."""
  samples: Samples
  original_lo_N: np.ndarray
  original_hi_M: Optional[np.ndarray]
  region_lo_N: np.ndarray
  region_hi_M: Optional[np.ndarray]


def inpaint(pipe: Pipeline, image_HxWx3, mask_HxW, prompt: str, cfg: SampleConfig = SampleConfig(),
            negative_prompt: Optional[str] = None) -> EditResult:
  """Regenerates the tokens whose patches touch mask_HxW (True = repaint) under `prompt`; every
  other token is kept exactly. cfg.num_images edits from one image."""
  image = check_image(pipe, image_HxWx3)
  mask = check_mask(image, mask_HxW)
  if not mask.any():
    raise PipelineError("the mask selects no pixels: mark the region to repaint in white")
  tokens_lo, tokens_hi = image_tokens(pipe, image)
  region_lo = token_region(mask, pipe.base_cfg.grid_size)
  init_lo = np.where(region_lo, pipe.base_cfg.mask_id, tokens_lo)
  init_hi = region_hi = None
  if pipe.has_superres:
    region_hi = token_region(mask, pipe.sr_cfg.hi_grid_size)
    init_hi = np.where(region_hi, pipe.sr_cfg.mask_id, tokens_hi)
  rows = cfg.num_images
  samples = pipe.generate([prompt], cfg, None if negative_prompt is None else [negative_prompt],
                     init_lo_BxN=np.repeat(init_lo[None], rows, 0),
                     init_hi_BxM=None if init_hi is None else np.repeat(init_hi[None], rows, 0))
  return EditResult(samples, tokens_lo, tokens_hi, region_lo, region_hi)


def outpaint(pipe: Pipeline, image_HxWx3, prompt: str, keep_box: Optional[Sequence[int]] = None,
             mask_HxW=None, cfg: SampleConfig = SampleConfig(),
             negative_prompt: Optional[str] = None) -> EditResult:
  """Extends the image beyond keep_box = (x0, y0, x1, y1) (or beyond the pixels where mask_HxW is
  False: mask True = generate), keeping the tokens inside it."""
  image = check_image(pipe, image_HxWx3)
  if (keep_box is None) == (mask_HxW is None):
    raise PipelineError("outpainting needs exactly one of a keep box (x0, y0, x1, y1) or a mask")
  mask = (keep_box_mask(image.shape[0], image.shape[1], keep_box) if keep_box is not None
          else check_mask(image, mask_HxW))
  return inpaint(pipe, image, mask, prompt, cfg, negative_prompt)


# Mask-free editing ------------------------------------------------------------------------------
def top_k_sample(rng, logits_BxNxV, top_k: int, temperature: float):
  """ids_BxN sampled from softmax(logits / temperature) restricted to the top_k logits (argmax at
  temperature 0)."""
  logits = logits_BxNxV.astype(jnp.float32)
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  k = min(top_k, logits.shape[-1])
  kth_BxNx1 = jax.lax.top_k(logits, k)[0][..., -1:]
  logits = jnp.where(logits >= kth_BxNx1, logits / temperature, -jnp.inf)
  return decoding.sample_categorical(rng, logits)


def resample_tokens(logits_fn: decoding.LogitsFn, tokens_BxN, rng, cfg: MaskFreeConfig,
                    mask_id: int):
  """cfg.num_iterations rounds: per row, cfg.count(N) random positions are masked and resampled
  (one forward pass each); iteration i uses fold_in(rng, i). Jittable (a fori_loop)."""
  tokens_BxN = jnp.asarray(tokens_BxN, jnp.int32)
  b, n = tokens_BxN.shape
  k = cfg.count(n)
  g = jnp.float32(cfg.guidance_scale)

  def body(i, tokens):
    choose_rng, sample_rng = jax.random.split(jax.random.fold_in(rng, i))
    rank_BxN = jnp.argsort(jnp.argsort(jax.random.uniform(choose_rng, (b, n)), -1), -1)
    chosen_BxN = rank_BxN < k
    logits = logits_fn(jnp.where(chosen_BxN, mask_id, tokens), g)[..., :mask_id]
    sampled = top_k_sample(sample_rng, logits, cfg.top_k, cfg.temperature)
    return jnp.where(chosen_BxN, sampled, tokens)

  return jax.lax.fori_loop(0, cfg.num_iterations, body, tokens_BxN)


def _maskfree_fn(pipe: Pipeline, cfg: MaskFreeConfig, negative: bool):
  base_model = MaskedTransformer(pipe.base_cfg)
  sr_model = SuperResTransformer(pipe.sr_cfg) if pipe.has_superres else None
  guidance = cfg.guidance_scale > 0

  def edit(base_params, sr_params, vq_params, rng, txt, txt_mask, neg_txt, neg_mask,
           tokens_lo, tokens_hi):
    lo_rng, hi_rng = jax.random.split(rng)
    neg = (neg_txt, neg_mask) if negative else (None, None)
    fn = decoding.transformer_logits_fn(base_model, base_params, txt, txt_mask, *neg,
                                        guidance=guidance)
    tokens_lo = resample_tokens(fn, tokens_lo, lo_rng, cfg, pipe.base_cfg.mask_id)
    if sr_model is not None:
      fn = superres_logits_fn(sr_model, sr_params, tokens_lo, txt, txt_mask, *neg,
                              guidance=guidance)
      tokens_hi = resample_tokens(fn, tokens_hi, hi_rng, cfg, pipe.sr_cfg.mask_id)
    img = pipe.vq_decode(vq_params, tokens_lo if sr_model is None else tokens_hi)
    return img, tokens_lo, tokens_hi

  return pipe.jitted(("maskfree", cfg, negative), lambda: pipe.shard_jit(edit))


def maskfree_edit(pipe: Pipeline, image_HxWx3, prompt: str, cfg: MaskFreeConfig = MaskFreeConfig(),
                  num_images: int = 1, seed: int = 0,
                  negative_prompt: Optional[str] = None) -> EditResult:
  """Edits the whole image toward `prompt` without a mask (module docstring). The result's
  region_* are all False (no fixed region)."""
  image = check_image(pipe, image_HxWx3)
  if not isinstance(num_images, (int, np.integer)) or num_images < 1:
    raise PipelineError(f"num_images must be a positive integer, got {num_images!r}")
  pipe.check_negative(cfg.guidance_scale, negative_prompt is not None, "mask-free")
  tokens_lo, tokens_hi = image_tokens(pipe, image)
  text = pipe.prepare_text([prompt], num_images,
                           None if negative_prompt is None else [negative_prompt])
  samples = pipe.execute(
      _maskfree_fn(pipe, cfg, negative_prompt is not None), seed, text,
      np.repeat(tokens_lo[None], num_images, 0),
      None if tokens_hi is None else np.repeat(tokens_hi[None], num_images, 0))
  return EditResult(samples, tokens_lo, tokens_hi, np.zeros(tokens_lo.shape, bool),
                    None if tokens_hi is None else np.zeros(tokens_hi.shape, bool))
