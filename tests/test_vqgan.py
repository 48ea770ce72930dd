"""VQGAN tokenizer: model invariants, quantizer against numpy, the vqgan and decoder_finetune
stages (smoke, resume, frozen encoder), reconstruction metrics against numpy."""
import dataclasses
import functools
import shutil

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import signal

from configs import decoder_finetune as ft_config
from configs import vqgan as vq_config
from muse_jax import checkpoint as ckpt_lib
from muse_jax import tasks
from muse_jax.metrics import recon
from muse_jax.models import vqgan as vqgan_lib
from muse_jax.models.vqgan import VQGAN, FiniteScalarQuantizer, VQGANConfig
from muse_jax.train import loop
from tests import helpers

# One xdist worker runs the whole module (README runs pytest with --dist loadgroup), so its
# module-scoped fixtures (trained checkpoints) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("vqgan")

SMALL = VQGANConfig(base_channels=16, channel_mult=(1, 2, 2), latent_dim=8, codebook_size=32,
                    norm_groups=8)


def _config(module, **overrides):
  return helpers.override(module.get_config("size=tiny"), **overrides)


@pytest.mark.parametrize("hw", [(8, 8), (16, 24), (32, 12)])
def test_any_size_divisible_by_f_encodes(hw):
  model = VQGAN(SMALL)
  img = jax.random.uniform(jax.random.key(0), (2, *hw, 3), minval=-1, maxval=1)
  params = nn.unbox(model.init(jax.random.key(1), img))
  ids = model.apply(params, img, method=model.encode)
  assert ids.shape == (2, hw[0] // 4, hw[1] // 4) and ids.dtype == jnp.int32
  out = model.apply(params, ids, method=model.decode)
  assert out.shape == img.shape


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_layer_norm_keeps_encoder_and_decoder_local(norm):
  """SMALL's encoder sees 97 px around a latent and its decoder under 30 tokens around a pixel: on
  a 256 px image (64x64 tokens), with norm="layer", a change in one corner leaves the opposite
  corner's latents and pixels exactly as they were; GroupNorm's statistics over the whole map
  carry it everywhere."""
  model = VQGAN(dataclasses.replace(SMALL, norm=norm))
  img = jax.random.uniform(jax.random.key(0), (1, 256, 256, 3), minval=-1, maxval=1)
  params = nn.unbox(model.init(jax.random.key(1), img))
  changed = img.at[:, :8, :8].set(1.0)
  latent = lambda x: model.apply(params, x, method=model._latent)  # noqa: SLF001
  far_z = lambda x: np.asarray(latent(x)[:, -8:, -8:])
  assert np.array_equal(far_z(img), far_z(changed)) == (norm == "layer")
  ids = model.apply(params, img, method=model.encode)
  ids2 = ids.at[:, :2, :2].set((ids[:, :2, :2] + 1) % SMALL.codebook_size)
  decoded = lambda i: np.asarray(model.apply(params, i, method=model.decode)[:, -32:, -32:])
  assert np.array_equal(decoded(ids), decoded(ids2)) == (norm == "layer")


def test_layer_norm_normalises_each_position_over_its_channels():
  cfg = dataclasses.replace(SMALL, norm="layer")
  x = np.random.default_rng(0).normal(2.0, 3.0, (2, 5, 7, 16)).astype(np.float32)
  norm = vqgan_lib._norm(cfg)  # noqa: SLF001
  params = nn.unbox(norm.init(jax.random.key(0), x))
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  np.testing.assert_allclose(norm.apply(params, x), (x - mean) / np.sqrt(var + cfg.norm_eps),
                             atol=1e-5)
  with pytest.raises(ValueError, match="vqgan.norm='batch'"):
    dataclasses.replace(SMALL, norm="batch")


def test_wrong_image_size_is_a_clear_error():
  model = VQGAN(SMALL)
  params = nn.unbox(model.init(jax.random.key(1), jnp.zeros((1, 8, 8, 3))))
  with pytest.raises(ValueError, match="divisible by 4"):
    model.apply(params, jnp.zeros((1, 10, 8, 3)), method=model.encode)


def test_quantizer_matches_numpy_nearest_code_and_straight_through():
  model = VQGAN(SMALL)
  img = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1, maxval=1)
  params = nn.unbox(model.init(jax.random.key(1), img))
  z = model.apply(params, img, method=lambda m, x: m.encoder(x))
  ids = np.asarray(model.apply(params, img, method=model.encode))
  codebook = np.asarray(params["params"]["quantizer"]["codebook"])
  d = ((np.asarray(z)[..., None, :] - codebook) ** 2).sum(-1)
  np.testing.assert_array_equal(ids, d.argmin(-1))
  # Straight-through: the reconstruction loss has a gradient on the encoder.
  grads = jax.grad(lambda p: jnp.mean(model.apply(p, img)[0] ** 2))(params)
  enc = jax.tree.leaves(grads["params"]["encoder"])
  assert any(float(jnp.abs(g).max()) > 0 for g in enc)


