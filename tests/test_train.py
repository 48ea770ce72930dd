"""The train loop: sharded equals single-device, exact resume, mesh changes, faults."""
import contextlib
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from muse_jax import checkpoint as ckpt_lib
from muse_jax.train import loop
from tests import helpers


def _losses(workdir, steps):
  """Losses of `steps` from workdir/metrics.jsonl (the configs log every step)."""
  logged = helpers.read_losses(workdir)
  assert sorted(logged) == list(steps), sorted(logged)
  return np.array([logged[s] for s in steps])


EVERY_STEP = {"train.log_every": 1}


def test_two_steps_on_8_devices_equal_single_device(tmp_path):
  loop.run(helpers.tiny_base(**{"train.num_steps": 2}, **EVERY_STEP), tmp_path / "one",
           devices=jax.devices()[:1])
  loop.run(helpers.tiny_base(**{"train.num_steps": 2, "mesh.data": 2, "mesh.fsdp": 2,
                                "mesh.tensor": 2}, **EVERY_STEP), tmp_path / "eight")
  np.testing.assert_allclose(_losses(tmp_path / "eight", [1, 2]),
                             _losses(tmp_path / "one", [1, 2]), rtol=1e-5)


def test_resume_on_another_mesh_continues_exactly(tmp_path):
  # constant lr: the schedule must not depend on num_steps here
  const = {"optim.decay": "constant", **EVERY_STEP}
  loop.run(helpers.tiny_base(**{"train.num_steps": 20}, **const), tmp_path / "full")
  first = loop.run(helpers.tiny_base(**{"train.num_steps": 10}, **const), tmp_path / "split")
  assert first.final_step == 10 and not first.preempted
  second = loop.run(helpers.tiny_base(**{"train.num_steps": 20, "mesh.data": 2, "mesh.fsdp": 2,
                                         "mesh.tensor": 2}, **const), tmp_path / "split")
  assert second.start_step == 10 and second.final_step == 20
  np.testing.assert_allclose(_losses(tmp_path / "split", range(1, 21)),
                             _losses(tmp_path / "full", range(1, 21)), rtol=1e-5)


def _wait_for_step(workdir, step, proc, timeout=240):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"process ended early:\n{proc.stderr.read()[-3000:]}")
    try:
      if max(helpers.read_losses(workdir), default=0) >= step:
        return
    except (FileNotFoundError, ValueError):
      pass
    time.sleep(0.02)
  raise AssertionError(f"step {step} not reached in {timeout}s")


def _spawn(workdir, *flags):
  return subprocess.Popen(
      helpers.main_cmd("configs/base.py:size=tiny", workdir, "--config.train.log_every=1", *flags),
      cwd=helpers.REPO, env=helpers.subprocess_env(), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)


def test_sigkill_and_resume_gives_the_same_losses(tmp_path):
  flags = ("--config.train.num_steps=60", "--config.checkpoint.every=10",
           "--config.train.log_every=1")
  helpers.run_main("configs/base.py:size=tiny", tmp_path / "ref", *flags)
  reference = helpers.read_losses(tmp_path / "ref")

  proc = _spawn(tmp_path / "run", *flags)
  _wait_for_step(tmp_path / "run", 25, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  killed_at = max(helpers.read_losses(tmp_path / "run"))
  assert killed_at < 60, "the run finished before it could be killed"
  out = helpers.run_main("configs/base.py:size=tiny", tmp_path / "run", *flags)
  resumed = helpers.read_losses(tmp_path / "run")
  assert sorted(resumed) == sorted(reference) == list(range(1, 61))
  np.testing.assert_allclose([resumed[s] for s in range(1, 61)],
                             [reference[s] for s in range(1, 61)], rtol=1e-6)
  assert out.returncode == 0


def test_sigterm_saves_and_exits_zero_then_resumes(tmp_path):
  proc = _spawn(tmp_path, "--config.train.num_steps=100000", "--config.checkpoint.every=100000")
  _wait_for_step(tmp_path, 5, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert len(steps) == 1 and steps[0] >= 5      # saved on SIGTERM, not by the schedule
  saved = steps[0]
  helpers.run_main("configs/base.py:size=tiny", tmp_path,
                   f"--config.train.num_steps={saved + 3}", "--config.train.log_every=1")
  assert max(helpers.read_losses(tmp_path)) == saved + 3


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  good = loop.run(helpers.tiny_base(**{"train.num_steps": 10}), tmp_path)
  assert good.final_step == 10
  bad = helpers.tiny_base(**{"train.num_steps": 20, "optim.lr": 1e35, "optim.warmup_steps": 0})
  with pytest.raises(loop.NonFiniteLossError, match=r"is (nan|inf) at step 1[1-2].*step 10"):
    loop.run(bad, tmp_path)
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == [10]
  again = loop.run(helpers.tiny_base(**{"train.num_steps": 12}), tmp_path)
  assert again.start_step == 10


def test_checkpoint_from_another_config_names_the_parameter(tmp_path):
  loop.run(helpers.tiny_base(**{"train.num_steps": 2, "checkpoint.every": 2}), tmp_path)
  other = helpers.tiny_base(**{"train.num_steps": 4, "model.mlp_dim": 48})
  with pytest.raises(ckpt_lib.CheckpointError, match=r"params/blocks/layers/mlp/wi/\w+ has shape \(2, (32, )?64\) but this config expects "
                     r"\(2, (32, )?48\)"):
    loop.run(other, tmp_path)


@contextlib.contextmanager
def _tmpfs(path, options):
  """A real small / read-only filesystem at `path` (root can mount; others skip)."""
  path.mkdir(parents=True, exist_ok=True)
  if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                                          str(path)], capture_output=True).returncode != 0:
    pytest.skip("needs root and mount(8) to inject a read-only or full filesystem")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_unwritable_checkpoint_directory(tmp_path):
  if os.geteuid() == 0:           # root ignores permissions: use a read-only filesystem
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
      with pytest.raises(ckpt_lib.CheckpointError, match="not writable"):
        loop.run(helpers.tiny_base(**{"train.num_steps": 2}), ro / "w")
    return
  tmp_path.chmod(0o500)
  try:
    with pytest.raises(ckpt_lib.CheckpointError, match="not writable"):
      loop.run(helpers.tiny_base(**{"train.num_steps": 2}), tmp_path / "w")
  finally:
    tmp_path.chmod(0o700)


def test_full_disk_is_a_clear_error_and_keeps_the_earlier_checkpoint(tmp_path):
  with _tmpfs(tmp_path / "small", "size=16m") as disk:
    workdir = disk / "w"
    loop.run(helpers.tiny_base(**{"train.num_steps": 2, "checkpoint.every": 2}), workdir)
    before = ckpt_lib.load_params(workdir)
    with open(disk / "filler", "wb") as f:     # fill the disk, leaving a few KB
      stat = os.statvfs(disk)
      f.write(b"\0" * (stat.f_bavail * stat.f_frsize - 8192))
    with pytest.raises(ckpt_lib.CheckpointError, match="not writable|failed"):
      loop.run(helpers.tiny_base(**{"train.num_steps": 4, "checkpoint.every": 2}), workdir)
    (disk / "filler").unlink()
    assert int(ckpt_lib.step_dir(workdir).name) == 2
    jax.tree.map(np.testing.assert_array_equal, ckpt_lib.load_params(workdir), before)
