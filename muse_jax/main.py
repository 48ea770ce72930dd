"""Entry point for every training stage: flags -> (optional jax.distributed) -> train loop.

  python -m muse_jax.main --config=configs/base.py:size=tiny --workdir=/tmp/muse_base
"""
from absl import app, flags, logging
from ml_collections import config_flags

from muse_jax import hostenv, paths
from muse_jax import flag_help

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events, outputs.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for jax.distributed (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with "
                                 "the cluster auto-detected (TPU pods, SLURM).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # here, not at the top: run_main may re-exec the process first (hostenv)
  if _COORDINATOR.value or _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  from muse_jax.train import loop  # after distributed init: it may touch devices
  logging.info("process %d/%d, %d devices", jax.process_index(), jax.process_count(),
               jax.device_count())
  config = paths.resolve_config(_CONFIG.value)   # relative paths: absolute, once, here
  out = loop.run(config, paths.resolve(_WORKDIR.value))
  if out.preempted:
    logging.warning("stopped for preemption at step %d; rerun the same command to resume",
                    out.final_step)


def run_main():
  hostenv.reexec_with_hugepages()
  flag_help.adopt_for_main(__name__, __doc__)   # muse-train --help lists the flags
  app.run(main)


if __name__ == "__main__":
  run_main()
