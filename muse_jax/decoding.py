"""Iterative parallel decoding (MaskGIT, Muse section 2.6): one `lax.while_loop` over a DecodeState.

The decoder knows nothing about models: it takes `logits_fn(tokens_BxN, guidance_scale) ->
logits_BxNxV`, so the base model, super-resolution and editing share it and differ only in their
logits_fn and initial tokens. Initial tokens may be partially known (editing passes the image's
tokens with the region to repaint set to mask_id); known tokens count as fixed and never change.

Step t (0-based) of T, for each row with m initially unknown tokens, u of them still masked:
  1. logits = logits_fn(tokens, g_t) (g_t: guidance scale of this step, see DecodeConfig);
  2. every masked position samples a token from softmax(logits / temperature) (argmax if 0), by
     inverse CDF (`sample_categorical`);
  3. confidence = log-prob of the sampled token + choice_temperature * (1 - (t + 1) / T) * Gumbel
     noise (MaskGIT's annealed randomness; no noise at the last step);
  4. k = min(floor(m * gamma((t + 1) / T)), u - 1) positions stay masked (clipped at 0; gamma is
     the schedule, masking.masked_count_table), i.e. exactly u - k >= 1 of the highest-confidence
     masked positions take their sampled token. gamma(1) = 0, so after step T - 1 nothing is
     masked. Rows with nothing left to fix are unchanged; the loop ends early once all are fixed.
Step t draws its randomness from fold_in(rng, t): the same rng gives the same tokens.

Classifier-free guidance (`transformer_logits_fn`): l = (1 + g) l_cond - g l_uncond, the two
halves from ONE forward pass over the concatenated [cond; uncond] batch, where the unconditional
half has no text (all-False text mask) or a negative prompt's text. The text keys/values of every
layer are computed once per decode (MaskedTransformer.encode_context), not at every step.

Call `decode` inside jax.jit (as `sample_base_tokens` does): logits_fn is a Python closure, so it
is traced into the one compiled loop.
"""
import dataclasses
import functools
from typing import Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax import masking
from muse_jax.models.transformer import MaskedTransformer, TransformerConfig

# (tokens_BxN int32, guidance_scale float32 scalar) -> logits_BxNxV; V >= mask_id.
LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]

