"""FID: the Fréchet distance against scipy and closed forms, and the Flax FID InceptionV3 against
torch references sharing random weights through a .pth state dict (pytorch-fid's own blocks when
importable, else tests/fid_inception_torch_reference.py)."""
import numpy as np
import pytest

from muse_jax.metrics import fid
from muse_jax.models import inception
from tests import helpers

torch = pytest.importorskip("torch", reason="parity with the torch FID Inception needs torch")


def _random_psd(rng, d, rank=None):
  a = rng.normal(size=(d, rank or d))
  return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


def test_frechet_distance_matches_scipy_sqrtm():
  linalg = pytest.importorskip("scipy.linalg")
  rng = np.random.default_rng(0)
  for d, rank in ((5, None), (64, None), (32, 8)):     # rank-deficient covariances too
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_psd(rng, d, rank), _random_psd(rng, d)
    covmean = linalg.sqrtm(s1 @ s2).real
    want = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * covmean)
    np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), want, rtol=1e-6, atol=1e-8)


def test_frechet_distance_closed_forms():
  rng = np.random.default_rng(1)
  v1, v2 = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
  mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
  want = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
  np.testing.assert_allclose(fid.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)), want,
                             rtol=1e-10)
  s = _random_psd(rng, 16)
  assert abs(fid.frechet_distance(mu1, s, mu1, s)) < 1e-9
  np.testing.assert_allclose(fid.frechet_distance(mu1, s, mu1 + 2.0, s), 4.0 * 16, rtol=1e-9)


def test_statistics_of_samples_recover_a_known_gaussian():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(20000, 4)) * np.array([1.0, 2.0, 0.5, 1.5]) + 3.0
  mu, sigma = fid.activation_statistics(x)
  np.testing.assert_allclose(mu, 3.0, atol=0.05)
  np.testing.assert_allclose(np.diag(sigma), [1.0, 4.0, 0.25, 2.25], rtol=0.05)
  with pytest.raises(ValueError, match="at least 2 feature rows"):
    fid.activation_statistics(x[:1])
  with pytest.raises(ValueError, match="disagree in shape"):
    fid.frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])


def _pytorch_fid_reference(monkeypatch):
  try:
    from pytorch_fid import inception as pfi
  except Exception as e:  # noqa: BLE001  ImportError, or torchvision's CUDA ops failing to load
    pytest.skip(f"pytorch-fid is not importable here ({type(e).__name__}: {e}); the "
                f"transcribed torch reference covers the same check")
  from tests.fid_inception_torch_reference import FIDInceptionV3
  state = helpers.randomise_inception(FIDInceptionV3()).state_dict()
  monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: state)
  net = pfi.InceptionV3([3]).eval()
  return (lambda x: net(x)[0].flatten(1)), state


def _transcribed_reference(monkeypatch):
  del monkeypatch
  from tests.fid_inception_torch_reference import FIDInceptionV3
  net = helpers.randomise_inception(FIDInceptionV3())
  return net, net.state_dict()


@pytest.mark.parametrize("reference", [_transcribed_reference, _pytorch_fid_reference],
                         ids=["transcribed", "pytorch_fid"])
def test_inception_features_match_torch_with_shared_weights(reference, monkeypatch, tmp_path):
  net, state = reference(monkeypatch)
  path = tmp_path / inception.WEIGHTS_FILE
  torch.save(state, path)
  scorer = fid.FIDScorer(path, batch_size=2)
  rng = np.random.default_rng(0)
  for shape in ((2, 299, 299, 3), (3, 64, 80, 3)):    # native size, and resized from small
    x = rng.random(shape).astype(np.float32)
    with torch.no_grad():
      want = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    got = scorer.features(x)
    assert got.shape == (shape[0], inception.FEATURE_DIM)
    assert want.std() > 0.1            # the random network is not degenerate
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_safetensors_conversion_and_fid_of_image_sets(tmp_path):
  from tests.fid_inception_torch_reference import FIDInceptionV3
  net = helpers.randomise_inception(FIDInceptionV3(), seed=1)
  pth = tmp_path / inception.WEIGHTS_FILE
  torch.save(net.state_dict(), pth)
  out = tmp_path / "inception.safetensors"
  assert inception.main([str(pth), str(out)]) == 0
  rng = np.random.default_rng(3)
  a = rng.random((4, 96, 96, 3)).astype(np.float32)
  b = np.clip(a * 0.5 + 0.4, 0, 1).astype(np.float32)
  scorer = fid.FIDScorer(out, batch_size=4)
  with torch.no_grad():
    fa, fb = (net(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy() for x in (a, b))
  want = fid.frechet_distance(*fid.activation_statistics(fa), *fid.activation_statistics(fb))
  got = scorer.fid(a, b)
  np.testing.assert_allclose(got, want, rtol=1e-3)
  assert got > 0 and abs(scorer.fid(a, a)) < 1e-3 * got


def test_missing_or_wrong_weights_raise_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"pt_inception-2015-12-05-6726825d\.pth.*https://"):
    inception.load_variables(tmp_path / "nope.pth")
  bad = tmp_path / "bad.pth"
  torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
  with pytest.raises(ValueError, match=r"weights lack Conv2d_1a_3x3\.\w+\.\w+ .*not the pt_inception"):
    inception.load_variables(bad)
