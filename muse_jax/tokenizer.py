"""A frozen tokenizer for library code and the CLIs alike: load a VQGAN from a muse-convert folder
or a tokenizer training workdir (load_tokenizer), and encode / decode batches with it on a mesh
(Tokenizer). muse-encode, muse-eval, the pipeline, the raw-image training path and the sample
grids all read tokenizers through here."""
import os

import jax
import jax.numpy as jnp
import numpy as np

from muse_jax import checkpoint
from muse_jax.convert import vq
from muse_jax.errors import UsageError   # what a user got wrong; the CLIs report it in one line
from muse_jax.models import vqgan
from muse_jax.models.vqgan import VQGAN
from muse_jax.parallel import axes, mesh as mesh_lib


def load_tokenizer(path: str):
  """(VQGANConfig, params) from a muse-convert folder, a tokenizer training workdir or a muse-ema
  export of one."""
  if not os.path.exists(path):
    raise UsageError(f"tokenizer {path} does not exist; expected a muse-convert folder "
                     f"(config.json + params.safetensors) or a tokenizer training workdir")
  if os.path.isfile(os.path.join(path, vq.CONFIG_FILE)) and not checkpoint.is_export(path):
    cfg, params = vq.load(path)
    return cfg, params.get("params", params)
  try:
    config = checkpoint.load_config(path)
  except (OSError, ValueError) as e:        # CheckpointError is a ValueError (errors.py)
    raise UsageError(f"tokenizer {path} is neither a muse-convert folder (config.json + "
                     f"params.safetensors) nor a tokenizer training workdir: {e}") from e
  if config.get("stage") not in ("vqgan", "decoder_finetune"):
    raise UsageError(f"{path} is a checkpoint of stage {config.get('stage')!r}, not a tokenizer "
                     f"(stage 'vqgan' or 'decoder_finetune')")
  from muse_jax.tasks import vqgan as vqgan_task
  return vqgan_task.model_config(config["model"]), checkpoint.load_params(path)


class Tokenizer:
  """A frozen VQGAN on this process's devices: encode(img01) / decode(ids), batch-sharded."""

  def __init__(self, path: str, mesh):
    self.path = path
    self.cfg, params = load_tokenizer(path)
    self.model = VQGAN(self.cfg)
    self.mesh = mesh
    self.shards = mesh_lib.batch_axis_size(mesh, axes.DEFAULT_RULES)
    self.batch_sharding = mesh_lib.logical_sharding(mesh, axes.DEFAULT_RULES, (axes.BATCH,))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self.params = jax.device_put(jax.tree.map(np.asarray, params), replicated)
    lo, hi = self.cfg.pixel_range

    def encode(p, img01_BxHxWx3, resolution):
      return vqgan.encode_unit_images(self.model, p, img01_BxHxWx3, resolution)

    def decode(p, ids_Bxhxw):
      img = self.model.apply({"params": p}, ids_Bxhxw, method=self.model.decode)
      return jnp.clip((img - lo) / (hi - lo), 0.0, 1.0)

    self._encode = jax.jit(encode, static_argnums=2, out_shardings=self.batch_sharding)
    self._decode = jax.jit(decode, out_shardings=self.batch_sharding)

  def _padded(self, x, batch: int):
    """Pads the batch to `batch` rows (one compiled shape) and places it over the devices."""
    x = np.asarray(x)
    x = np.concatenate([x, np.zeros((batch - len(x),) + x.shape[1:], x.dtype)]) if len(x) < batch else x
    return jax.device_put(x, self.batch_sharding)

  def encode(self, img01_BxHxWx3, resolution: int, batch: int):
    """Images in [0, 1] -> ids_BxN int32 (numpy), resized to `resolution` first if needed."""
    if resolution % self.cfg.factor:
      raise UsageError(f"resolution {resolution} is not divisible by the downsampling factor "
                       f"{self.cfg.factor} of tokenizer {self.path}")
    n = len(img01_BxHxWx3)
    return np.asarray(self._encode(self.params, self._padded(img01_BxHxWx3, batch), resolution))[:n]

  def decode(self, ids_Bxhxw, batch: int):
    """ids [B, h, w] -> images in [0, 1] (numpy float32)."""
    if np.ndim(ids_Bxhxw) != 3:
      raise UsageError(f"decode takes token ids shaped [batch, height, width], got shape "
                       f"{np.shape(ids_Bxhxw)} (encode returns them flattened to [batch, h*w]: "
                       f"reshape them to the token grid first)")
    n = len(ids_Bxhxw)
    return np.asarray(self._decode(self.params, self._padded(ids_Bxhxw, batch)))[:n]


def local_mesh():
  return mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.local_devices())
