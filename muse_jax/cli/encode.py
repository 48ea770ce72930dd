r"""muse-encode: a dataset -> the pre-encoded format (token ids + text states), and ids -> images.

Two passes, so the tokenizers and the text encoder never share a device's memory and each pass
resumes on its own:

  muse-encode images --tokenizer /ckpt/vq_f16 [--tokenizer-hi /ckpt/vq_f8 --resolution-hi 512] \
      --source scenes --num-examples 20000 --resolution 256 --out /data/enc/images
  muse-encode text --input '/data/enc/images-*' --text-encoder bert --max-length 32 \
      --out /data/enc/train
  muse-encode decode --tokenizer /ckpt/vq_f16 --input '/data/enc/train-*' --out /tmp/png

and train with --config.data.source=preencoded --config.data.path='/data/enc/train-*'.

--tokenizer is a muse-convert folder (config.json + params.safetensors) or the workdir of a
`vqgan` / `decoder_finetune` run (its EMA params). Output shards are PREFIX-00003-of-00010
.arrayrecord, each written under a temporary name and renamed when complete: a re-run skips the
shards that exist, so a killed job resumes where it stopped. With several processes
(jax.distributed), process p takes shards p, p + P, ...; each encodes with its local devices, the
batch split over them. Bad records are skipped and counted (reported at the end).
"""
import argparse
import glob
import json
import math
import os
import re
import sys
import types

import flax.serialization
import grain
import jax
import numpy as np
import PIL.Image
import tqdm

from muse_jax import errors, paths
from muse_jax import tokenizer as tokenizer_lib
from muse_jax.data import preencoded, preprocess, sources
from muse_jax.parallel import axes, mesh as mesh_lib

_SHARD = re.compile(r"-(\d{5}-of-\d{5}\.arrayrecord)$")


# The tokenizer lives in the library (muse_jax/tokenizer.py); these names stay for this CLI's
# callers and messages.
UsageError, Tokenizer, load_tokenizer = tokenizer_lib.UsageError, tokenizer_lib.Tokenizer, \
    tokenizer_lib.load_tokenizer
_local_mesh = tokenizer_lib.local_mesh


def _check_batch(batch: int, shards: int):
  if batch <= 0 or batch % shards:
    raise UsageError(f"--batch-size {batch} must be a positive multiple of this process's "
                     f"{shards} devices")


def shard_name(prefix: str, index: int, count: int) -> str:
  return f"{prefix}-{index:05d}-of-{count:05d}.arrayrecord"


def _my_shards(count: int):
  return [i for i in range(count) if i % jax.process_count() == jax.process_index()]


def _read_records(path: str):
  src = grain.sources.ArrayRecordDataSource([path])
  for i in range(len(src)):
    try:
      yield i, flax.serialization.msgpack_restore(src[i])
    except Exception as e:  # noqa: BLE001  a record that does not decode is skipped and counted
      yield i, {"skip": ("corrupt_record", repr(e)[:200])}


def _report(name: str, counter: preprocess.SkipCounter, written: int, extra: dict | None = None):
  snap = {k: v for k, v in counter.snapshot().items() if v}
  print(f"muse-encode {name}: wrote {written} examples; skipped {snap or 'none'}"
        + (f"; {extra}" if extra else ""), flush=True)


# ------------------------------------------------------------------------------------------------
# Pass 1: images -> token ids (+ the caption, for pass 2).

def _tokenizer_flag(flag: str, path: str, mesh) -> Tokenizer:
  try:
    return Tokenizer(path, mesh)
  except UsageError as e:      # errors.py: CheckpointError included
    raise UsageError(f"{flag}: {e}") from e


