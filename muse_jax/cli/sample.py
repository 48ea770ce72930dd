r"""muse-sample: prompts -> PNG images with the base model (and super-res, when given).

  muse-sample --checkpoint /ckpt/base --tokenizer /ckpt/vq_f16 \
      [--superres /ckpt/superres --tokenizer-hi /ckpt/vq_f8] \
      --prompt "a red circle to the left of a blue square" --prompt "a green triangle" \
      [--negative-prompt "yellow"] --num-images 4 --guidance 4 --seed 0 --out /tmp/samples
  muse-sample --checkpoint runs/base --tokenizer runs/vq --prompts-file prompts.jsonl --out out

--checkpoint / --superres: training workdirs (their latest checkpoint; EMA params when saved) or
muse-ema exports. --tokenizer / --tokenizer-hi: muse-convert folders or tokenizer training
workdirs. --text-encoder-path: the text encoder's snapshot, when the checkpoint's recorded
text_encoder.path is empty (a T5 run that never set it) or moved. Relative paths are taken from
the current directory. Writes OUT/ID_KK.png (prompt ID, image KK), OUT/grid.png
(one row per prompt) and OUT/settings.json (every setting used, the absolute paths, the prompt
ids and the output files). Classifier-free guidance rises linearly from 0 to --guidance over the
steps (Muse); --guidance 0 turns it off.

Prompts: --prompt (repeatable; ids 000, 001, ...) or --prompts-file FILE, not both. FILE is plain
text, one prompt per line (blank lines skipped; id = the line number, zero-padded), JSONL, one
{"id": "...", "prompt": "..."} per line (chosen by a .jsonl name or a first line starting with
'{'; other keys are ignored; an id may be left out: the line number), or a .tsv with a header
whose 'Prompt' column holds the prompts (PartiPrompts.tsv; id = the line number). Besides the
images, each prompt gets ID_grid.png (its images in a row) and OUT/index.md lists every prompt
with its grid (a contact sheet). Ids name the output files:
letters, digits, '.', '_', '-', not starting with '.' or '-', each once.
"""
import argparse
import dataclasses
import json
import os
import re
import sys

import numpy as np
import PIL.Image

from muse_jax import decoding, errors, paths
from muse_jax.parallel import mesh as mesh_lib
from muse_jax.errors import UsageError
from muse_jax.pipeline import Pipeline, PipelinePaths, SampleConfig, image_grid


def add_model_args(p: argparse.ArgumentParser):
  p.add_argument("--checkpoint", required=True, help="base model workdir (stage 'base')")
  p.add_argument("--tokenizer", required=True, help="tokenizer of the base tokens")
  p.add_argument("--superres", help="super-res workdir (stage 'superres')")
  p.add_argument("--tokenizer-hi", help="tokenizer of the super-res tokens (with --superres)")
  p.add_argument("--text-encoder-path",
                 help="the text encoder's snapshot folder (Hugging Face or muse-convert), in "
                 "place of the path the checkpoint records; needed for a T5 run whose config "
                 "did not set text_encoder.path")
  p.add_argument("--mesh", default="data=-1",
                 help="devices as AXIS=SIZE over data, fsdp, tensor (one size -1: the rest), "
                 "e.g. 'fsdp=-1' to shard the generators' params over every device like "
                 "training does (default: all data-parallel, every device holds every param)")


# Path flags of muse-sample and muse-edit, resolved once in main(); the model paths with what
# each must be (for the message when one does not exist).
MODEL_PATHS = {"checkpoint": "a training workdir of stage 'base'",
               "tokenizer": "a muse-convert folder or a tokenizer training workdir",
               "superres": "a training workdir of stage 'superres'",
               "tokenizer_hi": "a muse-convert folder or a tokenizer training workdir",
               "text_encoder_path": "a Hugging Face snapshot or muse-convert text encoder folder"}
PATH_ARGS = (*MODEL_PATHS, "out", "prompts_file", "image", "mask")


def add_decode_args(p: argparse.ArgumentParser, guidance: float = 4.0,
                    prompts_file: bool = False):
  if prompts_file:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", action="append", help="repeatable (ids 000, 001, ...)")
    group.add_argument("--prompts-file", metavar="FILE",
                       help="one prompt per line (blank lines skipped; ids: the line numbers) "
                       "or JSONL {\"id\": ..., \"prompt\": ...}; outputs are ID_KK.png; "
                       "instead of --prompt")
  else:
    p.add_argument("--prompt", action="append", required=True, help="repeatable")
  p.add_argument("--negative-prompt", action="append",
                 help="one for all prompts, or one per prompt (needs --guidance > 0)")
  p.add_argument("--num-images", type=int, default=1, help="images per prompt")
  p.add_argument("--steps", type=int, default=decoding.DEFAULT_NUM_STEPS["base"])
  p.add_argument("--superres-steps", type=int, default=decoding.DEFAULT_NUM_STEPS["superres"])
  p.add_argument("--guidance", type=float, default=guidance,
                 help="classifier-free guidance scale at the last step (0: off)")
  p.add_argument("--guidance-schedule", default="linear", choices=decoding.GUIDANCE_SCHEDULES)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--choice-temperature", type=float, default=4.5)
  p.add_argument("--schedule", default="cosine")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True, help="output folder")


