"""Stage `superres`: high-res token ids given low-res token ids and text states.

Trained like the base stage (tasks/base.py): each example masks exactly ceil(r M) of its M
high-res ids with r from config.masking.rate, a config.masking.text_drop_prob fraction of the
examples lose their text (the context keeps only the low-res part), and the loss is the
cross-entropy on the masked positions. Batches: "tokens_lo" [B, N], "tokens" (high-res) [B, M],
"txt" [B, T, C], "txt_mask" [B, T].
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from muse_jax import decoding, pipeline
from muse_jax.data import preencoded, preprocess, synthetic_pairs
from muse_jax.models import vqgan
from muse_jax.models.superres import SuperResConfig, SuperResTransformer
from muse_jax.parallel import axes
from muse_jax.tasks import base as base_task
from muse_jax.tasks import online, samples
from muse_jax.tasks.base import MaskingConfig, masked_token_loss
from muse_jax.train import step as step_lib


class PreEncodedPairs:
  """PreEncodedSource record -> {"tokens_lo", "tokens", "txt", "txt_mask"}; records the source
  marked unreadable are counted and dropped (None). A record without "tokens_hi", or whose token
  counts or text width do not match the model, is a configuration mistake and raises ValueError."""

  def __init__(self, cfg: SuperResConfig, counter: preprocess.SkipCounter):
    self.cfg, self.counter = cfg, counter

  def __call__(self, record: dict):
    key = str(record.get("key", ""))
    if "skip" in record:
      reason, detail = record["skip"]
      self.counter.record_skip(preprocess.SkipRecord(reason, key, detail))
      return None
    c = self.cfg
    if "tokens_hi" not in record:
      raise ValueError(f"pre-encoded record {key or '?'} has no 'tokens_hi': stage superres needs "
                       f"shards written with both tokenizers (base ids in 'tokens', super-res ids "
                       f"in 'tokens_hi')")
    checks = (("tokens", record["tokens"].shape[0], c.lo_seq_len, "model.lo_grid_size"),
              ("tokens_hi", record["tokens_hi"].shape[0], c.hi_seq_len, "model.hi_grid_size"),
              ("txt", record["txt"].shape[-1], c.text_dim, "model.text_dim"))
    for name, got, want, field in checks:
      if got != want:
        raise ValueError(f"pre-encoded record {key or '?'}: '{name}' has size {got} but "
                         f"{field} implies {want}")
    self.counter.record_ok()
    return {"tokens_lo": np.asarray(record["tokens"], np.int32),
            "tokens": np.asarray(record["tokens_hi"], np.int32),
            "txt": record["txt"], "txt_mask": record["txt_mask"]}


class SuperResTask:
  """init_params / init_state / train_step for the super-res stage."""

  def __init__(self, config):
    self.config = config
    self.model_cfg = SuperResConfig(**config.model.to_dict())
    self.masking_cfg = MaskingConfig(**config.masking.to_dict())
    self.model = SuperResTransformer(self.model_cfg)
    self.text_length = int(config.data.text_length)
    if self.text_length <= 0:
      raise ValueError(f"data.text_length must be positive, got {self.text_length}")
    self.progress_metrics = ("masked_acc",)
    c = self.model_cfg
    self.online = online.encoder_for(   # None unless data.source is a raw image source
        config, [online.Target("tokens_lo", "tokenizer", "resolution", c.lo_grid_size,
                               c.lo_codebook_size, "lo_grid_size"),
                 online.Target("tokens", "tokenizer_hi", "resolution_hi", c.hi_grid_size,
                               c.codebook_size, "hi_grid_size")],
        self.text_length, c.text_dim, "superres")

  # Shapes -------------------------------------------------------------------------------------
  def batch_spec(self, batch_size: int) -> dict:
    """name -> (ShapeDtypeStruct, logical axes) of one global batch."""
    c = self.model_cfg
    return {
        "tokens_lo": (jax.ShapeDtypeStruct((batch_size, c.lo_seq_len), jnp.int32),
                      (axes.BATCH, axes.LENGTH)),
        "tokens": (jax.ShapeDtypeStruct((batch_size, c.hi_seq_len), jnp.int32),
                   (axes.BATCH, axes.LENGTH)),
        "txt": (jax.ShapeDtypeStruct((batch_size, self.text_length, c.text_dim), jnp.float32),
                (axes.BATCH, axes.TEXT_LENGTH, axes.TEXT_EMBED)),
        "txt_mask": (jax.ShapeDtypeStruct((batch_size, self.text_length), jnp.bool_),
                     (axes.BATCH, axes.TEXT_LENGTH)),
    }

  def init_params(self, rng):
    """Boxed (nn.Partitioned) float32 params."""
    d = {k: jnp.zeros(v[0].shape, v[0].dtype) for k, v in self.batch_spec(1).items()}
    return self.model.init(rng, d["tokens"], d["tokens_lo"], d["txt"], d["txt_mask"])["params"]

  def init_boxed(self, rng):
    return (self.init_params(rng),)

  def init_state(self, rng, tx: optax.GradientTransformation):
    return step_lib.init_state(self.init_params, rng, tx)

  # Steps --------------------------------------------------------------------------------------
  def mask_and_drop_text(self, rng, tokens_BxM, txt_mask_BxT):
    """The base stage's training corruption (tasks.base.corrupt) on the high-res tokens."""
    return base_task.corrupt(rng, tokens_BxM, txt_mask_BxT, self.masking_cfg,
                             self.model_cfg.mask_id)

  def loss_fn(self, params, batch, rng):
    tokens_BxM = batch["tokens"]
    inputs_BxM, mask_BxM, rate_B, txt_mask_BxT, keep_text_B = self.mask_and_drop_text(
        rng, tokens_BxM, batch["txt_mask"])
    logits = self.model.apply({"params": params}, inputs_BxM, batch["tokens_lo"], batch["txt"],
                              txt_mask_BxT)
    loss, acc = masked_token_loss(logits, tokens_BxM, mask_BxM)
    return loss, {"loss": loss, "masked_acc": acc, "mask_rate": rate_B.mean(),
                  "text_kept": keep_text_B.mean()}

  def train_step(self, state, batch, rng, tx):
    return step_lib.gradient_step(self.loss_fn, state, batch, rng, tx)

  # Sample grids (tasks/samples.py) ---------------------------------------------------------
  def make_sampler(self, mesh, rules, abstract_params):
    """params -> samples.Samples: high-res tokens decoded for the low-res tokens of the first
    config.sample.num_examples captioned training records and their captions, through
    data.tokenizer_hi; None (after a warning) without data.tokenizer_hi. Call after
    self.online.load()."""
    c = self.model_cfg
    parts = samples.load_parts(self.config, "tokenizer_hi", c.codebook_size, c.text_dim, mesh,
                               rules, self.online)
    if parts is None:
      return None
    captions, tokens_lo_BxN = self.sample_records(int(self.config.sample.num_examples), parts)
    model, dc = self.model, samples.decode_config(self.config.sample)

    def decode_tokens(params, rng, txt_BxTxC, txt_mask_BxT, cond):
      fn = pipeline.superres_logits_fn(model, params, cond["tokens_lo"], txt_BxTxC, txt_mask_BxT,
                                       guidance=dc.guidance_scale > 0)
      init_BxM = jnp.full((txt_BxTxC.shape[0], c.hi_seq_len), c.mask_id, jnp.int32)
      return decoding.decode(fn, init_BxM, rng, dc, c.mask_id)

    return samples.GridSampler(parts, decode_tokens, captions, {"tokens_lo": tokens_lo_BxN},
                               c.hi_grid_size, int(self.config.sample.seed), abstract_params)

  def sample_records(self, n: int, parts: samples.Parts):
    """(captions, tokens_lo_NxL int32) of the first n records of the training source that have
    a caption (raw images: centre-cropped and encoded by data.tokenizer at data.resolution)."""
    if n <= 0:
      raise ValueError(f"sample.num_examples must be positive, got {n}")
    source = self.make_source(keep_caption=True)
    counter = preprocess.SkipCounter(repr(source), give_up_after=len(source))
    transform = (self.online.fixed_transform(counter) if self.online is not None
                 else self.make_transform(counter))
    captions, rows = [], []
    for index in range(min(len(source), max(16 * n, 256))):
      record = source[index]
      out = record if transform is None else transform(record)
      try:
        caption = preprocess.clean_caption(record)
      except preprocess.SkipRecord:
        continue
      if out is not None:
        captions.append(caption)
        rows.append(out["image"] if self.online is not None else out["tokens_lo"])
      if len(rows) == n:
        break
    if not rows:
      raise ValueError(f"train.sample_every > 0: the super-res sample grids take the low-res "
                       f"tokens and captions of the first training records, and {source!r} has "
                       f"no captioned record among its first {index + 1} (data.source="
                       f"{self.config.data.source!r}; pre-encoded shards keep the caption that "
                       f"muse-encode read). Set train.sample_every=0 for this source")
    rows = np.stack(rows)
    if self.online is None:
      return captions, rows.astype(np.int32)
    model, params = self.online.loaded_tokenizer("tokenizer")
    res = int(self.config.data.resolution)
    encode = jax.jit(lambda p, x: vqgan.encode_unit_images(model, p, x, res))
    with samples.context(parts):
      ids = encode(params, samples.place_rows(parts, rows))
    return captions, pipeline.Pipeline.to_host(ids)[:len(rows)].astype(np.int32)

  # Data ---------------------------------------------------------------------------------------
  def make_source(self, keep_caption: bool = False):
    """"preencoded" shards with base ids ("tokens") and super-res ids ("tokens_hi"), or the
    "synthetic" stand-in of the tests and benchmarks, or raw image–caption sources through the
    frozen tokenizers (data.tokenizer at data.resolution for the low-res ids, data.tokenizer_hi
    at data.resolution_hi for the high-res ones) and text encoder (tasks/online.py).
    keep_caption: pre-encoded records keep their caption (the sample grids' records)."""
    d = self.config.data
    c = self.model_cfg
    if self.online is not None:
      return self.online.make_source()
    if d.source == "preencoded":
      return preencoded.PreEncodedSource(d.path, self.text_length, keep_caption)
    if d.source == "synthetic":
      return synthetic_pairs.SyntheticPairSource(
          num_examples=d.num_examples, lo_grid_size=c.lo_grid_size, hi_grid_size=c.hi_grid_size,
          codebook_size=c.codebook_size, lo_codebook_size=c.lo_codebook_size,
          text_length=self.text_length, text_dim=c.text_dim, seed=d.seed)
    raise ValueError(f"data.source={d.source!r} is not available for stage 'superres'; expected "
                     f"'preencoded' (base and super-res token ids + text states written by "
                     f"muse-encode), a raw image source {online.RAW_SOURCES} with "
                     f"data.tokenizer and data.tokenizer_hi, or 'synthetic'")

  def make_transform(self, counter):
    """Pre-encoded records are renamed into pairs; synthetic ones already are; raw images are
    decoded and cropped and their captions tokenized."""
    if self.online is not None:
      return self.online.make_transform(counter)
    if self.config.data.source == "preencoded":
      return PreEncodedPairs(self.model_cfg, counter)
    return None
