"""Fréchet Inception Distance (Heusel et al. 2017) between two image sets.

FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) over the 2048-d pool features of the FID
InceptionV3 (muse_jax/models/inception.py). Tr((S1 S2)^(1/2)) is computed without a general
matrix square root: with R = S1^(1/2) (symmetric, from an eigendecomposition), S1 S2 is similar
to R S2 R, which is symmetric positive semi-definite, so the trace is the sum of the square roots
of its eigenvalues. Everything in float64 numpy; no scipy.
"""
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.models import inception


def activation_statistics(features_NxD) -> tuple:
  """(mean [D], covariance [D, D]) in float64 of N feature rows (unbiased covariance)."""
  f = np.asarray(features_NxD, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"FID statistics need at least 2 feature rows [N, D], got shape {f.shape}")
  return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(s_DxD):
  w, v = np.linalg.eigh((s_DxD + s_DxD.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1_D, sigma1_DxD, mu2_D, sigma2_DxD) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
  mu1, mu2 = np.asarray(mu1_D, np.float64), np.asarray(mu2_D, np.float64)
  s1, s2 = np.asarray(sigma1_DxD, np.float64), np.asarray(sigma2_DxD, np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(f"FID statistics disagree in shape: means {mu1.shape}, {mu2.shape}; "
                     f"covariances {s1.shape}, {s2.shape}")
  root = _sqrt_psd(s1)
  middle = root @ s2 @ root
  eig = np.linalg.eigvalsh((middle + middle.T) / 2)
  tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


class FIDScorer:
  """InceptionV3 pool features and FID of image sets ([N, H, W, 3] in [0, 1], any size).

  weights: the FID weights file (pt_inception-2015-12-05-6726825d.pth or its .safetensors
  conversion); see muse_jax.models.inception.
  """

  def __init__(self, weights, batch_size: int = 32):
    self.variables = jax.device_put(inception.load_variables(weights))
    self.batch_size = int(batch_size)
    self._features = jax.jit(inception.pool_features)

  def features(self, img01_NxHxWx3) -> np.ndarray:
    """[N, 2048] float64 features; batches padded to one compiled shape."""
    images = np.asarray(img01_NxHxWx3, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"FID expects images [N, H, W, 3] in [0, 1], got shape {images.shape}")
    out = []
    for s in range(0, len(images), self.batch_size):
      chunk = images[s:s + self.batch_size]
      n = len(chunk)
      if n < self.batch_size:
        chunk = np.concatenate([chunk, np.zeros((self.batch_size - n,) + chunk.shape[1:],
                                                chunk.dtype)])
      out.append(np.asarray(self._features(self.variables, jnp.asarray(chunk)), np.float64)[:n])
    return np.concatenate(out)

  def statistics(self, img01_NxHxWx3) -> tuple:
    return activation_statistics(self.features(img01_NxHxWx3))

  def fid(self, images_a, images_b) -> float:
    return frechet_distance(*self.statistics(images_a), *self.statistics(images_b))