def _fsq_numpy(z, levels):
  """FSQ as written in Mentzer et al. 2023 (appendix A.1 code), float64 numpy: bound, round,
  normalise to [-1, 1]; ids in the mixed radix of `levels`."""
  levels = np.asarray(levels, np.float64)
  half_l = (levels - 1) * (1 - 1e-3) / 2
  offset = np.where(levels % 2 == 1, 0.0, 0.5)
  shift = np.tan(offset / half_l)
  q = np.round(np.tanh(z.astype(np.float64) + shift) * half_l - offset)
  half_width = levels // 2
  basis = np.cumprod(np.concatenate([[1], levels[:-1]])).astype(np.int64)
  ids = ((q + half_width).astype(np.int64) * basis).sum(-1)
  return q / half_width, ids


def _fsq_config(levels):
  return VQGANConfig(base_channels=16, channel_mult=(1, 2, 2), latent_dim=len(levels),
                     codebook_size=int(np.prod(levels)), norm_groups=8, quantizer="fsq",
                     fsq_levels=levels)


@pytest.mark.parametrize("levels", [(4, 4, 4, 4), (8, 5, 5, 5), (3, 2)])
def test_fsq_matches_numpy_and_lookup_inverts_ids(levels):
  q = FiniteScalarQuantizer(_fsq_config(levels))
  z = 3 * jax.random.normal(jax.random.key(2), (2, 5, 7, len(levels)))
  zq, ids, stats = q.apply({}, z)
  want_q, want_ids = _fsq_numpy(np.asarray(z), levels)
  np.testing.assert_allclose(zq, want_q, atol=1e-6)
  np.testing.assert_array_equal(ids, want_ids)
  assert float(stats["vq_loss"]) == 0.0
  codes = np.asarray(q.apply({}, jnp.arange(int(np.prod(levels))), method=q.lookup))
  assert len(np.unique(codes, axis=0)) == len(codes)              # every id is its own code
  np.testing.assert_allclose(q.apply({}, ids, method=q.lookup), zq, atol=1e-6)
  # Straight-through: the gradient is that of the bounding tanh, nonzero everywhere.
  grad = jax.grad(lambda z: q.apply({}, z)[0].sum())(z / 3)
  assert float(jnp.abs(grad).min()) > 0


@pytest.mark.parametrize("fields, says", [
    (dict(fsq_levels=(4, 4, 4), latent_dim=4, codebook_size=64), "set latent_dim=3"),
    (dict(fsq_levels=(4, 4), latent_dim=2, codebook_size=32), "codebook_size=16"),
    (dict(fsq_levels=(1, 4), latent_dim=2, codebook_size=4), "level count >= 2"),
    (dict(quantizer="lfq"), "expected 'vq' or 'fsq'")])
def test_fsq_config_mistakes_are_named(fields, says):
  fields = {"quantizer": "fsq", **fields}
  with pytest.raises(ValueError, match=says):
    VQGANConfig(base_channels=16, channel_mult=(1, 2, 2), norm_groups=8, **fields)


def _ssim_numpy(a, b):
  x = np.arange(11) - 5.0
  g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
  w = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  out = []
  for ch in range(a.shape[-1]):
    f = lambda im: signal.convolve2d(im, w, mode="valid")  # noqa: E731
    ai, bi = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
    ma, mb = f(ai), f(bi)
    va, vb, cov = f(ai * ai) - ma ** 2, f(bi * bi) - mb ** 2, f(ai * bi) - ma * mb
    out.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
  return np.mean(out)


