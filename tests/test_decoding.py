"""Decoding invariants (each position decoded once, exact per-step counts, known tokens kept,
determinism, jit = a numpy reference loop), guidance formulas and cached text keys/values."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax import decoding, masking, tasks
from tests import helpers

V = 64          # codebook; mask id = V
N = 64          # 8x8 tokens
MASK = V


def _synthetic_logits_fn(seed=0):
  """Logits that depend on every current token (so each step feeds the next) and on g."""
  r = np.random.default_rng(seed)
  pos_NxV = r.normal(size=(N, V)).astype(np.float32)
  mix_V1xV = r.normal(size=(V + 1, V)).astype(np.float32) * 4
  bias_V = r.normal(size=(V,)).astype(np.float32)

  def np_fn(tokens_BxN, g):
    onehot_BxNxV1 = np.eye(V + 1, dtype=np.float32)[tokens_BxN]
    ctx_BxV = onehot_BxNxV1.mean(1) @ mix_V1xV
    return pos_NxV[None] + ctx_BxV[:, None, :] + np.float32(g) * bias_V

  def jax_fn(tokens_BxN, g):
    onehot_BxNxV1 = jax.nn.one_hot(tokens_BxN, V + 1, dtype=jnp.float32)
    ctx_BxV = onehot_BxNxV1.mean(1) @ mix_V1xV
    return pos_NxV[None] + ctx_BxV[:, None, :] + g * bias_V
  return np_fn, jax_fn


def _init_tokens():
  """Row 0 all masked, row 1 half known, row 2 only 5 unknown (fewer than the steps)."""
  r = np.random.default_rng(1)
  tokens = r.integers(0, V, size=(3, N)).astype(np.int32)
  tokens[0] = MASK
  tokens[1, r.permutation(N)[:32]] = MASK
  tokens[2, r.permutation(N)[:5]] = MASK
  return tokens


def _expected_fixed_per_step(num_unknown, cfg):
  """Independent count rule: keep floor(m gamma((t+1)/T)) masked, but fix at least one per step."""
  t_count, out, left = cfg.num_steps, [], num_unknown
  for t in range(t_count):
    if cfg.schedule == "linear":  # exact integer arithmetic
      keep = num_unknown * (t_count - t - 1) // t_count
    else:
      assert cfg.schedule == "cosine"
      keep = math.floor(num_unknown * math.cos(math.pi / 2 * (t + 1) / t_count))
    keep = max(min(keep, left - 1), 0)
    out.append(left - keep)
    left = keep
  return out


@pytest.mark.parametrize("schedule,num_steps", [("cosine", 12), ("linear", 8)])
def test_each_position_fixed_once_with_scheduled_counts(schedule, num_steps):
  cfg = decoding.DecodeConfig(num_steps=num_steps, schedule=schedule, guidance_scale=1.0)
  _, fn = _synthetic_logits_fn()
  init = _init_tokens()
  state = jax.jit(lambda rng: decoding.decode(fn, init, rng, cfg, MASK, return_state=True,
                                              record_history=True))(jax.random.key(0))
  tokens, fixed_at, hist = map(np.asarray, (state.tokens_BxN, state.fixed_at_BxN,
                                            state.history_TxBxN))
  assert int(state.step) == num_steps
  unknown = init == MASK
  assert ((tokens >= 0) & (tokens < V)).all()
  np.testing.assert_array_equal(tokens[~unknown], init[~unknown])        # known never change
  np.testing.assert_array_equal(fixed_at[~unknown], -1)
  # From the recorded history: every position leaves the mask exactly once and then never changes.
  seq = np.concatenate([init[None], hist])                               # (T+1) x B x N
  changes = (seq[1:] != seq[:-1]).sum(0)
  np.testing.assert_array_equal(changes, unknown.astype(int))
  fixed_step = np.argmax(seq[1:] != MASK, axis=0)
  np.testing.assert_array_equal(fixed_step[unknown], fixed_at[unknown])
  for b in range(init.shape[0]):
    per_step = np.bincount(fixed_at[b][unknown[b]], minlength=num_steps)
    np.testing.assert_array_equal(per_step, _expected_fixed_per_step(unknown[b].sum(), cfg))
  assert (np.bincount(fixed_at[0], minlength=num_steps) >= 1).all()      # >= 1 per step


def test_schedule_table_endpoints_and_monotone():
  for schedule in masking.INFERENCE_SCHEDULES:
    table = masking.masked_count_table(schedule, 24, 256)
    chex.assert_shape(table, (24, 257))
    assert (table[-1] == 0).all() and (np.diff(table, axis=0) <= 0).all()
    assert (table <= np.arange(257)).all() and (table >= 0).all()
  # 48 tokens, 24 linear steps: 48 * 23/24 = 46 exactly (guards float rounding below integers).
  assert masking.masked_count_table("linear", 24, 48)[0, 48] == 46


def _numpy_two_level_sample(rng, logits_BxNxV, block=decoding.SAMPLER_BLOCK):
  """Inverse CDF over blocks of ids then inside the block, in float64, from the same uniforms."""
  k_block, k_inner = jax.random.split(rng)
  u_block = np.asarray(jax.random.uniform(k_block, logits_BxNxV.shape[:-1]), np.float64)
  u_inner = np.asarray(jax.random.uniform(k_inner, logits_BxNxV.shape[:-1]), np.float64)
  p = np.exp(logits_BxNxV - logits_BxNxV.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  out = np.zeros(logits_BxNxV.shape[:-1], np.int32)
  for idx in np.ndindex(*out.shape):
    blocks = [p[idx][i:i + block] for i in range(0, p.shape[-1], block)]
    mass = np.cumsum([b.sum() for b in blocks])
    b = int(np.searchsorted(mass, u_block[idx] * mass[-1], side="right"))
    inner = np.cumsum(blocks[b])
    out[idx] = b * block + int(np.searchsorted(inner, u_inner[idx] * inner[-1], side="right"))
  return out


def test_sampler_matches_the_softmax():
  """Frequencies of sample_categorical over 3 x 200 codes (2 blocks, zero-probability codes)."""
  logits = np.random.default_rng(0).normal(size=(200,)).astype(np.float32) * 2
  logits[[5, 150, 199]] = -np.inf
  draws = np.asarray(decoding.sample_categorical(jax.random.key(0),
                                                 jnp.broadcast_to(logits, (400, 500, 200))))
  freq = np.bincount(draws.ravel(), minlength=200) / draws.size
  p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  assert freq[[5, 150, 199]].sum() == 0
  np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p.max() / draws.size))


def _numpy_reference(np_fn, init, rng, cfg):
  """An eager numpy loop for the algorithm; jax.random only draws the same random numbers."""
  tokens = init.copy()
  m = (tokens == MASK).sum(-1)
  t_count = cfg.num_steps
  history = []
  for t in range(t_count):
    unknown = tokens == MASK
    if not unknown.any():
      break
    k_sample, k_choice = jax.random.split(jax.random.fold_in(rng, t))
    g = cfg.guidance_scale * t / (t_count - 1)
    logits = np_fn(tokens, g).astype(np.float64) / cfg.temperature
    sampled = _numpy_two_level_sample(k_sample, logits)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    conf = np.take_along_axis(logp, sampled[..., None], -1)[..., 0]
    gumbel = np.asarray(jax.random.gumbel(k_choice, tokens.shape, jnp.float32))
    conf = conf + cfg.choice_temperature * (1 - (t + 1) / t_count) * gumbel
    conf = np.where(unknown, conf, np.inf)
    keep = np.floor(m * np.cos(np.pi / 2 * (t + 1) / t_count) + 1e-9).astype(int)
    keep = np.maximum(np.minimum(keep, unknown.sum(-1) - 1), 0)
    for b in range(tokens.shape[0]):
      order = np.argsort(conf[b], kind="stable")          # least confident first
      fix = np.zeros(tokens.shape[1], bool)
      fix[order[keep[b]:]] = True
      fix &= unknown[b]
      tokens[b] = np.where(fix, sampled[b], tokens[b])
    history.append(tokens.copy())
  return tokens, np.stack(history)


def test_jit_equals_numpy_reference_and_seeds():
  cfg = decoding.DecodeConfig(num_steps=8, temperature=0.7, choice_temperature=3.0,
                              guidance_scale=2.0)
  np_fn, fn = _synthetic_logits_fn()
  init = _init_tokens()
  run = jax.jit(lambda rng: decoding.decode(fn, init, rng, cfg, MASK, return_state=True,
                                            record_history=True))
  state = run(jax.random.key(7))
  ref_tokens, ref_hist = _numpy_reference(np_fn, init, jax.random.key(7), cfg)
  np.testing.assert_array_equal(np.asarray(state.history_TxBxN)[:len(ref_hist)], ref_hist)
  np.testing.assert_array_equal(np.asarray(state.tokens_BxN), ref_tokens)
  # Same seed, same tokens; another seed, other tokens.
  np.testing.assert_array_equal(np.asarray(run(jax.random.key(7)).tokens_BxN), ref_tokens)
  other = np.asarray(run(jax.random.key(8)).tokens_BxN)
  assert (other[init == MASK] != ref_tokens[init == MASK]).mean() > 0.5


def test_loop_stops_when_everything_is_known():
  calls = []
  _, fn = _synthetic_logits_fn()
  init = _init_tokens()[2:]                                              # 5 unknown, 24 steps
  state = decoding.decode(lambda t, g: calls.append(1) or fn(t, g), init, jax.random.key(0),
                          decoding.DecodeConfig(), MASK, return_state=True)
  assert int(state.step) == 5 and not (np.asarray(state.tokens_BxN) == MASK).any()
  known = np.asarray(init) % V                                           # nothing to decode
  state = decoding.decode(fn, known, jax.random.key(0), decoding.DecodeConfig(), MASK,
                          return_state=True)
  assert int(state.step) == 0
  np.testing.assert_array_equal(np.asarray(state.tokens_BxN), known)


def test_guidance_schedule_and_config_errors():
  lin = decoding.DecodeConfig(num_steps=5, guidance_scale=4.0)
  np.testing.assert_allclose([float(lin.guidance_at(s)) for s in range(5)], [0, 1, 2, 3, 4])
  const = decoding.DecodeConfig(num_steps=5, guidance_scale=4.0, guidance_schedule="constant")
  assert float(const.guidance_at(0)) == 4.0
  with pytest.raises(ValueError, match="decode.schedule"):
    decoding.DecodeConfig(schedule="arccoss")
  with pytest.raises(ValueError, match="decode.num_steps"):
    decoding.DecodeConfig(num_steps=0)
  with pytest.raises(ValueError, match="decode.guidance_scale"):
    decoding.DecodeConfig(guidance_scale=-1.0)


# The tiny base model ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
  task = tasks.get_task(helpers.tiny_base())
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x,
                        task.init_params(jax.random.key(0)),
                        is_leaf=lambda x: hasattr(x, "unbox"))
  r = np.random.default_rng(0)
  c = task.model_cfg
  tokens = r.integers(0, c.codebook_size + 1, size=(2, c.seq_len)).astype(np.int32)
  txt = r.normal(size=(2, task.text_length, c.text_dim)).astype(np.float32)
  mask = np.array([[True] * 5 + [False] * 3, [True] * 8])
  neg_txt = r.normal(size=(2, 6, c.text_dim)).astype(np.float32)   # another length
  neg_mask = np.array([[True] * 2 + [False] * 4, [True] * 6])
  return task, params, dict(tokens=tokens, txt=txt, mask=mask, neg_txt=neg_txt, neg_mask=neg_mask)


def test_cached_text_keys_values_equal_uncached(tiny):
  task, params, d = tiny
  model, p = task.model, {"params": params}
  mask = d["mask"].copy()
  mask[1] = False                                     # one row without text (unconditional)
  cache = model.apply(p, d["txt"], mask, method="encode_context")
  c = task.model_cfg
  chex.assert_shape(cache.keys_LxBxTxHxE,
                    (c.num_layers, 2, task.text_length, c.num_heads, c.hidden_size // c.num_heads))
  cached = model.apply(p, d["tokens"], cache, method="logits_from_cache")
  uncached = model.apply(p, d["tokens"], d["txt"], mask)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(uncached), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="text cache holds 2 examples"):
    model.apply(p, d["tokens"][:1], cache, method="logits_from_cache")


def test_guided_logits_formulas(tiny):
  task, params, d = tiny
  model, p = task.model, {"params": params}
  v = task.model_cfg.codebook_size
  full = lambda txt, mask: np.asarray(model.apply(p, d["tokens"], txt, mask))[..., :v]
  cond = full(d["txt"], d["mask"])
  uncond = full(d["txt"], np.zeros_like(d["mask"]))
  neg_txt = np.pad(d["neg_txt"], ((0, 0), (0, 2), (0, 0)))
  neg = full(neg_txt, np.pad(d["neg_mask"], ((0, 0), (0, 2))))
  plain = decoding.transformer_logits_fn(model, params, d["txt"], d["mask"])
  negative = decoding.transformer_logits_fn(model, params, d["txt"], d["mask"], d["neg_txt"],
                                            d["neg_mask"])
  off = decoding.transformer_logits_fn(model, params, d["txt"], d["mask"], guidance=False)
  tol = dict(rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(plain(d["tokens"], 0.0)), cond, **tol)   # g = 0: cond
  np.testing.assert_allclose(np.asarray(off(d["tokens"], 3.0)), cond, **tol)
  g = 2.5
  np.testing.assert_allclose(np.asarray(plain(d["tokens"], g)), (1 + g) * cond - g * uncond,
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(negative(d["tokens"], g)), (1 + g) * cond - g * neg,
                             rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="needs guidance=True"):
    decoding.transformer_logits_fn(model, params, d["txt"], d["mask"], d["neg_txt"],
                                   d["neg_mask"], guidance=False)


def test_sample_base_tokens_edits_only_the_masked_region(tiny):
  task, params, d = tiny
  c = task.model_cfg
  known = np.asarray(d["tokens"]) % c.codebook_size
  init = known.copy()
  init[:, : c.seq_len // 2] = c.mask_id                   # repaint the top half
  cfg = decoding.DecodeConfig(num_steps=6, guidance_scale=3.0)
  out = decoding.sample_base_tokens(params, jax.random.key(0), d["txt"], d["mask"], d["neg_txt"],
                                    d["neg_mask"], init, model_cfg=c, cfg=cfg)
  out = np.asarray(out)
  np.testing.assert_array_equal(out[:, c.seq_len // 2:], known[:, c.seq_len // 2:])
  assert ((out >= 0) & (out < c.codebook_size)).all()
