"""The real entry point as 2 local processes x 4 CPU devices (jax.distributed over gloo)."""
import subprocess

import numpy as np
import portpicker

from muse_jax.train import loop
from tests import helpers

FLAGS = ("--config.train.log_every=1", "--config.optim.decay=constant",
         "--config.checkpoint.every=3", "--config.mesh.data=2", "--config.mesh.fsdp=2",
         "--config.mesh.tensor=2")


def _launch(workdir, num_steps):
  port = portpicker.pick_unused_port()
  flags = FLAGS + (f"--config.train.num_steps={num_steps}",)
  procs = []
  for pid in range(2):
    env = helpers.subprocess_env(num_devices=4)
    env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    cmd = helpers.main_cmd("configs/base.py:size=tiny", workdir, *flags,
                           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                           f"--process_id={pid}")
    procs.append(subprocess.Popen(cmd, cwd=helpers.REPO, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True))
  errs = []
  for p in procs:
    _, err = p.communicate(timeout=400)
    errs.append(err)
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-4000:]


def test_two_processes_match_single_process_and_resume(tmp_path):
  single = loop.run(helpers.tiny_base(**{"train.num_steps": 9, "mesh.data": 2, "mesh.fsdp": 2,
                                         "mesh.tensor": 2, "optim.decay": "constant"}),
                    tmp_path / "single")
  _launch(tmp_path / "multi", 6)
  # Each process saved its own data-iterator state next to the shared train state.
  data_dir = tmp_path / "multi" / "checkpoints" / "6" / "data"
  assert sorted(p.name for p in data_dir.glob("process_*")) == ["process_0-of-2.json",
                                                               "process_1-of-2.json"]
  _launch(tmp_path / "multi", 9)   # resumes from step 6 on both processes
  multi = helpers.read_losses(tmp_path / "multi")
  assert sorted(multi) == list(range(1, 10))
  np.testing.assert_allclose([multi[s] for s in range(1, 10)],
                             [single["losses"][s] for s in range(1, 10)], rtol=1e-5)
