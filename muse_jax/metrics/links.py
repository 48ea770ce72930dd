"""Where a prompt's attributes are lost: prompt alignment of each link of the cascade, on the same
scene prompts (muse_jax/data/scenes.py) and seeds, scored by muse_jax/metrics/alignment.py.

  pipe = pipeline.Pipeline(pipeline.PipelinePaths(base=..., tokenizer=...,
                                                  superres=..., tokenizer_hi=...))
  result = evaluate_links(pipe, LinksConfig(num_images=96))
  result.report["rows"]   # one entry per link, alignment per split ("eval", "eval_seen")

The links, in order (each row's images are what that link hands on):
  ground_truth        the scenes rendered at the output resolution (checks the scorer: ~1);
  recon_base          base tokenizer encode -> decode of the scenes rendered at the base resolution
                      (the most the base stage can reach);
  recon_out           output tokenizer encode -> decode at the output resolution (with super-res);
  teacher_R           teacher-forced base denoising: the ground truth's base tokens with a fraction
                      R masked (R = 1: all of them, i.e. one-pass generation), ONE forward pass of
                      the base model with the caption, masked positions set to the argmax, decoded;
                      also masked-token accuracy split into object / background tokens;
  base_samples        the full iterative base decode (no super-res), decoded at the base resolution;
  superres_gt         super-res decode from the ground truth's base tokens (isolates that stage);
  cascade             the full cascade (base + super-res), as muse-sample makes it.
base_samples and cascade come from the same pipeline run: its base tokens are the base samples.

Rows below the output resolution (base resolution) are upsampled to the scoring resolution by
nearest neighbour (every pixel repeated, colours unchanged); every row is scored at
max(output resolution, MIN_SCORE_RESOLUTION) (the scorer needs >= ~32 px).

A token is an "object" token when its patch of the base-resolution scene has any pixel more than
1.5/255 from the grey background (scenes.BACKGROUNDS): antialiased edges count as object.
"""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax import decoding, pipeline
from muse_jax.data import scenes
from muse_jax.metrics import alignment
from muse_jax.models.transformer import MaskedTransformer

SPLITS = ("eval", "eval_seen")      # held-out (colour, shape) pairs, seen pairs
# Caption templates of the evaluation prompts: each states every attribute a detector checks.
TEMPLATES = ("full", "part", "there_is", "relation_sized")
DEFAULT_RATES = (0.25, 0.5, 0.75, 1.0)
MIN_SCORE_RESOLUTION = 32
# A rendered pixel within this many 8-bit levels of the background grey counts as background: an
# untouched pixel is exact, and only the faintest antialiased edge pixels are 1 level off (the
# same cut, under 2/255, as muse-eval's background_codes).
BACKGROUND_TOLERANCE = 1.5


@dataclasses.dataclass(frozen=True)
class LinksConfig:
  """num_images: prompts per split. rates: teacher-forcing masking rates in [0, 1].
  teacher_guidance: constant classifier-free guidance of the teacher-forced pass (0: the
  conditional logits alone). base / superres: decoding of the sampled rows (muse-sample's
  defaults). grid_prompts: prompts per split shown in the grid."""
  num_images: int = 64
  seed: int = 0
  rates: tuple = DEFAULT_RATES
  teacher_guidance: float = 0.0
  base: decoding.DecodeConfig = pipeline.SampleConfig().base
  superres: decoding.DecodeConfig = pipeline.SampleConfig().superres
  grid_prompts: int = 3

  def __post_init__(self):
    if self.num_images < 1:
      raise ValueError(f"links need num_images >= 1 prompts per split, got {self.num_images}")
    if not self.rates or any(not 0.0 <= r <= 1.0 for r in self.rates):
      raise ValueError(f"masking rates must be in [0, 1], got {self.rates}")
    if not np.isfinite(self.teacher_guidance) or self.teacher_guidance < 0:
      raise ValueError(f"teacher_guidance must be finite and >= 0, got {self.teacher_guidance}")


@dataclasses.dataclass
class LinksResult:
  """report: JSON-ready dict. grid_images_BxHxWx3 / grid_labels: a few prompts (rows) across the
  links (columns), at the scoring resolution; grid_cols: the number of links."""
  report: dict
  grid_images_BxHxWx3: np.ndarray
  grid_labels: list
  grid_cols: int