def check_prompts(args):
  for flag, values in (("--prompt", args.prompt), ("--negative-prompt", args.negative_prompt)):
    for v in values or []:
      if not v.strip():
        raise UsageError(f"empty {flag}: every {flag} must contain some text")


_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")


def read_prompts_file(path: str) -> list:
  """[(id, prompt)] from a plain-text or JSONL prompts file (module docstring); UsageError
  naming the line for anything that is not."""
  try:
    with open(path, encoding="utf-8-sig") as f:     # -sig: a byte-order mark is not text
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f"--prompts-file {path} cannot be read ({e}); expected a text file, one "
                     f"prompt per line, or JSONL") from e
  numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
  if not numbered:
    raise UsageError(f"--prompts-file {path} holds no prompts ({len(lines)} lines, all blank)")
  width = max(3, len(str(len(lines))))
  jsonl = path.endswith(".jsonl") or numbered[0][1].lstrip().startswith("{")
  column = None
  if path.endswith(".tsv"):    # PartiPrompts / DrawBench style: a header names the column
    header = [h.strip().lower() for h in numbered[0][1].split("\t")]
    if "prompt" not in header:
      raise UsageError(f"--prompts-file {path}: a .tsv needs a header line with a 'Prompt' "
                       f"column (as PartiPrompts' PartiPrompts.tsv), got {numbered[0][1]!r}")
    column, numbered = header.index("prompt"), numbered[1:]
  out, seen = [], {}
  for i, line in numbered:
    if column is not None:
      cells = line.split("\t")
      if len(cells) <= column or not cells[column].strip():
        raise UsageError(f"--prompts-file {path} line {i}: no prompt in column {column + 1}")
      line = cells[column]
    pid, prompt = (_jsonl_prompt(path, i, line) if jsonl else (None, line.strip()))
    pid = f"{i:0{width}d}" if pid is None else pid
    if not _SAFE_ID.match(pid):
      raise UsageError(f"--prompts-file {path} line {i}: id {pid!r} is not a safe file name "
                       f"(expected letters, digits, '.', '_', '-', at most 100, not starting "
                       f"with '.' or '-')")
    if pid in seen:
      raise UsageError(f"--prompts-file {path} line {i}: id {pid!r} is already used on line "
                       f"{seen[pid]}; each id names output files and must be unique")
    seen[pid] = i
    out.append((pid, prompt))
  return out


def _jsonl_prompt(path: str, i: int, line: str):
  where = f"--prompts-file {path} line {i}"
  try:
    rec = json.loads(line)
  except json.JSONDecodeError as e:
    raise UsageError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); expected "
                     f'{{"id": "...", "prompt": "..."}}') from e
  if not isinstance(rec, dict):
    raise UsageError(f'{where}: expected a JSON object {{"id": "...", "prompt": "..."}}, got '
                     f"{type(rec).__name__}")
  prompt = rec.get("prompt")
  if not isinstance(prompt, str) or not prompt.strip():
    raise UsageError(f'{where}: "prompt" must be a non-empty string, got {prompt!r}')
  pid = rec.get("id")
  if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (str, int))):
    raise UsageError(f'{where}: "id" must be a string or an integer, got {pid!r}')
  return (None if pid is None else str(pid)), prompt


def prompts_with_ids(args) -> tuple:
  """(ids, prompts) from --prompts-file or --prompt; sets args.prompt to the prompts."""
  if getattr(args, "prompts_file", None):
    ids, args.prompt = map(list, zip(*read_prompts_file(args.prompts_file)))
    return ids, args.prompt
  return [f"{p:03d}" for p in range(len(args.prompt))], args.prompt


def check_model_paths(args):
  """A model path that does not exist: a UsageError naming the flag and what it must be (the
  pipeline reports paths that exist but hold the wrong thing)."""
  for name, expected in MODEL_PATHS.items():
    path = getattr(args, name, None)
    if path and not paths.is_url(path) and not os.path.exists(path):
      raise UsageError(f"--{name.replace('_', '-')} {path} does not exist; expected {expected}")


