"""Stage `base`: the masked transformer over 16x16 image tokens, conditioned on text states.

Loss: cross-entropy on the masked positions only. Each example masks exactly ceil(r N) tokens with
r from config.masking.rate (arccos by default); a config.masking.text_drop_prob fraction of the
examples lose their text (all-False text mask) to train the unconditional branch used by
classifier-free guidance.
"""
import dataclasses

import jax
import jax.numpy as jnp
import optax

from muse_jax import decoding, masking
from muse_jax.data import preencoded, synthetic
from muse_jax.models.transformer import MaskedTransformer, TransformerConfig
from muse_jax.parallel import axes
from muse_jax.tasks import online, samples
from muse_jax.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
  rate: str = "arccos"
  text_drop_prob: float = 0.1

  def __post_init__(self):
    if self.rate not in masking.RATE_DISTRIBUTIONS:
      raise ValueError(f"masking.rate={self.rate!r}; expected one of {masking.RATE_DISTRIBUTIONS}")
    if not 0.0 <= self.text_drop_prob <= 1.0:
      raise ValueError(f"masking.text_drop_prob must be in [0, 1], got {self.text_drop_prob}")


def masked_token_loss(logits_BxNxV, targets_BxN, mask_BxN):
  """Mean cross-entropy and accuracy over masked positions (float32)."""
  logp_BxNxV = jax.nn.log_softmax(logits_BxNxV.astype(jnp.float32), axis=-1)
  nll_BxN = -jnp.take_along_axis(logp_BxNxV, targets_BxN[..., None], axis=-1)[..., 0]
  weight_BxN = mask_BxN.astype(jnp.float32)
  denom = jnp.maximum(weight_BxN.sum(), 1.0)
  loss = (nll_BxN * weight_BxN).sum() / denom
  correct_BxN = (jnp.argmax(logits_BxNxV, axis=-1) == targets_BxN).astype(jnp.float32)
  return loss, (correct_BxN * weight_BxN).sum() / denom


def corrupt(rng, tokens_BxN, txt_mask_BxT, masking_cfg: MaskingConfig, mask_id: int):
  """The masked-token training corruption shared by the base and super-res stages: exactly
  ceil(r N) tokens per example replaced by mask_id (r from masking_cfg.rate) and a
  masking_cfg.text_drop_prob fraction of examples with their text dropped (all-False mask).

  Returns (inputs_BxN, mask_BxN, rate_B, txt_mask_BxT, keep_text_B)."""
  b, n = tokens_BxN.shape
  mask_rng, drop_rng = jax.random.split(rng)
  mask_BxN, rate_B = masking.training_mask(mask_rng, b, n, masking_cfg.rate)
  keep_text_B = jax.random.uniform(drop_rng, (b,)) >= masking_cfg.text_drop_prob
  inputs_BxN = jnp.where(mask_BxN, mask_id, tokens_BxN)
  return inputs_BxN, mask_BxN, rate_B, txt_mask_BxT & keep_text_B[:, None], keep_text_B


