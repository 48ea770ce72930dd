"""Sample grids while the masked-token stages (base, super-res) train.

Every config.train.sample_every steps and at the last step, the loop calls the sampler its task
built at start (`task.make_sampler(mesh, rules, abstract_params)`) with the current params and
writes what it returns (train/loop.py `write_samples`): a grid with each tile labelled by its
prompt (muse_jax/grids.py) at WORKDIR/samples/step_STEP.png, the TensorBoard image "samples",
and, when every prompt is a scene caption (muse_jax/data/scenes.py `parse_caption` finds an
object in each), the images' alignment with their prompts (muse_jax/metrics/alignment.py) as
samples/colour, samples/shape, samples/position, samples/size, samples/count, samples/all in
TensorBoard and metrics.jsonl.

What is sampled:
  base       config.sample.prompts, decoded from all-masked tokens.
  super-res  the first config.sample.num_examples captioned records of the training source:
             their low-res tokens are the input and their captions the prompts. These are records
             the model trains on, so the grid shows how well super-res follows its input and text
             (scored against the captions), not generalisation; low-res tokens sampled by a base
             checkpoint would mix the base model's mistakes into the super-res grid.
The output tokens are decoded by data.tokenizer (base) / data.tokenizer_hi (super-res). A
pre-encoded run trains without them, so one that wants grids sets that path too; with it empty,
sampling is off and the run says so once, at start (a warning, not an error: the training itself
needs no tokenizer). A path that is set but unreadable, or a tokenizer or text encoder that does
not fit the model, fails at start. The prompts are encoded once, at start, by config.text_encoder
(the raw-image path's frozen encoder and tokenizers are reused, not loaded twice).

Sampling is one function, the stage's decode (muse_jax/decoding.py) then the VQ decoder, compiled
ahead at start for the train state's param shardings: every process runs it on the params where
they are, with a fixed seed (config.sample.seed), so successive grids differ only by the params.
The images are gathered to every process; the loop writes them on process 0.
"""
import contextlib
import dataclasses
from typing import Callable, Optional

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from muse_jax import decoding, errors
from muse_jax import tokenizer as tokenizer_lib
from muse_jax.data import scenes
from muse_jax.metrics import alignment
from muse_jax.models import text_encoder as text_encoder_lib
from muse_jax.models import vqgan
from muse_jax.parallel import axes, mesh as mesh_lib
from muse_jax.pipeline import Pipeline

# (params, rng, txt_BxTxC, txt_mask_BxT, conditioning {name: array_BxK}) -> tokens_BxN; traceable.
DecodeTokensFn = Callable[..., jax.Array]


def decode_config(sample) -> decoding.DecodeConfig:
  """config.sample -> the DecodeConfig of the grids' decode."""
  return decoding.DecodeConfig(num_steps=int(sample.num_steps),
                               guidance_scale=float(sample.guidance_scale),
                               temperature=float(sample.temperature))


@dataclasses.dataclass
class Samples:
  """One grid's worth, on the host: images_BxHxWx3 float32 in [0, 1], one prompt per image."""
  images_BxHxWx3: np.ndarray
  prompts: list

  def scores(self) -> dict:
    """{"samples/colour", ..., "samples/all": float} when every prompt is a scene caption, else
    {} (attributes no prompt states are left out)."""
    if not all(scenes.parse_caption(p) for p in self.prompts):
      return {}
    out = alignment.alignment(self.images_BxHxWx3, self.prompts)
    return {f"samples/{k}": float(v) for k, v in out.items()
            if k != "num_images" and v is not None}


@dataclasses.dataclass
class Parts:
  """What every stage's sampler reads: the mesh, the output tokenizer (placed, replicated) and
  the text encoder (placed; the GridSampler drops it once the prompts are encoded, so a T5-XXL
  loaded for them alone does not stay in device memory while training)."""
  mesh: jax.sharding.Mesh
  rules: tuple
  vq_model: vqgan.VQGAN
  vq_params: dict
  text: Optional[text_encoder_lib.TextEncoder]


