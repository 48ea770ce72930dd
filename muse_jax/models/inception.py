"""InceptionV3 as used for FID (the TF 2015-12-05 graph, as ported by pytorch-fid), in flax.linen.

The FID variant differs from the ImageNet InceptionV3 of torchvision in its branch pools:
average pools ignore padded zeros (TF's SAME average), and the last block (Mixed_7c) max-pools.
Outputs the 2048-d features of the final average pool. Inputs: images in [-1, 1] of any size
>= 75 px (the network proper); `pool_features` takes [0, 1] images of any size and resizes them
bilinearly to 299x299 first (no antialiasing, half-pixel centres: F.interpolate(bilinear,
align_corners=False) as pytorch-fid does).

Weights: the standard FID file, a torch state dict,
  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
Reading a .pth needs torch; `python -m muse_jax.models.inception IN.pth OUT.safetensors` converts
it once into a safetensors file with the same keys, which loads without torch. The network is a
frozen evaluator: params are replicated, float32, without logical axis names.
"""
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.convert import state_dict

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_FILE)
FEATURE_DIM = 2048
INPUT_SIZE = 299


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv(nn.Module):
  """Conv (no bias) + batch norm (inference statistics, eps 1e-3) + ReLU: [B,H,W,C] -> [B,H',W',F]."""
  features: int
  kernel: object = 1
  stride: int = 1
  padding: object = 0

  @nn.compact
  def __call__(self, x_BxHxWxC):
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel), strides=self.stride,
                padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x_BxHxWxC)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _max_pool(x_BxHxWxC, window: int, stride: int, padding: int = 0):
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x_BxHxWxC, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), pad)


def _avg_pool_same(x_BxHxWxC):
  """3x3, stride 1, padding 1 average that ignores the padding (count_include_pad=False)."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x_BxHxWxC, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  ones = jnp.ones((1,) + x_BxHxWxC.shape[1:3] + (1,), x_BxHxWxC.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  return total / count


class InceptionA(nn.Module):
  """Mixed_5b..5d: [B,H,W,C] -> [B,H,W,224 + pool_features]."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, name="branch1x1")(x)
    b5 = BasicConv(64, 5, padding=2, name="branch5x5_2")(BasicConv(48, name="branch5x5_1")(x))
    b3 = BasicConv(64, name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
  """Mixed_6a: [B,H,W,288] -> [B,(H-3)/2+1,(W-3)/2+1,768]."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, 3, stride=2, name="branch3x3")(x)
    bd = BasicConv(64, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool(x, 3, 2)], -1)


class InceptionC(nn.Module):
  """Mixed_6b..6e: [B,H,W,768] -> [B,H,W,768] with factorised 7x7 convolutions."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    b1 = BasicConv(192, name="branch1x1")(x)
    b7 = BasicConv(c, name="branch7x7_1")(x)
    b7 = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c, name="branch7x7dbl_1")(x)
    bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
  """Mixed_7a: [B,H,W,768] -> [B,(H-3)/2+1,(W-3)/2+1,1280]."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(320, 3, stride=2, name="branch3x3_2")(BasicConv(192, name="branch3x3_1")(x))
    b7 = BasicConv(192, name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 3, 2)], -1)


class InceptionE(nn.Module):
  """Mixed_7b/7c: [B,H,W,C] -> [B,H,W,2048]; the FID graph's 7c max-pools its pool branch."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, name="branch1x1")(x)
    b3 = BasicConv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = BasicConv(448, name="branch3x3dbl_1")(x)
    bd = BasicConv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
    pooled = _max_pool(x, 3, 1, 1) if self.max_pool else _avg_pool_same(x)
    bp = BasicConv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], -1)


class InceptionV3(nn.Module):
  """FID InceptionV3: img_BxHxWx3 in [-1, 1] (H, W >= 75) -> pool features [B, 2048]."""

  @nn.compact
  def __call__(self, img_BxHxWx3):
    x = BasicConv(32, 3, stride=2, name="Conv2d_1a_3x3")(img_BxHxWx3.astype(jnp.float32))
    x = BasicConv(32, 3, name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool(x, 3, 2)
    x = BasicConv(80, 1, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool(x, 3, 2)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


def preprocess(img01_BxHxWx3):
  """[0, 1] images of any size -> [-1, 1] at 299x299 (bilinear, half-pixel centres, no
  antialiasing, as pytorch-fid)."""
  b, h, w, _ = img01_BxHxWx3.shape
  x = img01_BxHxWx3.astype(jnp.float32)
  if (h, w) != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (b, INPUT_SIZE, INPUT_SIZE, 3), "linear", antialias=False)
  return 2.0 * x - 1.0


def pool_features(variables, img01_BxHxWx3):
  """[0, 1] images of any size -> [B, 2048] FID features (resized to 299 first)."""
  return InceptionV3().apply(variables, preprocess(img01_BxHxWx3))


# ------------------------------------------------------------------------------------------------
# Weights.

def _missing_weights_error(path) -> FileNotFoundError:
  return FileNotFoundError(
      f"FID Inception weights {path} not found: download {WEIGHTS_FILE} from {WEIGHTS_URL} "
      f"(or convert it to .safetensors with `python -m muse_jax.models.inception {WEIGHTS_FILE} "
      f"inception.safetensors`) and pass its path")


def read_state_dict(path) -> dict:
  """{torch key: numpy array} from the FID weights file (.pth needs torch) or its safetensors
  conversion."""
  return state_dict.read(path, _missing_weights_error,
                         f"python -m muse_jax.models.inception {os.fspath(path)} OUT.safetensors")


def variables_from_state_dict(state: dict) -> dict:
  """torch state dict (pytorch-fid's key names) -> {"params", "batch_stats"} of InceptionV3.

  Keys of the classifier (fc.*), the aux head and num_batches_tracked are ignored; every
  parameter of our network must be present with the right shape.
  """
  abstract = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                            jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
  kinds = {("conv", "weight"): ("params", "kernel"), ("bn", "weight"): ("params", "scale"),
           ("bn", "bias"): ("params", "bias"), ("bn", "running_mean"): ("batch_stats", "mean"),
           ("bn", "running_var"): ("batch_stats", "var")}
  out = {"params": {}, "batch_stats": {}}
  flat = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract[collection])[0]:
      flat[(collection,) + tuple(p.key for p in path)] = leaf.shape
  reverse = {v: k for k, v in kinds.items()}
  for key, shape in flat.items():
    collection, *modules, layer, name = key
    _, torch_leaf = reverse[(collection, name)]
    torch_key = ".".join(modules + [layer, torch_leaf])
    if torch_key not in state:
      raise ValueError(f"FID Inception weights lack {torch_key} (shape {shape}): not the "
                     f"{WEIGHTS_FILE} state dict")
    value = np.asarray(state[torch_key], np.float32)
    if name == "kernel":
      value = value.transpose(2, 3, 1, 0)       # [O, I, kh, kw] -> [kh, kw, I, O]
    if value.shape != shape:
      raise ValueError(f"FID Inception weight {torch_key} has shape {value.shape} after "
                       f"conversion, expected {shape}")
    node = out[collection]
    for m in modules + [layer]:
      node = node.setdefault(m, {})
    node[name] = value
  return out


def load_variables(path) -> dict:
  """{"params", "batch_stats"} of InceptionV3 from the FID weights file (see read_state_dict)."""
  return variables_from_state_dict(read_state_dict(path))


def main(argv) -> int:
  return state_dict.convert_main(
      argv, f"python -m muse_jax.models.inception {WEIGHTS_FILE} OUT.safetensors",
      read_state_dict, variables_from_state_dict)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
