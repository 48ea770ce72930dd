"""Torch state dicts of published networks read from local files, for the frozen evaluators
(FID InceptionV3 in models/inception.py, LPIPS-VGG in models/lpips.py).

A file is either the .pth itself (torch.load with weights_only; needs torch, imported only then)
or its safetensors conversion with the same keys (read with safetensors.numpy: no torch). Each
network's module maps the keys to its flax params and has a `python -m MODULE IN.pth
OUT.safetensors` converter built on `convert_main`.
"""
import os
import sys
from typing import Callable

import numpy as np


def read(path, missing_error: Callable[[str], Exception], convert_command: str) -> dict:
  """{torch key: numpy array} of a .pth state dict or its .safetensors conversion.

  missing_error(path): the exception raised when `path` is not a file (it should say which file
  is needed and where it comes from). convert_command: the command that turns the .pth into a
  .safetensors file, named when torch is not installed.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise missing_error(path)
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return dict(load_file(path))
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"reading {path} (a torch state dict) needs torch; convert it once with "
                      f"`{convert_command}` on a machine with torch and pass the .safetensors "
                      f"file") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in state.items()}


def convert_main(argv, usage: str, read_fn: Callable[[str], dict],
                 check: Callable[[dict], object]) -> int:
  """`IN.pth OUT.safetensors`: reads IN with read_fn, check(state) raises unless it is the
  expected network's state dict, then writes OUT with the same keys. Returns the exit code."""
  if len(argv) != 2 or not argv[1].endswith(".safetensors"):
    print(f"usage: {usage}", file=sys.stderr)
    return 2
  from safetensors.numpy import save_file
  state = read_fn(argv[0])
  check(state)                            # the right file, before anything is written
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, argv[1])
  print(f"wrote {argv[1]} ({len(state)} tensors)")
  return 0