GUIDANCE_SCHEDULES = ("linear", "constant")
# Muse's step counts: 24 for the base model, 8 for super-resolution.
DEFAULT_NUM_STEPS = {"base": 24, "superres": 8}
SAMPLER_BLOCK = 128  # ids per block of the two-level inverse-CDF sampler


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How to decode (hashable: a static argument of jitted samplers).

  num_steps: forward passes at most (24 base, 8 super-res in Muse).
  schedule: fraction still masked after each step, one of masking.INFERENCE_SCHEDULES.
  temperature: tokens are sampled from softmax(logits / temperature); 0 takes the argmax.
  choice_temperature: scale of the Gumbel noise added to the confidences, annealed linearly to 0
    over the steps (MaskGIT uses 4.5).
  guidance_scale: classifier-free guidance g; 0 turns guidance off.
  guidance_schedule: "linear" (g_t rises from 0 at the first step to guidance_scale at the last, as
    in Muse) or "constant" (g_t = guidance_scale).
  """
  num_steps: int = DEFAULT_NUM_STEPS["base"]
  schedule: str = "cosine"
  temperature: float = 1.0
  choice_temperature: float = 4.5
  guidance_scale: float = 0.0
  guidance_schedule: str = "linear"

  def __post_init__(self):
    if not isinstance(self.num_steps, (int, np.integer)) or self.num_steps < 1:
      raise ValueError(f"decode.num_steps must be a positive integer, got {self.num_steps!r}")
    if self.schedule not in masking.INFERENCE_SCHEDULES:
      raise ValueError(f"decode.schedule={self.schedule!r}; expected one of "
                       f"{masking.INFERENCE_SCHEDULES}")
    if self.guidance_schedule not in GUIDANCE_SCHEDULES:
      raise ValueError(f"decode.guidance_schedule={self.guidance_schedule!r}; expected one of "
                       f"{GUIDANCE_SCHEDULES}")
    for f in ("temperature", "choice_temperature", "guidance_scale"):
      value = getattr(self, f)
      if not np.isfinite(value) or value < 0:
        raise ValueError(f"decode.{f} must be finite and >= 0, got {value!r}")

  def guidance_at(self, step):
    """Guidance scale g_t (float32) at 0-based `step` (a Python or traced int)."""
    scale = jnp.float32(self.guidance_scale)
    if self.guidance_schedule == "constant":
      return scale
    return scale * jnp.asarray(step, jnp.float32) / max(self.num_steps - 1, 1)


def _inverse_cdf(weights_BxK, u_B):
  """Index of the first entry whose cumulative weight exceeds u * total; never a zero-weight entry.
  (When rounding leaves no entry above the target, u within an ulp of 1, the last positive one.)"""
  k = weights_BxK.shape[-1]
  cum_BxK = jnp.cumsum(weights_BxK, axis=-1)
  above_BxK = cum_BxK > (u_B * cum_BxK[..., -1])[..., None]
  last_positive_B = k - 1 - jnp.argmax(jnp.flip(weights_BxK > 0, axis=-1), axis=-1)
  return jnp.where(above_BxK.any(-1), jnp.argmax(above_BxK, axis=-1), last_positive_B)


def sample_categorical(rng, logits_BxNxV):
  """One id per position from softmax(logits_BxNxV) -> ids_BxN int32.

  Two-level inverse CDF: a block of SAMPLER_BLOCK ids from the blocks' total probabilities, then an
  id inside it, each from one uniform. Exact in distribution like jax.random.categorical (Gumbel
  max), but 2 random numbers per position instead of V: for V = 8192 on a CPU ~25x cheaper, which
  is most of the decoding loop's cost beyond the forward passes. Float32 cumulative sums run over at
  most max(V / SAMPLER_BLOCK, SAMPLER_BLOCK) terms.
  """
  v = logits_BxNxV.shape[-1]
  num_blocks = -(-v // SAMPLER_BLOCK)
  probs_BxNxV = jax.nn.softmax(logits_BxNxV.astype(jnp.float32), axis=-1)
  pad = [(0, 0)] * (probs_BxNxV.ndim - 1) + [(0, num_blocks * SAMPLER_BLOCK - v)]
  probs_BxNxKxC = jnp.pad(probs_BxNxV, pad).reshape(
      probs_BxNxV.shape[:-1] + (num_blocks, SAMPLER_BLOCK))
  block_rng, inner_rng = jax.random.split(rng)
  lead = probs_BxNxV.shape[:-1]
  block_BxN = _inverse_cdf(probs_BxNxKxC.sum(-1), jax.random.uniform(block_rng, lead))
  inner_BxNxC = jnp.take_along_axis(probs_BxNxKxC, block_BxN[..., None, None], axis=-2)[..., 0, :]
  inner_BxN = _inverse_cdf(inner_BxNxC, jax.random.uniform(inner_rng, lead))
  return (block_BxN * SAMPLER_BLOCK + inner_BxN).astype(jnp.int32)


@flax.struct.dataclass
class DecodeState:
  """The while_loop carry.

  step: int32 scalar, steps done. tokens_BxN: current ids, mask_id where still masked.
  rng: the decode's key (step t uses fold_in(rng, t)). num_unknown_B: tokens masked at the start,
  the m of the schedule. fixed_at_BxN: the step that fixed each position; -1 for tokens known from
  the start, num_steps while still masked. history_TxBxN: tokens after each step (-1 for steps not
  run), or None unless decode(record_history=True).
  """
  step: jax.Array
  tokens_BxN: jax.Array
  rng: jax.Array
  num_unknown_B: jax.Array
  fixed_at_BxN: jax.Array
  history_TxBxN: Optional[jax.Array] = None


def init_state(init_tokens_BxN, rng, cfg: DecodeConfig, mask_id: int,
               record_history: bool = False) -> DecodeState:
  """The state before step 0: init_tokens_BxN (ints, mask_id where unknown) and the decode's rng."""
  tokens_BxN = jnp.asarray(init_tokens_BxN)
  if tokens_BxN.ndim != 2 or not jnp.issubdtype(tokens_BxN.dtype, jnp.integer):
    raise ValueError(f"init tokens must be an integer array of shape (batch, num_tokens), got "
                     f"{tokens_BxN.dtype} {tokens_BxN.shape}")
  tokens_BxN = tokens_BxN.astype(jnp.int32)
  unknown_BxN = tokens_BxN == mask_id
  history = None
  if record_history:
    history = jnp.full((cfg.num_steps,) + tokens_BxN.shape, -1, jnp.int32)
  return DecodeState(step=jnp.zeros((), jnp.int32), tokens_BxN=tokens_BxN, rng=rng,
                     num_unknown_B=unknown_BxN.sum(-1, dtype=jnp.int32),
                     fixed_at_BxN=jnp.where(unknown_BxN, cfg.num_steps, -1).astype(jnp.int32),
                     history_TxBxN=history)