def pipeline_paths(args) -> PipelinePaths:
  """The model flags (add_model_args) -> PipelinePaths, after checking they exist and pair up."""
  check_model_paths(args)
  if bool(args.superres) != bool(args.tokenizer_hi):
    raise UsageError("--superres and --tokenizer-hi go together: the super-res model's tokens "
                     "need the high-res tokenizer to become pixels")
  return PipelinePaths(base=args.checkpoint, tokenizer=args.tokenizer, superres=args.superres,
                       tokenizer_hi=args.tokenizer_hi, text_encoder=args.text_encoder_path)


def mesh_of(args) -> dict:
  try:
    return mesh_lib.parse_mesh_flag(args.mesh)
  except ValueError as e:
    raise UsageError(f"--mesh: {e}") from e


def build_pipeline(args) -> Pipeline:
  return Pipeline(pipeline_paths(args), mesh=mesh_of(args))


def sample_config(args) -> SampleConfig:
  try:
    common = dict(temperature=args.temperature, choice_temperature=args.choice_temperature,
                  guidance_scale=args.guidance, guidance_schedule=args.guidance_schedule,
                  schedule=args.schedule)
    return SampleConfig(num_images=args.num_images, seed=args.seed,
                        base=decoding.DecodeConfig(num_steps=args.steps, **common),
                        superres=decoding.DecodeConfig(num_steps=args.superres_steps, **common))
  except ValueError as e:
    raise UsageError(str(e)) from e


def write_outputs(out: str, images_BxHxWx3, cols: int, settings: dict, names=None) -> list:
  """One PNG per image, grid.png (`cols` per row) and settings.json; returns the PNG names."""
  os.makedirs(out, exist_ok=True)
  names = names or [f"{i:05d}.png" for i in range(len(images_BxHxWx3))]
  u8 = (np.clip(images_BxHxWx3, 0, 1) * 255).round().astype(np.uint8)
  for name, im in zip(names, u8):
    PIL.Image.fromarray(im).save(os.path.join(out, name))
  grid_u8 = (image_grid(images_BxHxWx3, cols) * 255).round().astype(np.uint8)
  PIL.Image.fromarray(grid_u8).save(os.path.join(out, "grid.png"))
  with open(os.path.join(out, "settings.json"), "w") as f:
    json.dump(dict(settings, files=names, grid="grid.png"), f, indent=1)
  return names


def settings_of(args, pipe: Pipeline, cfg: SampleConfig) -> dict:
  s = {k: v for k, v in vars(args).items() if k not in ("out", "func")}
  s.update(resolution=pipe.resolution, base_resolution=pipe.lo_resolution,
           text_encoder=dataclasses.asdict(pipe.text_cfg), base_decode=dataclasses.asdict(cfg.base),
           superres_decode=dataclasses.asdict(cfg.superres) if pipe.has_superres else None,
           num_images=cfg.num_images, seed=cfg.seed)
  return s


def write_contact_sheet(out: str, ids, prompts, images_BxHxWx3, n: int) -> None:
  """A grid per prompt (ID_grid.png, its n images in a row) and index.md listing every prompt with
  its grid: the page to look through a prompt set (PartiPrompts, DrawBench) at once."""
  lines = ["# muse-sample", "", "| id | prompt | images |", "| --- | --- | --- |"]
  for j, (pid, prompt) in enumerate(zip(ids, prompts)):
    grid = image_grid(images_BxHxWx3[j * n:(j + 1) * n], cols=n)
    PIL.Image.fromarray((grid * 255).round().astype(np.uint8)).save(
        os.path.join(out, f"{pid}_grid.png"))
    text = prompt.replace("|", "\\|").replace("\n", " ")
    lines.append(f"| {pid} | {text} | ![{pid}]({pid}_grid.png) |")
  with open(os.path.join(out, "index.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def sample(args) -> int:
  ids, prompts = prompts_with_ids(args)
  check_prompts(args)
  cfg = sample_config(args)
  pipe = build_pipeline(args)
  samples = pipe.generate(prompts, cfg, args.negative_prompt)
  n = cfg.num_images
  names = [f"{pid}_{k:02d}.png" for pid in ids for k in range(n)]
  settings = dict(settings_of(args, pipe, cfg), prompt_ids=ids)
  write_outputs(args.out, samples.images_BxHxWx3, n, settings, names)
  write_contact_sheet(args.out, ids, prompts, samples.images_BxHxWx3, n)
  print(f"muse-sample: wrote {len(names)} images of {pipe.resolution}px, a grid per prompt, "
        f"grid.png, index.md and settings.json to {args.out}")
  return 0


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="muse-sample", description=__doc__.split("\n")[0])
  add_model_args(p)
  add_decode_args(p, prompts_file=True)
  return p


def main(argv=None) -> int:
  args = paths.resolve_args(parser().parse_args(argv), PATH_ARGS)
  return errors.report("muse-sample", sample, args)


def run_main():
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  run_main()
