"""muse-ema: an exponential moving average over a run's saved checkpoints -> a params-only export.

  muse-ema --workdir /runs/base --decay 0.7 --period 5000 --out /ckpt/base_ema
  muse-sample --checkpoint /ckpt/base_ema --tokenizer /ckpt/vq_f16 --prompt "..." --out /tmp/s

Muse (Sec. 4) evaluates an EMA over checkpoints saved every 5k steps with decay 0.7. In step
order, ema = params(first) and then ema = decay * ema + (1 - decay) * params(step) for each later
checkpoint (the training params, not a training-time EMA). --period N averages only the steps
divisible by N (the paper presets keep every 5000th checkpoint: checkpoint.keep_period);
--min-step / --max-step restrict the steps. The export folder holds params.safetensors
(flattened "a/b/c" keys, float32, the steps averaged in its metadata) and config.json (the run's
training config); it is read wherever a trained checkpoint is (muse-sample, muse-edit, muse-eval,
the notebook, config.init_from): muse_jax/checkpoint.py load_params / load_config / load_export.
"""
import argparse
import sys

import flax.traverse_util
import numpy as np
from etils import epath

from muse_jax import checkpoint, errors, paths
from muse_jax.errors import UsageError

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


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="muse-ema", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="training workdir with checkpoints/STEP")
  p.add_argument("--decay", type=float, default=0.7)
  p.add_argument("--period", type=int, default=0,
                 help="average only the steps divisible by this (0: every saved step)")
  p.add_argument("--min-step", type=int, default=0)
  p.add_argument("--max-step", type=int)
  p.add_argument("--out", required=True, help="export folder")
  return p


def export_ema(args) -> int:
  if args.period < 0:
    raise UsageError(f"--period must be >= 0, got {args.period}")
  steps = [s for s in checkpoint_steps(args.workdir) if s >= args.min_step
           and (args.max_step is None or s <= args.max_step)
           and (not args.period or s % args.period == 0)]
  if not steps:
    raise UsageError(f"no checkpoints of {args.workdir} in steps [{args.min_step}, "
                     f"{args.max_step}]" + (f" divisible by {args.period}" if args.period
                                            else ""))
  params, steps, config = ema_over_checkpoints(args.workdir, args.decay, steps)
  checkpoint.save_export(args.out, params, config, {"ema_decay": args.decay, "ema_steps": steps,
                                                    "workdir": args.workdir})
  print(f"muse-ema: averaged {len(steps)} checkpoints (steps {steps[0]}..{steps[-1]}, decay "
        f"{args.decay}) into {args.out}")
  return 0


def main(argv=None) -> int:
  args = paths.resolve_args(parser().parse_args(argv), ("workdir", "out"))
  # OSError: an unreadable checkpoint or an unwritable --out.
  return errors.report("muse-ema", export_ema, args, also=(OSError,))


def run_main():
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  run_main()
