"""Tokenizer importers: parity with diffusers' VQModel and with a numpy MaskGIT VQGAN on random
weights, key-map errors, unsupported layouts, our checkpoint format and the muse-convert CLI."""
import json
import os

import flax
import jax
import numpy as np
import pytest
from safetensors import numpy as st_numpy

from muse_jax.convert import vq
from muse_jax.models.vqgan import VQGAN
from tests import maskgit_numpy_reference as mg


def _ours(cfg, params, img_BxHxWx3):
  """Our converted model: (ids, decode(ids)) as numpy."""
  model = VQGAN(cfg)
  ids = jax.jit(lambda p, x: model.apply(p, x, method=model.encode))(params, img_BxHxWx3)
  out = jax.jit(lambda p, i: model.apply(p, i, method=model.decode))(params, ids)
  return np.asarray(ids), np.asarray(out)


def _codebook_near(latents_NxD, size, rng):
  """Codes scattered around real latents, so random-weight images use many distinct ids."""
  rows = latents_NxD[rng.integers(len(latents_NxD), size=size)]
  return (rows + 0.5 * latents_NxD.std() * rng.standard_normal(rows.shape)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# MaskGIT: a msgpack in MaskGIT's parameter tree against tests/maskgit_numpy_reference.py.

MASKGIT_LAYOUTS = {
    # The published ImageNet structure (multipliers, blocks) at a quarter of the width.
    "imagenet_structure": dict(filters=32, channel_multipliers=(1, 1, 2, 2, 4),
                               num_res_blocks=2, embedding_dim=16, codebook_size=64, size=64),
    "two_levels_one_block": dict(filters=32, channel_multipliers=(1, 2), num_res_blocks=1,
                                 embedding_dim=8, codebook_size=32, size=16),
}


def _maskgit_checkpoint(path, layout, seed=0):
  """Writes a MaskGIT msgpack; returns (tree, test images in [0, 1], our config overrides)."""
  lay = dict(MASKGIT_LAYOUTS[layout])
  size = lay.pop("size")
  rng = np.random.default_rng(seed)
  tree = mg.random_tree(rng, **lay)
  img = rng.random((2, size, size, 3)).astype(np.float32)
  arch = dict(filters=lay["filters"], channel_multipliers=lay["channel_multipliers"],
              num_res_blocks=lay["num_res_blocks"])
  z = mg.encode_latents(tree, img, **arch)
  tree["quantizer"]["codebook"] = _codebook_near(z.reshape(-1, z.shape[-1]),
                                                 lay["codebook_size"], rng)
  with open(path, "wb") as f:
    f.write(flax.serialization.msgpack_serialize({"params": tree}))
  overrides = dict(base_channels=lay["filters"], channel_mult=lay["channel_multipliers"],
                   num_res_blocks=lay["num_res_blocks"], latent_dim=lay["embedding_dim"],
                   codebook_size=lay["codebook_size"])
  return tree, img, arch, overrides


@pytest.mark.parametrize("layout", sorted(MASKGIT_LAYOUTS))
def test_maskgit_matches_numpy_reference(tmp_path, layout):
  path = tmp_path / "tokenizer.msgpack"
  tree, img, arch, overrides = _maskgit_checkpoint(path, layout)
  cfg, params = vq.from_maskgit(path, **overrides)
  assert cfg.pixel_range == (0.0, 1.0) and cfg.downsample == "avgpool"
  ids, out = _ours(cfg, params, img)

  want_ids = mg.quantize(tree, mg.encode_latents(tree, img, **arch))
  np.testing.assert_array_equal(ids, want_ids)
  assert len(np.unique(ids)) > 1
  want_out = mg.decode_ids(tree, ids, **arch)
  err = np.abs(out - want_out).max()
  print(f"maskgit {layout}: ids equal ({ids.size}, {len(np.unique(ids))} distinct), "
        f"decode max abs err {err:.2e} (output max abs {np.abs(want_out).max():.2f})")
  assert err < 1e-4


def test_maskgit_defaults_are_the_published_imagenet_tokenizer():
  cfg = vq.maskgit_config()
  assert (cfg.base_channels, cfg.channel_mult, cfg.num_res_blocks, cfg.mid_res_blocks) == (
      128, (1, 1, 2, 2, 4), 2, 2)
  assert (cfg.latent_dim, cfg.codebook_size, cfg.factor, cfg.pixel_range) == (256, 1024, 16,
                                                                             (0.0, 1.0))
  assert cfg.shortcut_on_output and not cfg.res_conv_bias and not cfg.conv_in_bias


def _rewrite_maskgit(src, dst, edit):
  with open(src, "rb") as f:
    flat = flax.traverse_util.flatten_dict(flax.serialization.msgpack_restore(f.read()), sep="/")
  edit(flat)
  with open(dst, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(flax.traverse_util.unflatten_dict(flat, sep="/")))


@pytest.fixture(scope="module")
def maskgit_small(tmp_path_factory):
  path = tmp_path_factory.mktemp("maskgit") / "tokenizer.msgpack"
  _, img, _, overrides = _maskgit_checkpoint(path, "two_levels_one_block")
  return path, img, overrides


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("params/encoder/ResBlock_0/Conv_0/kernel"),
     r"missing key 'encoder/ResBlock_0/Conv_0/kernel' \(expected shape \(3, 3, 32, 32\)"),
    (lambda t: t.update({"params/decoder/Conv_9/kernel": np.zeros((3, 3, 4, 4), np.float32)}),
     r"unexpected key 'decoder/Conv_9/kernel' with shape \(3, 3, 4, 4\)"),
    (lambda t: t.update({"params/quantizer/codebook": np.zeros((32, 9), np.float32)}),
     r"key 'quantizer/codebook' has shape \(32, 9\) but expected \(32, 8\)"),
    # A conv with a bias where MaskGIT has none (a checkpoint of another variant).
    (lambda t: t.update({"params/encoder/Conv_0/bias": np.zeros((32,), np.float32)}),
     r"unexpected key 'encoder/Conv_0/bias' with shape \(32,\)"),
])
def test_maskgit_key_errors_name_key_and_shapes(tmp_path, maskgit_small, edit, message):
  src, _, overrides = maskgit_small
  _rewrite_maskgit(src, tmp_path / "bad.msgpack", edit)
  with pytest.raises(ValueError, match=message):
    vq.from_maskgit(tmp_path / "bad.msgpack", **overrides)