def encode_images(args) -> int:
  mesh = _local_mesh()
  lo = _tokenizer_flag("--tokenizer", args.tokenizer, mesh)
  hi = _tokenizer_flag("--tokenizer-hi", args.tokenizer_hi, mesh) if args.tokenizer_hi else None
  if hi is not None and not args.resolution_hi:
    raise UsageError("--tokenizer-hi needs --resolution-hi (e.g. 512 for the f8 tokenizer)")
  _check_batch(args.batch_size, lo.shards)
  res = max(args.resolution, args.resolution_hi or 0)
  data = types.SimpleNamespace(
      source=args.source, path=args.path, captions_file=args.captions_file, split=args.split,
      tfds_data_dir=args.tfds_data_dir, image_key=args.image_key, caption_key=args.caption_key,
      num_examples=args.num_examples, scene_resolution=res, seed=args.seed)
  source = sources.image_text_source(data)
  total = len(source) if args.limit is None else min(args.limit, len(source))
  count = math.ceil(total / args.shard_size)
  counter = preprocess.SkipCounter(repr(source), give_up_after=min(total, 10_000))
  process = preprocess.ImageTextProcessor(
      preprocess.ImageConfig(resolution=res, value_range=(0.0, 1.0)), None, counter,
      keep_caption=True)
  written = 0
  bar = tqdm.tqdm(total=total, desc="muse-encode images", unit="img")
  for i in _my_shards(count):
    start, stop = i * args.shard_size, min((i + 1) * args.shard_size, total)
    path = shard_name(args.out, i, count)
    if os.path.exists(path):
      bar.update(stop - start)
      continue
    ds = (grain.MapDataset.source(source)[start:stop].map(process)
          .to_iter_dataset(grain.ReadOptions(num_threads=args.num_threads))
          .filter(lambda x: x is not None).batch(args.batch_size, drop_remainder=False))
    with preencoded.PreEncodedWriter(path) as writer:
      for batch in ds:
        ids = lo.encode(batch["image"], args.resolution, args.batch_size)
        ids_hi = (hi.encode(batch["image"], args.resolution_hi, args.batch_size)
                  if hi is not None else None)
        for j, caption in enumerate(batch["caption"]):
          writer.write(ids[j], tokens_hi=None if ids_hi is None else ids_hi[j],
                       caption=str(caption))
        written += len(ids)
    bar.update(stop - start)
  bar.close()
  _report("images", counter, written)
  return 0


# ------------------------------------------------------------------------------------------------
# Pass 2: captions -> text states.

def encode_text(args) -> int:
  from muse_jax.models import text_encoder
  inputs = sorted(glob.glob(args.input))
  if not inputs:
    raise UsageError(f"--input {args.input!r} matches no shards; write them with "
                     f"`muse-encode images`")
  cfg = text_encoder.TextEncoderConfig(kind=args.text_encoder, path=args.text_encoder_path,
                                       max_length=args.max_length, dtype=args.dtype)
  mesh = _local_mesh()
  enc = text_encoder.load(cfg, mesh=mesh)
  _check_batch(args.batch_size, mesh_lib.batch_axis_size(mesh, axes.DEFAULT_RULES))
  counter = preprocess.SkipCounter(args.input, give_up_after=10_000)
  written = 0
  sizes = [len(grain.sources.ArrayRecordDataSource([p])) for p in inputs]
  bar = tqdm.tqdm(total=sum(sizes), desc="muse-encode text", unit="caption")
  for i in _my_shards(len(inputs)):
    m = _SHARD.search(inputs[i])
    path = (f"{args.out}-{m.group(1)}" if m else
            f"{args.out}-{os.path.basename(inputs[i])}")
    if os.path.exists(path):
      bar.update(sizes[i])
      continue
    with preencoded.PreEncodedWriter(path) as writer:
      pending = []

      def flush():
        states, mask = enc.encode([r["caption"] for r in pending])
        states = np.asarray(states)
        for r, s, k in zip(pending, states, mask):
          writer.write(r["tokens"], s, k, tokens_hi=r.get("tokens_hi"), caption=r["caption"])
        pending.clear()

      for j, rec in _read_records(inputs[i]):
        key = f"{inputs[i]}[{j}]"
        if "skip" in rec:
          counter.record_skip(preprocess.SkipRecord(rec["skip"][0], key, rec["skip"][1]))
          continue
        try:
          caption = preprocess.clean_caption({"caption": rec.get("caption"), "key": key})
          if "tokens" not in rec:
            raise preprocess.SkipRecord("corrupt_record", key, "no token ids")
        except preprocess.SkipRecord as e:
          counter.record_skip(e)
          continue
        counter.record_ok()
        pending.append(dict(rec, caption=caption))
        if len(pending) == args.batch_size:
          flush()
          written += args.batch_size
      if pending:
        written += len(pending)
        flush()
    bar.update(sizes[i])
  bar.close()
  _report("text", counter, written, {"truncated captions": enc.tokenizer.truncated,
                                     "text width": enc.width})
  return 0


# ------------------------------------------------------------------------------------------------
# ids -> images.

