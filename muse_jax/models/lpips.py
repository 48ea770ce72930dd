"""LPIPS (Zhang et al. 2018) on VGG16, version 0.1, as the `lpips` package (0.1.4) computes
lpips.LPIPS(net='vgg'), in flax.linen (NHWC).

  d(x0, x1) = sum_l mean_hw( w_l . (u_l(x0) - u_l(x1))^2 ),  u_l = f_l / (|f_l| + 1e-10)

x0, x1 in [-1, 1] are first scaled per channel ((x - shift) / scale, lpips' ScalingLayer); f_l
are the activations of torchvision's VGG16 `features` at relu1_2, relu2_2, relu3_3, relu4_3 and
relu5_3 (3x3 convs with padding 1, 2x2 max pools with stride 2, floor sizes), |.| the norm over
channels, w_l lpips' 1x1 "lin" layers (no bias; their dropout is off at eval) and mean_hw the
spatial average. Any image size whose sides are >= 16 px (four pools) works.

Weights: two local files, each a torch state dict or its safetensors conversion.
  VGG16  torchvision's ImageNet weights vgg16-397923af.pth, from
         https://download.pytorch.org/models/vgg16-397923af.pth (features.N.* are read; the
         classifier is ignored).
  lin    lpips' weights/v0.1/vgg.pth, shipped inside the lpips package (`pip install --no-deps
         lpips==0.1.4`, then site-packages/lpips/weights/v0.1/vgg.pth); keys lin0.model.1.weight
         ... lin4.model.1.weight.
Reading a .pth needs torch; `python -m muse_jax.models.lpips IN.pth OUT.safetensors` converts
either file once into a safetensors file with the same keys, which loads without torch. The
network is a frozen loss network: params are replicated, float32, without logical axis names;
convolutions run in `dtype`, the normalisation, distances and averages in float32.
"""
import os
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from muse_jax.convert import state_dict

VGG_FILE = "vgg16-397923af.pth"
VGG_URL = "https://download.pytorch.org/models/" + VGG_FILE
LIN_FILE = "weights/v0.1/vgg.pth"
VGG_SOURCE = f"torchvision's ImageNet VGG16 weights {VGG_FILE}, from {VGG_URL}"
LIN_SOURCE = (f"lpips' linear-layer weights {LIN_FILE}, shipped inside the lpips package "
              f"(pip install --no-deps lpips==0.1.4; the file is site-packages/lpips/{LIN_FILE})")
_CONVERT = "python -m muse_jax.models.lpips"

# torchvision's vgg16 `features` (config "D"): per block, (index in `features`, width) of its 3x3
# convs, each followed by a ReLU; a 2x2 max pool precedes every block but the first. lpips reads
# each block's last ReLU (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
BLOCKS = (((0, 64), (2, 64)),
          ((5, 128), (7, 128)),
          ((10, 256), (12, 256), (14, 256)),
          ((17, 512), (19, 512), (21, 512)),
          ((24, 512), (26, 512), (28, 512)))
TAP_CHANNELS = tuple(block[-1][1] for block in BLOCKS)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10


class VGG16Features(nn.Module):
  """Scaled images [B, H, W, 3] -> the five taps [B, H_l, W_l, C_l] (H_0 = H, H_l = H_{l-1}//2),
  C_l = TAP_CHANNELS[l], in `dtype`."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWx3):
    x = x_BxHxWx3.astype(self.dtype)
    taps = []
    for b, block in enumerate(BLOCKS):
      if b:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
      for index, width in block:
        x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    param_dtype=jnp.float32, name=f"conv{index}")(x)
        x = nn.relu(x)
      taps.append(x)
    return taps


def _unit_channels(f_BxHxWxC):
  """f / (|f| + EPS) over channels, in float32; finite gradients where f = 0 (all channels)."""
  f = f_BxHxWxC.astype(jnp.float32)
  sq = jnp.sum(f * f, axis=-1, keepdims=True)
  positive = sq > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return f / (norm + EPS)


class LPIPS(nn.Module):
  """(x0_BxHxWx3, x1_BxHxWx3) in [-1, 1] -> LPIPS distance [B] (float32)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x0_BxHxWx3, x1_BxHxWx3):
    if x0_BxHxWx3.shape != x1_BxHxWx3.shape or x0_BxHxWx3.shape[-1] != 3:
      raise ValueError(f"LPIPS compares two image batches of one shape [B, H, W, 3], got "
                       f"{x0_BxHxWx3.shape} and {x1_BxHxWx3.shape}")
    if min(x0_BxHxWx3.shape[1:3]) < 16:
      raise ValueError(f"LPIPS-VGG needs images of at least 16x16 px (four 2x2 pools), got "
                       f"{x0_BxHxWx3.shape[1:3]}")
    shift, scale = jnp.asarray(SHIFT, jnp.float32), jnp.asarray(SCALE, jnp.float32)
    vgg = VGG16Features(self.dtype, name="vgg")
    # Two passes, not one over the concatenation: gradients then flow through x0's pass alone
    # when x1 is a constant (the target image of a reconstruction loss).
    taps0 = vgg((x0_BxHxWx3.astype(jnp.float32) - shift) / scale)
    taps1 = vgg((x1_BxHxWx3.astype(jnp.float32) - shift) / scale)
    total_B = jnp.zeros((x0_BxHxWx3.shape[0],), jnp.float32)
    for layer, (f0, f1) in enumerate(zip(taps0, taps1)):
      diff = (_unit_channels(f0) - _unit_channels(f1)) ** 2
      weighted = nn.Dense(1, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                          name=f"lin{layer}")(diff)
      total_B = total_B + jnp.mean(weighted, axis=(1, 2, 3))
    return total_B