def test_maskgit_wrong_layout_is_a_shape_error(maskgit_small):
  src, _, overrides = maskgit_small
  with pytest.raises(ValueError, match="has shape .* but expected"):
    vq.from_maskgit(src, **{**overrides, "base_channels": 64})


def test_save_load_and_cli_round_trip(tmp_path, maskgit_small, capsys):
  src, img, overrides = maskgit_small
  cfg, params = vq.from_maskgit(src, **overrides)
  sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v!r}")]
  rc = vq.main(["--from", "maskgit-vq", str(src), "--out", str(tmp_path / "out"), *sets])
  assert rc == 0 and "wrote" in capsys.readouterr().out
  cfg2, params2 = vq.load(tmp_path / "out")
  assert cfg2 == cfg
  jax.tree.map(np.testing.assert_array_equal, params2, params)
  vq.save(params2, cfg2, tmp_path / "again")
  assert vq.load(tmp_path / "again")[0] == cfg
  np.testing.assert_array_equal(_ours(cfg2, params2, img)[0], _ours(cfg, params, img)[0])
  # A checkpoint that does not fit: exit code 1 and the key in the message, no traceback.
  rc = vq.main(["--from", "maskgit-vq", str(src), "--out", str(tmp_path / "x"),
                *sets, "--set", "latent_dim=4"])   # the last --set of a key wins
  assert rc == 1 and "quantizer/codebook" in capsys.readouterr().err


def test_load_rejects_a_diffusers_folder(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"_class_name": "VQModel"}))
  with pytest.raises(ValueError, match="--from diffusers-vq"):
    vq.load(tmp_path)


# ------------------------------------------------------------------------------------------------
# diffusers: config checks (no torch needed) and parity with VQModel on random weights.

def _diffusers_dict(**kw):
  base = dict(_class_name="VQModel", block_out_channels=[32, 64], layers_per_block=1,
              latent_channels=4, num_vq_embeddings=16, norm_num_groups=8,
              down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
              mid_block_add_attention=False)
  base.update(kw)
  return base


