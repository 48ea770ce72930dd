"""launch/*.sh: the commands each script would run (--dry-run), required flags, and that nothing is
executed on a dry run. gcloud, muse-fit, python, sbatch and srun are fakes first on PATH that
record their arguments to a file, so no test touches a cloud, a cluster or jax."""
import os
import shlex
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_VM, RUN, SLURM = (os.path.join(REPO, "launch", f) for f in ("tpu_vm.sh", "run.sh", "slurm.sh"))
FAKES = ("gcloud", "muse-fit", "python", "sbatch", "srun")

BASE_3B = ("--config=configs/base.py:size=3b", "--workdir=gs://BUCKET/muse/base")
POD = ("--name=muse-base", "--zone=us-central2-b")


@pytest.fixture
def sandbox(tmp_path):
  """(env, calls_file): fake commands first on PATH; each appends 'NAME ARGS' to calls_file.
  fake muse-fit exits $FAKE_FIT_RC; fake gcloud prints ACTIVE for a describe."""
  bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
  bin_dir.mkdir()
  for name in FAKES:
    body = f'printf "%s\\n" "{name} $*" >> "{calls}"\n'
    if name == "muse-fit":
      body += 'exit "${FAKE_FIT_RC:-0}"\n'
    if name == "gcloud":
      body += 'case "$*" in *describe*) echo ACTIVE ;; esac\n'
    if name == "python":
      body += 'echo "python-args: $*"\n'
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MUSE_"))}
  env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(tmp_path),
             TMPDIR=str(tmp_path), MUSE_LOG_DIR=str(tmp_path / "logs"))
  return env, calls


def sh(script, *args, env, check=True):
  out = subprocess.run(["bash", script, *args], env=env, capture_output=True, text=True,
                       timeout=30, cwd=REPO)
  if check:
    assert out.returncode == 0, out.stderr
  return out


