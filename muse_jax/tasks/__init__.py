"""Stage registry: config.stage picks the task; the one train loop runs it."""
from muse_jax.tasks import base, superres, vqgan

TASKS = {
    "base": base.BaseTask,
    "superres": superres.SuperResTask,
    "vqgan": vqgan.VQGANTask,
    "decoder_finetune": vqgan.VQGANTask,
}


def get_task(config):
  stage = config.get("stage")
  if stage not in TASKS:
    raise ValueError(f"config.stage={stage!r} is not a known stage; expected one of {sorted(TASKS)}")
  return TASKS[stage](config)
