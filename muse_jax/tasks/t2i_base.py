"""Stage `base`: the text-to-image masked transformer over the base grid's image tokens (16x16
at paper scale), conditioned on text states; trained as every masked-token stage is
(tasks/masked_tokens.py). Named t2i_base, not base, so it does not read as a base class."""
import jax.numpy as jnp

from muse_jax import decoding
from muse_jax.data import preencoded, synthetic
from muse_jax.models.transformer import MaskedTransformer, TransformerConfig
from muse_jax.tasks import masked_tokens, online, samples


class T2IBaseTask(masked_tokens.MaskedTokenTask):
  """Image token ids from text states alone."""

  stage = "base"
  preencoded_fields = "token ids + text states"
  raw_tokenizers = "data.tokenizer"

  def __init__(self, config):
    self.model_cfg = c = TransformerConfig(**config.model.to_dict())
    self.model = MaskedTransformer(c)
    self.seq_len = c.seq_len
    super().__init__(config, [online.Target("tokens", "tokenizer", "resolution", c.grid_size,
                                            c.codebook_size, "grid_size")])

  def cond_spec(self, batch_size: int) -> dict:
    del batch_size
    return {}

  def model_args(self, inputs_BxN, batch, txt_mask_BxT) -> tuple:
    return inputs_BxN, batch["txt"], txt_mask_BxT

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
  def preencoded_source(self):
    c = self.model_cfg
    source = preencoded.PreEncodedSource(self.config.data.path, self.text_length)
    source.check({"tokens": c.seq_len, "txt": c.text_dim}, c.codebook_size)
    return source

  def synthetic_source(self):
    c, d = self.model_cfg, self.config.data
    return synthetic.SyntheticTokenSource(
        num_examples=d.num_examples, seq_len=c.seq_len, codebook_size=c.codebook_size,
        text_length=self.text_length, text_dim=c.text_dim, seed=d.seed)
