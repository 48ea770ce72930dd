"""What the masked-token stages (t2i_base, superres) share: the masking config, the training
corruption, the masked-token loss and a task that trains on them.

Each example masks exactly ceil(r N) of its N target tokens with r from config.masking.rate
(arccos by default); a config.masking.text_drop_prob fraction of the examples lose their text
(all-False text mask) to train the unconditional branch used by classifier-free guidance; the
loss is the cross-entropy on the masked positions only. A stage subclasses MaskedTokenTask with
its model, its conditioning inputs (`logits`, `cond_spec`) and its data sources.
"""
import dataclasses

import jax
import jax.numpy as jnp
import optax

from muse_jax import masking
from muse_jax.parallel import axes
from muse_jax.tasks import api, online
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
  """The training corruption: exactly ceil(r N) tokens per example replaced by mask_id (r from
  masking_cfg.rate) and a masking_cfg.text_drop_prob fraction of examples with their text
  dropped (all-False mask).

  Returns (inputs_BxN, mask_BxN, rate_B, txt_mask_BxT, keep_text_B)."""
  b, n = tokens_BxN.shape
  mask_rng, drop_rng = jax.random.split(rng)
  mask_BxN, rate_B = masking.training_mask(mask_rng, b, n, masking_cfg.rate)
  keep_text_B = jax.random.uniform(drop_rng, (b,)) >= masking_cfg.text_drop_prob
  inputs_BxN = jnp.where(mask_BxN, mask_id, tokens_BxN)
  return inputs_BxN, mask_BxN, rate_B, txt_mask_BxT & keep_text_B[:, None], keep_text_B


class MaskedTokenTask(api.Task):
  """A stage that predicts the masked ids of batch["tokens"] from the rest, the text states and
  the stage's other conditioning. Subclasses set self.model, self.model_cfg (with text_dim and
  mask_id) and self.seq_len (the target tokens per example) before calling this __init__, and
  define `cond_spec`, `model_args`, `preencoded_source` and `synthetic_source`."""

  progress_metrics = ("masked_acc",)
  stage = ""                # config.stage, named in errors
  preencoded_fields = ""    # what muse-encode shards must hold for this stage, named in errors
  raw_tokenizers = ""       # the data.tokenizer* fields a raw image source needs, named in errors

  def __init__(self, config, targets):
    """targets: the online.Target of each token-id input, for training from raw images."""
    super().__init__(config)
    self.masking_cfg = MaskingConfig(**config.masking.to_dict())
    self.text_length = int(config.data.text_length)
    if self.text_length <= 0:
      raise ValueError(f"data.text_length must be positive, got {self.text_length}")
    self.online = online.encoder_for(   # None unless data.source is a raw image source
        config, targets, self.text_length, self.model_cfg.text_dim, self.stage)

  # Shapes -------------------------------------------------------------------------------------
  def cond_spec(self, batch_size: int) -> dict:
    """The stage's conditioning inputs besides the text: name -> (ShapeDtypeStruct, axes)."""
    raise NotImplementedError

  def batch_spec(self, batch_size: int) -> dict:
    c, t = self.model_cfg, self.text_length
    return {
        **self.cond_spec(batch_size),
        "tokens": (jax.ShapeDtypeStruct((batch_size, self.seq_len), jnp.int32),
                   (axes.BATCH, axes.LENGTH)),
        "txt": (jax.ShapeDtypeStruct((batch_size, t, c.text_dim), jnp.float32),
                (axes.BATCH, axes.TEXT_LENGTH, axes.TEXT_EMBED)),
        "txt_mask": (jax.ShapeDtypeStruct((batch_size, t), jnp.bool_),
                     (axes.BATCH, axes.TEXT_LENGTH)),
    }

  def init_params(self, rng):
    """Boxed (nn.Partitioned) float32 params."""
    d = {k: jnp.zeros(v[0].shape, v[0].dtype) for k, v in self.batch_spec(1).items()}
    return self.model.init(rng, *self.model_args(d["tokens"], d, d["txt_mask"]))["params"]

  def init_boxed(self, rng):
    return (self.init_params(rng),)

  def init_state(self, rng, tx: optax.GradientTransformation):
    return step_lib.init_state(self.init_params, rng, tx)

  # Steps --------------------------------------------------------------------------------------
  def model_args(self, inputs_BxN, batch, txt_mask_BxT) -> tuple:
    """The model's arguments for masked ids `inputs_BxN`, the batch's conditioning and
    the (possibly dropped) text mask."""
    raise NotImplementedError

  def mask_and_drop_text(self, rng, tokens_BxN, txt_mask_BxT):
    """`corrupt` with this stage's masking config and mask id."""
    return corrupt(rng, tokens_BxN, txt_mask_BxT, self.masking_cfg, self.model_cfg.mask_id)

  def loss_fn(self, params, batch, rng):
    tokens_BxN = batch["tokens"]
    inputs_BxN, mask_BxN, rate_B, txt_mask_BxT, keep_text_B = self.mask_and_drop_text(
        rng, tokens_BxN, batch["txt_mask"])
    logits = self.model.apply({"params": params},
                              *self.model_args(inputs_BxN, batch, txt_mask_BxT))
    loss, acc = masked_token_loss(logits, tokens_BxN, mask_BxN)
    return loss, {"loss": loss, "masked_acc": acc, "mask_rate": rate_B.mean(),
                  "text_kept": keep_text_B.mean()}

  def train_step(self, state, batch, rng, tx, frozen=None):
    del frozen   # the frozen tokenizers and text encoder run in self.online, before the step
    return step_lib.gradient_step(self.loss_fn, state, batch, rng, tx)

  # Data ---------------------------------------------------------------------------------------
  def preencoded_source(self):
    raise NotImplementedError

  def synthetic_source(self):
    raise NotImplementedError

  def make_source(self):
    """Pre-encoded shards from muse-encode ("preencoded"), the "synthetic" stand-in of the tests
    and benchmarks, or a raw image–caption source through the frozen tokenizer(s) and text
    encoder (tasks/online.py)."""
    source = self.config.data.source
    if self.online is not None:
      return self.online.make_source()
    if source == "preencoded":
      return self.preencoded_source()
    if source == "synthetic":
      return self.synthetic_source()
    raise ValueError(f"data.source={source!r} is not available for stage {self.stage!r}; "
                     f"expected 'preencoded' ({self.preencoded_fields} written by muse-encode), "
                     f"a raw image source {online.RAW_SOURCES} with {self.raw_tokenizers}, or "
                     f"'synthetic'")

  def make_transform(self, counter):
    """Raw images: decode, crop, tokenize captions (tasks/online.py)."""
    if self.online is not None:
      return self.online.make_transform(counter)
    return None