def decode_step(state: DecodeState, logits_fn: LogitsFn, cfg: DecodeConfig,
                mask_id: int) -> DecodeState:
  """One step (module docstring, 1-4)."""
  t = state.step
  tokens_BxN = state.tokens_BxN
  b, n = tokens_BxN.shape
  unknown_BxN = tokens_BxN == mask_id
  sample_rng, choice_rng = jax.random.split(jax.random.fold_in(state.rng, t))

  logits_BxNxV = logits_fn(tokens_BxN, cfg.guidance_at(t))
  if logits_BxNxV.ndim != 3 or logits_BxNxV.shape[:2] != (b, n) or logits_BxNxV.shape[2] < mask_id:
    raise ValueError(f"logits_fn must return logits of shape ({b}, {n}, V) with V >= mask_id "
                     f"= {mask_id} (the codebook), got {logits_BxNxV.shape}")
  logits_BxNxV = logits_BxNxV[..., :mask_id].astype(jnp.float32)  # drop padded vocab entries
  if cfg.temperature > 0:
    logits_BxNxV = logits_BxNxV / cfg.temperature
    sampled_BxN = sample_categorical(sample_rng, logits_BxNxV)
  else:
    sampled_BxN = jnp.argmax(logits_BxNxV, axis=-1)
  logp_BxNxV = jax.nn.log_softmax(logits_BxNxV, axis=-1)
  logp_BxN = jnp.take_along_axis(logp_BxNxV, sampled_BxN[..., None], axis=-1)[..., 0]
  noise_scale = cfg.choice_temperature * (1.0 - (t + 1).astype(jnp.float32) / cfg.num_steps)
  confidence_BxN = logp_BxN + noise_scale * jax.random.gumbel(choice_rng, (b, n), jnp.float32)
  confidence_BxN = jnp.where(unknown_BxN, confidence_BxN, jnp.inf)

  # How many stay masked: the schedule's count, at least one fewer than now (clipped at 0).
  table_TxM1 = jnp.asarray(masking.masked_count_table(cfg.schedule, cfg.num_steps, n))
  num_masked_B = unknown_BxN.sum(-1, dtype=jnp.int32)
  keep_masked_B = jnp.minimum(table_TxM1[t, state.num_unknown_B],
                              jnp.maximum(num_masked_B - 1, 0))
  # Exact count: the keep_masked_B lowest-confidence masked positions stay masked (known tokens
  # have +inf confidence and rank after every masked one).
  rank_BxN = jnp.argsort(jnp.argsort(confidence_BxN, axis=-1), axis=-1)
  fix_BxN = unknown_BxN & (rank_BxN >= keep_masked_B[:, None])
  new_tokens_BxN = jnp.where(fix_BxN, sampled_BxN.astype(jnp.int32), tokens_BxN)
  history = state.history_TxBxN
  if history is not None:
    history = history.at[t].set(new_tokens_BxN)
  return state.replace(step=t + 1, tokens_BxN=new_tokens_BxN,
                       fixed_at_BxN=jnp.where(fix_BxN, t, state.fixed_at_BxN),
                       history_TxBxN=history)


def decode(logits_fn: LogitsFn, init_tokens_BxN, rng, cfg: DecodeConfig, mask_id: int, *,
           return_state: bool = False, record_history: bool = False):
  """Decodes every mask_id position of init_tokens_BxN; returns tokens_BxN (int32, no mask_id left)
  or, with return_state, the final DecodeState (record_history fills its history_TxBxN)."""
  state = init_state(init_tokens_BxN, rng, cfg, mask_id, record_history)

  def cond(s):
    return (s.step < cfg.num_steps) & jnp.any(s.tokens_BxN == mask_id)

  state = jax.lax.while_loop(cond, lambda s: decode_step(s, logits_fn, cfg, mask_id), state)
  return state if return_state else state.tokens_BxN


# Logits with classifier-free guidance ----------------------------------------------------------
def _pad_text(txt_BxTxC, txt_mask_BxT, length):
  pad = length - txt_BxTxC.shape[1]
  return (jnp.pad(txt_BxTxC, ((0, 0), (0, pad), (0, 0))),
          jnp.pad(txt_mask_BxT.astype(bool), ((0, 0), (0, pad))))