def scene_prompts(split: str, num: int, seed: int = 0, resolutions=(64,)) -> tuple:
  """(captions, [images uint8 [num, R, R, 3] per resolution]) of `num` scenes of a split; the
  same scenes (pure functions of seed, split, index) drawn at every resolution."""
  source = scenes.SceneSource(num, max(resolutions), seed=seed, split=split, templates=TEMPLATES)
  pairs = [source.attributes(i) for i in range(num)]
  captions = [scenes.prompt_for(a, t) for a, t in pairs]
  return captions, [np.stack([scenes.render(a, r) for a, _ in pairs]) for r in resolutions]


def object_tokens(images_NxRxRx3, grid: int) -> np.ndarray:
  """bool [N, grid * grid] (row-major, like the tokenizers' ids): True where the token's patch
  holds any pixel off the background grey. images: uint8, or float in [0, 1]."""
  images = np.asarray(images_NxRxRx3)
  images = images.astype(np.float32) * (1.0 if images.dtype == np.uint8 else 255.0)
  n, res = images.shape[:2]
  if res % grid:
    raise ValueError(f"image side {res} is not a multiple of the token grid {grid}")
  f = res // grid
  grey = np.asarray(scenes.BACKGROUNDS[scenes.BACKGROUND], np.float32)
  off = np.abs(images - grey) > BACKGROUND_TOLERANCE
  return off.reshape(n, grid, f, grid, f, 3).any(axis=(2, 4, 5)).reshape(n, -1)


def mask_positions(num_rows: int, num_tokens: int, rate: float, seed: int) -> np.ndarray:
  """bool [num_rows, num_tokens]: exactly round(rate * num_tokens) positions per row, uniformly
  at random (numpy, seeded: the same for every model)."""
  k = int(round(rate * num_tokens))
  rng = np.random.default_rng((seed, int(round(rate * 1e6))))
  order = np.argsort(rng.random((num_rows, num_tokens)), axis=-1)
  return np.argsort(order, axis=-1) < k


def upsample(images_BxHxWx3, side: int) -> np.ndarray:
  """Nearest-neighbour resize to side x side (pixel i of the output reads i * H // side)."""
  images = np.asarray(images_BxHxWx3)
  h = images.shape[1]
  if h == side:
    return images
  idx = np.arange(side) * h // side
  return images[:, idx][:, :, idx]


def token_stats(pred_BxN, truth_BxN, masked_BxN, object_BxN) -> dict:
  """Counts and accuracies of the predicted tokens (accuracies None over no tokens)."""
  right = np.asarray(pred_BxN) == np.asarray(truth_BxN)
  masked, obj = np.asarray(masked_BxN, bool), np.asarray(object_BxN, bool)
  acc = lambda sel: float(right[sel].mean()) if sel.any() else None
  return {"masked": int(masked.sum()), "masked_object": int((masked & obj).sum()),
          "masked_background": int((masked & ~obj).sum()), "accuracy": acc(masked),
          "accuracy_object": acc(masked & obj), "accuracy_background": acc(masked & ~obj),
          "token_accuracy": float(right.mean()),
          "unmasked_changed": int((~right & ~masked).sum())}


# ------------------------------------------------------------------------------------------------
# Model calls.

def _teacher_jit(pipe: pipeline.Pipeline, guidance: float):
  """jitted (base_params, txt, txt_mask, tokens_BxN) -> tokens_BxN with every mask_id position
  replaced by the argmax of one forward pass (guidance: constant scale; 0 = conditional only)."""
  model, mask_id = MaskedTransformer(pipe.base_cfg), pipe.base_cfg.mask_id

  def fn(params, txt, txt_mask, tokens_BxN):
    logits_fn = decoding.transformer_logits_fn(model, params, txt, txt_mask,
                                               guidance=guidance > 0)
    logits_BxNxV = logits_fn(tokens_BxN, jnp.float32(guidance))   # sliced to the codebook
    pred_BxN = jnp.argmax(logits_BxNxV, axis=-1).astype(jnp.int32)
    return jnp.where(tokens_BxN == mask_id, pred_BxN, tokens_BxN)

  bat = pipe.batch_sharding
  return pipe.jitted(("links_teacher", guidance), lambda: jax.jit(
      fn, in_shardings=(pipe.base_shardings, bat, bat, bat), out_shardings=bat))