def decode_ids(args) -> int:
  inputs = sorted(glob.glob(args.input))
  if not inputs:
    raise UsageError(f"--input {args.input!r} matches no shards")
  tok = _tokenizer_flag("--tokenizer", args.tokenizer, _local_mesh())
  _check_batch(args.batch_size, tok.shards)
  os.makedirs(args.out, exist_ok=True)
  ids, captions = [], []
  for path in inputs:
    for _, rec in _read_records(path):
      if args.key in rec:
        ids.append(np.asarray(rec[args.key], np.int32))
        captions.append(str(rec.get("caption", "")))
      if len(ids) == args.limit:
        break
    if len(ids) == args.limit:
      break
  if not ids:
    raise UsageError(f"no records with {args.key!r} in {args.input}")
  n = ids[0].size
  side = math.isqrt(n)
  if side * side != n or any(x.size != n for x in ids):
    raise UsageError(f"{args.key} of {args.input} are not square grids of one size ({n} ids)")
  if np.max(ids) >= tok.cfg.codebook_size:
    raise UsageError(f"{args.input} holds token id {np.max(ids)} but tokenizer {args.tokenizer} "
                     f"has {tok.cfg.codebook_size} codes: these ids come from another tokenizer")
  grid = np.stack(ids).reshape(-1, side, side)
  images = []
  for s in range(0, len(grid), args.batch_size):
    images.extend(tok.decode(grid[s:s + args.batch_size], args.batch_size))
  u8 = [(np.asarray(im) * 255).round().astype(np.uint8) for im in images]
  for k, im in enumerate(u8):
    PIL.Image.fromarray(im).save(os.path.join(args.out, f"{k:05d}.png"))
  cols = min(8, len(u8))
  rows = [np.concatenate(u8[r:r + cols] + [np.zeros_like(u8[0])] * (cols - len(u8[r:r + cols])),
                         1) for r in range(0, len(u8), cols)]
  PIL.Image.fromarray(np.concatenate(rows, 0)).save(os.path.join(args.out, "grid.png"))
  with open(os.path.join(args.out, "captions.json"), "w") as f:
    json.dump(captions, f, indent=1)
  print(f"muse-encode decode: wrote {len(u8)} images of {u8[0].shape[0]}px and grid.png to "
        f"{args.out}")
  return 0


# Path flags, resolved once in main() (relative to the current directory; gs:// kept).
PATH_ARGS = ("tokenizer", "tokenizer_hi", "captions_file", "tfds_data_dir", "input",
             "text_encoder_path", "out")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="muse-encode", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  img = sub.add_parser("images", help="images -> token ids (+ captions)")
  img.add_argument("--tokenizer", required=True)
  img.add_argument("--tokenizer-hi", help="second (super-res, f8) tokenizer -> tokens_hi")
  img.add_argument("--resolution", type=int, default=256)
  img.add_argument("--resolution-hi", type=int)
  img.add_argument("--source", default="scenes", choices=("scenes", "folder", "webdataset", "tfds"))
  img.add_argument("--path", default="", help="folder / shard glob / TFDS name")
  img.add_argument("--captions-file", default="")
  img.add_argument("--split", default="train")
  img.add_argument("--tfds-data-dir", default="")
  img.add_argument("--image-key", default="image")
  img.add_argument("--caption-key", default="captions/text")
  img.add_argument("--num-examples", type=int, default=10_000, help="scenes: dataset size")
  img.add_argument("--seed", type=int, default=0, help="scenes: dataset seed")
  img.add_argument("--limit", type=int, help="encode only the first N examples")
  img.add_argument("--shard-size", type=int, default=1024)
  img.add_argument("--num-threads", type=int, default=4)
  txt = sub.add_parser("text", help="captions of `images` shards -> text states")
  txt.add_argument("--input", required=True, help="glob of shards written by `images`")
  txt.add_argument("--text-encoder", default="bert", choices=("bert", "t5"))
  txt.add_argument("--text-encoder-path", default="",
                   help="Hugging Face snapshot folder ('' with bert: the bundled MiniLM-L6)")
  txt.add_argument("--max-length", type=int, default=32)
  txt.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  dec = sub.add_parser("decode", help="token ids in shards -> PNG images")
  dec.add_argument("--tokenizer", required=True)
  dec.add_argument("--input", required=True)
  dec.add_argument("--key", default="tokens", choices=("tokens", "tokens_hi"))
  dec.add_argument("--limit", type=int, default=16)
  for s in (img, txt, dec):
    s.add_argument("--out", required=True,
                   help="shard prefix (images, text) or output folder (decode)")
    s.add_argument("--batch-size", type=int, default=64)
  return p


def main(argv=None) -> int:
  args = paths.resolve_args(parser().parse_args(argv), PATH_ARGS)
  if getattr(args, "source", None) != "tfds":     # for tfds, --path is a dataset name
    paths.resolve_args(args, ("path",))
  run = {"images": encode_images, "text": encode_text, "decode": decode_ids}[args.command]
  return errors.report(f"muse-encode {args.command}", run, args, also=(preprocess.DataError,))


def run_main():
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  run_main()