def commands(stdout: str):
  """The '+ ' lines of a dry run, each split into words as a shell would."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def find(cmds, *prefix):
  hits = [c for c in cmds if c[:len(prefix)] == list(prefix)]
  assert hits, f"no command starting {prefix} in {cmds}"
  return hits


# ----------------------------------------------------------------------------------------------
# tpu_vm.sh

def test_up_dry_run_prints_fit_create_copy_install_run_and_executes_nothing(sandbox):
  env, calls = sandbox
  out = sh(TPU_VM, "up", *POD, "--accelerator-type=v4-512", *BASE_3B, "--env=FOO=bar",
           "--dry-run", "--", "--config.optim.lr=3e-4", "--config.data.path=/gcs/B/enc/train-*",
           env=env)
  cmds = commands(out.stdout)
  assert [c[0] for c in cmds if c[0] in ("muse-fit", "gcloud")][:2] == ["muse-fit", "gcloud"]
  (fit,) = find(cmds, "muse-fit")
  assert "--topology=v4:4x8x8" in fit and "--config=configs/base.py:size=3b" in fit
  assert "--config.optim.lr=3e-4" in fit  # config overrides are part of what must fit
  (create,) = find(cmds, "gcloud", "compute", "tpus", "tpu-vm", "create", "muse-base")
  assert {"--accelerator-type=v4-512", "--zone=us-central2-b",
          "--version=tpu-ubuntu2204-base"} <= set(create)
  (scp,) = find(cmds, "gcloud", "compute", "tpus", "tpu-vm", "scp")
  assert "--worker=all" in scp
  ssh = find(cmds, "gcloud", "compute", "tpus", "tpu-vm", "ssh", "muse-base")
  assert len(ssh) == 2 and all("--worker=all" in c for c in ssh)
  install, launch = (next(w[len("--command="):] for w in c if w.startswith("--command="))
                     for c in ssh)
  assert "pip install -e '.[tpu]'" in install
  remote = shlex.split(launch)
  i = remote.index("launch/run.sh")
  assert remote[i - 2:i] == ["MUSE_PYTHON=~/muse_venv/bin/python", "FOO=bar"]
  assert "python3.11 -m venv ~/muse_venv" in install  # jax 0.10 needs Python >= 3.11
  assert remote[i + 1:] == ["--config=configs/base.py:size=3b", "--workdir=gs://BUCKET/muse/base",
                            "--", "--config.optim.lr=3e-4", "--config.data.path=/gcs/B/enc/train-*"]
  assert not calls.exists(), calls.read_text()


@pytest.mark.parametrize("accel, topology", [
    ("v4-8", "v4:2x2x1"), ("v4-16", "v4:2x2x2"), ("v4-32", "v4:2x2x4"), ("v4-64", "v4:2x4x4"),
    ("v4-128", "v4:4x4x4"), ("v4-256", "v4:4x4x8"), ("v4-512", "v4:4x8x8"),
    ("v5litepod-16", "v5e:4x4")])
def test_fit_topology_from_accelerator_type(sandbox, accel, topology):
  env, calls = sandbox
  out = sh(TPU_VM, "create", *POD, f"--accelerator-type={accel}", BASE_3B[0], "--dry-run", env=env)
  (fit,) = find(commands(out.stdout), "muse-fit")
  assert f"--topology={topology}" in fit
  assert not calls.exists()


def test_explicit_topology_queued_spot_and_unknown_type(sandbox):
  env, calls = sandbox
  out = sh(TPU_VM, "create", *POD, "--accelerator-type=v4-32", BASE_3B[0], "--topology=v4:2x4x2",
           "--queued", "--spot", "--project=proj", "--dry-run", env=env)
  cmds = commands(out.stdout)
  assert "--topology=v4:2x4x2" in find(cmds, "muse-fit")[0]
  (qr,) = find(cmds, "gcloud", "compute", "tpus", "queued-resources", "create", "muse-base")
  assert {"--node-id=muse-base", "--accelerator-type=v4-32", "--spot", "--project=proj",
          "--zone=us-central2-b", "--runtime-version=tpu-ubuntu2204-base"} <= set(qr)
  find(cmds, "gcloud", "compute", "tpus", "queued-resources", "describe", "muse-base")
  bad = sh(TPU_VM, "create", *POD, "--accelerator-type=v4-24", BASE_3B[0], "--dry-run", env=env,
           check=False)
  assert bad.returncode == 2 and "--topology" in bad.stderr
  assert not calls.exists()


def test_create_stops_when_the_config_does_not_fit(sandbox):
  env, calls = sandbox
  out = sh(TPU_VM, "create", *POD, "--accelerator-type=v4-32", BASE_3B[0],
           env={**env, "FAKE_FIT_RC": "1"}, check=False)
  assert out.returncode != 0 and "--skip-fit" in out.stderr
  assert calls.read_text().splitlines() == [
      "muse-fit --config=configs/base.py:size=3b --topology=v4:2x2x4"]  # and no gcloud
  ok = sh(TPU_VM, "create", *POD, "--accelerator-type=v4-32", BASE_3B[0], "--queued", env=env)
  assert "ACTIVE" in ok.stdout
  recorded = calls.read_text().splitlines()[1:]
  assert recorded[0].startswith("muse-fit ")
  assert recorded[1].startswith("gcloud compute tpus queued-resources create muse-base ")
  assert recorded[2].startswith("gcloud compute tpus queued-resources describe muse-base ")


def test_skip_fit_needs_no_config(sandbox):
  env, calls = sandbox
  out = sh(TPU_VM, "create", *POD, "--accelerator-type=v4-512", "--skip-fit", "--dry-run", env=env)
  cmds = commands(out.stdout)
  assert not [c for c in cmds if c[0] == "muse-fit"]
  find(cmds, "gcloud", "compute", "tpus", "tpu-vm", "create", "muse-base")
  assert not calls.exists()


def test_setup_from_git_ref_run_detach_exec_status_delete(sandbox):
  env, calls = sandbox
  setup = commands(sh(TPU_VM, "setup", *POD, "--git-url=https://example.com/muse_jax.git",
                      "--git-ref=v0.1", "--dry-run", env=env).stdout)
  (ssh,) = find(setup, "gcloud", "compute", "tpus", "tpu-vm", "ssh", "muse-base")
  assert "--worker=all" in ssh and "git clone https://example.com/muse_jax.git" in ssh[-1]
  assert "checkout v0.1" in ssh[-1] and not [c for c in setup if "scp" in c]
  run = commands(sh(TPU_VM, "run", *POD, *BASE_3B, "--detach", "--before=mount-it /gcs",
                    "--dry-run", env=env).stdout)
  assert len(run) == 1 and "--worker=all" in run[0]
  assert run[0][-1].startswith("--command={ mount-it /gcs; } && cd muse_jax && ")
  assert "setsid nohup launch/run.sh --config=configs/base.py:size=3b" in run[0][-1]
  ex = commands(sh(TPU_VM, "exec", *POD, "--dry-run", "--", "ls /gcs && df -h", env=env).stdout)
  assert ex == [["gcloud", "compute", "tpus", "tpu-vm", "ssh", "muse-base",
                 "--zone=us-central2-b", "--worker=all", "--command=ls /gcs && df -h"]]
  st = commands(sh(TPU_VM, "status", *POD, "--queued", "--dry-run", env=env).stdout)
  find(st, "gcloud", "compute", "tpus", "queued-resources", "describe", "muse-base")
  find(st, "gcloud", "compute", "tpus", "tpu-vm", "describe", "muse-base")
  (dl,) = commands(sh(TPU_VM, "delete", *POD, "--dry-run", env=env).stdout)
  assert dl[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "muse-base"]
  (dq,) = commands(sh(TPU_VM, "delete", *POD, "--queued", "--dry-run", env=env).stdout)
  assert dq[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "muse-base"]
  assert "--force" in dq
  assert not calls.exists()


@pytest.mark.parametrize("args, flag", [
    (("create", "--zone=z", "--accelerator-type=v4-8", "--skip-fit"), "--name"),
    (("create", "--name=n", "--accelerator-type=v4-8", "--skip-fit"), "--zone"),
    (("create", *POD, "--skip-fit"), "--accelerator-type"),
    (("create", *POD, "--accelerator-type=v4-8"), "--config"),
    (("run", *POD, BASE_3B[1]), "--config"),
    (("run", *POD, BASE_3B[0]), "--workdir"),
    (("up", *POD, *BASE_3B), "--accelerator-type"),
    (("setup", *POD, "--git-ref=main"), "--git-url"),
])
def test_tpu_vm_missing_flags_exit_2_naming_the_flag(sandbox, args, flag):
  env, calls = sandbox
  out = sh(TPU_VM, *args, "--dry-run", env=env, check=False)
  assert out.returncode == 2 and flag in out.stderr, out.stderr
  assert not calls.exists()


def test_tpu_vm_help_and_bad_command(sandbox):
  env, _ = sandbox
  assert "usage: launch/tpu_vm.sh" in sh(TPU_VM, "--help", env=env).stdout
  bad = sh(TPU_VM, "launch", *POD, env=env, check=False)
  assert bad.returncode == 2 and "unknown command" in bad.stderr


# ----------------------------------------------------------------------------------------------
# run.sh

def test_run_dry_run_prints_the_distributed_command(sandbox):
  env, calls = sandbox
  out = sh(RUN, *BASE_3B, "--dry-run", "--config.optim.lr=3e-4", "--",
           "--config.data.path=/gcs/B/enc/train-*", env=env)
  cmds = commands(out.stdout)
  (py,) = find(cmds, "python", "-m", "muse_jax.main")
  assert py[3:] == [*BASE_3B, "--distributed", "--config.optim.lr=3e-4",
                    "--config.data.path=/gcs/B/enc/train-*"]
  assert ["export", "PYTHONUNBUFFERED=1"] in cmds
  assert not calls.exists()


def test_run_executes_python_once_with_the_real_command_line(sandbox, tmp_path):
  env, calls = sandbox
  out = sh(RUN, "--config", "configs/superres.py:size=268m", "--workdir", "gs://B/muse/superres",
           "--config.mesh.data=4", "--config.mesh.fsdp=64", env=env)
  assert ("python-args: -m muse_jax.main --config=configs/superres.py:size=268m "
          "--workdir=gs://B/muse/superres --distributed --config.mesh.data=4 "
          "--config.mesh.fsdp=64") in out.stdout
  assert len(calls.read_text().splitlines()) == 1
  logs = list((tmp_path / "logs").glob("*.log"))  # the output is also appended to the log dir
  assert len(logs) == 1 and "python-args:" in logs[0].read_text()


def test_run_propagates_the_exit_code_and_no_distributed(sandbox, tmp_path):
  env, _ = sandbox
  failing = tmp_path / "failing_python"
  failing.write_text('#!/bin/bash\necho "PYUNBUF=$PYTHONUNBUFFERED $*"\nexit 3\n')
  failing.chmod(0o755)
  out = sh(RUN, *BASE_3B, "--no-distributed", "--no-log-file",
           env={**env, "MUSE_PYTHON": str(failing)}, check=False)
  assert out.returncode == 3
  assert "PYUNBUF=1 -m muse_jax.main" in out.stdout and "--distributed" not in out.stdout


@pytest.mark.parametrize("args, flag", [((BASE_3B[1],), "--config"), ((BASE_3B[0],), "--workdir")])
def test_run_missing_flags_exit_2(sandbox, args, flag):
  env, calls = sandbox
  out = sh(RUN, *args, env=env, check=False)
  assert out.returncode == 2 and f"missing required flag {flag}" in out.stderr
  assert not calls.exists()


# ----------------------------------------------------------------------------------------------
# slurm.sh

def test_slurm_inside_a_job_srun_runs_run_sh_once_per_gpu(sandbox):
  env, calls = sandbox
  env = {**env, "SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "4"}
  out = sh(SLURM, *BASE_3B, "--gpus-per-node=8", "--dry-run", "--", "--config.optim.lr=1e-4",
           env=env)
  (srun,) = find(commands(out.stdout), "srun")
  assert {"--nodes=4", "--ntasks-per-node=8"} <= set(srun)
  i = srun.index(os.path.join(REPO, "launch", "run.sh"))
  assert srun[i + 1:i + 3] == list(BASE_3B) and srun[-2:] == ["--", "--config.optim.lr=1e-4"]
  assert not calls.exists()
  sh(SLURM, *BASE_3B, env=env)  # for real: the fake srun records the same command line
  assert calls.read_text().startswith("srun --nodes=4 --ntasks-per-node=8 --kill-on-bad-exit=1 ")


def test_slurm_outside_a_job_submits_itself(sandbox):
  env, calls = sandbox
  out = sh(SLURM, *BASE_3B, "--nodes=2", "--partition=gpu", "--requeue", "--dry-run", env=env)
  (sbatch,) = find(commands(out.stdout), "sbatch")
  assert {"--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu",
          "--requeue", "--signal=TERM@300"} <= set(sbatch)
  i = sbatch.index(os.path.join(REPO, "launch", "slurm.sh"))
  assert set(BASE_3B) <= set(sbatch[i + 1:])
  assert "srun" in out.stdout and "launch/run.sh" in out.stdout
  assert not calls.exists()


@pytest.mark.parametrize("args, flag", [((BASE_3B[1],), "--config"), ((BASE_3B[0],), "--workdir")])
def test_slurm_missing_flags_exit_2(sandbox, args, flag):
  env, calls = sandbox
  out = sh(SLURM, *args, "--dry-run", env=env, check=False)
  assert out.returncode == 2 and f"missing required flag {flag}" in out.stderr
  assert not calls.exists()