def teacher_forced(pipe: pipeline.Pipeline, text: dict, tokens_BxN, masked_BxN,
                   guidance: float = 0.0) -> np.ndarray:
  """Ground-truth base tokens, masked where masked_BxN, completed by one base forward pass with
  the prepared text (pipe.prepare_text(prompts, 1)) -> tokens_BxN int32 (numpy)."""
  tokens = np.where(masked_BxN, pipe.base_cfg.mask_id, tokens_BxN).astype(np.int32)
  b, bp = text["b"], text["bp"]
  tokens = np.concatenate([tokens, np.repeat(tokens[-1:], bp - b, 0)])
  fn = _teacher_jit(pipe, float(guidance))
  with jax.set_mesh(pipe.mesh), nn.logical_axis_rules(pipe.rules):
    out = fn(pipe.base_params, text["txt"], text["txt_mask"], pipe.place(tokens))
  return pipe.to_host(out)[:b]


def _decode(tok, tokens_BxN, batch: int) -> np.ndarray:
  side = math.isqrt(tokens_BxN.shape[1])
  return tok.decode(np.asarray(tokens_BxN).reshape(-1, side, side), batch)


# ------------------------------------------------------------------------------------------------
# The links.

@dataclasses.dataclass
class SplitInputs:
  """One split's prompts and ground truth: truth_out (output resolution) and truth_lo (base
  resolution) uint8 scenes, tokens_lo_BxN (base tokenizer ids of truth_lo), object_BxN (object
  tokens of that grid), text (pipe.prepare_text of the prompts, one row each)."""
  split: str
  prompts: list
  truth_out: np.ndarray
  truth_lo: np.ndarray
  tokens_lo_BxN: np.ndarray
  object_BxN: np.ndarray
  text: dict


def split_inputs(pipe: pipeline.Pipeline, split: str, cfg: LinksConfig) -> SplitInputs:
  prompts, (truth_out, truth_lo) = scene_prompts(
      split, cfg.num_images, cfg.seed, (pipe.resolution, pipe.lo_resolution))
  tokens = pipe.tokenizer.encode(truth_lo.astype(np.float32) / 255.0, pipe.lo_resolution,
                                 pipe.padded_batch(len(prompts)))
  return SplitInputs(split, prompts, truth_out, truth_lo, tokens,
                     object_tokens(truth_lo, pipe.base_cfg.grid_size),
                     pipe.prepare_text(prompts, 1))


def _rate_label(rate: float) -> str:
  one_pass = " (one pass)" if rate == 1.0 else ""
  return f"teacher-forced base, {rate:.0%} masked{one_pass}"


def link_images(pipe: pipeline.Pipeline, data: SplitInputs, cfg: LinksConfig):
  """Yields (key, label, images_BxHxWx3 (uint8 or float in [0, 1], any side), extra dict) for
  every link, in order; extra holds the teacher-forced rows' rate and token stats."""
  n, lo, out = len(data.prompts), pipe.lo_resolution, pipe.resolution
  batch = pipe.padded_batch(n)
  yield "ground_truth", f"ground truth ({out} px)", data.truth_out, {}
  yield ("recon_base", f"tokenizer recon, base ({lo} px)",
         _decode(pipe.tokenizer, data.tokens_lo_BxN, batch), {})
  if pipe.has_superres:
    hi = pipe.tokenizer_hi.encode(data.truth_out.astype(np.float32) / 255.0, out, batch)
    yield ("recon_out", f"tokenizer recon, output ({out} px)",
           _decode(pipe.tokenizer_hi, hi, batch), {})
  for rate in cfg.rates:
    masked = mask_positions(n, data.tokens_lo_BxN.shape[1], rate, cfg.seed)
    pred = teacher_forced(pipe, data.text, data.tokens_lo_BxN, masked, cfg.teacher_guidance)
    stats = token_stats(pred, data.tokens_lo_BxN, masked, data.object_BxN)
    yield (f"teacher_{rate:g}", _rate_label(rate), _decode(pipe.tokenizer, pred, batch),
           {"rate": float(rate), "tokens": stats})
  sample_cfg = pipeline.SampleConfig(num_images=1, seed=cfg.seed, base=cfg.base,
                                     superres=cfg.superres)
  samples = pipe.generate(data.prompts, sample_cfg)
  base_images = (_decode(pipe.tokenizer, samples.tokens_lo_BxN, batch) if pipe.has_superres
                 else samples.images_BxHxWx3)
  yield "base_samples", f"base samples ({lo} px, {cfg.base.num_steps} steps)", base_images, {}
  if pipe.has_superres:
    # Super-res was trained on base tokens of the output-resolution scene resized to the base
    # resolution (tasks/online.py), so these are its ground-truth input.
    truth_lo_sr = pipe.tokenizer.encode(data.truth_out.astype(np.float32) / 255.0, lo, batch)
    sr = pipe.generate(data.prompts, sample_cfg, init_lo_BxN=truth_lo_sr)
    yield "superres_gt", "super-res on ground-truth base tokens", sr.images_BxHxWx3, {}
    yield "cascade", "cascade samples (base + super-res)", samples.images_BxHxWx3, {}


