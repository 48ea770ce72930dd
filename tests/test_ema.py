"""Offline EMA (muse-ema) and the one params loader: an EMA over a tiny base run's kept
checkpoints equals a numpy EMA of the same params; the export samples through muse-sample and
the pipeline, starts a finetuning run (config.init_from), and the checkpoint policy keeps every
keep_period-th step for it."""
import json
import os

import flax.traverse_util
import jax
import numpy as np
import pytest

from muse_jax import checkpoint, decoding
from muse_jax.cli import ema, sample as sample_cli
from muse_jax.models.vqgan import VQGAN, VQGANConfig
from muse_jax.pipeline import Pipeline, PipelinePaths, SampleConfig
from muse_jax.train import loop
from muse_jax.convert import vq
from tests import helpers

pytestmark = pytest.mark.xdist_group("ema")

# A base model the bundled text encoder can drive (the sampling tests), over a 4x4 grid of 32
# codes that TOK decodes.
MODEL = {"model.text_dim": 384, "text_encoder.kind": "bert", "text_encoder.dtype": "float32",
         "model.grid_size": 4, "model.codebook_size": 32, "checkpoint.async_save": False}
TOK = VQGANConfig(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, mid_res_blocks=1,
                  latent_dim=8, codebook_size=32, norm_groups=4)   # f = 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """6 steps saved every step, the last 2 kept and every 2nd kept for good: steps 2, 4, 5, 6."""
  path = tmp_path_factory.mktemp("base_run")
  loop.run(helpers.tiny_base(**MODEL, **{"train.num_steps": 6, "checkpoint.every": 1,
                                         "checkpoint.keep": 2, "checkpoint.keep_period": 2}),
           path)
  return path


@pytest.fixture(scope="module")
def export(workdir, tmp_path_factory):
  out = tmp_path_factory.mktemp("export")
  assert ema.main(["--workdir", str(workdir), "--decay", "0.7", "--period", "2",
                   "--out", str(out)]) == 0
  return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  params = VQGAN(TOK).init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
  path = tmp_path_factory.mktemp("tok")
  vq.save(jax.tree.map(np.asarray, flax.core.meta.unbox(params)), TOK, path)
  return str(path)


def _flat(tree):
  return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}


def _step_params(workdir, step):
  return _flat(checkpoint.load_params(os.path.join(workdir, "checkpoints", str(step)),
                                      prefer_ema=False))


def test_keep_period_keeps_every_period_step(workdir):
  # max_to_keep alone would leave [5, 6].
  assert ema.checkpoint_steps(workdir) == [2, 4, 5, 6]


def test_ema_over_checkpoints_matches_numpy(workdir, export):
  config, params = checkpoint.load_export(export)
  assert config["stage"] == "base" and config["train"]["num_steps"] == 6
  # Independent numpy EMA over the raw step params (--period 2: steps 2, 4, 6).
  per_step = [{k: v.astype(np.float64) for k, v in _step_params(workdir, s).items()}
              for s in (2, 4, 6)]
  want = per_step[0]
  for p in per_step[1:]:
    want = {k: 0.7 * want[k] + 0.3 * p[k] for k in want}
  got = _flat(params)
  assert set(got) == set(want) and len(got) > 5
  for k in want:
    assert got[k].dtype == np.float32
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
  # The average differs from the last checkpoint (training moved the params).
  assert any(not np.allclose(got[k], per_step[-1][k]) for k in want)
  meta = json.loads((export / checkpoint.EXPORT_CONFIG).read_text())
  assert meta["ema_steps"] == [2, 4, 6] and meta["ema_decay"] == 0.7


def test_export_samples_like_a_checkpoint(workdir, export, tokenizer, tmp_path):
  """The pipeline (and so muse-sample / -edit / -eval and the notebook) reads the export: its
  params are the export's, not the last checkpoint's, and they draw other tokens."""
  cfg = SampleConfig(num_images=4, seed=0, base=decoding.DecodeConfig(num_steps=4,
                                                                      guidance_scale=3.0))
  from_export = Pipeline(PipelinePaths(base=str(export), tokenizer=tokenizer))
  from_ckpt = Pipeline(PipelinePaths(base=str(workdir), tokenizer=tokenizer))
  exported = _flat(checkpoint.load_export(export)[1])
  for k, v in _flat(jax.device_get(from_export.base_params)).items():
    np.testing.assert_array_equal(v, exported[k])
  prompts = ["a red circle", "a blue square"]
  a = from_export.generate(prompts, cfg).tokens_lo_BxN
  b = from_ckpt.generate(prompts, cfg).tokens_lo_BxN
  assert a.shape == b.shape == (8, 16) and (a != b).any()
  out = tmp_path / "samples"
  assert sample_cli.main(["--checkpoint", str(export), "--tokenizer", tokenizer, "--prompt",
                          "a red circle", "--steps", "4", "--out", str(out)]) == 0
  assert (out / "000_00.png").is_file()


def test_init_from_export_starts_a_run_there(export, tmp_path):
  # lr 0: the one step leaves the params where init_from put them.
  run = tmp_path / "finetune"
  loop.run(helpers.tiny_base(**MODEL, **{"train.num_steps": 1, "checkpoint.every": 1,
                                         "optim.lr": 0.0, "init_from": str(export)}), run)
  exported = _flat(checkpoint.load_export(export)[1])
  for ema_params in (False, True):
    got = _flat(checkpoint.load_params(run, prefer_ema=ema_params))
    assert set(got) == set(exported)
    for k, v in got.items():
      np.testing.assert_allclose(v, exported[k], rtol=1e-6, atol=1e-7)


def test_init_from_another_model_is_named(export, tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match=r"init_from .* has shape .* expects"):
    loop.run(helpers.tiny_base(**MODEL, **{"train.num_steps": 1, "model.hidden_size": 48,
                                           "init_from": str(export)}), tmp_path / "other")


def test_step_range_and_decay_zero(workdir, tmp_path):
  out = tmp_path / "last"
  assert ema.main(["--workdir", str(workdir), "--decay", "0", "--min-step", "5",
                   "--out", str(out)]) == 0
  _, params = checkpoint.load_export(out)
  last = _step_params(workdir, 6)
  for k, v in _flat(params).items():
    np.testing.assert_allclose(v, last[k], rtol=1e-6)


def test_errors(workdir, tmp_path, capsys):
  assert ema.main(["--workdir", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1
  assert "not a training workdir" in capsys.readouterr().err
  assert ema.main(["--workdir", str(workdir), "--decay", "1.5", "--out", str(tmp_path / "o")]) == 1
  assert "--decay must be in [0, 1)" in capsys.readouterr().err
  assert ema.main(["--workdir", str(workdir), "--min-step", "9", "--out", str(tmp_path / "o")]) == 1
  assert "no checkpoints" in capsys.readouterr().err
  assert ema.main(["--workdir", str(workdir), "--period", "7", "--out", str(tmp_path / "o")]) == 1
  assert "divisible by 7" in capsys.readouterr().err
  with pytest.raises(checkpoint.CheckpointError, match="not an export"):
    checkpoint.load_export(tmp_path)
  with pytest.raises(ValueError, match="keep_period must be 0 .* or a multiple"):
    checkpoint.Checkpointer(tmp_path / "c", every=2, keep=1, keep_period=3)
