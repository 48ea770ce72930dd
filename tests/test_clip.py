"""CLIP: image / text embedding parity with transformers' CLIPModel, tokenizer ids, loading errors,
preset sizes, clip_score.

Checkpoints are small random-weight CLIPModels that transformers writes on CPU torch into tmp
folders, with a tiny CLIP BPE tokenizer (byte-level alphabet + a few merged words) built here.
"""
import json
import os
import shutil

import pytest

torch = pytest.importorskip("torch", reason="parity tests compare against PyTorch (extra: parity)")
transformers = pytest.importorskip("transformers",
                                   reason="parity tests compare against transformers (extra: parity)")
import jax  # noqa: E402
import numpy as np  # noqa: E402
from safetensors import numpy as st_numpy  # noqa: E402

from muse_jax.models import clip  # noqa: E402
from tests import helpers  # noqa: E402

MAX_LEN = 16
CAPTIONS = [
    "a photo of a red cube",
    "",
    "The DOG and the cat!  a   photo\tof\nthe dog",
    "the dog " * 20,                                 # over-long: truncated, EOS kept last
    "héllo wörld 日本語 🙂 café",
    "a photo of 3 cats, 12 dogs; the cube's red",
]
@pytest.fixture(scope="module", params=["legacy_eos", "eos_id"])
def snapshot(request, tmp_path_factory):
  """(folder, torch CLIPModel, HF tokenizer); 'legacy_eos' has eos_token_id 2 (argmax pooling)
  and quick_gelu, 'eos_id' the tokenizer's EOS id (first-EOS pooling) and exact GELU."""
  folder = str(tmp_path_factory.mktemp(request.param))
  tok = helpers.write_clip_tokenizer(folder, MAX_LEN)
  eos = 2 if request.param == "legacy_eos" else tok.eos_token_id
  act = "quick_gelu" if request.param == "legacy_eos" else "gelu"
  torch.manual_seed(0)
  model = transformers.CLIPModel(helpers.clip_config(len(tok), eos, act, MAX_LEN)).eval()
  with torch.no_grad():   # perturb every tensor (LayerNorms init to 1 / 0) so each mapping counts
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(folder)
  return folder, model, tok


def _features(out):
  """transformers 5 returns a model output whose pooler_output is projected; 4 a tensor."""
  return (out if torch.is_tensor(out) else out.pooler_output).numpy()


def _rel_err(ours, ref):
  ours, ref = np.asarray(ours), np.asarray(ref)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_embeddings_match_transformers(snapshot):
  folder, model, tok = snapshot
  cfg, params, our_tok = clip.load(folder)
  assert cfg.projection_dim == 16 and cfg.text.max_position_embeddings == MAX_LEN
  net = clip.CLIP(cfg)
  rs = np.random.RandomState(0)

  pixels_BxCxHxW = rs.randn(3, 3, 32, 32).astype(np.float32)
  with torch.no_grad():
    ref = _features(model.get_image_features(pixel_values=torch.tensor(pixels_BxCxHxW)))
  ours = net.apply({"params": params}, pixels_BxCxHxW.transpose(0, 2, 3, 1),
                   method=clip.CLIP.encode_image)
  assert ours.shape == ref.shape == (3, 16)
  assert _rel_err(ours, ref) < 1e-4

  # Tokenized captions (padded with the EOS id, masked), then random ids with the EOS at odd
  # places, twice or not at all, where the two pooling rules differ.
  ids, mask = our_tok(CAPTIONS)
  rand = rs.randint(0, len(tok), (4, MAX_LEN)).astype(np.int32)
  rand[rand == tok.eos_token_id] = 5
  rand[0, 3] = rand[0, 9] = tok.eos_token_id
  rand[1, 12] = tok.eos_token_id
  rand_mask = np.ones_like(rand, bool)
  rand_mask[1, 13:] = False
  for ids_BxT, mask_BxT in ((ids, mask), (rand, rand_mask)):
    with torch.no_grad():
      ref = _features(model.get_text_features(input_ids=torch.tensor(ids_BxT, dtype=torch.long),
                                              attention_mask=torch.tensor(mask_BxT,
                                                                          dtype=torch.long)))
    ours = net.apply({"params": params}, ids_BxT, mask_BxT, method=clip.CLIP.encode_text)
    assert ours.shape == ref.shape
    assert _rel_err(ours, ref) < 1e-4