@pytest.mark.parametrize("changes, field", [
    (dict(norm_type="spatial"), "norm_type"),
    (dict(vq_embed_dim=8), "vq_embed_dim"),
    (dict(act_fn="relu"), "act_fn"),
    (dict(up_block_types=["AttnUpDecoderBlock2D"] * 2), "up_block_types"),
    (dict(some_future_switch=1), "some_future_switch"),
])
def test_diffusers_layout_we_cannot_express_names_the_field(tmp_path, changes, field):
  conf = _diffusers_dict(**changes)
  conf = {k: v for k, v in conf.items() if v is not None}
  (tmp_path / "config.json").write_text(json.dumps(conf))
  with pytest.raises(ValueError, match=f"field {field}"):
    vq.from_diffusers(tmp_path)


def test_diffusers_config_maps_to_switches():
  cfg = vq.diffusers_config(_diffusers_dict(block_out_channels=[48, 64, 64], layers_per_block=2,
                                            down_block_types=["DownEncoderBlock2D"] * 3,
                                            up_block_types=["UpDecoderBlock2D"] * 3))
  assert cfg.encoder_channels == (48, 64, 64) and cfg.factor == 4
  assert (cfg.num_res_blocks, cfg.decoder_res_blocks, cfg.mid_res_blocks) == (2, 3, 2)
  assert cfg.downsample == "conv" and cfg.quant_conv and cfg.encoder_out_kernel == 3
  assert cfg.pixel_range == (-1.0, 1.0)


DIFFUSERS_LAYOUTS = {
    "one_level_step": dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                           num_vq_embeddings=16, norm_num_groups=4, size=16),
    "three_levels": dict(block_out_channels=(16, 32, 48), layers_per_block=2, latent_channels=8,
                         num_vq_embeddings=64, norm_num_groups=8, vq_embed_dim=8, size=32),
    # taming / latent-diffusion style: attention in the mid block (diffusers' default).
    "mid_attention": dict(block_out_channels=(16, 32), layers_per_block=1, latent_channels=8,
                          num_vq_embeddings=64, norm_num_groups=8, mid_block_add_attention=True,
                          size=32),
    # aMUSEd's vqvae/config.json with channels [128, 256, 256, 512, 768] / 8 and 8192 codes / 32.
    "amused_like": dict(block_out_channels=(16, 32, 32, 64, 96), layers_per_block=2,
                        latent_channels=64, num_vq_embeddings=256, norm_num_groups=8,
                        lookup_from_codebook=True, force_upcast=False, scaling_factor=0.18215,
                        norm_type="group", sample_size=32, size=64),
}


def _diffusers_checkpoint(folder, layout, seed=0):
  """Saves a random-weight diffusers VQModel; returns (model, images NCHW in its pixel range)."""
  torch = pytest.importorskip("torch", reason="diffusers parity needs torch (the parity extra)")
  diffusers = pytest.importorskip("diffusers", reason="diffusers parity needs diffusers")
  torch.manual_seed(seed)
  lay = dict(DIFFUSERS_LAYOUTS[layout])
  size, levels = lay.pop("size"), len(lay["block_out_channels"])
  lay.setdefault("mid_block_add_attention", False)
  model = diffusers.VQModel(down_block_types=("DownEncoderBlock2D",) * levels,
                            up_block_types=("UpDecoderBlock2D",) * levels, **lay).eval()
  rng = np.random.default_rng(seed)
  lo = 0.0 if layout == "amused_like" else -1.0
  img = torch.from_numpy(rng.uniform(lo, 1.0, (2, 3, size, size)).astype(np.float32))
  with torch.no_grad():
    for name, p in model.named_parameters():  # norms away from (1, 0), biases non-zero
      if "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
    z = model.encode(img).latents.permute(0, 2, 3, 1).reshape(-1, lay["latent_channels"]).numpy()
    model.quantize.embedding.weight.copy_(torch.from_numpy(
        _codebook_near(z, lay["num_vq_embeddings"], rng)))
  model.save_pretrained(folder)
  return model, img


