r"""muse-demo: the whole Muse cascade trained and sampled on the built-in scenes, on a CPU.

  muse-demo --workdir=/tmp/muse_demo            # the full demo (README gives its time and scores)
  muse-demo --workdir=/tmp/muse_demo_q --quick  # every stage for a few steps (tests, ~2 minutes)

  muse-demo --workdir=DIR --set vq.train.num_steps=6000 --set base.train.batch_size=256
                                                # longer / larger stages (a GPU; README)

Stages, each in its own folder under WORKDIR and each resumable (re-running the command skips
what is finished and resumes what is not, from its checkpoints):
  vq/        tokenizer: configs/vqgan.py:size=demo, an f4 FSQ tokenizer trained on 32 px scenes
  enc/       muse-encode: the scenes' train split at 32 px (8x8 ids) and 64 px (16x16 ids, the
             same fully convolutional tokenizer), captions -> bundled MiniLM states
  base/      configs/base.py:size=demo on the 8x8 ids (sample grids in base/samples/)
  superres/  configs/superres.py:size=demo: 8x8 -> 16x16 ids (grids in superres/samples/)
  samples/   prompts of held-out colour-shape pairs (split "eval") and of seen ones ("eval_seen"),
             each with two seeds, sampled through the cascade to 64 px; labelled grid PNGs,
             report.md and report.json with the time taken, the same-run matmul peak and the
             prompt-alignment scores recovered from the images alone.
"""
import argparse
import ast
import os
import sys
import time

from absl import logging

from muse_jax import paths

LO_RES, HI_RES = 32, 64


STAGES = ("vq", "base", "superres")


def parse_sets(items) -> dict:
  """["base.train.num_steps=8000", ...] -> {"base": {"train.num_steps": 8000}, ...}; values are
  Python literals (8000, 1e-3, "l2", (1, 2)) or else plain strings."""
  sets = {}
  for item in items or ():
    key, sep, text = item.partition("=")
    stage, _, field = key.partition(".")
    if not sep or stage not in STAGES or not field:
      raise ValueError(f"--set {item!r}: expected STAGE.FIELD=VALUE with STAGE one of {STAGES}, "
                       "e.g. --set base.train.num_steps=8000")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    sets.setdefault(stage, {})[field] = value
  return sets


def stage_configs(workdir: str, quick: bool, sets: dict | None = None) -> dict:
  """The training configs of the demo's three models (quick: a few steps of the same models),
  with `sets` ({stage: {dotted field: value}}, from --set) applied last."""
  from configs import base, common, superres, vqgan
  # data.tokenizer(_hi): the trained vq/ decodes the sample grids written while training
  # (train.sample_every); the ids themselves come pre-encoded from enc/.
  tok = os.path.join(workdir, "vq")
  data = {"data.source": "preencoded", "data.path": os.path.join(workdir, "enc", "train-*"),
          "data.tokenizer": tok}
  vq = vqgan.get_config("size=demo")
  b = common.override(base.get_config("size=demo"), data)
  sr = common.override(superres.get_config("size=demo"), {**data, "data.tokenizer_hi": tok})
  if quick:
    for config in (vq, b, sr):
      common.override(config, {"train.num_steps": 12, "checkpoint.every": 12,
                               "train.log_every": 4, "optim.warmup_steps": 2})
    common.override(vq, {"train.eval_every": 12})
    for config in (b, sr):   # 12 steps are mostly compilation, which remat lengthens
      common.override(config, {"model.remat": "none"})
  configs = {"vq": vq, "base": b, "superres": sr}
  for stage, fields in (sets or {}).items():
    try:
      common.override(configs[stage], fields)
    except ValueError as e:
      raise ValueError(f"--set {stage}: {e}") from None
  _check_token_shapes(configs)
  return configs


