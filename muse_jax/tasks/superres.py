"""Stage `superres`: high-res token ids given low-res token ids and text states.

Trained as every masked-token stage is (tasks/masked_tokens.py) on its M high-res ids; an
example whose text is dropped keeps only the low-res part of its context. Batches: "tokens_lo"
[B, N], "tokens" (high-res) [B, M], "txt" [B, T, C], "txt_mask" [B, T].
"""
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax import decoding, pipeline
from muse_jax.data import preencoded, preprocess, synthetic_pairs
from muse_jax.models import vqgan
from muse_jax.models.superres import SuperResConfig, SuperResTransformer
from muse_jax.parallel import axes
from muse_jax.tasks import masked_tokens, online, samples


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


class SuperResTask(masked_tokens.MaskedTokenTask):
  """High-res token ids from the low-res ones ("tokens_lo") and text states."""

  stage = "superres"
  preencoded_fields = "base and super-res token ids + text states"
  raw_tokenizers = "data.tokenizer and data.tokenizer_hi"

  def __init__(self, config):
    self.model_cfg = c = SuperResConfig(**config.model.to_dict())
    self.model = SuperResTransformer(c)
    self.seq_len = c.hi_seq_len
    super().__init__(config, [
        online.Target("tokens_lo", "tokenizer", "resolution", c.lo_grid_size,
                      c.lo_codebook_size, "lo_grid_size"),
        online.Target("tokens", "tokenizer_hi", "resolution_hi", c.hi_grid_size,
                      c.codebook_size, "hi_grid_size")])

  def cond_spec(self, batch_size: int) -> dict:
    return {"tokens_lo": (jax.ShapeDtypeStruct((batch_size, self.model_cfg.lo_seq_len),
                                               jnp.int32), (axes.BATCH, axes.LENGTH))}

  def model_args(self, inputs_BxM, batch, txt_mask_BxT) -> tuple:
    return inputs_BxM, batch["tokens_lo"], batch["txt"], txt_mask_BxT

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
    source = (self.preencoded_source(keep_caption=True) if self._reads_shards()
              else self.make_source())
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
  def preencoded_source(self, keep_caption: bool = False):
    """Shards with base ids ("tokens") and super-res ids ("tokens_hi"); keep_caption: records
    keep their caption (the sample grids' records)."""
    return preencoded.PreEncodedSource(self.config.data.path, self.text_length, keep_caption)

  def synthetic_source(self):
    c, d = self.model_cfg, self.config.data
    return synthetic_pairs.SyntheticPairSource(
        num_examples=d.num_examples, lo_grid_size=c.lo_grid_size, hi_grid_size=c.hi_grid_size,
        codebook_size=c.codebook_size, lo_codebook_size=c.lo_codebook_size,
        text_length=self.text_length, text_dim=c.text_dim, seed=d.seed)

  def make_transform(self, counter):
    """Pre-encoded records are renamed into pairs; synthetic ones already are; raw images are
    decoded and cropped and their captions tokenized."""
    if self._reads_shards():
      return PreEncodedPairs(self.model_cfg, counter)
    return super().make_transform(counter)

  def _reads_shards(self) -> bool:
    """Whether the training records come from muse-encode shards (data.source=preencoded)."""
    return self.online is None and self.config.data.source == "preencoded"