def test_tokenizer_matches_transformers(snapshot):
  folder, _, tok = snapshot
  ours = clip.ClipTokenizer(folder, MAX_LEN)
  theirs = transformers.AutoTokenizer.from_pretrained(folder)
  ids, mask = ours(CAPTIONS)
  ref = theirs(CAPTIONS, padding="max_length", truncation=True, max_length=MAX_LEN)
  assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == (len(CAPTIONS), MAX_LEN)
  np.testing.assert_array_equal(ids, np.array(ref["input_ids"]))
  np.testing.assert_array_equal(mask, np.array(ref["attention_mask"], bool))
  long = ids[CAPTIONS.index("the dog " * 20)]
  assert long[0] == tok.bos_token_id and long[-1] == tok.eos_token_id and mask.sum() > len(CAPTIONS)


def _copy_with(folder, dst, edit):
  """A copy of snapshot `folder` in dst whose tensors went through edit(dict)."""
  os.makedirs(dst)
  for name in os.listdir(folder):
    if name != "model.safetensors":
      shutil.copy(os.path.join(folder, name), dst)
  tensors = st_numpy.load_file(os.path.join(folder, "model.safetensors"))
  edit(tensors)
  st_numpy.save_file(tensors, os.path.join(dst, "model.safetensors"))
  return dst


def test_bad_checkpoints_name_the_key(snapshot, tmp_path):
  folder = snapshot[0]
  missing = "text_model.encoder.layers.1.mlp.fc2.bias"
  bad = _copy_with(folder, str(tmp_path / "missing"), lambda t: t.pop(missing))
  with pytest.raises(ValueError, match=f"missing key '{missing}'"):
    clip.load(bad)
  shaped = "vision_model.embeddings.patch_embedding.weight"
  bad = _copy_with(folder, str(tmp_path / "shape"),
                   lambda t: t.__setitem__(shaped, t[shaped][:, :, :4]))
  with pytest.raises(ValueError, match=f"key '{shaped}' has shape"):
    clip.load(bad)
  bad = _copy_with(folder, str(tmp_path / "extra"),
                   lambda t: t.__setitem__("vision_model.extra.weight", np.zeros(3, np.float32)))
  with pytest.raises(ValueError, match="unexpected key 'vision_model.extra.weight'"):
    clip.load(bad)
  with open(os.path.join(folder, "config.json")) as f:
    hf = json.load(f)
  with pytest.raises(ValueError, match="model_type"):
    clip.CLIPConfig.from_hf(dict(hf, model_type="siglip"))


def _count(cfg):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(clip.abstract_params(cfg)))


@pytest.mark.parametrize("cfg,published", [(clip.VIT_B_32, 151_277_313),
                                           (clip.VIT_L_14, 427_616_513)])
def test_presets_have_published_sizes(cfg, published):
  # Published: transformers' CLIPModel parameter counts, which include the scalar logit_scale.
  # Ours: 151,277,312 (B/32) and 427,616,512 (L/14).
  n = _count(cfg)
  assert abs(n - published) / published < 0.01
  assert n == published - 1


def test_clip_score():
  rs = np.random.RandomState(0)
  a = rs.randn(4, 8).astype(np.float32)
  np.testing.assert_allclose(clip.clip_score(a, 3.0 * a), 1.0, atol=1e-6)
  np.testing.assert_allclose(clip.clip_score(a, -a), 0.0, atol=1e-6)
  b = rs.randn(4, 8).astype(np.float32)
  cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  np.testing.assert_allclose(clip.clip_score(a, b), np.maximum(cos, 0), atol=1e-6)