class BaseTask:
  """init_params / init_state / train_step / eval_step for the base stage."""

  def __init__(self, config):
    self.config = config
    self.model_cfg = TransformerConfig(**config.model.to_dict())
    self.masking_cfg = MaskingConfig(**config.masking.to_dict())
    self.model = MaskedTransformer(self.model_cfg)
    self.text_length = int(config.data.text_length)
    self.progress_metrics = ("masked_acc",)
    c = self.model_cfg
    self.online = online.encoder_for(   # None unless data.source is a raw image source
        config, [online.Target("tokens", "tokenizer", "resolution", c.grid_size, c.codebook_size,
                               "grid_size")], self.text_length, c.text_dim, "base")

  # Shapes -------------------------------------------------------------------------------------
  def batch_spec(self, batch_size: int) -> dict:
    """name -> (ShapeDtypeStruct, logical axes) of one global batch."""
    c = self.model_cfg
    return {
        "tokens": (jax.ShapeDtypeStruct((batch_size, c.seq_len), jnp.int32),
                   (axes.BATCH, axes.LENGTH)),
        "txt": (jax.ShapeDtypeStruct((batch_size, self.text_length, c.text_dim), jnp.float32),
                (axes.BATCH, axes.TEXT_LENGTH, axes.TEXT_EMBED)),
        "txt_mask": (jax.ShapeDtypeStruct((batch_size, self.text_length), jnp.bool_),
                     (axes.BATCH, axes.TEXT_LENGTH)),
    }

  def init_params(self, rng):
    """Boxed (nn.Partitioned) float32 params."""
    spec = {k: v[0] for k, v in self.batch_spec(1).items()}
    dummy = {k: jnp.zeros(s.shape, s.dtype) for k, s in spec.items()}
    return self.model.init(rng, dummy["tokens"], dummy["txt"], dummy["txt_mask"])["params"]

  def init_boxed(self, rng):
    return (self.init_params(rng),)

  def init_state(self, rng, tx: optax.GradientTransformation):
    return step_lib.init_state(self.init_params, rng, tx)

  # Steps --------------------------------------------------------------------------------------
  def loss_fn(self, params, batch, rng):
    tokens_BxN = batch["tokens"]
    inputs_BxN, mask_BxN, rate_B, txt_mask_BxT, keep_text_B = corrupt(
        rng, tokens_BxN, batch["txt_mask"], self.masking_cfg, self.model_cfg.mask_id)
    logits = self.model.apply({"params": params}, inputs_BxN, batch["txt"], txt_mask_BxT)
    loss, acc = masked_token_loss(logits, tokens_BxN, mask_BxN)
    return loss, {"loss": loss, "masked_acc": acc, "mask_rate": rate_B.mean(),
                  "text_kept": keep_text_B.mean()}

  def train_step(self, state, batch, rng, tx):
    return step_lib.gradient_step(self.loss_fn, state, batch, rng, tx)

  # Sample grids (tasks/samples.py) ---------------------------------------------------------
  def make_sampler(self, mesh, rules, abstract_params):
    """params -> samples.Samples of config.sample.prompts, decoded from all-masked tokens and
    through data.tokenizer; None (after a warning) without data.tokenizer. Call after
    self.online.load()."""
    parts = samples.load_parts(self.config, "tokenizer", self.model_cfg.codebook_size,
                               self.model_cfg.text_dim, mesh, rules, self.online)
    if parts is None:
      return None
    model, c = self.model, self.model_cfg
    dc = samples.decode_config(self.config.sample)

    def decode_tokens(params, rng, txt_BxTxC, txt_mask_BxT, cond):
      del cond
      fn = decoding.transformer_logits_fn(model, params, txt_BxTxC, txt_mask_BxT,
                                          guidance=dc.guidance_scale > 0)
      init_BxN = jnp.full((txt_BxTxC.shape[0], c.seq_len), c.mask_id, jnp.int32)
      return decoding.decode(fn, init_BxN, rng, dc, c.mask_id)

    prompts = samples.check_prompts(self.config.sample.prompts, "sample.prompts")
    return samples.GridSampler(parts, decode_tokens, prompts, {}, c.grid_size,
                               int(self.config.sample.seed), abstract_params)

  # Data ---------------------------------------------------------------------------------------
  def make_source(self):
    """Pre-tokenized examples ("preencoded" shards from muse-encode, or the "synthetic" stand-in
    of the tests and benchmarks), or raw image–caption sources through the frozen tokenizer and
    text encoder (tasks/online.py)."""
    d = self.config.data
    if self.online is not None:
      return self.online.make_source()
    if d.source == "preencoded":
      source = preencoded.PreEncodedSource(d.path, self.text_length)
      source.check({"tokens": self.model_cfg.seq_len, "txt": self.model_cfg.text_dim},
                   self.model_cfg.codebook_size)
      return source
    if d.source == "synthetic":
      c = self.model_cfg
      return synthetic.SyntheticTokenSource(
          num_examples=d.num_examples, seq_len=c.seq_len, codebook_size=c.codebook_size,
          text_length=self.text_length, text_dim=c.text_dim, seed=d.seed)
    raise ValueError(f"data.source={d.source!r} is not available for stage 'base'; expected "
                     f"'preencoded' (token ids + text states written by muse-encode), a raw "
                     f"image source {online.RAW_SOURCES} with data.tokenizer, or 'synthetic'")

  def make_transform(self, counter):
    """Raw images: decode, crop, tokenize captions. Pre-encoded records need no transform."""
    if self.online is not None:
      return self.online.make_transform(counter)
    return None