def abstract_params() -> dict:
  """ShapeDtypeStructs of LPIPS' params (no weights, no computation)."""
  dummy = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  return jax.eval_shape(LPIPS().init, jax.random.key(0), dummy, dummy)["params"]


# ------------------------------------------------------------------------------------------------
# Weights.

def read(path, what: str = "weights", source: str = f"{VGG_SOURCE}, or {LIN_SOURCE}") -> dict:
  """{torch key: numpy array} of one weight file (.pth needs torch) or its safetensors
  conversion; a missing file raises FileNotFoundError naming `what` it is and its `source`."""
  def missing(p) -> FileNotFoundError:
    return FileNotFoundError(
        f"LPIPS {what} {p!r} not found: it is {source} (or its .safetensors conversion, "
        f"`{_CONVERT} IN.pth OUT.safetensors`); pass its path")
  return state_dict.read(path, missing, f"{_CONVERT} {os.fspath(path)} OUT.safetensors")


_SOURCES = {"VGG16 weights": VGG_SOURCE, "lin weights": LIN_SOURCE}


def _take(state: dict, key: str, shape: tuple, which: str) -> np.ndarray:
  """state[key] as float32, checked against `shape` (torch layout)."""
  if key not in state:
    raise ValueError(f"LPIPS {which} lack {key} (shape {shape}): not {_SOURCES[which]}")
  value = np.asarray(state[key], np.float32)
  if value.shape != shape:
    raise ValueError(f"LPIPS {which} {key} has shape {value.shape}, expected {shape} (not "
                     f"{_SOURCES[which]})")
  return value


def _vgg_params(vgg: dict) -> dict:
  params, expected = {}, set()
  in_channels = 3
  for block in BLOCKS:
    for index, width in block:
      w_key, b_key = f"features.{index}.weight", f"features.{index}.bias"
      expected |= {w_key, b_key}
      kernel = _take(vgg, w_key, (width, in_channels, 3, 3), "VGG16 weights")
      params[f"conv{index}"] = {"kernel": kernel.transpose(2, 3, 1, 0),   # OIHW -> HWIO
                                "bias": _take(vgg, b_key, (width,), "VGG16 weights")}
      in_channels = width
  unexpected = sorted(k for k in vgg if k not in expected and not k.startswith("classifier."))
  if unexpected:
    raise ValueError(f"LPIPS VGG16 weights have unexpected key {unexpected[0]} (shape "
                     f"{np.shape(vgg[unexpected[0]])}; {len(unexpected)} unexpected in all): "
                     f"not {VGG_SOURCE}")
  return params


def _lin_params(lin: dict) -> dict:
  params, expected = {}, set()
  for layer, channels in enumerate(TAP_CHANNELS):
    key = f"lin{layer}.model.1.weight"
    expected.add(key)
    weight = _take(lin, key, (1, channels, 1, 1), "lin weights")
    params[f"lin{layer}"] = {"kernel": weight.reshape(1, channels).T}        # [C, 1]
  unexpected = sorted(k for k in lin if k not in expected)
  if unexpected:
    raise ValueError(f"LPIPS lin weights have unexpected key {unexpected[0]} (shape "
                     f"{np.shape(lin[unexpected[0]])}; {len(unexpected)} unexpected in all): "
                     f"not {LIN_SOURCE}")
  return params


def params_from_state_dicts(vgg: dict, lin: dict) -> dict:
  """LPIPS params from torchvision's VGG16 state dict and lpips' lin state dict. Every key our
  network needs must be there with the right shape; the VGG classifier is ignored; any other key
  is an error (a wrong file)."""
  params = {"vgg": _vgg_params(vgg), **_lin_params(lin)}
  want = jax.tree.map(lambda a: a.shape, abstract_params())
  have = jax.tree.map(np.shape, params)
  assert want == have, (want, have)      # the key maps above and the modules agree
  return params


def load_params(vgg_path, lin_path) -> dict:
  """LPIPS params (a numpy pytree) from the two weight files (see the module docstring)."""
  return params_from_state_dicts(read(vgg_path, "VGG16 weights", VGG_SOURCE),
                                 read(lin_path, "linear-layer weights", LIN_SOURCE))


def _check_either(state: dict) -> None:
  if any(k.startswith("features.") for k in state):
    _vgg_params(state)
  else:
    _lin_params(state)


def main(argv) -> int:
  return state_dict.convert_main(
      argv, f"{_CONVERT} {VGG_FILE}|vgg.pth OUT.safetensors (torchvision's VGG16 weights or "
      f"lpips' {LIN_FILE})", read, _check_either)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
