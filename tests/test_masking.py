"""Masking-rate distributions and exact-count masks."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from muse_jax import masking


def test_arccos_rate_mean_and_cdf():
  r = np.asarray(masking.sample_mask_rate(jax.random.key(0), (200_000,), "arccos"))
  assert abs(r.mean() - 2 / math.pi) < 3e-3            # 0.6366
  assert r.min() >= 0 and r.max() <= 1
  for q in (0.2, 0.5, 0.9):                            # CDF F(r) = 2/pi arcsin(r)
    assert abs((r <= q).mean() - 2 / math.pi * math.asin(q)) < 5e-3


@pytest.mark.parametrize("dist", masking.RATE_DISTRIBUTIONS)
def test_mask_has_exact_count(dist):
  mask, rate = masking.training_mask(jax.random.key(1), 64, 256, dist)
  expected = np.clip(np.ceil(np.asarray(rate) * 256), 1, 256)
  np.testing.assert_array_equal(np.asarray(mask).sum(-1), expected)


def test_count_at_least_one_and_at_most_n():
  counts = masking.num_to_mask(jnp.array([0.0, 1e-9, 0.5, 1.0]), 16)
  np.testing.assert_array_equal(np.asarray(counts), [1, 1, 8, 16])


def test_positions_are_uniform():
  mask = masking.random_mask(jax.random.key(2), jnp.full((20_000,), 4), 16)
  freq = np.asarray(mask).mean(0)
  np.testing.assert_allclose(freq, 0.25, atol=0.02)


def test_unknown_distribution():
  with pytest.raises(ValueError, match="unknown masking rate distribution"):
    masking.sample_mask_rate(jax.random.key(0), (2,), "linear-ish")