def guided_logits_fn(encode, logits, txt_BxTxC, txt_mask_BxT, negative_txt_BxTxC=None,
                     negative_txt_mask_BxT=None, *, codebook_size: int,
                     guidance: bool = True) -> LogitsFn:
  """A LogitsFn from a model's two halves, for every masked-token model (base and super-res).

  encode(txt_BxTxC, txt_mask_BxT) -> context: the part that does not change between decoding
  steps (text projection, cross-attention keys/values, the super-res low-res stream), run once,
  here; build the LogitsFn inside the same jit as `decode` so it is a loop constant. With
  guidance the batch is doubled: encode sees [text; negative text, or no text] (2B rows), and
  each call runs one pass of logits([tokens; tokens], context), returning
  (1 + g) l_cond - g l_uncond over the codebook; without, the conditional logits only (g unused,
  half the compute). A negative prompt may have another text length (both are zero-padded).
  """
  b = txt_BxTxC.shape[0]
  if (negative_txt_BxTxC is None) != (negative_txt_mask_BxT is None):
    raise ValueError("pass both negative_txt_BxTxC and negative_txt_mask_BxT, or neither")
  if not guidance:
    if negative_txt_BxTxC is not None:
      raise ValueError("a negative prompt replaces the unconditional logits of classifier-free "
                       "guidance; it needs guidance=True (and DecodeConfig.guidance_scale > 0)")
    context = encode(txt_BxTxC, txt_mask_BxT)

    def logits_fn(tokens_BxN, guidance_scale):
      del guidance_scale
      return logits(tokens_BxN, context)[..., :codebook_size]
    return logits_fn

  if negative_txt_BxTxC is None:  # unconditional: no text at all
    neg_txt, neg_mask = jnp.zeros_like(txt_BxTxC), jnp.zeros(txt_mask_BxT.shape, bool)
  else:
    if negative_txt_BxTxC.shape[0] != b or negative_txt_BxTxC.shape[2] != txt_BxTxC.shape[2]:
      raise ValueError(f"negative text states {negative_txt_BxTxC.shape} must match the prompt's "
                       f"batch and width {txt_BxTxC.shape}")
    neg_txt, neg_mask = negative_txt_BxTxC, negative_txt_mask_BxT
  length = max(txt_BxTxC.shape[1], neg_txt.shape[1])
  txt, mask = _pad_text(txt_BxTxC, txt_mask_BxT, length)
  neg_txt, neg_mask = _pad_text(neg_txt.astype(txt.dtype), neg_mask, length)
  context = encode(jnp.concatenate([txt, neg_txt]), jnp.concatenate([mask, neg_mask]))

  def guided(tokens_BxN, guidance_scale):
    logits_2BxNxV = logits(jnp.concatenate([tokens_BxN, tokens_BxN]),
                           context)[..., :codebook_size]
    cond_BxNxV, uncond_BxNxV = logits_2BxNxV[:b], logits_2BxNxV[b:]
    return (1.0 + guidance_scale) * cond_BxNxV - guidance_scale * uncond_BxNxV
  return guided


# The base model ----------------------------------------------------------------------------------
def transformer_logits_fn(model: MaskedTransformer, params, txt_BxTxC, txt_mask_BxT,
                          negative_txt_BxTxC=None, negative_txt_mask_BxT=None, *,
                          guidance: bool = True) -> LogitsFn:
  """A LogitsFn for the base MaskedTransformer (params: its "params" collection, unboxed): the
  text projection and every layer's cross-attention keys/values are the cached context
  (guided_logits_fn)."""
  def encode(txt_BxTxC, txt_mask_BxT):
    return model.apply({"params": params}, txt_BxTxC, txt_mask_BxT, method="encode_context")

  def logits(tokens_BxN, cache):
    return model.apply({"params": params}, tokens_BxN, cache, method="logits_from_cache")

  return guided_logits_fn(encode, logits, txt_BxTxC, txt_mask_BxT, negative_txt_BxTxC,
                          negative_txt_mask_BxT, codebook_size=model.cfg.codebook_size,
                          guidance=guidance)


@functools.partial(jax.jit, static_argnames=("model_cfg", "cfg"))
def sample_base_tokens(params, rng, txt_BxTxC, txt_mask_BxT, negative_txt_BxTxC=None,
                       negative_txt_mask_BxT=None, init_tokens_BxN=None, *,
                       model_cfg: TransformerConfig, cfg: DecodeConfig):
  """Base-model image tokens for a batch of prompts, jitted end to end.

  init_tokens_BxN: None (all masked) or known tokens with mask_id where to generate (editing).
  Guidance runs when cfg.guidance_scale > 0 (negative prompt optional). Returns tokens_BxN int32.
  """
  b = txt_BxTxC.shape[0]
  if init_tokens_BxN is None:
    init_tokens_BxN = jnp.full((b, model_cfg.seq_len), model_cfg.mask_id, jnp.int32)
  if init_tokens_BxN.shape != (b, model_cfg.seq_len):
    raise ValueError(f"init tokens {init_tokens_BxN.shape} must be (batch={b}, "
                     f"seq_len={model_cfg.seq_len})")
  guidance = cfg.guidance_scale > 0
  if negative_txt_BxTxC is not None and not guidance:
    raise ValueError("a negative prompt needs guidance: set DecodeConfig.guidance_scale > 0")
  logits_fn = transformer_logits_fn(MaskedTransformer(model_cfg), params, txt_BxTxC, txt_mask_BxT,
                                    negative_txt_BxTxC, negative_txt_mask_BxT, guidance=guidance)
  return decode(logits_fn, init_tokens_BxN, rng, cfg, model_cfg.mask_id)