def _diffusers_ids_and_decode(model, img):
  import torch
  with torch.no_grad():
    h = model.encode(img).latents
    ids = model.quantize(h)[2][2].reshape(h.shape[0], h.shape[2], h.shape[3])
    shape = (h.shape[0], h.shape[2], h.shape[3], h.shape[1])
    if model.config.lookup_from_codebook:  # aMUSEd's path: decode straight from ids
      out = model.decode(ids.reshape(-1), force_not_quantize=True, shape=shape).sample
    else:
      quant = model.quantize.get_codebook_entry(ids.reshape(-1), shape)
      out = model.decode(quant, force_not_quantize=True).sample
  return ids.numpy(), out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("layout", sorted(DIFFUSERS_LAYOUTS))
def test_diffusers_parity(tmp_path, layout):
  if layout == "amused_like":  # a pipeline folder: model_index.json + vqvae/
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "AmusedPipeline"}))
    model, img = _diffusers_checkpoint(tmp_path / "vqvae", layout)
  else:
    model, img = _diffusers_checkpoint(tmp_path, layout)
  cfg, params = vq.from_diffusers(tmp_path)
  assert cfg.pixel_range == ((0.0, 1.0) if layout == "amused_like" else (-1.0, 1.0))
  assert cfg.encoder_channels == tuple(DIFFUSERS_LAYOUTS[layout]["block_out_channels"])
  assert cfg.mid_attention == (layout == "mid_attention")

  want_ids, want_out = _diffusers_ids_and_decode(model, img)
  ids, out = _ours(cfg, params, img.permute(0, 2, 3, 1).numpy())
  np.testing.assert_array_equal(ids, want_ids)
  assert len(np.unique(ids)) > 1
  # Decode the same ids through both (ours from diffusers' ids, in case of a tie elsewhere).
  model_ = VQGAN(cfg)
  out = np.asarray(model_.apply(params, want_ids, method=model_.decode))
  err = np.abs(out - want_out).max()
  print(f"diffusers {layout}: ids equal ({ids.size}, {len(np.unique(ids))} distinct), decode max "
        f"abs err {err:.2e} (output max abs {np.abs(want_out).max():.2f})")
  assert err < 1e-4


@pytest.fixture(scope="module")
def diffusers_small(tmp_path_factory):
  folder = tmp_path_factory.mktemp("diffusers")
  _diffusers_checkpoint(folder, "one_level_step")
  return folder


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("decoder.conv_out.bias"),
     r"missing key 'decoder.conv_out.bias' \(expected shape \(3,\)"),
    (lambda t: t.update({"encoder.mid_block.attentions.0.to_q.weight": np.zeros((16, 16),
                                                                                np.float32)}),
     r"unexpected key 'encoder.mid_block.attentions.0.to_q.weight' with shape \(16, 16\)"),
    # torch's OIHW layout in both shapes.
    (lambda t: t.update({"encoder.conv_in.weight": np.zeros((8, 3, 5, 5), np.float32)}),
     r"key 'encoder.conv_in.weight' has shape \(8, 3, 5, 5\) but expected \(8, 3, 3, 3\)"),
])
def test_diffusers_key_errors_name_key_and_shapes(tmp_path, diffusers_small, edit, message):
  weights = st_numpy.load_file(os.path.join(diffusers_small, "diffusion_pytorch_model.safetensors"))
  edit(weights)
  st_numpy.save_file(weights, str(tmp_path / "diffusion_pytorch_model.safetensors"))
  (tmp_path / "config.json").write_text((diffusers_small / "config.json").read_text())
  with pytest.raises(ValueError, match=message):
    vq.from_diffusers(tmp_path)


def test_diffusers_cli(tmp_path, diffusers_small):
  rc = vq.main(["--from", "diffusers-vq", str(diffusers_small), "--out", str(tmp_path / "o"),
                "--pixel-range", "0", "1"])
  assert rc == 0
  cfg, params = vq.load(tmp_path / "o")
  want_cfg, want = vq.from_diffusers(diffusers_small, pixel_range=(0.0, 1.0))
  assert cfg == want_cfg and cfg.pixel_range == (0.0, 1.0)
  jax.tree.map(np.testing.assert_array_equal, params, want)