def test_psnr_and_ssim_against_numpy():
  rng = np.random.default_rng(0)
  a = rng.random((2, 24, 20, 3)).astype(np.float32)
  b = np.clip(a + 0.05 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
  mse = ((a - b) ** 2).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(recon.psnr(a, b), 10 * np.log10(1 / mse), rtol=1e-5)
  np.testing.assert_allclose(recon.ssim(a, b), [_ssim_numpy(a[i], b[i]) for i in range(2)],
                             rtol=1e-4)
  np.testing.assert_allclose(recon.ssim(a, a), [1.0, 1.0], rtol=1e-6)


def test_vqgan_stage_trains_writes_grids_and_resumes_exactly(tmp_path):
  # 12 steps with the adversarial loss from step 10 and checkpoints at 6 and 12; then a fresh
  # workdir holding only the step-6 checkpoint resumes and must repeat steps 7-12 exactly.
  config = _config(vq_config, **{"train.num_steps": 12, "checkpoint.every": 6,
                                 "optim.decay": "constant", "disc_optim.decay": "constant",
                                 "train.log_every": 1})
  loop.run(config, tmp_path / "full")
  full = helpers.read_losses(tmp_path / "full")
  shutil.copytree(tmp_path / "full" / "checkpoints" / "6", tmp_path / "split" / "checkpoints" / "6")
  assert loop.run(config, tmp_path / "split").start_step == 6
  second = helpers.read_losses(tmp_path / "split")
  assert sorted(second) == list(range(7, 13))
  np.testing.assert_allclose([second[s] for s in range(7, 13)],
                             [full[s] for s in range(7, 13)], rtol=1e-5)
  grids = sorted(p.name for p in (tmp_path / "full" / "samples").iterdir())
  assert grids == ["recon_00000010.png", "recon_00000012.png"]


def test_discriminator_is_untouched_before_adv_start_and_trained_after():
  """Steps before loss.adv_start_step leave the discriminator, its optimizer state and the
  LeCam averages exactly as they were and report zero discriminator metrics; from then on it
  trains and the generator's adversarial term is on."""
  config = _config(vq_config, **{"loss.adv_start_step": 2})
  setup = loop.Setup(config, devices=[jax.devices()[0]])
  state = setup.init_state(jax.random.key(0))
  step = jax.jit(functools.partial(setup.task.train_step, tx=setup.tx))
  img = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3), minval=-1, maxval=1)
  before = jax.device_get(state.extra)
  history = []
  for _ in range(4):
    state, metrics = step(state, {"image": img}, jax.random.key(2))
    history.append((jax.device_get(state.extra), jax.device_get(metrics)))
  for extra, metrics in history[:2]:                       # steps 0 and 1: adversarial off
    for key in ("disc_params", "disc_opt_state", "lecam_real", "lecam_fake"):
      chex.assert_trees_all_equal(extra[key], before[key])
    assert metrics["disc_loss"] == 0 and metrics["r1"] == 0 and metrics["g_adv"] == 0
  extra, metrics = history[3]                # steps 2 and 3: on (the warm-up's first lr is 0)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(extra["disc_params"]),
                                                      jax.tree.leaves(before["disc_params"])))
  assert metrics["disc_loss"] > 0 and metrics["r1"] > 0 and metrics["g_adv"] > 0
  assert extra["lecam_real"] != before["lecam_real"]


@pytest.fixture(scope="module")
def trained_tokenizer(tmp_path_factory):
  """Workdir of a tiny tokenizer trained for 4 steps (shared by the finetuning tests)."""
  workdir = tmp_path_factory.mktemp("vq")
  loop.run(_config(vq_config, **{"train.num_steps": 4}), workdir)
  return workdir


def test_decoder_finetune_keeps_encoder_and_codebook_and_token_ids_and_resumes(
    tmp_path, trained_tokenizer):
  trained = ckpt_lib.load_params(trained_tokenizer)
  ft = _config(ft_config, **{"train.num_steps": 3, "init_from": str(trained_tokenizer),
                              "checkpoint.every": 2, "optim.decay": "constant",
                              "train.log_every": 1})
  loop.run(ft, tmp_path / "ft")
  out = helpers.read_losses(tmp_path / "ft")
  assert sorted(out) == [1, 2, 3]
  # Resumes like the other stages: a workdir holding only the step-2 checkpoint repeats step 3.
  shutil.copytree(tmp_path / "ft" / "checkpoints" / "2", tmp_path / "ft2" / "checkpoints" / "2")
  assert loop.run(ft, tmp_path / "ft2").start_step == 2
  resumed = helpers.read_losses(tmp_path / "ft2")
  assert sorted(resumed) == [3]
  np.testing.assert_allclose(resumed[3], out[3], rtol=1e-5)
  tuned = ckpt_lib.load_params(tmp_path / "ft", prefer_ema=False)
  for name in ("encoder", "quantizer"):
    for x, y in zip(jax.tree.leaves(trained[name]), jax.tree.leaves(tuned[name])):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The decoder did change and is wider.
  assert (jax.tree.leaves(tuned["decoder"])[0].shape
          != jax.tree.leaves(trained["decoder"])[0].shape or
          not np.array_equal(jax.tree.leaves(tuned["decoder"])[0],
                             jax.tree.leaves(trained["decoder"])[0]))

  vq_task, ft_task = tasks.get_task(_config(vq_config)), tasks.get_task(ft)
  img = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3), minval=-1, maxval=1)
  ids_a = vq_task.model.apply({"params": trained}, img, method=vq_task.model.encode)
  ids_b = ft_task.model.apply({"params": tuned}, img, method=ft_task.model.encode)
  np.testing.assert_array_equal(np.asarray(ids_a), np.asarray(ids_b))


