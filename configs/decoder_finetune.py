r"""Decoder finetuning (stage `decoder_finetune`): a wider, deeper decoder trained on a trained
tokenizer's frozen encoder and codebook (paper: 4 residual blocks per level, base channels 256).

Locally (CPU), after `configs/vqgan.py:size=tiny` trained into /tmp/muse_vq:
  python -m muse_jax.main --config=configs/decoder_finetune.py:size=tiny \
      --config.init_from=/tmp/muse_vq --workdir=/tmp/muse_vq_ft
On a pod:
  launch/run.sh --config=configs/decoder_finetune.py:size=f8-512 \
      --config.init_from=gs://BUCKET/muse/vq_f8 --workdir=gs://BUCKET/muse/vq_f8_ft
The presets mirror configs/vqgan.py; the encoder and codebook settings must equal the trained
tokenizer's (a mismatch is reported with both shapes at start).
"""
from configs import vqgan


def get_config(arg: str | None = None):
  config = vqgan.get_config(arg)
  config.stage = "decoder_finetune"
  if config.size in ("tiny", "demo"):   # twice the blocks and channels of the trained decoder
    config.model.decoder_res_blocks = 2 * config.model.num_res_blocks
    config.model.decoder_base_channels = 2 * config.model.base_channels
  else:                                  # paper: 4 blocks per level, base channels 256
    config.model.decoder_res_blocks = 4
    config.model.decoder_base_channels = 256
  return config