def test_preprocess_images():
  images = np.full((2, 40, 60, 3), 0.5, np.float32)
  out = np.asarray(clip.preprocess_images(images, image_size=32))
  assert out.shape == (2, 32, 32, 3)
  want = (0.5 - np.array(clip.MEAN)) / np.array(clip.STD)
  np.testing.assert_allclose(out, np.broadcast_to(want, out.shape), atol=1e-5)
  square = np.random.RandomState(0).rand(1, 32, 32, 3).astype(np.float32)   # no resize, no crop
  np.testing.assert_allclose(clip.preprocess_images(square, image_size=32),
                             (square - np.array(clip.MEAN)) / np.array(clip.STD), atol=1e-5)


def test_config_validation():
  with pytest.raises(ValueError, match="hidden_act"):
    clip.CLIPTextConfig(hidden_act="swiglu")
  with pytest.raises(ValueError, match="divisible"):
    clip.CLIPVisionConfig(hidden_size=30, num_attention_heads=4)
  with pytest.raises(ValueError, match="multiple of patch_size"):
    clip.CLIPVisionConfig(image_size=30, patch_size=8)
  with pytest.raises(ValueError, match="dtype"):
    clip.CLIPConfig(dtype="float16")


def test_clip_scorer_matches_transformers_cosine(snapshot):
  """metrics/clip_score.py: images in [0, 1] and prompts -> max(cos, 0) of transformers' image
  and text features (on our preprocessed pixels and the HF tokenizer's ids), whatever the
  batching (7 pairs in chunks of 3, the last padded)."""
  from muse_jax.metrics import clip_score
  folder, model, tok = snapshot
  rs = np.random.RandomState(1)
  images = rs.rand(7, 40, 48, 3).astype(np.float32)     # resized and centre-cropped to 32
  prompts = [CAPTIONS[i % len(CAPTIONS)] for i in range(7)]
  got = clip_score.CLIPScorer(folder, batch_size=3).scores(images, prompts)
  pixels = np.asarray(clip.preprocess_images(images, 32)).transpose(0, 3, 1, 2)
  enc = tok(prompts, padding="max_length", truncation=True, max_length=MAX_LEN,
            return_tensors="pt")
  with torch.no_grad():
    a = _features(model.get_image_features(pixel_values=torch.tensor(pixels)))
    b = _features(model.get_text_features(input_ids=enc["input_ids"],
                                          attention_mask=enc["attention_mask"]))
  cos = np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  np.testing.assert_allclose(got, np.maximum(cos, 0), atol=1e-5)
  assert got.shape == (7,) and (cos > 0).any()
  with pytest.raises(ValueError, match="B images .* and B prompts"):
    clip_score.CLIPScorer(folder).scores(images, prompts[:3])


def test_muse_eval_reports_the_clip_score(snapshot, tmp_path):
  """muse-eval's generator sweep with a CLIP folder: one CLIP score per split and sweep point,
  the mean of the scorer's per-pair scores, in report.json and report.md."""
  from muse_jax.cli import evaluate
  from muse_jax.data import scenes
  from muse_jax.metrics import clip_score
  folder = snapshot[0]
  render = lambda prompts, *_: np.stack(
      [scenes.render(scenes.parse_caption(p), 48) for p in prompts]) / 255.0
  scorer = clip_score.CLIPScorer(folder, batch_size=4)
  report = evaluate.evaluate_generator(render, 6, [0.0], [1.0], clip_scorer=scorer)
  point = report["sweep"][0]
  for split in ("eval", "eval_seen"):
    prompts, _ = evaluate.scene_prompts(split, 6)
    want = scorer.scores(render(prompts), prompts).mean()
    assert point[f"clip_{split}"] == pytest.approx(float(want), abs=1e-6)
  evaluate.write_report(report, str(tmp_path))
  md = (tmp_path / "report.md").read_text()
  assert "| CLIP | FID |" in md and f"{point['clip_eval']:.4f}" in md