def test_decoder_finetune_needs_a_matching_tokenizer(tmp_path, trained_tokenizer):
  with pytest.raises(ValueError, match="needs config.init_from"):
    loop.Setup(_config(ft_config))
  bad = _config(ft_config, **{"train.num_steps": 2, "init_from": str(trained_tokenizer),
                              "model.latent_dim": 8})
  with pytest.raises(ckpt_lib.CheckpointError, match="encoder parameters .* do not fit"):
    loop.run(bad, tmp_path / "ft")


def test_muse_encode_reads_a_trained_tokenizer_workdir(tmp_path, trained_tokenizer, capsys):
  from muse_jax.cli import encode
  cfg, params = encode.load_tokenizer(str(trained_tokenizer))
  assert cfg == tasks.get_task(_config(vq_config)).model_cfg
  jax.tree.map(np.testing.assert_array_equal, params, ckpt_lib.load_params(trained_tokenizer))
  out = str(tmp_path / "enc")
  assert encode.main(["images", "--tokenizer", str(trained_tokenizer), "--num-examples", "8",
                      "--resolution", "32", "--batch-size", "8", "--out", out]) == 0
  assert encode.main(["decode", "--tokenizer", str(trained_tokenizer), "--input", out + "-*",
                      "--batch-size", "8", "--out", str(tmp_path / "png")]) == 0
  assert "wrote 8 images of 32px" in capsys.readouterr().out
  with pytest.raises(encode.UsageError, match="neither a muse-convert folder"):
    encode.load_tokenizer(str(tmp_path))


def _dead_leaves(rng, n, size=64):
  """Natural-image-like test images (the dead-leaves model: occluding discs of random colour
  with power-law radii), in [-1, 1]."""
  yy, xx = np.mgrid[:size, :size]
  out = np.empty((n, size, size, 3), np.float32)
  for i in range(n):
    img = np.tile(rng.uniform(-1, 1, 3), (size, size, 1))
    for _ in range(40):
      r = size / 2 * rng.uniform(0.02, 1.0) ** 2
      cy, cx = rng.uniform(0, size, 2)
      img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(-1, 1, 3)
    out[i] = img
  return out


def _usage_after_training(model_fields: dict, steps: int = 30):
  """Perplexity of the code histogram on held-out images after `steps` Adam steps (L1 + the
  quantizer's losses) on fresh dead-leaves images."""
  model = VQGAN(tasks.vqgan.model_config(model_fields))
  rng = np.random.default_rng(0)
  test = _dead_leaves(rng, 64)
  params = nn.unbox(model.init(jax.random.key(0), test[:1]))
  tx = optax.adam(1e-3)
  opt = tx.init(params)

  @jax.jit
  def step(p, o, x):
    def loss_fn(p):
      rec, _, stats = model.apply(p, x)
      return jnp.mean(jnp.abs(rec - x)) + stats["vq_loss"]
    g = jax.grad(loss_fn)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  for _ in range(steps):
    params, opt = step(params, opt, _dead_leaves(rng, 8))
  ids = np.asarray(jax.jit(functools.partial(model.apply, method=model.encode))(params, test))
  p = np.bincount(ids.ravel(), minlength=model.cfg.codebook_size) / ids.size
  p = p[p > 0]
  return float(np.exp(-np.sum(p * np.log(p))))


def test_paper_tokenizer_quantizer_keeps_its_codes_in_use():
  # The f16-256 preset's model at base width 8 on 64 px: after 30 steps its code histogram on
  # held-out images keeps a perplexity >= 64 (of 1024 tokens; 154 measured), where plain VQ,
  # the presets' quantizer before benchmarks/quantizer_choice.py, collapses below it in the
  # same run (8 measured).
  fields = vq_config.get_config("size=f16-256").model.to_dict()
  fields.update(base_channels=8, norm_groups=4, dtype="float32")
  chosen = _usage_after_training(fields)
  plain_vq = _usage_after_training({**fields, "quantizer": "vq", "fsq_levels": (),
                                    "latent_dim": 256})
  assert chosen >= 64 > plain_vq, (chosen, plain_vq)