def score_resolution(pipe: pipeline.Pipeline) -> int:
  """The output resolution, times the smallest integer that makes it >= MIN_SCORE_RESOLUTION."""
  out = pipe.resolution
  return out * -(-MIN_SCORE_RESOLUTION // out)


def _as_unit(images) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  return np.clip(images.astype(np.float32), 0.0, 1.0)


def evaluate_links(pipe: pipeline.Pipeline, cfg: LinksConfig = LinksConfig()) -> LinksResult:
  """Alignment of every link (module docstring) on cfg.num_images prompts of each split."""
  side = score_resolution(pipe)
  rows, tiles = {}, {}
  for split in SPLITS:
    data = split_inputs(pipe, split, cfg)
    for key, label, images, extra in link_images(pipe, data, cfg):
      images = upsample(_as_unit(images), side)
      row = rows.setdefault(key, {"key": key, "label": label, **{
          k: v for k, v in extra.items() if k != "tokens"}, "alignment": {}})
      row["alignment"][split] = alignment.alignment(images, data.prompts)
      if "tokens" in extra:
        row.setdefault("tokens", {})[split] = extra["tokens"]
      tiles.setdefault(split, {})[key] = images[:cfg.grid_prompts]
    tiles[split]["prompts"] = data.prompts[:cfg.grid_prompts]
  report = _header(pipe, cfg, side)
  report["rows"] = list(rows.values())
  return LinksResult(report, *_grid(tiles, list(rows)))


def _header(pipe: pipeline.Pipeline, cfg: LinksConfig, side: int) -> dict:
  p = pipe.paths
  return {
      "kind": "links", "checkpoint": p.base, "tokenizer": p.tokenizer, "superres": p.superres,
      "tokenizer_hi": p.tokenizer_hi, "num_prompts_per_split": int(cfg.num_images),
      "seed": int(cfg.seed), "splits": {"eval": "held-out pairs", "eval_seen": "seen pairs"},
      "templates": list(TEMPLATES), "resolution": int(pipe.resolution),
      "base_resolution": int(pipe.lo_resolution), "scored_resolution": int(side),
      "upsampling": "nearest neighbour (pixels repeated) to the scored resolution",
      "teacher_forcing": {
          "rates": [float(r) for r in cfg.rates], "guidance": float(cfg.teacher_guidance),
          "prediction": "argmax of one forward pass at the masked positions",
          "mask": "round(rate * tokens) positions per row, uniform; numpy seed (seed, rate)",
          "object_token": "its base-resolution patch has a pixel off the grey background"},
      "sampling": {"base": dataclasses.asdict(cfg.base),
                   "superres": dataclasses.asdict(cfg.superres) if pipe.has_superres else None},
  }


def _grid(tiles: dict, keys: list) -> tuple:
  """The first prompts of each split (grid rows) across the links (columns): the ground-truth
  tile is labelled with its split and prompt, the others with their link."""
  images, labels = [], []
  for split, by_key in tiles.items():
    tag = "held-out" if split == "eval" else "seen"
    for i, prompt in enumerate(by_key["prompts"]):
      for key in keys:
        images.append(by_key[key][i])
        labels.append(f"{tag}: {prompt}" if key == "ground_truth" else key)
  return np.stack(images), labels, len(keys)
