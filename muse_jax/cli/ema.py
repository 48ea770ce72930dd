"""muse-ema: an exponential moving average over a run's saved checkpoints -> a params-only export.

  muse-ema --workdir /runs/base --decay 0.7 --out /ckpt/base_ema

Muse (Sec. 4) evaluates an EMA over checkpoints saved every 5k steps with decay 0.7. In step
order, ema = params(first) and then ema = decay * ema + (1 - decay) * params(step) for each later
checkpoint (the training params, not a training-time EMA). --min-step / --max-step restrict the
steps. The export folder holds params.safetensors (flattened "a/b/c" keys, float32, the steps
averaged in its metadata) and config.json (the run's training config, as saved with the
checkpoints); `load_export(path)` reads it back as (config dict, params tree).
"""
import argparse
import json
import os
import sys

import flax.traverse_util
import numpy as np
from etils import epath
from safetensors import numpy as st_numpy

from muse_jax import checkpoint, paths
from muse_jax.errors import UsageError

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "muse_jax.ema_export.v1"



def checkpoint_steps(workdir) -> list:
  """Sorted steps of the complete checkpoints in WORKDIR/checkpoints (or a checkpoints folder)."""
  root = epath.Path(workdir)
  root = root / "checkpoints" if (root / "checkpoints").is_dir() else root
  if not root.is_dir():
    raise UsageError(f"{workdir} is not a training workdir (no checkpoints/ folder)")
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "state").is_dir())


def ema_over_checkpoints(workdir, decay: float, steps=None) -> tuple:
  """(ema params tree of float32 numpy, steps used, config dict of the last step)."""
  if not 0.0 <= decay < 1.0:
    raise UsageError(f"--decay must be in [0, 1), got {decay}")
  steps = checkpoint_steps(workdir) if steps is None else list(steps)
  if not steps:
    raise UsageError(f"{workdir} holds no complete checkpoints to average")
  root = epath.Path(workdir)
  root = root / "checkpoints" if (root / "checkpoints").is_dir() else root
  ema, names = None, None
  for step in steps:
    params = checkpoint.load_params(root / str(step), prefer_ema=False)
    flat = {k: np.asarray(v, np.float64)
            for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
    if ema is None:
      ema, names = flat, set(flat)
      continue
    if set(flat) != names:
      diff = sorted(set(flat) ^ names)[0]
      raise UsageError(f"checkpoint {root / str(step)} differs from step {steps[0]} in param "
                       f"{diff}: the checkpoints come from different configs")
    for k, v in flat.items():
      if v.shape != ema[k].shape:
        raise UsageError(f"checkpoint {root / str(step)}: {k} has shape {v.shape}, step "
                         f"{steps[0]} has {ema[k].shape}")
      ema[k] = decay * ema[k] + (1.0 - decay) * v
  config = checkpoint.load_config(root / str(steps[-1]))
  tree = flax.traverse_util.unflatten_dict({k: v.astype(np.float32) for k, v in ema.items()},
                                           sep="/")
  return tree, steps, config


def save_export(out_dir, params, config: dict, metadata: dict | None = None) -> None:
  """Writes a params-only export: params.safetensors + config.json."""
  os.makedirs(out_dir, exist_ok=True)
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  meta = {"format": FORMAT, **{k: str(v) for k, v in (metadata or {}).items()}}
  st_numpy.save_file({k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in flat.items()},
                     os.path.join(out_dir, PARAMS_FILE), metadata=meta)
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump({"format": FORMAT, "config": config, **(metadata or {})}, f, indent=2)


def load_export(path) -> tuple:
  """A folder written by muse-ema -> (training config dict, params tree of float32 numpy)."""
  config_path = os.path.join(path, CONFIG_FILE)
  params_path = os.path.join(path, PARAMS_FILE)
  if not (os.path.isfile(config_path) and os.path.isfile(params_path)):
    raise FileNotFoundError(f"{path} is not a muse-ema export (expected {CONFIG_FILE} and "
                            f"{PARAMS_FILE})")
  with open(config_path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise ValueError(f"{config_path} is not a {FORMAT} export (format {meta.get('format')!r})")
  flat = st_numpy.load_file(params_path)
  return meta["config"], flax.traverse_util.unflatten_dict(flat, sep="/")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="muse-ema", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="training workdir with checkpoints/STEP")
  p.add_argument("--decay", type=float, default=0.7)
  p.add_argument("--min-step", type=int, default=0)
  p.add_argument("--max-step", type=int)
  p.add_argument("--out", required=True, help="export folder")
  return p


def main(argv=None) -> int:
  args = paths.resolve_args(parser().parse_args(argv), ("workdir", "out"))
  try:
    steps = [s for s in checkpoint_steps(args.workdir) if s >= args.min_step
             and (args.max_step is None or s <= args.max_step)]
    if not steps:
      raise UsageError(f"no checkpoints of {args.workdir} in steps [{args.min_step}, "
                       f"{args.max_step}]")
    params, steps, config = ema_over_checkpoints(args.workdir, args.decay, steps)
    save_export(args.out, params, config, {"ema_decay": args.decay, "ema_steps": steps,
                                           "workdir": args.workdir})
  except (UsageError, FileNotFoundError) as e:   # CheckpointError is a UsageError
    print(f"muse-ema: error: {e}", file=sys.stderr)
    return 1
  print(f"muse-ema: averaged {len(steps)} checkpoints (steps {steps[0]}..{steps[-1]}, decay "
        f"{args.decay}) into {args.out}")
  return 0


def run_main():
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  run_main()