def _check_token_shapes(configs: dict) -> None:
  """The base and super-res models must fit the tokenizer's codes at LO_RES and HI_RES (checked
  here, before the tokenizer trains, so a --set that changes one stage only fails at once)."""
  vq = configs["vq"].model
  f = 2 ** (len(vq.channel_mult) - 1)
  want = {("base", "codebook_size"): vq.codebook_size, ("base", "grid_size"): LO_RES // f,
          ("superres", "lo_codebook_size"): vq.codebook_size,
          ("superres", "codebook_size"): vq.codebook_size,
          ("superres", "lo_grid_size"): LO_RES // f, ("superres", "hi_grid_size"): HI_RES // f}
  wrong = [f"{stage}.model.{k}={configs[stage].model[k]} (needs {v})"
           for (stage, k), v in want.items() if configs[stage].model[k] != v]
  if wrong:
    raise ValueError(f"the tokenizer (f{f}, {vq.codebook_size} codes; {LO_RES} px -> "
                     f"{LO_RES // f}x{LO_RES // f} ids, {HI_RES} px -> {HI_RES // f}x{HI_RES // f})"
                     f" does not fit: {', '.join(wrong)}; --set those fields too")


def _train(name: str, config, workdir: str) -> float:
  from muse_jax import checkpoint
  from muse_jax.train import loop
  t0 = time.perf_counter()
  stage_dir = os.path.join(workdir, name)
  try:
    if int(checkpoint.step_dir(stage_dir).name) >= config.train.num_steps:
      print(f"muse-demo: {name} is trained ({stage_dir})", flush=True)
      return time.perf_counter() - t0
  except checkpoint.CheckpointError:
    pass                                     # nothing saved yet: train from the start
  print(f"muse-demo: training {name} -> {stage_dir}", flush=True)
  out = loop.run(config, stage_dir)
  if out.preempted:
    raise SystemExit(f"muse-demo: stopped while training {name} (SIGTERM); re-run to resume")
  return time.perf_counter() - t0


def _encode(workdir: str, num_examples: int) -> float:
  from muse_jax.cli import encode
  t0 = time.perf_counter()
  enc = os.path.join(workdir, "enc")
  vq = os.path.join(workdir, "vq")
  args = ["images", "--tokenizer", vq, "--tokenizer-hi", vq, "--resolution", str(LO_RES),
          "--resolution-hi", str(HI_RES), "--num-examples", str(num_examples),
          "--shard-size", "2048", "--batch-size", "64", "--out", os.path.join(enc, "images")]
  if encode.main(args) != 0:
    raise SystemExit("muse-demo: encoding images failed (see the error above)")
  if encode.main(["text", "--input", os.path.join(enc, "images-*"), "--max-length", "24",
                  "--batch-size", "64", "--out", os.path.join(enc, "train")]) != 0:
    raise SystemExit("muse-demo: encoding captions failed (see the error above)")
  return time.perf_counter() - t0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="muse-demo", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="/tmp/muse_demo")
  parser.add_argument("--quick", action="store_true", help="a few steps per stage (tests)")
  parser.add_argument("--num-examples", type=int, help="scenes to encode (default 12000; "
                      "quick 256)")
  parser.add_argument("--num-prompts", type=int, help="prompts per split to sample, each with "
                      "two seeds (default 96; quick 4)")
  parser.add_argument("--set", action="append", metavar="STAGE.FIELD=VALUE",
                      help="override a stage's training config (stages: vq, base, superres), "
                      "e.g. --set base.train.num_steps=8000; repeatable")
  args = paths.resolve_args(parser.parse_args(argv), ("workdir",))
  try:
    sets = parse_sets(args.set)
  except ValueError as e:
    parser.error(str(e))
  logging.set_verbosity(logging.WARNING)
  quick = args.quick
  num_examples = args.num_examples or (256 if quick else 12_000)
  num_prompts = args.num_prompts or (4 if quick else 96)
  try:
    configs = stage_configs(args.workdir, quick, sets)
  except ValueError as e:
    parser.error(str(e))
  os.makedirs(args.workdir, exist_ok=True)
  times = {}
  t0 = time.perf_counter()
  times["tokenizer"] = _train("vq", configs["vq"], args.workdir)
  times["encode"] = _encode(args.workdir, num_examples)
  times["base"] = _train("base", configs["base"], args.workdir)
  times["superres"] = _train("superres", configs["superres"], args.workdir)
  from muse_jax.cli import demo_report
  times["sample"], report = demo_report.sample_and_score(args.workdir, num_prompts, quick)
  times["total"] = time.perf_counter() - t0
  demo_report.write(args.workdir, report, times, quick, demo_report.matmul_peak_gflops())
  return 0


def run_main():
  from muse_jax import hostenv
  hostenv.reexec_with_hugepages()
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  run_main()
