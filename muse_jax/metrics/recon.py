"""Reconstruction metrics on images in [0, 1]: PSNR and SSIM (Wang et al. 2004, 11x11 Gaussian
window with sigma 1.5, K1 = 0.01, K2 = 0.03, per channel, averaged)."""
import jax
import jax.numpy as jnp


def psnr(a_BxHxWxC, b_BxHxWxC, max_value: float = 1.0):
  """Per-image PSNR in dB, shape [B]."""
  mse = jnp.mean((a_BxHxWxC.astype(jnp.float32) - b_BxHxWxC.astype(jnp.float32)) ** 2,
                 axis=(1, 2, 3))
  return 10.0 * jnp.log10(max_value ** 2 / jnp.maximum(mse, 1e-12))


def _gaussian_window(size: int = 11, sigma: float = 1.5):
  x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  g = jnp.exp(-(x ** 2) / (2 * sigma ** 2))
  return g / g.sum()


def _blur(x_BxHxWxC, window):
  """Separable 'valid' Gaussian filter per channel."""
  c = x_BxHxWxC.shape[-1]
  k = window.shape[0]
  kh = jnp.tile(window.reshape(k, 1, 1, 1), (1, 1, 1, c))
  kw = jnp.tile(window.reshape(1, k, 1, 1), (1, 1, 1, c))
  dn = ("NHWC", "HWIO", "NHWC")
  y = jax.lax.conv_general_dilated(x_BxHxWxC, kh, (1, 1), "VALID", dimension_numbers=dn,
                                   feature_group_count=c)
  return jax.lax.conv_general_dilated(y, kw, (1, 1), "VALID", dimension_numbers=dn,
                                      feature_group_count=c)


def ssim(a_BxHxWxC, b_BxHxWxC, max_value: float = 1.0):
  """Per-image mean SSIM, shape [B]. Images must be at least 11x11."""
  a = a_BxHxWxC.astype(jnp.float32)
  b = b_BxHxWxC.astype(jnp.float32)
  w = _gaussian_window()
  c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
  mu_a, mu_b = _blur(a, w), _blur(b, w)
  var_a = _blur(a * a, w) - mu_a ** 2
  var_b = _blur(b * b, w) - mu_b ** 2
  cov = _blur(a * b, w) - mu_a * mu_b
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
  return jnp.mean(s, axis=(1, 2, 3))
