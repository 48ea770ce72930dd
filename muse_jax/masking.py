"""Masking-rate distributions, exact-count training masks and the decoding (inference) schedules.

Training draws a masking rate r per example and masks exactly ceil(r * N) of its N tokens
(at least one). Muse's rate distribution is the truncated arccos, p(r) = 2/pi (1 - r^2)^(-1/2) on
[0, 1]: its CDF is F(r) = (2/pi) arcsin(r), so r = sin(pi/2 u) for u ~ U[0, 1); mean 2/pi = 0.637.

Decoding unmasks tokens over T steps following a schedule gamma (cosine by default): after step t
a fraction gamma((t + 1) / T) of the initially unknown tokens is still masked
(`masked_count_table`).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

RATE_DISTRIBUTIONS = ("arccos", "uniform", "cosine")


def sample_mask_rate(rng, shape, distribution: str = "arccos"):
  """Masking rates in (0, 1] of the given shape."""
  u = jax.random.uniform(rng, shape, jnp.float32)
  if distribution == "arccos":
    return jnp.sin(0.5 * math.pi * u)
  if distribution == "cosine":  # MaskGIT's training choice: r = cos(pi/2 u)
    return jnp.cos(0.5 * math.pi * u)
  if distribution == "uniform":
    return u
  raise ValueError(f"unknown masking rate distribution {distribution!r}; "
                   f"expected one of {RATE_DISTRIBUTIONS}")


def num_to_mask(rate_B, seq_len: int):
  """Exact masked-token count per example: ceil(r * N), clipped to [1, N]."""
  return jnp.clip(jnp.ceil(rate_B * seq_len), 1, seq_len).astype(jnp.int32)


def random_mask(rng, count_B, seq_len: int):
  """Boolean mask_BxN with exactly count_B[b] True entries per row, at uniformly random positions."""
  scores_BxN = jax.random.uniform(rng, (count_B.shape[0], seq_len))
  ranks_BxN = jnp.argsort(jnp.argsort(scores_BxN, axis=-1), axis=-1)
  return ranks_BxN < count_B[:, None]


def training_mask(rng, batch: int, seq_len: int, distribution: str = "arccos"):
  """Draws rates and returns (mask_BxN, rate_B)."""
  rate_rng, pos_rng = jax.random.split(rng)
  rate_B = sample_mask_rate(rate_rng, (batch,), distribution)
  return random_mask(pos_rng, num_to_mask(rate_B, seq_len), seq_len), rate_B


# Inference schedules ---------------------------------------------------------------------------
# A schedule gamma maps decoding progress r in [0, 1] to the fraction of the initially unknown
# tokens still masked: gamma(0) = 1, gamma(1) = 0, non-increasing. Muse and MaskGIT decode with
# cosine.
INFERENCE_SCHEDULES = ("cosine", "linear", "square", "cubic", "sqrt", "log", "exp")


def mask_ratio(schedule: str, progress):
  """gamma(progress) for numpy or jax arrays (progress in [0, 1]), clipped to [0, 1]."""
  xp = jnp if isinstance(progress, jax.Array) else np
  r = xp.clip(progress, 0.0, 1.0)
  if schedule == "cosine":
    g = xp.cos(0.5 * math.pi * r)
  elif schedule == "linear":
    g = 1.0 - r
  elif schedule == "square":
    g = 1.0 - r ** 2
  elif schedule == "cubic":
    g = 1.0 - r ** 3
  elif schedule == "sqrt":
    g = 1.0 - xp.sqrt(r)
  elif schedule == "log":   # MaskGIT's: fast at the start
    g = -xp.log2(1.0 + r) + 1.0
  elif schedule == "exp":   # slow at the start
    g = 1.0 - (xp.exp2(r) - 1.0)
  else:
    raise ValueError(f"unknown decoding schedule {schedule!r}; expected one of "
                     f"{INFERENCE_SCHEDULES}")
  return xp.where(r >= 1.0, 0.0, xp.clip(g, 0.0, 1.0))


def masked_count_table(schedule: str, num_steps: int, max_unknown: int) -> np.ndarray:
  """int32 table_TxM1 (M1 = max_unknown + 1): table[t, m] = floor(m * gamma((t + 1) / T)), how many
  of m initially unknown tokens the schedule leaves masked after step t (0-based). Computed in
  float64 on the host so the count is exact and the same on every backend; the last row is 0.
  The decoder additionally fixes at least one token per step (see decoding.py)."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be at least 1, got {num_steps}")
  gamma_T = mask_ratio(schedule, np.arange(1, num_steps + 1, dtype=np.float64) / num_steps)
  m_M = np.arange(max_unknown + 1, dtype=np.float64)
  # The 1e-9 guards products that are integers in exact arithmetic (e.g. 48 * 23/24).
  return np.floor(gamma_T[:, None] * m_M[None, :] + 1e-9).astype(np.int32)
