"""Masking-rate distributions and exact-count training masks.

Training draws a masking rate r per example and masks exactly ceil(r * N) of its N tokens
(at least one). Muse's rate distribution is the truncated arccos, p(r) = 2/pi (1 - r^2)^(-1/2) on
[0, 1]: its CDF is F(r) = (2/pi) arcsin(r), so r = sin(pi/2 u) for u ~ U[0, 1); mean 2/pi = 0.637.
"""
import math

import jax
import jax.numpy as jnp

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