def load_parts(config, tokenizer_field: str, codebook_size: int, text_dim: int, mesh, rules,
               online=None) -> Optional[Parts]:
  """Loads and checks the output tokenizer (data.<tokenizer_field>) and the text encoder, or
  returns None (with one warning) when data.<tokenizer_field> is empty. `online`: the stage's
  loaded tasks.online.OnlineEncoder, whose frozen models are reused, or None."""
  every = int(config.train.sample_every)
  path = config.data[tokenizer_field]
  if not path:
    logging.warning(
        "train.sample_every=%d but data.%s is empty: no sample grids in this run. Set "
        "data.%s to the tokenizer that decodes this stage's tokens (a tokenizer workdir or a "
        "muse-convert folder), or train.sample_every=0 to silence this.", every,
        tokenizer_field, tokenizer_field)
    return None
  replicated = NamedSharding(mesh, P())
  loaded = online.loaded_tokenizer(tokenizer_field) if online is not None else None
  if loaded is not None:
    model, params = loaded
  else:
    try:                                  # tokenizer loading shared with muse-encode
      cfg, params = tokenizer_lib.load_tokenizer(path)
    except (errors.UsageError, OSError) as e:       # CheckpointError is a UsageError
      raise ValueError(f"data.{tokenizer_field} (decodes the sample grids of train.sample_every="
                       f"{every}): {e}") from e
    model = vqgan.VQGAN(cfg)
    params = jax.device_put(jax.tree.map(np.asarray, params), replicated)
  if model.cfg.codebook_size != codebook_size:
    raise ValueError(f"data.{tokenizer_field}={path} has {model.cfg.codebook_size} codes but the "
                     f"model predicts {codebook_size}; the sample grids need the tokenizer the "
                     f"training tokens came from")
  if online is not None:
    text = online.text
  else:
    try:
      text = text_encoder_lib.load(
          text_encoder_lib.TextEncoderConfig.from_config(config.text_encoder), mesh, rules)
    except (ValueError, OSError, ImportError) as e:
      raise ValueError(f"the sample grids (train.sample_every={every}) encode their prompts with "
                       f"config.text_encoder, which cannot be loaded: {e}") from e
  if text.width != text_dim:
    raise ValueError(f"text_encoder ({text.cfg.kind}, {text.cfg.path or 'bundled'}) gives "
                     f"{text.width}-d states but model.text_dim={text_dim}; the sample grids "
                     f"need the encoder the training text states came from")
  return Parts(mesh, tuple(rules), model, params, text)


def check_prompts(prompts, what: str) -> list:
  if isinstance(prompts, str) or not prompts:
    raise ValueError(f"{what} must be a non-empty list of strings, got {prompts!r}")
  bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
  if bad:
    raise ValueError(f"{what} holds empty or non-string prompts: {bad!r}")
  return list(prompts)


@contextlib.contextmanager
def context(parts: Parts):
  """Mesh + logical-axis-rules context (the one the train step is traced under)."""
  with jax.set_mesh(parts.mesh), nn.logical_axis_rules(parts.rules):
    yield


def row_sharding(parts: Parts, ndim: int) -> NamedSharding:
  """Rows split over the batch axes, other dimensions whole."""
  spec = mesh_lib.logical_sharding(parts.mesh, parts.rules, (axes.BATCH,)).spec
  return NamedSharding(parts.mesh, P(spec[0], *([None] * (ndim - 1))))


def place_rows(parts: Parts, x_BxK) -> jax.Array:
  """A host array, the same on every process -> a global array with its rows split over the
  batch axes; rows repeat the last one up to a multiple of the batch shards."""
  x = np.asarray(x_BxK)
  pad = -len(x) % mesh_lib.batch_axis_size(parts.mesh, parts.rules)
  if pad:
    x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
  return jax.make_array_from_callback(x.shape, row_sharding(parts, x.ndim), lambda idx: x[idx])


class GridSampler:
  """params -> Samples for fixed prompts and per-prompt conditioning, compiled once (module doc).

  decode_tokens: the stage's DecodeTokensFn; conditioning: {name: host array, one row per prompt}
  (super-res: "tokens_lo"); grid_size: side of the output token grid; abstract_params: the train
  state's params as ShapeDtypeStructs with their shardings."""

  def __init__(self, parts: Parts, decode_tokens: DecodeTokensFn, prompts, conditioning: dict,
               grid_size: int, seed: int, abstract_params):
    self.parts, self.prompts = parts, check_prompts(prompts, "the sample prompts")
    pad = -len(self.prompts) % mesh_lib.batch_axis_size(parts.mesh, parts.rules)
    txt, txt_mask = parts.text.encode(self.prompts + [self.prompts[-1]] * pad)
    self._inputs = (place_rows(parts, Pipeline.to_host(txt)), place_rows(parts, txt_mask),
                    {k: place_rows(parts, v) for k, v in conditioning.items()})
    self.parts = parts = dataclasses.replace(parts, text=None)
    self._rng = jax.device_put(jax.random.key(seed), NamedSharding(parts.mesh, P()))
    vq_model = parts.vq_model

    def sample(params, vq_params, rng, txt_BxTxC, txt_mask_BxT, cond):
      tokens_BxN = decode_tokens(params, rng, txt_BxTxC, txt_mask_BxT, cond)
      return vqgan.decode_unit_images(vq_model, vq_params, tokens_BxN, grid_size)

    jitted = jax.jit(sample, out_shardings=row_sharding(parts, 4))
    with context(parts):
      self._compiled = jitted.lower(abstract_params, parts.vq_params, self._rng,
                                    *self._inputs).compile()

  def __call__(self, params) -> Samples:
    """Every process calls it (the decode is one program over the mesh)."""
    with context(self.parts):
      images = self._compiled(params, self.parts.vq_params, self._rng, *self._inputs)
    return Samples(Pipeline.to_host(images)[:len(self.prompts)], list(self.prompts))
