"""Stage registry: config.stage picks the task (a tasks.api.Task); the one train loop runs it."""
from muse_jax.tasks import decoder_finetune, superres, t2i_base, vqgan

TASKS = {
    "base": t2i_base.T2IBaseTask,
    "superres": superres.SuperResTask,
    "vqgan": vqgan.VQGANTask,
    "decoder_finetune": decoder_finetune.DecoderFinetuneTask,
}


def get_task(config):
  stage = config.get("stage")
  if stage not in TASKS:
    raise ValueError(f"config.stage={stage!r} is not a known stage; expected one of {sorted(TASKS)}")
  return TASKS[stage](config)
