"""Shared test helpers: tiny configs, subprocess runs of the real entry point, metrics files."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax

from configs import base as base_config
from configs import common
from muse_jax import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def override(config, **overrides):
  """Dotted-key overrides, e.g. override(config, **{"train.num_steps": 4})."""
  return common.override(config, overrides)


def tiny_base(**overrides):
  """configs/base.py:size=tiny with dotted-key overrides."""
  return override(base_config.get_config("size=tiny"), **overrides)


def subprocess_env(num_devices: int = 8) -> dict:
  env = dict(os.environ)
  # MUSE_NO_HUGEPAGES: no hostenv re-exec (a second interpreter start per launch); what these
  # tests check does not depend on it, and tests/test_hostenv.py tests the re-exec itself.
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(num_devices), MUSE_NO_HUGEPAGES="1",
             PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
  return env


def main_cmd(config_arg: str, workdir, *flags) -> list:
  return [sys.executable, "-m", "muse_jax.main", f"--config={config_arg}", f"--workdir={workdir}",
          *flags]


def run_main(config_arg, workdir, *flags, num_devices=8, timeout=300, check=True):
  proc = subprocess.run(main_cmd(config_arg, workdir, *flags), cwd=REPO,
                        env=subprocess_env(num_devices), capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"muse_jax.main failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def read_losses(workdir) -> dict:
  """{step: loss} from workdir/metrics.jsonl; a step logged twice (re-run after a kill) keeps the
  last value."""
  out = {}
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    for line in f:
      if line.strip():
        rec = json.loads(line)
        if "loss" in rec:
          out[rec["step"]] = rec["loss"]
  return out


def param_count(config) -> int:
  """Parameters of every network the config's stage trains (a tokenizer's discriminator
  included), from shapes only (jax.eval_shape: paper presets cost no memory)."""
  boxed = jax.eval_shape(tasks.get_task(config).init_boxed, jax.random.key(0))
  return sum(x.size for x in jax.tree.leaves(nn.unbox(boxed)))
