"""The real entry point as 2 local processes x 4 CPU devices (jax.distributed over gloo), for every
stage: the losses equal a single-process run on the same (data, fsdp, tensor) = (2, 2, 2) mesh.
Default set: base stops at a checkpoint and a second launch resumes it; vqgan runs both its
phases. Slow set (run by CI after the default set): every stage is SIGKILLed mid-run on both
processes and relaunched, and every step's loss still equals the single-process run."""
import json
import signal
import subprocess
import time

import numpy as np
import portpicker
import pytest

from configs import base, common, decoder_finetune, superres, vqgan
from muse_jax.train import loop
from tests import helpers

MESH = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
# A constant learning rate after warm-up: a launch that stops early has the same schedule as the
# full-length single-process run (a cosine decay depends on train.num_steps).
CONSTANT_LR = {"optim.decay": "constant"}
GAN_CONSTANT_LR = {"optim.decay": "constant", "disc_optim.decay": "constant"}


def _flags(overrides: dict) -> list:
  return [f"--config.{k}={v}" for k, v in overrides.items()]


def _spawn(config_arg, workdir, overrides: dict) -> list:
  """Starts both processes; each one's stderr goes to a file (a pipe that nobody drains while
  the other process is waited on fills up and blocks that process inside a collective)."""
  port = portpicker.pick_unused_port()
  procs = []
  for pid in range(2):
    env = helpers.subprocess_env(num_devices=4)
    env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    cmd = helpers.main_cmd(config_arg, workdir, *_flags(overrides),
                           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                           f"--process_id={pid}")
    log = open(f"{workdir}.process_{pid}.log", "a")
    procs.append(subprocess.Popen(cmd, cwd=helpers.REPO, env=env, stdout=subprocess.DEVNULL,
                                  stderr=log))
    procs[-1].log = log
  return procs


def _finish(procs, timeout=400) -> list:
  """Waits for both processes; returns (returncode, last 3000 characters of stderr) each."""
  out = []
  for p in procs:
    try:
      p.wait(timeout=timeout)
    finally:
      p.log.close()
    with open(p.log.name) as f:
      out.append((p.returncode, f.read()[-3000:]))
  return out


def _launch(config_arg, workdir, overrides: dict):
  for code, err in _finish(_spawn(config_arg, workdir, overrides)):
    assert code == 0, err


def _logged_steps(workdir) -> int:
  try:
    return max(helpers.read_losses(workdir), default=0)
  except (FileNotFoundError, json.JSONDecodeError):    # not written yet, or a line half-written
    return 0


def _launch_and_kill(config_arg, workdir, overrides: dict, kill_after: int) -> int:
  """Launches both processes and SIGKILLs them once step `kill_after` is logged; returns the last
  step logged before the kill."""
  procs = _spawn(config_arg, workdir, overrides)
  deadline = time.monotonic() + 400
  while _logged_steps(workdir) < kill_after and time.monotonic() < deadline:
    if any(p.poll() is not None for p in procs):
      break
    time.sleep(0.05)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  for code, err in _finish(procs, timeout=60):
    assert code == -signal.SIGKILL, f"exited {code} before the kill: {err}"
  return _logged_steps(workdir)


def _check_stage(tmp_path, name, module, config_arg, overrides, stop, steps, rtol=1e-5,
                 kill_after=None):
  """Single process for `steps`; 2 processes to `stop`, then (stop < steps) relaunched to `steps`;
  with `kill_after` instead of `stop`, the 2 processes run for `steps` but are SIGKILLed after
  that step and relaunched. Equal losses at every step. Returns the multi-process workdir."""
  overrides = dict(overrides, **MESH, **{"train.log_every": 1})
  loop.run(common.override(module.get_config(config_arg.split(":", 1)[1]),
                           dict(overrides, **{"train.num_steps": steps})),
           tmp_path / f"{name}_single")
  single = helpers.read_losses(tmp_path / f"{name}_single")
  multi_dir = tmp_path / f"{name}_multi"
  if kill_after is not None:
    killed_at = _launch_and_kill(config_arg, multi_dir,
                                 dict(overrides, **{"train.num_steps": steps}), kill_after)
    assert kill_after <= killed_at < steps, f"{name}: killed at step {killed_at}"
    saved = sorted(int(d.name) for d in (multi_dir / "checkpoints").iterdir() if d.name.isdigit())
    assert saved and saved[-1] <= killed_at, saved
    stop = saved[-1]
  else:
    _launch(config_arg, multi_dir, dict(overrides, **{"train.num_steps": stop}))
  # Each process saved its own data-iterator state next to the shared train state.
  data_dir = multi_dir / "checkpoints" / str(stop) / "data"
  assert sorted(p.name for p in data_dir.glob("process_*")) == ["process_0-of-2.json",
                                                               "process_1-of-2.json"]
  if stop < steps:
    _launch(config_arg, multi_dir, dict(overrides, **{"train.num_steps": steps}))   # resumes
  multi = helpers.read_losses(multi_dir)
  assert sorted(multi) == list(range(1, steps + 1)), name
  np.testing.assert_allclose([multi[s] for s in range(1, steps + 1)],
                             [single[s] for s in range(1, steps + 1)], rtol=rtol,
                             err_msg=name)
  return multi_dir


