"""muse-ema: an EMA over a tiny base run's step checkpoints equals a numpy EMA of the same params,
and the export loads back with the run's config."""
import json
import os

import flax.traverse_util
import numpy as np
import pytest

from muse_jax import checkpoint
from muse_jax.cli import ema
from muse_jax.train import loop
from tests import helpers


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp("base_run")
  loop.run(helpers.tiny_base(**{"train.num_steps": 4, "checkpoint.every": 1,
                                "checkpoint.keep": 10}), path)
  return path


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


def test_ema_over_checkpoints_matches_numpy(workdir, tmp_path):
  steps = ema.checkpoint_steps(workdir)
  assert steps == [1, 2, 3, 4]
  out = tmp_path / "export"
  assert ema.main(["--workdir", str(workdir), "--decay", "0.7", "--out", str(out)]) == 0
  config, params = ema.load_export(out)
  assert config["stage"] == "base" and config["train"]["num_steps"] == 4
  # Independent numpy EMA over the raw step params, read straight from the orbax checkpoints.
  per_step = [{k: np.asarray(v, np.float64) for k, v in _flat(checkpoint.load_params(
      os.path.join(workdir, "checkpoints", str(s)), prefer_ema=False)).items()} for s in steps]
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
  meta = json.loads((out / ema.CONFIG_FILE).read_text())
  assert meta["ema_steps"] == [1, 2, 3, 4] and meta["ema_decay"] == 0.7


def test_step_range_and_decay_zero(workdir, tmp_path):
  out = tmp_path / "last"
  assert ema.main(["--workdir", str(workdir), "--decay", "0", "--min-step", "3",
                   "--out", str(out)]) == 0
  _, params = ema.load_export(out)
  last = _flat(checkpoint.load_params(os.path.join(workdir, "checkpoints", "4"),
                                      prefer_ema=False))
  for k, v in _flat(params).items():
    np.testing.assert_allclose(v, np.asarray(last[k]), rtol=1e-6)


def test_errors(workdir, tmp_path, capsys):
  assert ema.main(["--workdir", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1
  assert "not a training workdir" in capsys.readouterr().err
  assert ema.main(["--workdir", str(workdir), "--decay", "1.5", "--out", str(tmp_path / "o")]) == 1
  assert "--decay must be in [0, 1)" in capsys.readouterr().err
  assert ema.main(["--workdir", str(workdir), "--min-step", "9", "--out", str(tmp_path / "o")]) == 1
  assert "no checkpoints" in capsys.readouterr().err
  with pytest.raises(FileNotFoundError, match="not a muse-ema export"):
    ema.load_export(tmp_path)
