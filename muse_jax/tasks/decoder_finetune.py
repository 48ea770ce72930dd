"""Stage `decoder_finetune`: a (typically wider) decoder trained on the frozen encoder and
codebook of a trained tokenizer (config.init_from), with the tokenizer stage's losses
(tasks/vqgan.py); the token ids a finetuned tokenizer writes are the original ones."""
import jax
import numpy as np
import optax

from muse_jax import checkpoint
from muse_jax.tasks import vqgan

# Parameter subtrees that decoder finetuning keeps frozen.
FROZEN = ("encoder", "quantizer", "quant_conv")


class DecoderFinetuneTask(vqgan.VQGANTask):
  """VQGANTask whose encoder and codebook come from config.init_from and never change."""

  def __init__(self, config):
    if not config.init_from:
      raise ValueError("stage decoder_finetune needs config.init_from: the workdir (or "
                       "checkpoint step directory) of a trained tokenizer")
    super().__init__(config)

  def generator_tx(self, tx):
    """Zero updates for the encoder and codebook (weight decay included)."""
    def labels(params):
      return {k: ("frozen" if k in FROZEN else "train") for k in params}
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)

  def _reconstruct(self, params, img):
    # The encoder and codebook are frozen: gradients reach the decoder only.
    frozen = {k: jax.lax.stop_gradient(v) if k in FROZEN else v for k, v in params.items()}
    return self.model.apply({"params": frozen}, img)

  def load_init(self, state):
    """Encoder, codebook (and quant conv) from the trained tokenizer at config.init_from (its EMA
    params when saved); the wider decoder starts fresh."""
    trained = checkpoint.load_params(self.config.init_from)
    params = dict(jax.device_get(state.params))
    for name in FROZEN:
      if name not in params:
        continue
      if name not in trained:
        raise checkpoint.CheckpointError(f"{self.config.init_from} has no {name!r} parameters")
      want = jax.tree.map(np.shape, params[name])
      have = jax.tree.map(np.shape, trained[name])
      if want != have:
        raise checkpoint.CheckpointError(
            f"{name} parameters in {self.config.init_from} do not fit this config: "
            f"{have} vs {want}; the encoder and codebook settings must equal the trained ones")
      params[name] = trained[name]
    # Host copies for params and EMA: the caller device_puts the state and donates it to the
    # train step, and two leaves sharing one buffer would be donated twice.
    params = jax.tree.map(np.array, params)
    return state.replace(params=params,
                         extra=dict(state.extra, ema_params=jax.tree.map(np.array, params)))