def test_base_two_processes_match_single_process_and_resume(tmp_path):
  _check_stage(tmp_path, "base", base, "configs/base.py:size=tiny",
               dict(CONSTANT_LR, **{"checkpoint.every": 3}), stop=6, steps=9)


# vqgan with the discriminator switched on after step 1, so both phases run on 2 processes.
GAN = dict(GAN_CONSTANT_LR, **{"checkpoint.every": 3, "loss.adv_start_step": 1,
                               "train.eval_every": 100})


def _eval_lines(workdir) -> dict:
  with open(workdir / "metrics.jsonl") as f:
    lines = [json.loads(line) for line in f if line.strip()]
  return {r["step"]: r for r in lines if "eval_psnr" in r}


@pytest.mark.slow   # the slow kill-and-resume vqgan test below covers it with 12 steps; ~2 min
def test_vqgan_two_processes_match_single_process(tmp_path):
  """Also the periodic evaluation (at the last step here): it runs on both processes with the
  params sharded over them, process 0 writes, and its scores equal the single process's."""
  multi = _check_stage(tmp_path, "vqgan", vqgan, "configs/vqgan.py:size=tiny", GAN, stop=3,
                       steps=3, rtol=1e-4)
  single, multi_evals = _eval_lines(tmp_path / "vqgan_single"), _eval_lines(multi)
  assert sorted(multi_evals) == sorted(single) == [3]
  for k in ("eval_psnr", "eval_ssim", "eval_codebook_usage"):
    np.testing.assert_allclose(multi_evals[3][k], single[3][k], rtol=1e-3, err_msg=k)
  assert [p.name for p in (multi / "samples").glob("recon_*.png")] == ["recon_00000003.png"]


# Every stage SIGKILLed mid-run on both processes and relaunched: the slow set, which CI runs
# after the default set (.ci/run).

@pytest.mark.slow
def test_base_two_processes_killed_and_resumed(tmp_path):
  _check_stage(tmp_path, "base", base, "configs/base.py:size=tiny",
               dict(CONSTANT_LR, **{"checkpoint.every": 5}), stop=None, steps=30, kill_after=8)


@pytest.mark.slow
def test_superres_two_processes_killed_and_resumed(tmp_path):
  _check_stage(tmp_path, "superres", superres, "configs/superres.py:size=tiny",
               dict(CONSTANT_LR, **{"checkpoint.every": 5}), stop=None, steps=20, kill_after=8)


@pytest.mark.slow
def test_vqgan_two_processes_killed_and_resumed(tmp_path):
  # 12 adversarial steps drift apart between 1 and 2 processes (reduction order): ~2e-4 with the
  # scenes' objects at 22% / 34% of the side, 3.2e-3 at step 12 (1e-5 up to step 6) with 28% /
  # 40% (2026-12-03). A resume that replays or skips a batch, or loses optimiser state, moves a
  # step's loss by 1-5% (consecutive losses differ that much), so 5e-3 still catches it.
  _check_stage(tmp_path, "vqgan", vqgan, "configs/vqgan.py:size=tiny", GAN, stop=None,
               steps=12, rtol=5e-3, kill_after=5)


@pytest.mark.slow
def test_decoder_finetune_two_processes_killed_and_resumed(tmp_path):
  tokenizer = tmp_path / "tokenizer"
  loop.run(common.override(vqgan.get_config("size=tiny"), dict(GAN, **{"train.num_steps": 3})),
           tokenizer)
  _check_stage(tmp_path, "decoder_finetune", decoder_finetune,
               "configs/decoder_finetune.py:size=tiny", dict(GAN, init_from=str(tokenizer)),
               stop=None, steps=12, rtol=1e-3, kill_after=5)
